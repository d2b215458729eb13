"""Distillation (minift/align/distill.py): the soft-target divergences against float64 formulas,
0 for identical distributions and never negative, the documented T² gradient scale (and its
high-temperature limit, logit matching), JSD at its β endpoints and its bound, masks, Hinton's
α mixture, offline (cached) = online teacher, sequence-level labels, the projected-embedding
init, determinism, and bad inputs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minift.align.distill import (DistillConfig, collate_with_teacher, distill_loss, distill_loss_fn,
                                  divergence_per_position, hard_loss, init_from_teacher, kd_loss, pca_basis,
                                  teacher_labels, train_student, with_teacher_logits)
from minift.evals import transfer_set
from minift.heads import TokenClassifier
from minift.model import GPT, GPTConfig
from minift.tasks import collate_fn
from minift.train import TrainConfig
from strategies import tiny_model

pytestmark = pytest.mark.lesson17
DIVS = ("forward", "reverse", "jsd")


@st.composite
def logit_pairs(draw, max_n=6, max_k=6, scale=5.0):
    """(s, t, mask) float64: (N, K), (N, K), (N,) with at least one 1."""
    n, k = draw(st.integers(1, max_n)), draw(st.integers(2, max_k))
    el = st.floats(-scale, scale, allow_nan=False, width=64)
    s = draw(hnp.arrays(np.float64, (n, k), elements=el))
    t = draw(hnp.arrays(np.float64, (n, k), elements=el))
    mask = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    mask[draw(st.integers(0, n - 1))] = 1
    return s, t, mask


def np_log_softmax(x):
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(a, b):
    """KL(a ‖ b) per row from probabilities."""
    return (a * (np.log(a) - np.log(b))).sum(-1)


def probs(x, T):
    return np.exp(np_log_softmax(x / T))


def loss(s, t, mask=None, **kw):
    m = None if mask is None else torch.tensor(mask)
    return float(distill_loss(torch.tensor(s), torch.tensor(t), m, **kw))


# ---- values: float64 formulas ---------------------------------------------------------------------

@settings(max_examples=40)
@given(x=logit_pairs(), T=st.sampled_from([0.5, 1.0, 3.0]), beta=st.sampled_from([0.2, 0.5, 0.7]))
def test_each_divergence_matches_its_textbook_formula_over_the_masked_rows(x, T, beta):
    s, t, mask = x
    p, q = probs(t, T), probs(s, T)
    m = beta * p + (1 - beta) * q
    per_row = {"forward": np_kl(p, q), "reverse": np_kl(q, p),
               "jsd": beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)}
    for div in DIVS:
        expected = T * T * per_row[div][mask == 1].mean()               # mean over the kept rows only
        assert loss(s, t, mask, temperature=T, divergence=div, beta=beta) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=40)
@given(x=logit_pairs(), T=st.sampled_from([0.5, 1.0, 4.0]), div=st.sampled_from(DIVS),
       beta=st.floats(0.0, 1.0), shift=st.floats(-50, 50))
def test_zero_for_identical_distributions_and_never_negative(x, T, div, beta, shift):
    s, t, mask = x
    # t + shift is the same distribution as t (softmax ignores a constant per row)
    assert abs(loss(t + shift, t, mask, temperature=T, divergence=div, beta=beta)) < 1e-10
    assert loss(s, t, mask, temperature=T, divergence=div, beta=beta) >= -1e-12


@settings(max_examples=30)
@given(x=logit_pairs())
def test_different_distributions_give_a_positive_loss(x):
    s, t, _ = x
    s = s.copy()
    s[0, 0] += 3.0                                   # row 0 now differs from t[0] unless it already did
    t = t.copy()
    t[0] = 0.0
    for div in DIVS:
        assert loss(s[:1], t[:1], divergence=div) > 0


# ---- the gradient scale -------------------------------------------------------------------------

@settings(max_examples=40)
@given(x=logit_pairs(), T=st.sampled_from([0.5, 1.0, 2.0, 8.0]))
def test_forward_kl_gradient_is_T_times_q_minus_p(x, T):
    """∂/∂s [T² KL(p ‖ q)] = T² (1/T)(q - p) = T (q - p) per row, divided by the N rows of the mean."""
    s, t, _ = x
    st_ = torch.tensor(s, requires_grad=True)
    distill_loss(st_, torch.tensor(t), temperature=T).backward()
    expected = T * (probs(s, T) - probs(t, T)) / s.shape[0]
    np.testing.assert_allclose(st_.grad.numpy(), expected, rtol=1e-9, atol=1e-13)


@settings(max_examples=30)
@given(x=logit_pairs(), T=st.sampled_from([0.5, 1.0, 2.0, 8.0]))
def test_reverse_kl_gradient_matches_its_derivation(x, T):
    """KL(q ‖ p), q = softmax(s/T): ∂/∂s_j = (1/T) q_j (log q_j/p_j - KL(q ‖ p)); times T²: T q_j (... )."""
    s, t, _ = x
    st_ = torch.tensor(s, requires_grad=True)
    distill_loss(st_, torch.tensor(t), temperature=T, divergence="reverse").backward()
    p, q = probs(t, T), probs(s, T)
    kl = np_kl(q, p)[:, None]
    expected = T * q * (np.log(q) - np.log(p) - kl) / s.shape[0]
    np.testing.assert_allclose(st_.grad.numpy(), expected, rtol=1e-8, atol=1e-12)


@settings(max_examples=30)
@given(x=logit_pairs(scale=2.0))
def test_at_high_temperature_the_gradient_is_centred_logit_matching(x):
    """Hinton et al. sec. 2.1: for T ≫ |logits|, T (q - p) ≈ ((s - s̄) - (t - t̄)) / K, independent of T."""
    s, t, _ = x
    K, T = s.shape[1], 1e4
    st_ = torch.tensor(s, requires_grad=True)
    distill_loss(st_, torch.tensor(t), temperature=T).backward()
    centred = ((s - s.mean(1, keepdims=True)) - (t - t.mean(1, keepdims=True))) / K / s.shape[0]
    np.testing.assert_allclose(st_.grad.numpy(), centred, atol=1e-3 * max(1.0, np.abs(centred).max()))


def test_the_gradient_of_the_soft_term_has_the_same_size_at_every_temperature():
    """What the T² is for: without it the gradient shrinks like 1/T² at high T, with it it stays put."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 9, generator=g, dtype=torch.float64), 2 * torch.randn(64, 9, generator=g, dtype=torch.float64)
    norms = []
    for T in (4.0, 16.0, 64.0):
        s_ = s.clone().requires_grad_(True)
        distill_loss(s_, t, temperature=T).backward()
        norms.append(float(s_.grad.norm()))
    assert max(norms) / min(norms) < 1.1                   # while 1/T² would differ 256-fold


def test_no_gradient_reaches_the_teacher():
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    for div in DIVS:
        distill_loss(s, t, temperature=2.0, divergence=div).backward()
    assert t.grad is None and s.grad is not None


# ---- JSD at its endpoints ------------------------------------------------------------------------

@settings(max_examples=30)
@given(x=logit_pairs(), T=st.sampled_from([1.0, 2.0]))
@example(x=(np.array([[5.0, -3.0]]), np.array([[0.0, 0.0]]), np.array([1])), T=1.0)   # q small: a large χ²
@example(x=(np.array([[0.0, 0.0]]), np.array([[5.0, -3.0]]), np.array([1])), T=1.0)
def test_jsd_endpoints_are_forward_and_reverse_kl_and_its_limits_agree(x, T):
    s, t, mask = x
    fwd = loss(s, t, mask, temperature=T, divergence="forward")
    rev = loss(s, t, mask, temperature=T, divergence="reverse")
    assert loss(s, t, mask, temperature=T, divergence="jsd", beta=0.0) == pytest.approx(fwd, rel=1e-12, abs=1e-15)
    assert loss(s, t, mask, temperature=T, divergence="jsd", beta=1.0) == pytest.approx(rev, rel=1e-12, abs=1e-15)
    # JSD_β / β -> KL(p ‖ q) and JSD_β / (1 - β) -> KL(q ‖ p); the gap is O(β χ²(p, q)), and χ² grows like
    # 1 / min q: so a small β (here at most 1e-8 x 1e5 = 1e-3 relative, for these logits)
    eps = 1e-8
    assert loss(s, t, mask, temperature=T, divergence="jsd", beta=eps) / eps == pytest.approx(fwd, rel=2e-3, abs=1e-6)
    assert loss(s, t, mask, temperature=T, divergence="jsd", beta=1 - eps) / eps == pytest.approx(rev, rel=2e-3, abs=1e-6)


@settings(max_examples=40)
@given(x=logit_pairs(scale=20.0), beta=st.floats(0.01, 0.99))
def test_jsd_is_bounded_by_the_entropy_of_beta_and_symmetric_at_one_half(x, beta):
    s, t, _ = x
    d = divergence_per_position(torch.tensor(s), torch.tensor(t), 1.0, "jsd", beta).numpy()
    h = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)   # reached when p and q do not overlap
    assert (d <= h + 1e-12).all() and (d >= -1e-12).all()
    a = divergence_per_position(torch.tensor(s), torch.tensor(t), 1.0, "jsd", 0.5)
    b = divergence_per_position(torch.tensor(t), torch.tensor(s), 1.0, "jsd", 0.5)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---- masks ---------------------------------------------------------------------------------------

@settings(max_examples=30)
@given(x=logit_pairs(), junk=st.floats(-100, 100), div=st.sampled_from(DIVS))
def test_masked_positions_change_nothing_and_get_no_gradient(x, junk, div):
    s, t, mask = x
    s2, t2 = s.copy(), t.copy()
    s2[mask == 0] = junk                                  # anything at the masked-out rows
    t2[mask == 0] = -junk
    assert loss(s2, t2, mask, temperature=2.0, divergence=div) == pytest.approx(
        loss(s[mask == 1], t[mask == 1], temperature=2.0, divergence=div), rel=1e-12, abs=1e-14)
    st_ = torch.tensor(s2, requires_grad=True)
    distill_loss(st_, torch.tensor(t2), torch.tensor(mask), temperature=2.0, divergence=div).backward()
    assert not st_.grad[torch.tensor(mask) == 0].any()


def test_a_3d_batch_with_a_padding_mask_is_the_mean_over_real_tokens():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 7, generator=g, dtype=torch.float64), torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    flat = distill_loss(s[am.bool()], t[am.bool()], temperature=3.0)  # the 8 real tokens, (8, 7)
    torch.testing.assert_close(distill_loss(s, t, am, temperature=3.0), flat)


# ---- Hinton's mixture ----------------------------------------------------------------------------

@settings(max_examples=30)
@given(x=logit_pairs(), alpha=st.sampled_from([0.0, 0.3, 1.0]), T=st.sampled_from([1.0, 2.0]), data=st.data())
def test_kd_loss_is_alpha_soft_plus_one_minus_alpha_cross_entropy(x, alpha, T, data):
    s, t, mask = x
    K = s.shape[1]
    labels = np.array([data.draw(st.integers(0, K - 1)) if m else -100 for m in mask])
    got = float(kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(labels), torch.tensor(mask), alpha, T))
    keep = mask == 1
    soft = T * T * np_kl(probs(t[keep], T), probs(s[keep], T)).mean()
    hard = -np_log_softmax(s[keep])[np.arange(keep.sum()), labels[keep]].mean()
    assert got == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=1e-9, abs=1e-12)


def test_hard_loss_ignores_minus_100():
    s = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([2, -100, 0, -100])
    torch.testing.assert_close(hard_loss(s, y), F.cross_entropy(s[[0, 2]], y[[0, 2]]))


# ---- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, err, match", [
    (lambda s, t: distill_loss(s, t[:, :3]), ValueError, "same shape"),
    (lambda s, t: distill_loss(s[:, :1], t[:, :1]), ValueError, "K >= 2"),
    (lambda s, t: distill_loss(s.long(), t), TypeError, "floating-point"),
    (lambda s, t: distill_loss(s, t, temperature=0.0), ValueError, "temperature"),
    (lambda s, t: distill_loss(s, t, temperature=float("nan")), ValueError, "temperature"),
    (lambda s, t: distill_loss(s, t, divergence="kl"), ValueError, "divergence='kl'"),
    (lambda s, t: distill_loss(s, t, divergence="jsd", beta=1.5), ValueError, "beta=1.5"),
    (lambda s, t: distill_loss(s, t, torch.zeros(2)), ValueError, "no position"),
    (lambda s, t: distill_loss(s, t, torch.tensor([0.5, 1.0])), ValueError, "only 0 and 1"),
    (lambda s, t: distill_loss(s, t, torch.ones(3)), ValueError, r"mask must have the logits' shape"),
    (lambda s, t: hard_loss(s, torch.tensor([0.0, 1.0])), TypeError, "integer"),
    (lambda s, t: hard_loss(s, torch.tensor([0, 4])), ValueError, r"\[0, K=4\)"),
    (lambda s, t: hard_loss(s, torch.tensor([-100, -100])), ValueError, "all -100"),
    (lambda s, t: hard_loss(s, torch.tensor([0, 1, 2])), ValueError, "labels must have shape"),
    (lambda s, t: kd_loss(s, t, torch.tensor([0, 1]), alpha=1.2), ValueError, "alpha=1.2"),
])
def test_bad_inputs_raise_in_the_users_terms(call, err, match):
    s, t = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(err, match=match):
        call(s, t)


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=-0.1), "alpha"), (dict(temperature=-1.0), "temperature"), (dict(divergence="js"), "divergence"),
    (dict(beta=2.0), "beta"), (dict(mask="response"), "mask='response'")])
def test_distill_config_is_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(**kw)


def test_init_and_pca_reject_mismatched_models():
    teacher = tiny_model(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="vocab_size=24 must equal the teacher's vocab_size=20"):
        init_from_teacher(tiny_model(GPTConfig(vocab_size=24, block_size=8, n_layer=1, n_head=2, n_embd=4)), teacher)
    with pytest.raises(ValueError, match="n_embd=16 must be <="):
        init_from_teacher(tiny_model(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)), teacher)
    with pytest.raises(ValueError, match=r"dim=9 must be an int in \[1, min\(N, C\)=8\]"):
        pca_basis(teacher.transformer.wte.weight, 9)


# ---- the student's init ---------------------------------------------------------------------------

def test_projected_init_keeps_the_teachers_token_geometry():
    teacher = tiny_model(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    E = teacher.transformer.wte.weight.detach()
    Ec = E - E.mean(0)
    full = tiny_model(GPTConfig(vocab_size=20, block_size=6, n_layer=1, n_head=2, n_embd=8), seed=3)
    assert init_from_teacher(full, teacher) == pytest.approx(1.0)   # c = C: a rotation keeps everything
    S = full.transformer.wte.weight.detach()
    Sc = S - S.mean(0)
    torch.testing.assert_close(Sc @ Sc.T, Ec @ Ec.T)                # same inner products between tokens
    P = full.transformer.wpe.weight.detach()                        # positions: the same rotation, first 6 rows
    W = teacher.transformer.wpe.weight.detach()[:6]
    torch.testing.assert_close(P @ S.T, W @ E.T)
    narrow = tiny_model(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=4), seed=3)
    kept = init_from_teacher(narrow, teacher)
    ev = torch.linalg.svdvals(Ec) ** 2                              # the variance the top 4 directions hold
    assert kept == pytest.approx(float(ev[:4].sum() / ev.sum()), rel=1e-9)


# ---- training: offline = online, sequence-level labels, determinism ------------------------------

CFG = GPTConfig(vocab_size=24, block_size=12, n_layer=1, n_head=2, n_embd=8)


def _tagging_items(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        T = int(torch.randint(3, 9, (1,), generator=g))
        idx = torch.randint(1, CFG.vocab_size, (T,), generator=g)
        labels = torch.randint(0, 3, (T,), generator=g)
        labels[torch.rand(T, generator=g) < 0.3] = -100              # like sub-word continuations
        labels[0] = 1
        items.append({"idx": idx, "labels": labels})
    return items


def _clf(seed, cfg=CFG):
    torch.manual_seed(seed)
    return TokenClassifier(GPT(cfg), 3).double()


@pytest.mark.parametrize("mask", ["labels", "real"])
def test_cached_teacher_logits_give_the_online_loss(mask):
    teacher, student = _clf(0), _clf(1)
    items, col = _tagging_items(), collate_fn(0)
    cached = with_teacher_logits(teacher, items, col, batch_size=5)
    cfg = DistillConfig(alpha=0.7, temperature=3.0, mask=mask)
    online = distill_loss_fn(teacher, cfg)(student, col(items[:7]))[0]
    offline = distill_loss_fn(None, cfg)(student, collate_with_teacher(col)(cached[:7]))[0]
    torch.testing.assert_close(offline, online)


def test_teacher_labels_replace_only_the_labelled_positions_with_the_teachers_argmax():
    teacher, items, col = _clf(0), _tagging_items(), collate_fn(0)
    out = teacher_labels(teacher, items, col, batch_size=4)
    for it, o in zip(items, out):
        pred = teacher(it["idx"][None]).logits[0].argmax(-1)
        keep = it["labels"] != -100
        assert torch.equal(o["labels"][keep], pred[keep]) and (o["labels"][~keep] == -100).all()
        assert torch.equal(o["idx"], it["idx"])


def test_a_student_learns_from_the_teacher_alone_and_training_is_deterministic():
    teacher, items, col = _clf(0), _tagging_items(), collate_fn(0)
    cfg = DistillConfig(alpha=1.0, temperature=2.0)
    tc = TrainConfig(steps=40, batch_size=6, lr=1e-2, progress=False, seed=3)
    runs = []
    for _ in range(2):
        student = _clf(1)
        b = col(items)
        before = float(distill_loss_fn(teacher, cfg)(student, b)[0].detach())
        train_student(student, items, cfg, tc, teacher=teacher, collate_fn=col)
        runs.append((student, before, float(distill_loss_fn(teacher, cfg)(student, b)[0].detach())))
    (a, before, after), (b_, _, _) = runs
    assert after < 0.5 * before                               # it moves towards the teacher
    for pa, pb in zip(a.parameters(), b_.parameters()):
        assert torch.equal(pa, pb)                            # same seed, same student, bit for bit
    with pytest.raises(TypeError, match="DistillConfig"):
        train_student(a, items, {"alpha": 1.0}, tc, teacher=teacher, collate_fn=col)
    with pytest.raises(TypeError, match="TrainConfig"):
        train_student(a, items, cfg, {"steps": 40}, teacher=teacher, collate_fn=col)


def test_transfer_set_is_corpus_sentences_tagged_by_the_teacher_at_each_words_first_token():
    from minift.pretrain import BASE_DIR
    from minift.tokenizer import Tokenizer
    tok = Tokenizer.load(str(BASE_DIR / "tokenizer.json"))
    torch.manual_seed(0)
    teacher = TokenClassifier(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                                            n_embd=8)), 9)
    col = collate_fn(tok.pad_id)
    items = transfer_set(teacher, tok, col, n=5, max_words=12)
    assert len(items) == 5
    for it in items:
        text = tok.decode(it["idx"].tolist())
        assert 4 <= len(text.split()) <= 12 + 3                       # words, punctuation split off
        pred = teacher(it["idx"][None]).logits[0].argmax(-1)
        keep = it["labels"] != -100
        assert keep[0] and torch.equal(it["labels"][keep], pred[keep])
    assert [it["idx"].tolist() for it in transfer_set(teacher, tok, col, n=5, max_words=12)] == \
        [it["idx"].tolist() for it in items]                          # deterministic for a seed
    some = tok.decode(items[0]["idx"].tolist()).split()[0]
    assert all(some not in tok.decode(it["idx"].tolist()).split()
               for it in transfer_set(teacher, tok, col, n=5, max_words=12, exclude=[some]))
    with pytest.raises(ValueError, match="n=0 must be a positive int"):
        transfer_set(teacher, tok, col, n=0)


@pytest.mark.parametrize("mask", ["labels", "real"])
def test_language_model_distillation_masks_response_or_real_tokens(mask):
    """For an LM the batch has targets (-100 on the prompt and padding): mask="labels" distils on the
    response tokens only, mask="real" on every real token, padding never."""
    lm = GPTConfig(vocab_size=24, block_size=12, n_layer=1, n_head=2, n_embd=8)
    teacher, student = tiny_model(lm, seed=0), tiny_model(lm, seed=1)
    idx = torch.randint(0, 24, (2, 6), generator=torch.Generator().manual_seed(0))
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    targets = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, 7, 8, -100, -100, -100]])
    batch = {"idx": idx, "attention_mask": am, "targets": targets}
    cfg = DistillConfig(alpha=0.6, temperature=2.0, mask=mask)
    got = distill_loss_fn(teacher, cfg)(student, batch)[0]
    s = student(idx, attention_mask=am).logits.detach().numpy()
    t = teacher(idx, attention_mask=am).logits.detach().numpy()
    where = (targets != -100) if mask == "labels" else am.bool()
    rows = where.numpy()
    soft = 4.0 * np_kl(probs(t[rows], 2.0), probs(s[rows], 2.0)).mean()
    keep = (targets != -100).numpy()
    hard = -np_log_softmax(s[keep])[np.arange(keep.sum()), targets.numpy()[keep]].mean()
    assert float(got.detach()) == pytest.approx(0.6 * soft + 0.4 * hard, rel=1e-9)


def test_accumulated_distillation_takes_one_mean_over_the_steps_labels():
    """mask="labels": both terms are means over labelled positions, so k micro-batches whose labels keep
    different numbers of positions take the same step as one batch of all their rows (train weighs them
    by their counted labels). With 1/k weights instead, the rows of the sparse micro-batch count for more."""
    from minift.train import train
    cfg = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 16, (4, 8), generator=g)
    labels = torch.randint(0, 16, (4, 8), generator=g)
    for row, keep in enumerate((1, 2, 4, 8)):        # rows keep 1, 2, 4, 8 labels: however two micro-batches
        labels[row, keep:] = -100                    # of 2 rows split them, their counts differ
    data = [{"idx": i, "labels": y} for i, y in zip(idx, labels)]
    torch.manual_seed(1)
    teacher = GPT(cfg).double()
    loss_fn = distill_loss_fn(teacher, DistillConfig(alpha=0.5, temperature=2.0, mask="labels"))
    assert callable(getattr(loss_fn, "token_mean", None))
    assert not hasattr(distill_loss_fn(teacher, DistillConfig(mask="real")), "token_mean")   # soft and hard count differently

    def step(bs, acc):
        torch.manual_seed(0)
        m = GPT(cfg).double()
        before = [p.detach().clone() for p in m.parameters()]
        train(m, data, TrainConfig(steps=1, batch_size=bs, grad_accum=acc, lr=1.0, warmup_steps=0, grad_clip=0,
                                   progress=False), loss_fn=loss_fn, optimizer=torch.optim.SGD(m.parameters(), lr=1.0))
        return [p0 - p.detach() for p0, p in zip(before, m.parameters())]

    for a, c in zip(step(4, 1), step(2, 2)):
        torch.testing.assert_close(c, a, atol=1e-12, rtol=1e-9)
