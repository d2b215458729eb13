"""Conformance checks of lesson 14, reward models (minift/align/reward.py), registered into `checks.CHECKS`
with lesson="lesson14". Expected values are computed here independently, in float64 numpy, never by
calling minift's reference adapters.

    run_reward_loss            log(1 + exp(−(r_w − r_l − m))) in float64; log 2 at r_w = r_l; the mirror
                               identity L(d) − L(−d) = −d; finite and exact for |d| up to 1e4
    run_reward_at_last_token   w · h[i, last t with mask 1] + b by a plain loop, whatever the padding
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
from .strategies import MAX_B, MAX_D, MAX_T, arrays, check_settings, f32


def _softplus64(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) without overflow: max(x, 0) + log1p(e^{−|x|})."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


@st.composite
def _pairs(draw, lo=-20.0, hi=20.0):
    B = draw(st.integers(1, 2 * MAX_B))
    return draw(arrays((B,), f32(lo, hi))), draw(arrays((B,), f32(lo, hi)))


@_register("run_reward_loss", "run_reward_loss(r_chosen, r_rejected, margin) is the Bradley–Terry loss per pair, "
           "−log σ(r_w − r_l − m) = log(1 + exp(−(r_w − r_l − m))), in float64 (|r| <= 20, 0 <= m <= 2).",
           lesson="lesson14")
def check_reward_loss_matches_formula(impl):
    loss = _adapter(impl, "run_reward_loss")

    @check_settings(60)
    @given(p=_pairs(), margin=st.sampled_from([0.0, 0.5, 2.0]))
    def reward_loss_matches_formula(p, margin):
        rc, rr = p
        d = rc.astype(np.float64) - rr.astype(np.float64) - margin
        what = f"run_reward_loss(r_chosen, r_rejected, margin={margin})"
        y = _out(loss(_t(rc), _t(rr), margin=margin), rc.shape, what)
        _assert_close(y, _softplus64(-d), f"{what} vs log(1 + exp(−(r_w − r_l − m)))", atol=1e-5, rtol=1e-5)
    _run(reward_loss_matches_formula)


@_register("run_reward_loss", "with equal rewards the loss is log 2 (P = ½), and swapping the sides mirrors it: "
           "L(r_w, r_l) − L(r_l, r_w) = −(r_w − r_l) (margin 0).", lesson="lesson14")
def check_reward_loss_log2_and_mirror(impl):
    loss = _adapter(impl, "run_reward_loss")

    @check_settings(40)
    @given(p=_pairs())
    def reward_loss_log2_and_mirror(p):
        rc, rr = p
        tie = _out(loss(_t(rc), _t(rc), margin=0.0), rc.shape, "run_reward_loss(r, r)")
        _assert_close(tie, np.full(rc.shape, math.log(2)), "run_reward_loss(r, r) vs log 2", atol=1e-6, rtol=0)
        a = _out(loss(_t(rc), _t(rr), margin=0.0), rc.shape, "run_reward_loss(r_w, r_l)")
        b = _out(loss(_t(rr), _t(rc), margin=0.0), rc.shape, "run_reward_loss(r_l, r_w)")
        d = rc.astype(np.float64) - rr.astype(np.float64)
        _assert_close(a - b, -d, "run_reward_loss(r_w, r_l) − run_reward_loss(r_l, r_w) vs −(r_w − r_l)",
                      atol=1e-4, rtol=1e-5)
    _run(reward_loss_log2_and_mirror)


@_register("run_reward_loss", "the loss is numerically stable: for reward differences up to 1e4 it is finite and "
           "equals max(−d, 0) + log1p(e^{−|d|}) (a naive log(sigmoid) gives inf or 0 there).", lesson="lesson14")
def check_reward_loss_stable(impl):
    loss = _adapter(impl, "run_reward_loss")

    @check_settings(40)
    @given(p=_pairs(-5e3, 5e3))
    def reward_loss_stable(p):
        rc, rr = p
        d = rc.astype(np.float64) - rr.astype(np.float64)
        y = _out(loss(_t(rc), _t(rr), margin=0.0), rc.shape, "run_reward_loss(r_chosen, r_rejected)")
        _assert_close(y, _softplus64(-d), "run_reward_loss at large |r_w − r_l| vs the stable softplus",
                      atol=1e-5, rtol=1e-5)
    _run(reward_loss_stable)


@st.composite
def _padded_hidden(draw):
    """hidden (B, T, C), a mask whose rows are one run of real tokens anywhere (left, right or both
    sides padded), w (C,), b (1,)."""
    B, T, C = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T)), draw(st.integers(1, MAX_D))
    mask = np.zeros((B, T), np.float32)
    for i in range(B):
        start = draw(st.integers(0, T - 1))
        mask[i, start:draw(st.integers(start + 1, T))] = 1
    return (draw(arrays((B, T, C), f32(-3, 3))), mask, draw(arrays((C,), f32(-2, 2))), draw(arrays((1,), f32(-2, 2))))


@_register("run_reward_at_last_token", "run_reward_at_last_token(hidden, attention_mask, w, b) reads each row at its "
           "LAST real token (the largest t with mask 1, for any padding side) and returns w · h + b.", lesson="lesson14")
def check_reward_at_last_real_token(impl):
    read = _adapter(impl, "run_reward_at_last_token")

    @check_settings(60)
    @given(inp=_padded_hidden())
    def reward_at_last_real_token(inp):
        h, mask, w, b = inp
        expected = np.array([h[i, max(t for t in range(h.shape[1]) if mask[i, t] == 1)].astype(np.float64)
                             @ w.astype(np.float64) + float(b[0]) for i in range(h.shape[0])])
        what = f"run_reward_at_last_token(hidden {h.shape}, attention_mask, w, b)"
        y = _out(read(_t(h), _t(mask).long(), _t(w), _t(b)), (h.shape[0],), what)
        _assert_close(y, expected, f"{what} vs w · h[last real token] + b", atol=1e-5, rtol=1e-5)
    _run(reward_at_last_real_token)
