"""LoReFT: W = R, b = 0 is the base for any R; R stays orthonormal while training; the edit lives in the
row space of R; only the named positions move (left or right padding); generation semantics; a head
rides along in the file; frozen weights stay frozen; bad input. (No-op at init, disable, files,
removal: tests/test_method_contract.py.)"""
import json

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given, settings, strategies as st

from minift.heads import SequenceClassifier, TokenClassifier
from minift.model import GPT, GPTConfig
from minift.peft.common import count_adapter_parameters
from minift.peft.io import load_adapter, save_adapter
from minift.peft.reft import (ReFTConfig, apply_reft, orthonormal_rows, reft_layers, reft_parameter_count,
                              reft_state_dict)
from minift.train import TrainConfig, train
from strategies import tiny_model

pytestmark = pytest.mark.lesson10
CFG = GPTConfig(vocab_size=24, block_size=12, n_layer=2, n_head=2, n_embd=8)
CFG3 = GPTConfig(vocab_size=24, block_size=12, n_layer=3, n_head=2, n_embd=8)

reft_configs = st.builds(
    ReFTConfig, r=st.integers(1, 8), layers=st.one_of(st.none(), st.lists(st.integers(-2, 1), min_size=1, max_size=2)),
    positions=st.sampled_from(["prompt", "all"]), first=st.integers(0, 3), last=st.integers(1, 3))


def _idx(seed=0, B=2, T=6):
    return torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomize(model, seed=1):
    """Random R_raw, W and b: a real edit (R stays orthonormal: it is computed from R_raw)."""
    g = torch.Generator().manual_seed(seed)
    for p in reft_state_dict(model).values():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def _real_positions(mask_row):
    return [t for t, m in enumerate(mask_row.tolist()) if m]


def _expected_edits(mask, first, last):
    """By hand: the first `first` and the last `last` real tokens of each row, as a (B, T) bool."""
    out = torch.zeros(mask.shape, dtype=torch.bool)
    for b in range(mask.shape[0]):
        real = _real_positions(mask[b])
        for t in real[:first] + real[len(real) - min(last, len(real)):]:
            out[b, t] = True
    return out


# ---- the no-op start, and the switch ----------------------------------------------------------

@settings(deadline=None, max_examples=15)
@given(cfg=reft_configs, seed=st.integers(0, 2 ** 16))
def test_w_equals_r_and_b_zero_is_the_base_for_any_R(cfg, seed):
    model = tiny_model(CFG)
    base = model(_idx()).logits
    apply_reft(model, cfg)
    _randomize(model, seed)                                            # any R (and any W, b) ...
    with torch.no_grad():
        for _, m in reft_layers(model):
            m.W.copy_(orthonormal_rows(m.R_raw))                       # ... then W = R, b = 0
            m.b.zero_()
    assert torch.equal(model(_idx()).logits, base)


def test_parameter_count_is_r_2C_plus_1_per_intervention():
    model = GPT(CFG)
    names = apply_reft(model, ReFTConfig(r=3, layers=[-1], tied=False, first=2, last=2))
    assert names == ["transformer.h.1.reft_first", "transformer.h.1.reft_last"]
    per = 3 * 8 + 3 * 8 + 3                                            # R (r, C), W (r, C), b (r,)
    assert reft_parameter_count(8, 3) == per
    assert count_adapter_parameters(model) == model.num_parameters(trainable_only=True) == 2 * per


# ---- the maths, inside the model ------------------------------------------------------------

@settings(deadline=None, max_examples=20)
@given(layer=st.integers(0, 1), r=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_the_edit_lies_in_the_row_space_of_R_and_R_h_becomes_W_h_plus_b(layer, r, seed):
    """One edited block (not the last: hidden_states[-1] is after ln_f): hidden_states[layer + 1] is
    h (base) there, Φ(h) here. h' − h has no part outside the rows of R, and R h' = W h + b."""
    model = tiny_model(CFG3)
    idx = _idx(seed)
    h = model(idx, output_hidden_states=True).hidden_states[layer + 1]  # (B, T, C) block `layer` output
    apply_reft(model, ReFTConfig(r=r, layers=[layer], positions="all"))
    _randomize(model, seed)
    h2 = model(idx, output_hidden_states=True).hidden_states[layer + 1]
    m = reft_layers(model)[0][1]
    R, W, b = m.R.detach(), m.W.detach(), m.b.detach()
    d = h2 - h                                                         # (B, T, C)
    residual = d - d @ R.T @ R
    assert residual.abs().max() <= 1e-10 * (1 + d.abs().max())
    assert torch.allclose(h2 @ R.T, h @ W.T + b, atol=1e-10)
    if r < CFG.n_embd:                                                 # a real subspace: rank r, not C
        assert torch.linalg.matrix_rank(d.reshape(-1, CFG.n_embd), atol=1e-9) <= r


def _clf_data(n=8, T=6):
    g = torch.Generator().manual_seed(0)
    return [{"idx": torch.randint(0, 24, (T,), generator=g), "labels": torch.randint(0, 3, (T,), generator=g)}
            for _ in range(n)]


def _tok_loss(model, batch):
    return model(batch["idx"], labels=batch["labels"]).loss, {}


@pytest.mark.parametrize("cfg", [ReFTConfig(r=3, positions="all"), ReFTConfig(r=8, first=2, last=1, tied=False)],
                         ids=["all-r3", "untied-r8"])
def test_R_stays_orthonormal_and_only_reft_and_the_head_train(cfg):
    torch.manual_seed(0)
    clf = TokenClassifier(GPT(CFG), 3)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    apply_reft(clf, cfg)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable == set(reft_state_dict(clf)) | {"head.weight", "head.bias"}
    R0 = {n: m.R.detach().clone() for n, m in reft_layers(clf)}
    train(clf, _clf_data(), TrainConfig(steps=5, batch_size=4, lr=0.1, warmup_steps=0, progress=False),
          loss_fn=_tok_loss)
    for n, p in clf.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    for n, m in reft_layers(clf):
        R = m.R.detach().double()
        assert (R @ R.T - torch.eye(cfg.r, dtype=torch.float64)).abs().max() < 1e-5   # still orthonormal
        assert (R - R0[n].double()).abs().max() > 1e-3                                # and it moved
        assert (m.W.detach().double() - R).abs().max() > 1e-3                         # W left R: a real edit


# ---- positions --------------------------------------------------------------------------------

@settings(deadline=None, max_examples=40)
@given(first=st.integers(0, 4), last=st.integers(0, 4), lengths=st.lists(st.integers(1, 8), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16))
def test_only_the_named_prompt_positions_move_under_left_and_right_padding(first, last, lengths, seed):
    """Edit the last block only: a position's final hidden state (after the per-position ln_f) then
    differs from the base exactly where an edit happened. Sequences shorter than first + last are
    edited at the first min(first, n) and last min(last, n) real tokens."""
    assume(first + last >= 1)
    T = max(lengths)
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, CFG.vocab_size, (n,), generator=g) for n in lengths]
    model = tiny_model(CFG)
    ref = tiny_model(CFG)
    apply_reft(model, ReFTConfig(r=2, layers=[-1], first=first, last=last))
    _randomize(model, seed)
    outs = {}
    for side in ("left", "right"):
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for b, row in enumerate(rows):
            sl = slice(T - len(row), T) if side == "left" else slice(0, len(row))
            idx[b, sl], mask[b, sl] = row, 1
        h = model(idx, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        h0 = ref(idx, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        moved = (h != h0).any(-1)                                      # (B, T)
        assert torch.equal(moved, _expected_edits(mask, first, last)), side
        outs[side] = [h[b, _real_positions(mask[b])] for b in range(len(rows))]
    for hl, hr in zip(outs["left"], outs["right"]):                    # the same tokens, the same edit
        assert torch.allclose(hl, hr, atol=1e-10)


def test_all_positions_edits_every_real_token_and_no_pad():
    model = tiny_model(CFG)
    ref = tiny_model(CFG)
    apply_reft(model, ReFTConfig(r=2, layers=[-1], positions="all"))
    _randomize(model)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    h = model(_idx(), attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    h0 = ref(_idx(), attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert torch.equal((h != h0).any(-1), mask.bool())


# ---- generation -------------------------------------------------------------------------------

def _hooked_reference(model_with_reft, prompt_len):
    """The base model with hand-written hooks: h + (h Wᵀ + b − h Rᵀ) R at the given positions of each
    edited block's output, for a single unpadded row whose first `prompt_len` tokens are the prompt."""
    cfg = model_with_reft.reft_config
    ref = tiny_model(CFG)
    for name, m in reft_layers(model_with_reft):
        i = int(name.split(".")[2])
        R, W, b = m.R.detach(), m.W.detach(), m.b.detach()
        if cfg.positions == "all":
            pos = None
        else:
            P = list(range(prompt_len))
            firsts, lasts = P[:cfg.first], P[len(P) - min(cfg.last, len(P)):]
            pos = {"prompt": set(firsts + lasts), "first": set(firsts), "last": set(lasts) - set(firsts)}[m.group]

        def hook(block, args, out, R=R, W=W, b=b, pos=pos):
            h, present = out
            h = h.clone()
            ts = range(h.shape[1]) if pos is None else [t for t in sorted(pos) if t < h.shape[1]]
            for t in ts:
                h[:, t] = h[:, t] + (h[:, t] @ W.T + b - h[:, t] @ R.T) @ R
            return h, present
        ref.transformer.h[i].register_forward_hook(hook)
    return ref


@pytest.mark.parametrize("cfg", [ReFTConfig(r=3, first=2, last=2), ReFTConfig(r=2, first=1, last=3, tied=False),
                                 ReFTConfig(r=2, positions="all", layers=[0])], ids=["prompt", "untied", "all"])
def test_cached_generation_equals_full_forwards_that_edit_the_same_positions(cfg):
    """generate (KV cache) on a padded batch == per row, greedy decoding by full forward passes of
    the base with hand-written hooks: prompt positions edited (positions='prompt'; generated tokens
    never), or every token (positions='all')."""
    model = tiny_model(CFG)
    apply_reft(model, cfg)
    _randomize(model, 3)
    rows = [torch.tensor([3, 7, 1, 9, 4]), torch.tensor([5, 2, 8])]
    idx = torch.tensor([[3, 7, 1, 9, 4], [5, 2, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = model.generate(idx, 5, attention_mask=mask)
    for b, row in enumerate(rows):
        ref = _hooked_reference(model, len(row))
        seq = row[None]
        for _ in range(5):
            seq = torch.cat([seq, ref(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(got[b], seq[0, len(row):]), f"row {b}"
    # and the cached step's logits are the full forward's
    out = model(idx[:1], use_cache=True)
    step = model(got[:1, :1], past_kv=out.past_kv).logits[:, -1]
    full = _hooked_reference(model, 5)(torch.cat([idx[:1], got[:1, :1]], 1)).logits[:, -1]
    assert torch.allclose(step, full, atol=1e-10)


@pytest.mark.parametrize("cfg", [ReFTConfig(r=2, positions="all"), ReFTConfig(r=2, first=3, last=0)],
                         ids=["all", "first-only"])
def test_uncached_generation_equals_cached_where_positions_do_not_move(cfg):
    model = tiny_model(CFG)
    apply_reft(model, cfg)
    _randomize(model, 4)
    idx = _idx(5, B=2, T=4)
    assert torch.equal(model.generate(idx, 6, use_cache=True), model.generate(idx, 6, use_cache=False))


# ---- a classifier's head rides along in the file ------------------------------------------------

@pytest.mark.parametrize("Head", [TokenClassifier, SequenceClassifier])
def test_classifier_head_is_saved_with_reft(Head, tmp_path):
    torch.manual_seed(0)
    clf = Head(GPT(CFG), 3).eval()
    body = {k: v.clone() for k, v in clf.body.state_dict().items()}
    names = apply_reft(clf, ReFTConfig(r=2, first=1, last=2))
    assert names == ["body.transformer.h.0.reft", "body.transformer.h.1.reft"]
    _randomize(clf)
    with torch.no_grad():
        clf.head.weight.normal_()
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    y = clf(_idx(), attention_mask=mask).logits
    save_adapter(clf, tmp_path)
    assert json.loads((tmp_path / "adapter.json").read_text())["extra_trainable"] == ["head.bias", "head.weight"]
    fresh = Head(GPT(CFG), 3).eval()
    fresh.body.load_state_dict(body)
    load_adapter(fresh, tmp_path)
    assert torch.equal(fresh(_idx(), attention_mask=mask).logits, y)


# ---- bad input --------------------------------------------------------------------------------

def test_bad_placements_are_clear_errors():
    with pytest.raises(ValueError, match=r"r=9 must be between 1 and n_embd=8"):
        apply_reft(GPT(CFG), ReFTConfig(r=9))
    with pytest.raises(ValueError, match=r"layers=\[2\]: \[2\] out of range for n_layer=2"):
        apply_reft(GPT(CFG), ReFTConfig(layers=[2]))
    with pytest.raises(ValueError, match=r"last=13 names positions outside any sequence: it must be <= block_size=12"):
        apply_reft(GPT(CFG), ReFTConfig(last=13))
    with pytest.raises(ValueError, match="exactly one GPT"):
        apply_reft(nn.Sequential(nn.Linear(2, 2)), ReFTConfig())
    with pytest.raises(ValueError, match="unknown ReFTConfig field"):
        ReFTConfig.from_dict({"r": 2, "rank": 2})
    model = GPT(CFG)
    apply_reft(model, ReFTConfig(r=2))
    with pytest.raises(ValueError, match="already applied"):
        apply_reft(model, ReFTConfig(r=2))
    with pytest.raises(ValueError, match=r"positions \(2, 6\) do not match the hidden states \(1, 6\)"):
        model(_idx())
        model.transformer.h[0](torch.zeros(1, 6, 8))
