"""Contrastive learning (InfoNCE, SimCSE): the loss against a float64 formula written out here,
its invariances (batch permutation, scale), log(N + M) for uninformative embeddings, lower when
positives align; pooling over real tokens only (padding on either side changes nothing);
dropout switched on for training only; the TinyWorld pairs; the evaluation metrics; bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift import world
from minift.align.contrastive import (ContrastiveConfig, dropout_enabled, embed, embed_sentences, encode_items,
                                      info_nce, pair_collate, pool, train_contrastive)
from minift.evals import (best_threshold, fact_key, retrieval_at_1, supervised_pairs, threshold_accuracy,
                          unsupervised_sentences)
from minift.model import GPTConfig
from minift.tasks import collate
from minift.train import TrainConfig
from strategies import tiny_model

pytestmark = pytest.mark.lesson16
SET = settings(deadline=None, max_examples=40)
CFG = GPTConfig(vocab_size=24, block_size=12, n_layer=2, n_head=2, n_embd=8)


def _np(shape, seed, scale=1.0):
    return np.random.default_rng(seed).normal(0, scale, shape)


def info_nce64(a, b, tau, neg=None, symmetric=False):
    """The textbook loss, one anchor at a time, in float64."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    a, b = unit(np.asarray(a, np.float64)), unit(np.asarray(b, np.float64))
    cands = b if neg is None else np.concatenate([b, unit(np.asarray(neg, np.float64))])
    N = len(a)
    fwd = [-(a[i] @ cands[i] / tau) + math.log(sum(math.exp(a[i] @ c / tau) for c in cands)) for i in range(N)]
    loss = sum(fwd) / N
    if symmetric:
        bwd = [-(b[i] @ a[i] / tau) + math.log(sum(math.exp(b[i] @ x / tau) for x in a)) for i in range(N)]
        loss = 0.5 * (loss + sum(bwd) / N)
    return loss


batches = st.tuples(st.integers(1, 6), st.integers(2, 6), st.integers(0, 3), st.integers(0, 10_000),
                    st.sampled_from([0.05, 0.1, 0.5, 1.0]), st.booleans())


# ---- the loss ------------------------------------------------------------------------------------

@SET
@given(batches)
def test_info_nce_matches_the_float64_formula(args):
    N, C, M, seed, tau, sym = args
    a, b, n = _np((N, C), seed), _np((N, C), seed + 1), _np((M, C), seed + 2) if M else None
    got = info_nce(torch.tensor(a), torch.tensor(b), tau, None if n is None else torch.tensor(n), sym)
    assert got.dim() == 0
    assert float(got) == pytest.approx(info_nce64(a, b, tau, n, sym), rel=1e-9, abs=1e-9)


@SET
@given(batches)
def test_info_nce_is_invariant_to_permuting_the_batch_consistently(args):
    N, C, M, seed, tau, sym = args
    a, b, n = (torch.tensor(_np(s, seed + k)) for k, s in enumerate([(N, C), (N, C), (M, C)]))
    p = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    q = torch.randperm(M, generator=torch.Generator().manual_seed(seed + 7))
    before = info_nce(a, b, tau, n if M else None, sym)
    after = info_nce(a[p], b[p], tau, n[q] if M else None, sym)
    assert float(after) == pytest.approx(float(before), rel=1e-12, abs=1e-12)
    if N > 1 and not sym:                      # an inconsistent permutation is another problem
        swapped = info_nce(a, b[torch.roll(torch.arange(N), 1)], tau, n if M else None)
        assert float(swapped) != pytest.approx(float(before), rel=1e-9)


@SET
@given(st.integers(1, 8), st.integers(0, 4), st.integers(1, 6), st.floats(0.01, 5.0), st.booleans(),
       st.integers(0, 1000))
def test_info_nce_of_identical_embeddings_is_log_of_the_candidates(N, M, C, tau, sym, seed):
    v = torch.tensor(_np((1, C), seed)) + 0.1                           # one vector, never zero
    a, b = v.expand(N, C), v.expand(N, C) * 3.0                          # all equal (up to scale)
    n = v.expand(M, C) if M else None
    expected = math.log(N + M) if not sym else 0.5 * (math.log(N + M) + math.log(N))
    assert float(info_nce(a, b, tau, n, sym)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@SET
@given(st.integers(2, 5), st.floats(0.05, 1.0), st.integers(0, 1000))
def test_info_nce_decreases_as_positives_align(N, tau, seed):
    # Orthonormal anchors a_i and directions c_i orthogonal to all of them; b_i(t) goes from c_i
    # (t = 0: cos 0 with everything) to a_i (t = 1): the loss log(1 + (N-1) e^{-s/τ}), s = cos(a_i, b_i).
    Q, _ = np.linalg.qr(_np((2 * N, 2 * N), seed))
    a, c = Q[:N], Q[N:]
    losses = []
    for t in np.linspace(0.0, 1.0, 6):
        b = (1 - t) * c + t * a
        losses.append(float(info_nce(torch.tensor(a), torch.tensor(b), tau)))
    assert all(x > y for x, y in zip(losses, losses[1:])), losses
    assert losses[0] == pytest.approx(math.log(N), rel=1e-9)
    assert losses[-1] == pytest.approx(math.log(1 + (N - 1) * math.exp(-1 / tau)), rel=1e-9)


@SET
@given(batches, st.floats(0.1, 10.0))
def test_info_nce_is_cosine_based_so_row_scale_does_not_matter(args, k):
    N, C, M, seed, tau, sym = args
    a, b = torch.tensor(_np((N, C), seed)), torch.tensor(_np((N, C), seed + 1))
    scale = torch.tensor(np.random.default_rng(seed).uniform(0.1, 10.0, (N, 1)))
    assert float(info_nce(a * k, b * scale, tau, None, sym)) == pytest.approx(float(info_nce(a, b, tau, None, sym)),
                                                                                rel=1e-9, abs=1e-12)


def test_info_nce_gradient_pulls_positives_together():
    a = torch.tensor(_np((4, 6), 0), requires_grad=True)
    b = torch.tensor(_np((4, 6), 1))
    loss = info_nce(a, b, 0.1)
    loss.backward()
    cos = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        stepped = a - 0.01 * a.grad
    assert float(info_nce(stepped, b, 0.1)) < loss.item()
    assert float(cos(stepped, b).mean()) > float(cos(a, b).mean().detach())


@pytest.mark.parametrize("tau", [0, 0.0, -0.1, float("nan"), float("inf"), True, "0.05", None])
def test_temperature_must_be_a_positive_finite_number(tau):
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(a, a, tau)
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveConfig(temperature=tau)


def test_info_nce_rejects_bad_shapes_and_types():
    a = torch.randn(3, 4)
    for bad_b in (torch.randn(2, 4), torch.randn(3, 5), torch.randn(3)):
        with pytest.raises(ValueError, match="a and b"):
            info_nce(a, bad_b)
    with pytest.raises(ValueError, match="a and b"):
        info_nce(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(ValueError, match="negatives"):
        info_nce(a, a, negatives=torch.randn(2, 5))
    with pytest.raises(TypeError, match="tensors"):
        info_nce(a.numpy(), a)
    with pytest.raises(TypeError, match="tensors"):
        info_nce(a, a, negatives=a.numpy())


def test_config_validates_pooling_and_dropout():
    assert ContrastiveConfig().pooling == "last" and not ContrastiveConfig().symmetric
    with pytest.raises(ValueError, match="pooling"):
        ContrastiveConfig(pooling="max")
    for p in (-0.1, 1.0, "0.1"):
        with pytest.raises(ValueError, match="dropout"):
            ContrastiveConfig(dropout=p)


# ---- pooling and embeddings ----------------------------------------------------------------------

@SET
@given(st.integers(1, 4), st.integers(1, 7), st.integers(1, 5), st.integers(0, 1000), st.booleans())
def test_pool_averages_or_picks_the_real_tokens_only(B, T, C, seed, left):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, B)
    mask = np.zeros((B, T))
    for i, n in enumerate(lengths):
        mask[i, slice(T - n, T) if left else slice(0, n)] = 1
    h = rng.normal(0, 1, (B, T, C))
    garbage = np.where(mask[..., None] == 1, h, rng.normal(0, 100, (B, T, C)))   # pads hold anything
    mean = np.stack([h[i][mask[i] == 1].mean(0) for i in range(B)])
    last = np.stack([h[i][np.nonzero(mask[i])[0].max()] for i in range(B)])
    for pooling, expected in (("mean", mean), ("last", last)):
        got = pool(torch.tensor(garbage), torch.tensor(mask, dtype=torch.long), pooling)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_pool_rejects_bad_input():
    h = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="pooling"):
        pool(h, None, "cls")
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        pool(h, torch.ones(2, 4), "mean")
    with pytest.raises(ValueError, match="no real token"):
        pool(h, torch.tensor([[1, 1, 0], [0, 0, 0]]), "mean")
    with pytest.raises(ValueError, match=r"\(batch, time, channels\)"):
        pool(torch.randn(2, 3), None)


@SET
@given(st.lists(st.lists(st.integers(2, 23), min_size=1, max_size=8), min_size=1, max_size=4),
       st.sampled_from(["mean", "last"]))
def test_embedding_does_not_depend_on_padding_or_batch(seqs, pooling):
    model = tiny_model(CFG)
    alone = torch.cat([embed(model, torch.tensor([s]), None, pooling) for s in seqs])
    for side in ("right", "left"):
        b = collate([{"idx": s} for s in seqs], pad_id=0, side=side)
        got = embed(model, b["idx"], b["attention_mask"], pooling)
        torch.testing.assert_close(got, alone, rtol=1e-10, atol=1e-10)


def test_embed_sentences_of_the_base_ignore_padding_side():
    from minift.pretrain import load_base
    model, tok = load_base()
    sents = ["Mara lives in Ashford.", "Tea.", "Everyone knows that Feno and Sebel are good friends."]
    for pooling in ("mean", "last"):
        r = embed_sentences(model, tok, sents, pooling, side="right")
        l_ = embed_sentences(model, tok, sents, pooling, side="left")
        one = torch.cat([embed_sentences(model, tok, [s], pooling) for s in sents])
        assert r.shape == (3, model.config.n_embd)
        torch.testing.assert_close(l_, r, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(one, r, rtol=1e-4, atol=1e-5)
    assert not model.training
    with pytest.raises(ValueError, match="non-empty list"):
        embed_sentences(model, tok, "Mara lives in Ashford.")
    with pytest.raises(ValueError, match="block_size"):
        embed_sentences(model, tok, ["word " * 300])


# ---- dropout as augmentation -----------------------------------------------------------------------

def test_dropout_is_on_inside_the_block_only_and_the_config_keeps_zero():
    model = tiny_model(CFG, dtype=torch.float32).train()
    idx = torch.randint(0, 24, (3, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(embed(model, idx), embed(model, idx))           # dropout 0: deterministic
        with dropout_enabled(model, 0.3):
            e1, e2 = embed(model, idx), embed(model, idx)
            assert not torch.allclose(e1, e2)                              # two different masks
            model.eval()
            assert torch.equal(embed(model, idx), embed(model, idx))       # eval: off even inside
            model.train()
        assert torch.equal(embed(model, idx), embed(model, idx))
    assert model.config.dropout == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(RuntimeError):
        with dropout_enabled(model, 0.5):
            raise RuntimeError("boom")
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(blk.attn.attn_dropout == 0.0 for blk in model.transformer.h)
    with pytest.raises(ValueError, match="dropout"):
        with dropout_enabled(model, 1.0):
            pass


# ---- data ---------------------------------------------------------------------------------------

def test_supervised_pairs_positives_share_a_fact_and_negatives_are_labelled_non_paraphrases():
    items = supervised_pairs("train")
    para = world.task("paraphrase", "train")
    non = {(p["sentence1"], p["sentence2"]) for p in para if p["label"] == 0}
    n_pairs = len(world.task("pairs", "train"))
    assert len(items) == n_pairs + sum(p["label"] for p in para)
    with_neg = [it for it in items if "negative" in it]
    assert len(with_neg) > 300
    assert all((it["anchor"], it["negative"]) in non for it in with_neg)
    assert all(fact_key(it["anchor"]) == fact_key(it["positive"]) for it in items[:n_pairs])
    train_sents = {s for it in items for s in it.values()}
    test_sents = {s for p in world.task("pairs", "test") for s in p.values()}
    assert not train_sents & test_sents
    unsup = unsupervised_sentences("train")
    assert {it["anchor"] for it in unsup} == train_sents and all(set(it) == {"anchor"} for it in unsup)
    assert not any("negative" in it for it in supervised_pairs("train", hard_negatives=False))


def test_pair_collate_orders_anchors_positives_negatives():
    items = [{"anchor": torch.tensor([5, 6]), "positive": torch.tensor([7]), "negative": torch.tensor([8, 9, 10])},
             {"anchor": torch.tensor([11])},                               # unsupervised: own positive
             {"anchor": torch.tensor([12]), "positive": torch.tensor([13, 14])}]
    b = pair_collate(pad_id=0)(items)
    assert b["n_pairs"] == 3 and b["idx"].shape == (7, 3)
    rows = [r[m.bool()].tolist() for r, m in zip(b["idx"], b["attention_mask"])]
    assert rows == [[5, 6], [11], [12], [7], [11], [13, 14], [8, 9, 10]]


def test_fact_key_groups_the_phrasings_of_one_fact():
    assert fact_key("Hisis works as a baker.") == (frozenset({"Hisis"}), frozenset({"baker"}))
    for split in ("train", "test"):
        pairs = world.task("pairs", split)
        assert all(fact_key(p["anchor"]) == fact_key(p["positive"]) for p in pairs)
    keys = {fact_key(p["anchor"]) for p in world.task("pairs", "test")}
    assert 10 < len(keys) < 180                  # several phrasings of each test fact


# ---- training -----------------------------------------------------------------------------------

class _CharTok:
    eos_id, pad_id = 1, 0

    def encode(self, s):
        return [2 + (ord(c) % 22) for c in s]


def test_train_contrastive_lowers_the_loss_deterministically_and_leaves_dropout_off():
    tok = _CharTok()
    items = [{"anchor": w, "positive": w.upper()} for w in ("ab", "cd", "ef", "gh", "ij", "kl")]
    runs = []
    for _ in range(2):
        model = tiny_model(CFG, dtype=torch.float32)
        cfg = ContrastiveConfig(temperature=0.1, dropout=0.1)
        h = train_contrastive(model, items, cfg, TrainConfig(steps=30, batch_size=6, lr=1e-2, progress=False), tok=tok)
        runs.append([r["loss"] for r in h])
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout)) and not model.training
    assert runs[0] == runs[1]
    assert np.mean(runs[0][-5:]) < np.mean(runs[0][:5])
    with pytest.raises(ValueError, match="no items"):
        train_contrastive(model, [], cfg, TrainConfig(steps=1), tok=tok)
    with pytest.raises(TypeError, match="TrainConfig"):
        train_contrastive(model, items, cfg, {"steps": 1}, tok=tok)
    assert len(encode_items(tok, items, 12)) == len(items)


# ---- evaluation ---------------------------------------------------------------------------------

@SET
@given(st.lists(st.tuples(st.integers(-20, 20), st.integers(0, 1)), min_size=1, max_size=30))
def test_best_threshold_beats_every_threshold_and_reports_its_own_accuracy(data):
    s = np.array([x / 10 for x, _ in data])
    y = np.array([lab for _, lab in data])
    t, acc = best_threshold(torch.tensor(s), torch.tensor(y))
    assert acc == pytest.approx(((s > t) == y).mean())
    assert threshold_accuracy(torch.tensor(s), torch.tensor(y), t) == pytest.approx(acc)
    for other in np.concatenate([s, s - 0.05, [-99.0, 99.0]]):           # every cut there is
        assert acc >= ((s > other) == y).mean() - 1e-12


def test_best_threshold_and_retrieval_reject_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        best_threshold(torch.tensor([0.1, 0.2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="equal-length"):
        best_threshold(torch.tensor([]), torch.tensor([]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        retrieval_at_1(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="groups"):
        retrieval_at_1(torch.randn(3, 4), torch.randn(3, 4), groups=[0, 1])


def test_retrieval_at_1_counts_own_positives_or_the_group():
    q = torch.eye(4)
    assert retrieval_at_1(q, q * 2.0) == 1.0
    shifted = q[[1, 0, 2, 3]]                                # queries 0 and 1 find each other's key
    assert retrieval_at_1(q, shifted) == 0.5
    assert retrieval_at_1(q, shifted, groups=["x", "x", "y", "z"]) == 1.0


def test_pair_kind_sorts_paraphrase_test_pairs_as_lesson_16_counts_them():
    from minift.evals import PAIR_KINDS, pair_kind
    pair = lambda s1, s2, label=0: {"sentence1": s1, "sentence2": s2, "label": label}   # noqa: E731
    assert pair_kind(pair("Ana lives in Rome.", "The river is long.", 1)) == "paraphrase"
    assert pair_kind(pair("Ana lives in Rome.", "Ana lives in Paris.")) == "near-copy negative"     # one value
    assert pair_kind(pair("Ana helps Bo.", "Bo helps Ana.")) == "near-copy negative"               # roles swapped
    assert pair_kind(pair("ANA lives in Rome", "Ana lives in Rome.")) == "near-copy negative"        # case, punctuation
    assert pair_kind(pair("Ana lives in Rome.", "Ana works in Paris.")) == "other negative"          # two words differ
    assert pair_kind(pair("Ana lives in Rome.", "The river is long.")) == "other negative"
    kinds = [pair_kind(ex) for ex in world.task("paraphrase", "test")]
    assert [kinds.count(k) for k in PAIR_KINDS] == [100, 40, 60]        # lesson 16's part 3 table header
