"""Conformance checks of lesson 17, distillation (minift/align/distill.py), registered into
`checks.CHECKS` with lesson="lesson17". Expected values are computed here independently, in
float64 numpy, never by calling minift's reference adapters.
"""
from __future__ import annotations


import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t
from .strategies import MAX_T, arrays, check_settings, f32


def log_softmax64(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl64(log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """KL(a ‖ b) per row, Σ a (log a - log b)."""
    return (np.exp(log_a) * (log_a - log_b)).sum(-1)


def divergence64(s, t, T, divergence, beta) -> np.ndarray:
    """Per row: forward KL(p ‖ q), reverse KL(q ‖ p), or β KL(p ‖ m) + (1 - β) KL(q ‖ m), m = β p + (1 - β) q."""
    log_p, log_q = log_softmax64(t / T), log_softmax64(s / T)
    if divergence == "forward" or (divergence == "jsd" and beta == 0):
        return kl64(log_p, log_q)
    if divergence == "reverse" or (divergence == "jsd" and beta == 1):
        return kl64(log_q, log_p)
    log_m = np.log(beta * np.exp(log_p) + (1 - beta) * np.exp(log_q))
    return beta * kl64(log_p, log_m) + (1 - beta) * kl64(log_q, log_m)


@st.composite
def _logit_pairs(draw, scale=6.0):
    N, K = draw(st.integers(1, MAX_T)), draw(st.integers(2, 6))
    s = draw(arrays((N, K), f32(-scale, scale)))
    t = draw(arrays((N, K), f32(-scale, scale)))
    mask = np.array(draw(st.lists(st.integers(0, 1), min_size=N, max_size=N)), dtype=np.float32)
    if not mask.any():
        mask[draw(st.integers(0, N - 1))] = 1
    return s, t, mask


_TEMPS = st.sampled_from([0.5, 1.0, 2.0, 4.0])


@_register("run_distill_loss", "distill_loss(s, t, mask, T, divergence, beta) equals T² times the float64 "
           "divergence (forward KL(p ‖ q), reverse KL(q ‖ p), or JSD_β with m = β p + (1-β) q; β = 0 and 1 are the "
           "forward and reverse KL), p = softmax(t/T), q = softmax(s/T), averaged over the rows where mask = 1.",
           lesson="lesson17")
def check_distill_loss_matches_formula(impl):
    loss = _adapter(impl, "run_distill_loss")

    @check_settings(60)
    @given(x=_logit_pairs(), T=_TEMPS, divergence=st.sampled_from(["forward", "reverse", "jsd"]),
           beta=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    def distill_loss_matches_formula(x, T, divergence, beta):
        s, t, mask = x
        what = f"run_distill_loss(s, t, mask, temperature={T}, divergence={divergence!r}, beta={beta})"
        y = _out(loss(_t(s), _t(t), _t(mask), T, divergence, beta), (), what)
        d = divergence64(s.astype(np.float64), t.astype(np.float64), T, divergence, beta)
        expected = T ** 2 * (d * mask).sum() / mask.sum()
        _assert_close(y, expected, f"{what} vs T² Σ_i m_i D_i / Σ_i m_i", atol=2e-5 * T ** 2, rtol=1e-4)
    _run(distill_loss_matches_formula)


@_register("run_distill_loss", "the distillation loss is 0 when student and teacher logits are equal (any T, "
           "divergence and β), and >= 0 for any pair.", lesson="lesson17")
def check_distill_loss_zero_for_identical_never_negative(impl):
    loss = _adapter(impl, "run_distill_loss")

    @check_settings(40)
    @given(x=_logit_pairs(), T=_TEMPS, divergence=st.sampled_from(["forward", "reverse", "jsd"]),
           beta=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    def distill_loss_zero_for_identical_never_negative(x, T, divergence, beta):
        s, t, mask = x
        what = f"run_distill_loss(t, t, mask, temperature={T}, divergence={divergence!r}, beta={beta})"
        same = _out(loss(_t(t), _t(t), _t(mask), T, divergence, beta), (), what)
        _assert_close(same, 0.0, f"{what}: identical distributions", atol=1e-5 * T ** 2, rtol=0)
        other = float(_out(loss(_t(s), _t(t), _t(mask), T, divergence, beta), (), what.replace("(t, t", "(s, t")))
        if not other >= -1e-6 * T ** 2:
            raise AssertionError(f"{what.replace('(t, t', '(s, t')} = {other!r} < 0: a divergence is never negative")
    _run(distill_loss_zero_for_identical_never_negative)


@_register("run_distill_loss", "the gradient of T² KL(softmax(t/T) ‖ softmax(s/T)) (forward, no mask) with "
           "respect to the student logits s is T (softmax(s/T) - softmax(t/T)) / N: the T² keeps it on one scale.",
           lesson="lesson17")
def check_distill_loss_gradient_scale(impl):
    loss = _adapter(impl, "run_distill_loss")

    @check_settings(40)
    @given(x=_logit_pairs(), T=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]))
    def distill_loss_gradient_scale(x, T):
        s, t, _ = x
        what = f"d run_distill_loss(s, t, None, temperature={T}, divergence='forward') / d s"
        s_t = _t(s).requires_grad_(True)
        y = loss(s_t, _t(t), None, T, "forward", 0.5)
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            raise AssertionError(f"{what}: the loss must be a tensor with a gradient in the student logits")
        y.backward()
        p, q = np.exp(log_softmax64(t.astype(np.float64) / T)), np.exp(log_softmax64(s.astype(np.float64) / T))
        expected = T * (q - p) / s.shape[0]
        _assert_close(_out(s_t.grad, s.shape, what), expected, f"{what} vs T (q - p) / N", atol=2e-6 * T, rtol=1e-4)
    _run(distill_loss_gradient_scale)


@_register("run_kd_loss", "kd_loss(s, t, labels, alpha, T) equals alpha T² KL(softmax(t/T) ‖ softmax(s/T)) "
           "(mean over rows with a label) + (1 - alpha) CE(labels, softmax(s)) (mean over the same rows), "
           "in float64; alpha = 0 is plain cross-entropy.", lesson="lesson17")
def check_kd_loss_matches_formula(impl):
    loss = _adapter(impl, "run_kd_loss")

    @check_settings(50)
    @given(x=_logit_pairs(), T=_TEMPS, alpha=st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]), data=st.data())
    def kd_loss_matches_formula(x, T, alpha, data):
        s, t, mask = x
        N, K = s.shape
        labels = np.array([data.draw(st.integers(0, K - 1)) if m else -100 for m in mask], dtype=np.int64)
        what = f"run_kd_loss(s, t, labels, alpha={alpha}, temperature={T})"
        y = _out(loss(_t(s), _t(t), torch.tensor(labels), alpha, T), (), what)
        keep = labels != -100
        s64, t64 = s.astype(np.float64)[keep], t.astype(np.float64)[keep]
        soft = T ** 2 * kl64(log_softmax64(t64 / T), log_softmax64(s64 / T)).mean()
        hard = -log_softmax64(s64)[np.arange(keep.sum()), labels[keep]].mean()
        _assert_close(y, alpha * soft + (1 - alpha) * hard, f"{what} vs α T² KL + (1 - α) CE",
                      atol=2e-5 * max(1.0, T ** 2), rtol=1e-4)
    _run(kd_loss_matches_formula)
