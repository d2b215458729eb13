"""Conformance checks of lesson 08 (prompt tuning), registered into `checks.CHECKS` with
lesson="lesson08". Expected values are computed here independently (float64 numpy or a
textbook construction), never by calling minift's reference adapters.

The rules checked: P is prepended (never appended, never added), the mask gets n ones in front,
the text initialisation is the text cut or repeated (row i = row i mod m), the real tokens'
positions shift by n, and the loss pairs logits[b, n + t] with targets[b, t] (nothing shifted).
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
from .strategies import MAX_B, MAX_D, MAX_T, MAX_V, arrays, check_settings, f32

MAX_N = 6                                                                   # virtual tokens


@st.composite
def _prompt_inputs(draw, min_n: int = 0):
    """embeds (B, T, C), prompt (n, C), attention_mask (B, T) of 0/1 (any pattern, padding anywhere)."""
    B, T, C = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T)), draw(st.integers(1, MAX_D))
    n = draw(st.integers(min_n, MAX_N))
    return dict(embeds=draw(arrays((B, T, C), f32(-3, 3))), prompt=draw(arrays((n, C), f32(-3, 3))),
                mask=draw(hnp.arrays(np.int64, (B, T), elements=st.integers(0, 1))), n=n)


def _pair(y, what: str):
    if not isinstance(y, (tuple, list)) or len(y) != 2:
        raise AssertionError(f"{what} must return a pair (inputs_embeds, attention_mask), got {type(y).__name__}")
    return y


def _soft_prompt64(embeds, prompt, mask):
    """[P ; embeds] and [1 ; mask], built row by row."""
    B, T, C = embeds.shape
    n = prompt.shape[0]
    x = np.zeros((B, n + T, C))
    m = np.zeros((B, n + T))
    for b in range(B):
        for i in range(n):
            x[b, i], m[b, i] = prompt[i], 1.0
        for t in range(T):
            x[b, n + t], m[b, n + t] = embeds[b, t], mask[b, t]
    return x, m


@_register("run_soft_prompt", "soft_prompt(embeds, P, mask) returns [P ; embeds] (P in front of every row, "
           "unchanged) and the mask with n ones in front, exactly.", lesson="lesson08")
def check_soft_prompt_prepends(impl):
    soft = _adapter(impl, "run_soft_prompt")

    @check_settings(50)
    @given(inp=_prompt_inputs(min_n=1))
    def soft_prompt_prepends(inp):
        e, p, m = inp["embeds"], inp["prompt"], inp["mask"]
        x64, m64 = _soft_prompt64(e.astype(np.float64), p.astype(np.float64), m)
        what = f"run_soft_prompt(embeds {e.shape}, prompt {p.shape}, attention_mask)"
        x, mask = _pair(soft(_t(e), _t(p), torch.tensor(m)), what)
        _assert_close(_out(x, x64.shape, what + "[0]"), x64, f"{what}: inputs_embeds vs [P ; embeds]", atol=0, rtol=0)
        _assert_close(_out(mask, m64.shape, what + "[1]"), m64, f"{what}: mask vs [1 ... 1 ; mask]", atol=0, rtol=0)
    _run(soft_prompt_prepends)


@_register("run_soft_prompt", "a length-0 prompt (0, C) is the identity: embeds and mask come back unchanged "
           "(the only prompt that leaves the model as it was).", lesson="lesson08")
def check_soft_prompt_length_zero_is_identity(impl):
    soft = _adapter(impl, "run_soft_prompt")

    @check_settings(30)
    @given(inp=_prompt_inputs())
    def soft_prompt_length_zero_is_identity(inp):
        e, m = inp["embeds"], inp["mask"]
        empty = np.zeros((0, e.shape[2]), np.float32)
        what = f"run_soft_prompt(embeds {e.shape}, prompt (0, {e.shape[2]}), attention_mask)"
        x, mask = _pair(soft(_t(e), _t(empty), torch.tensor(m)), what)
        _assert_close(_out(x, e.shape, what + "[0]"), e, f"{what}: inputs_embeds vs embeds", atol=0, rtol=0)
        _assert_close(_out(mask, m.shape, what + "[1]"), m, f"{what}: mask vs mask", atol=0, rtol=0)
    _run(soft_prompt_length_zero_is_identity)


@_register("run_prompt_init_from_text", "prompt_init_from_text(E (m, C), n) has row i = E[i mod m]: the first "
           "n token embeddings when m >= n, the text repeated when m < n.", lesson="lesson08")
def check_prompt_init_from_text_rule(impl):
    init = _adapter(impl, "run_prompt_init_from_text")

    @check_settings(50)
    @given(m=st.integers(1, 2 * MAX_N), n=st.integers(1, 2 * MAX_N), C=st.integers(1, MAX_D), data=st.data())
    def prompt_init_from_text_rule(m, n, C, data):
        E = data.draw(arrays((m, C), f32(-3, 3)), label="token_embeds")
        expected = np.stack([E[i % m] for i in range(n)]).astype(np.float64)   # cut, or cycle through the text
        what = f"run_prompt_init_from_text(token_embeds ({m}, {C}), n={n})"
        _assert_close(_out(init(_t(E), n), (n, C), what), expected, f"{what} vs row i = token_embeds[i mod m]",
                      atol=0, rtol=0)
    _run(prompt_init_from_text_rule)


@_register("run_prompt_init_from_text", "an empty text (m = 0 tokens) or n < 1 raises ValueError (no silent "
           "empty or random prompt).", lesson="lesson08")
def check_prompt_init_from_text_rejects_empty(impl):
    init = _adapter(impl, "run_prompt_init_from_text")

    @check_settings(20)
    @given(C=st.integers(1, MAX_D), n=st.integers(1, MAX_N), bad_n=st.integers(-2, 0), m=st.integers(1, MAX_N))
    def prompt_init_from_text_rejects_empty(C, n, bad_n, m):
        for E, k, what in ((np.zeros((0, C), np.float32), n, f"token_embeds (0, {C}), n={n}"),
                           (np.ones((m, C), np.float32), bad_n, f"token_embeds ({m}, {C}), n={bad_n}")):
            try:
                init(_t(E), k)
            except ValueError:
                continue
            raise AssertionError(f"run_prompt_init_from_text({what}) returned instead of raising ValueError")
    _run(prompt_init_from_text_rejects_empty)


@_register("run_prompt_positions", "prompt_positions(mask, n): the virtual tokens sit at 0 .. n-1 and every real "
           "token at n + the number of real tokens before it (padding on any side is skipped).", lesson="lesson08")
def check_prompt_positions_shift_by_n(impl):
    pos_fn = _adapter(impl, "run_prompt_positions")

    @check_settings(50)
    @given(inp=_prompt_inputs())
    def prompt_positions_shift_by_n(inp):
        m, n = inp["mask"], inp["n"]
        B, T = m.shape
        what = f"run_prompt_positions(attention_mask {m.tolist()}, n={n})"
        got = _out(pos_fn(torch.tensor(m), n), (B, n + T), what)
        for b in range(B):
            want = list(range(n))                                           # the prompt: 0 .. n-1
            seen = 0
            for t in range(T):
                if m[b, t]:
                    want.append(n + seen)                                   # a real token: counted on from n
                    seen += 1
            slots = list(range(n)) + [n + t for t in range(T) if m[b, t]]
            _assert_close(got[b, slots], np.array(want, np.float64), f"{what}, row {b} at the prompt and real "
                          f"slots", atol=0, rtol=0)
    _run(prompt_positions_shift_by_n)


@st.composite
def _loss_inputs(draw):
    B, T, V, n = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T)), draw(st.integers(2, MAX_V)), \
        draw(st.integers(0, MAX_N))
    logits = draw(arrays((B, n + T, V), f32(-5, 5)))
    targets = draw(hnp.arrays(np.int64, (B, T), elements=st.integers(-1, V - 1))).copy()
    targets[targets == -1] = -100                                           # some targets ignored
    assume((targets != -100).any())
    return dict(logits=logits, targets=targets, n=n)


def _prompt_loss64(logits, targets, n):
    """mean over counted (b, t) of -log softmax(logits[b, n + t])[targets[b, t]]."""
    terms = []
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t] != -100:
                z = logits[b, n + t].astype(np.float64)
                lse = z.max() + np.log(np.exp(z - z.max()).sum())
                terms.append(lse - z[targets[b, t]])
    return float(np.mean(terms))


def _scalar(y, what):
    if not isinstance(y, torch.Tensor) or y.numel() != 1:
        raise AssertionError(f"{what} must return a scalar tensor, got {type(y).__name__} "
                             f"{tuple(getattr(y, 'shape', ()))}")
    return float(y.detach().double())


@_register("run_prompt_loss", "prompt_loss(logits (B, n+T, V), targets (B, T), n) equals the mean over counted "
           "targets of -log softmax(logits[b, n + t])[targets[b, t]] in float64: no shift, P carries no loss.",
           lesson="lesson08")
def check_prompt_loss_matches_formula(impl):
    loss = _adapter(impl, "run_prompt_loss")

    @check_settings(50)
    @given(inp=_loss_inputs())
    def prompt_loss_matches_formula(inp):
        lg, tg, n = inp["logits"], inp["targets"], inp["n"]
        what = f"run_prompt_loss(logits {lg.shape}, targets {tg.tolist()}, n={n})"
        got = _scalar(loss(_t(lg), torch.tensor(tg), n), what)
        _assert_close(np.array(got), np.array(_prompt_loss64(lg, tg, n)), f"{what} vs the float64 formula",
                      atol=1e-5, rtol=1e-5)
    _run(prompt_loss_matches_formula)


@_register("run_prompt_loss", "the n virtual positions carry no loss: replacing logits[:, :n] by anything leaves "
           "the loss unchanged (a shift by one would read position n - 1).", lesson="lesson08")
def check_prompt_loss_ignores_virtual_positions(impl):
    loss = _adapter(impl, "run_prompt_loss")

    @check_settings(40)
    @given(inp=_loss_inputs(), data=st.data())
    def prompt_loss_ignores_virtual_positions(inp, data):
        lg, tg, n = inp["logits"], inp["targets"], inp["n"]
        assume(n >= 1)
        other = lg.copy()
        other[:, :n] = data.draw(arrays(other[:, :n].shape, f32(-50, 50)), label="new logits at the prompt")
        what = f"run_prompt_loss(logits {lg.shape}, targets {tg.tolist()}, n={n})"
        a = _scalar(loss(_t(lg), torch.tensor(tg), n), what)
        b = _scalar(loss(_t(other), torch.tensor(tg), n), what + " with new logits at the n prompt positions")
        _assert_close(np.array(b), np.array(a), f"{what}: the loss moved when only the prompt's logits changed",
                      atol=1e-6, rtol=1e-6)
    _run(prompt_loss_ignores_virtual_positions)
