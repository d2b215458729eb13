"""Prefix tuning: length 0 is the base, a prefix built from real tokens is exactly attention to those
tokens, the cache and padding see the prefix as the uncached, unpadded forward does, only the prefix
trains, a head rides along in the file, folding, bad input. (Disable, files, removal:
tests/test_method_contract.py.)"""
import copy
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.heads import SequenceClassifier, TokenClassifier
from minift.model import GPT, GPTConfig
from minift.peft.common import count_adapter_parameters, disable_adapters
from minift.peft.io import load_adapter, save_adapter
from minift.peft.prefix import (PrefixConfig, PrefixEncoder, apply_prefix, fold_prefix, prefix_attention_mass,
                                prefix_parameter_count, prefix_state_dict)
from minift.train import TrainConfig, train
from strategies import tiny_model

pytestmark = pytest.mark.lesson07
CFG = GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, n_embd=8)

prefix_configs = st.builds(PrefixConfig, n_prefix=st.integers(1, 5), reparam=st.booleans(),
                           embed_dim=st.sampled_from([None, 3]), hidden=st.integers(1, 6))


def _idx(B=2, T=6, seed=0):
    return torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in prefix_state_dict(model).values():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def _set_plain_prefix(model, kv):
    """Load per-layer (k, v) pairs of shape (1, H, P, D) into a plain (reparam=False) prefix."""
    with torch.no_grad():
        model.prefix.kv.copy_(torch.stack([torch.stack([k[0], v[0]]) for k, v in kv]))   # (L, 2, H, P, D)


def test_length_0_prefix_is_the_base_model():
    """The only exact no-op of prefix tuning: through the prefix_kv door, P = 0 keys and values
    change nothing (a prefix of any length >= 1 takes attention away from the real tokens)."""
    model = tiny_model(CFG)
    H, D = CFG.n_head, CFG.head_dim
    empty = tuple((torch.zeros(1, H, 0, D, dtype=torch.float64),) * 2 for _ in range(CFG.n_layer))
    assert torch.allclose(model(_idx(), prefix_kv=empty).logits, model(_idx()).logits, atol=1e-12, rtol=0)


@settings(deadline=None, max_examples=15)
@given(P=st.integers(1, 5), T=st.integers(1, 6), B=st.integers(1, 3), seed=st.integers(0, 1000))
def test_a_prefix_built_from_real_tokens_is_attention_to_those_tokens_with_positions_restarting(P, T, B, seed):
    """The equality that holds. Run the base model on tokens p (1, P) at positions 0..P-1 and take
    each block's keys and values (its KV cache) as the prefix. Then, for real tokens x (B, T), the
    prefixed model's logits equal the base model's logits at the last T positions of the
    concatenation [p ; x], *when x's positions there are 0..T-1* (not P..P+T-1): the prefix adds
    keys/values and no position. We build that concatenation with inputs_embeds:
    W_te[p ; x] + W_pe[0..P-1, 0..T-1], minus the W_pe[0..P+T-1] that GPT.forward adds itself."""
    base = tiny_model(CFG)
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(0, CFG.vocab_size, (1, P), generator=g)
    x = torch.randint(0, CFG.vocab_size, (B, T), generator=g)
    cache = base(p, use_cache=True).past_kv                              # per block (1, H, P, D)
    model = copy.deepcopy(base)
    apply_prefix(model, PrefixConfig(n_prefix=P, reparam=False))
    _set_plain_prefix(model, cache)
    got = model(x).logits                                                # (B, T, V)

    wte, wpe = base.transformer.wte.weight.detach(), base.transformer.wpe.weight.detach()
    ids = torch.cat([p.expand(B, P), x], dim=1)                          # (B, P + T)
    pos = torch.cat([torch.arange(P), torch.arange(T)])                  # 0..P-1, then 0..T-1
    emb = wte[ids] + wpe[pos] - wpe[torch.arange(P + T)]
    want = base(inputs_embeds=emb).logits[:, P:]
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    # and it is *not* the plain concatenation, whose x sits at positions P..P+T-1
    assert not torch.allclose(got, base(ids).logits[:, P:], atol=1e-6)


@settings(deadline=None, max_examples=10)
@given(P=st.integers(1, 4), reparam=st.booleans(), seed=st.integers(0, 1000))
def test_init_ids_starts_from_the_base_models_own_keys_values_of_those_tokens(P, reparam, seed):
    """PrefixConfig(init_ids=p) starts the prefix at the keys/values the base computes for tokens p
    at positions 0..P-1 (plain: copied; reparameterised: W_2 solved by least squares, exact here as
    hidden = 6 >= P), so the model is then attention to those tokens, as in the test above."""
    base = tiny_model(CFG)
    ids = torch.randint(0, CFG.vocab_size, (P,), generator=torch.Generator().manual_seed(seed)).tolist()
    cache = base(torch.tensor([ids]), use_cache=True).past_kv
    model = copy.deepcopy(base)
    apply_prefix(model, PrefixConfig(n_prefix=P, reparam=reparam, hidden=6, init_ids=ids))
    for (k, v), (pk, pv) in zip(cache, model.prefix()):
        assert torch.allclose(pk, k, atol=1e-8) and torch.allclose(pv, v, atol=1e-8)
    manual = copy.deepcopy(base)
    apply_prefix(manual, PrefixConfig(n_prefix=P, reparam=False))
    _set_plain_prefix(manual, cache)
    assert torch.allclose(model(_idx()).logits, manual(_idx()).logits, atol=1e-8)


@settings(deadline=None, max_examples=10)
@given(cfg=prefix_configs, T=st.integers(1, 5), n_new=st.integers(1, 5), seed=st.integers(0, 100))
def test_cached_generation_equals_the_full_forward_with_a_prefix(cfg, T, n_new, seed):
    model = tiny_model(CFG)
    apply_prefix(model, cfg)
    _randomize(model, seed)
    idx = _idx(2, T, seed)
    new = model.generate(idx, n_new)                                     # KV cache (real tokens only)
    assert torch.equal(new, model.generate(idx, n_new, use_cache=False))
    seq = torch.cat([idx, new], dim=1)
    full = model(seq).logits                                             # one uncached forward
    past, step_logits = None, []
    for t in range(seq.shape[1]):                                        # token by token with the cache
        o = model(seq[:, t:t + 1], past_kv=past, use_cache=True)
        past = o.past_kv
        step_logits.append(o.logits[:, 0])
    assert torch.allclose(torch.stack(step_logits, 1), full, atol=1e-10, rtol=0)
    assert torch.equal(full[:, T - 1:-1].argmax(-1), new)                # greedy = the full forward's argmax


@settings(deadline=None, max_examples=15)
@given(cfg=prefix_configs, lengths=st.lists(st.integers(1, 7), min_size=1, max_size=3), seed=st.integers(0, 100))
def test_padding_on_either_side_gives_the_same_logits_for_real_tokens(cfg, lengths, seed):
    model = tiny_model(CFG)
    apply_prefix(model, cfg)
    _randomize(model, seed)
    T = max(lengths)
    rows = [_idx(1, n, seed + i)[0] for i, n in enumerate(lengths)]
    alone = [model(r[None]).logits[0] for r in rows]                     # each row unpadded, batch of 1
    for side in ("left", "right"):
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        am = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
            idx[i, sl], am[i, sl] = r, 1
        out = model(idx, attention_mask=am).logits
        for i, r in enumerate(rows):
            real = out[i][am[i].bool()]
            assert torch.allclose(real, alone[i], atol=1e-10, rtol=0), f"{side} padding, row {i}"


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    return [{"idx": torch.randint(0, 24, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(n)]


def _clf_loss(model, batch):
    return model(batch["idx"], labels=batch["labels"]).loss, {}


@pytest.mark.parametrize("reparam", [True, False])
def test_only_the_prefix_and_the_task_head_train_and_frozen_weights_stay_bit_identical(reparam):
    torch.manual_seed(0)
    clf = SequenceClassifier(GPT(CFG), 2)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    names = apply_prefix(clf, PrefixConfig(n_prefix=3, reparam=reparam, hidden=4))
    assert names == ["body.prefix"]
    mine = set(prefix_state_dict(clf))
    assert mine == ({"body.prefix.embedding", "body.prefix.mlp.0.weight", "body.prefix.mlp.0.bias",
                     "body.prefix.mlp.2.weight", "body.prefix.mlp.2.bias"} if reparam else {"body.prefix.kv"})
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable == mine | {"head.weight", "head.bias"}
    batch = _data()[0]
    _clf_loss(clf, {"idx": batch["idx"][None], "labels": batch["labels"][None]})[0].backward()
    assert {n for n, p in clf.named_parameters() if p.grad is not None} == trainable
    clf.zero_grad(set_to_none=True)
    start = {n: p.detach().clone() for n, p in clf.named_parameters() if n in mine}
    train(clf, _data(), TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, progress=False), loss_fn=_clf_loss)
    for n, p in clf.named_parameters():
        if n in before and n not in trainable:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
            assert p.grad is None, f"frozen {n} got a gradient"
    assert all(not torch.equal(p, start[n]) for n, p in clf.named_parameters() if n in mine)


def test_parameter_count_is_P_L_2C_plain_and_the_mlp_while_reparameterised():
    L, C, P, k, m = CFG.n_layer, CFG.n_embd, 4, 3, 5
    plain, rep = GPT(CFG), GPT(CFG)
    apply_prefix(plain, PrefixConfig(n_prefix=P, reparam=False))
    apply_prefix(rep, PrefixConfig(n_prefix=P, reparam=True, embed_dim=k, hidden=m))
    assert count_adapter_parameters(plain) == P * L * 2 * C == prefix_parameter_count(L, C, P)
    by_hand = P * k + (m * k + m) + (L * 2 * C * m + L * 2 * C)          # P', W_1, b_1, W_2, b_2
    assert count_adapter_parameters(rep) == by_hand == prefix_parameter_count(L, C, P, True, k, m)
    fold_prefix(rep)
    assert count_adapter_parameters(rep) == P * L * 2 * C


@settings(deadline=None, max_examples=10)
@given(P=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4), seed=st.integers(0, 100))
def test_the_reparameterisation_is_W2_tanh_W1_P_plus_b_reshaped_per_layer_key_value_head(P, k, m, seed):
    model = tiny_model(CFG)
    apply_prefix(model, PrefixConfig(n_prefix=P, embed_dim=k, hidden=m))
    _randomize(model, seed)
    enc = model.prefix
    E, W1, b1, W2, b2 = (t.detach() for t in (enc.embedding, enc.mlp[0].weight, enc.mlp[0].bias,
                                               enc.mlp[2].weight, enc.mlp[2].bias))
    rows = torch.tanh(E @ W1.T + b1) @ W2.T + b2                         # (P, L 2 C): one row per virtual token
    L, H, D, C = CFG.n_layer, CFG.n_head, CFG.head_dim, CFG.n_embd
    kv = enc()
    for layer in range(L):
        for j, t in enumerate(kv[layer]):                                # j = 0 keys, 1 values
            for h in range(H):
                col = layer * 2 * C + j * C + h * D                      # row layout: layer, k|v, head, dim
                assert torch.allclose(t[0, h], rows[:, col:col + D], atol=1e-12)


def test_classifier_with_a_prefix_saves_and_loads_with_its_head(tmp_path):
    torch.manual_seed(0)
    clf = TokenClassifier(GPT(CFG), 3).eval()
    body = {k: v.clone() for k, v in clf.body.state_dict().items()}
    apply_prefix(clf, PrefixConfig(n_prefix=2))
    _randomize(clf)
    with torch.no_grad():
        clf.head.weight.normal_()
    y = clf(_idx()).logits
    save_adapter(clf, tmp_path)
    fresh = TokenClassifier(GPT(CFG), 3).eval()
    fresh.body.load_state_dict(body)
    assert load_adapter(fresh, tmp_path) == ["body.prefix"]
    assert torch.equal(fresh(_idx()).logits, y)


@settings(deadline=None, max_examples=10)
@given(P=st.integers(1, 4), hidden=st.integers(1, 6), seed=st.integers(0, 100))
def test_folding_the_mlp_gives_identical_outputs_and_saves_the_folded_form(P, hidden, seed):
    import tempfile
    model = tiny_model(CFG)
    apply_prefix(model, PrefixConfig(n_prefix=P, hidden=hidden))
    _randomize(model, seed)
    y, gen = model(_idx()).logits, model.generate(_idx(), 4)
    fold_prefix(model)
    assert not model.prefix.reparam and set(prefix_state_dict(model)) == {"prefix.kv"}
    assert torch.equal(model(_idx()).logits, y)
    assert torch.equal(model.generate(_idx(), 4), gen)
    with tempfile.TemporaryDirectory() as d:
        save_adapter(model, d)
        assert json.load(open(f"{d}/adapter.json"))["methods"][0]["config"]["reparam"] is False
        fresh = tiny_model(CFG)
        load_adapter(fresh, d)
        assert torch.equal(fresh(_idx()).logits, y)


def test_attention_on_the_prefix_is_a_share_and_follows_the_keys():
    model = tiny_model(CFG)
    apply_prefix(model, PrefixConfig(n_prefix=2, reparam=False))
    mass = prefix_attention_mass(model, _idx())
    assert mass.shape == (CFG.n_layer, CFG.n_head) and bool(((mass > 0) & (mass < 1)).all())
    with torch.no_grad():
        model.prefix.kv[:, 0].zero_()                                    # keys 0: score 0 for every query
    # a query t of a 1-token sequence sees the prefix (2 keys, score 0) and itself (score s):
    # mass = 2 / (2 + exp(s))
    x = _idx(1, 1)
    out = model(x, output_hidden_states=True)
    for layer in range(CFG.n_layer):
        blk = model.transformer.h[layer]
        q, k, _ = blk.attn.c_attn(blk.ln_1(out.hidden_states[layer])).split(CFG.n_embd, dim=2)
        q, k = q.view(CFG.n_head, CFG.head_dim), k.view(CFG.n_head, CFG.head_dim)
        s = (q * k).sum(-1) / CFG.head_dim ** 0.5
        assert torch.allclose(prefix_attention_mass(model, x)[layer], 2 / (2 + torch.exp(s)), atol=1e-12)


# ---- bad input --------------------------------------------------------------------------------

def test_bad_config_types_and_fields():
    with pytest.raises(TypeError, match="reparam"):
        PrefixConfig(reparam="yes")
    with pytest.raises(TypeError, match="PrefixConfig"):
        apply_prefix(GPT(CFG), {"n_prefix": 3})
    with pytest.raises(ValueError, match="unknown PrefixConfig field"):
        PrefixConfig.from_dict({"n_prefix": 3, "length": 4})


def test_prefix_plus_sequence_must_fit_block_size():
    """The rule: n_prefix + (past + new tokens) <= block_size, at apply time for one token, and at
    every forward (so also while generating)."""
    with pytest.raises(ValueError, match=r"n_prefix=16 \+ sequence length \(at least 1\) must fit block_size=16"):
        apply_prefix(GPT(CFG), PrefixConfig(n_prefix=16))
    model = GPT(CFG).eval()
    apply_prefix(model, PrefixConfig(n_prefix=10))
    model(_idx(1, 6))                                                     # 10 + 6 = 16 fits
    with pytest.raises(ValueError, match=r"n_prefix=10 \+ sequence length 7 must fit block_size=16"):
        model(_idx(1, 7))
    with pytest.raises(ValueError, match=r"4 \+ max_new_tokens 5 \+ 10 positions taken by a prefix"):
        model.generate(_idx(1, 4), 5)                                     # 4 + 5 <= 16, but the prefix counts
    past = model(_idx(1, 5), use_cache=True).past_kv
    with pytest.raises(ValueError, match=r"sequence length 7"):
        model(_idx(1, 2), past_kv=past)


def test_applying_twice_or_passing_prefix_kv_too_is_refused():
    model = GPT(CFG)
    apply_prefix(model, PrefixConfig(n_prefix=2))
    with pytest.raises(ValueError, match="exists already"):
        apply_prefix(model, PrefixConfig(n_prefix=2))
    H, D = CFG.n_head, CFG.head_dim
    extra = tuple((torch.zeros(1, H, 1, D),) * 2 for _ in range(CFG.n_layer))
    with pytest.raises(ValueError, match="prefix_kv was passed to a model that carries a prefix"):
        model(_idx(), prefix_kv=extra)
    with pytest.raises(ValueError, match=r"init_ids holds token id 99 outside \[0, vocab_size=24\)"):
        apply_prefix(GPT(CFG), PrefixConfig(n_prefix=2, init_ids=[1, 99]))
    with pytest.raises(ValueError, match="exactly one GPT"):
        apply_prefix(torch.nn.Linear(2, 2), PrefixConfig())


def test_load_refuses_a_different_base_and_rolls_back(tmp_path):
    model = GPT(CFG)
    apply_prefix(model, PrefixConfig(n_prefix=2))
    save_adapter(model, tmp_path)
    other = GPT(GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="different base model"):
        load_adapter(other, tmp_path)
    assert not hasattr(other, "prefix") and not other._forward_pre_hooks
    assert isinstance(model.prefix, PrefixEncoder)


def test_generate_counts_the_prefix_against_the_context_up_front():
    model = tiny_model(CFG, seed=3)
    idx = _idx(2, 6, seed=1)
    apply_prefix(model, PrefixConfig(n_prefix=4, reparam=False))
    with pytest.raises(ValueError, match="4 positions taken by a prefix or soft prompt"):
        model.generate(idx, 10)                                         # 4 + 6 + 10 > 16
    assert model.generate(idx, 6).shape == (2, 6)                       # 4 + 6 + 6 = 16 fits
    with disable_adapters(model):
        assert model.generate(idx, 10).shape == (2, 10)
