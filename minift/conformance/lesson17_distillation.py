"""Lesson 17 (distillation): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions, distillation (minift/align/distill.py): plain tensors and
hyperparameters in, tensors out, computed by minift's own functions.

    run_distill_loss(student_logits, teacher_logits, mask, temperature, divergence, beta)
        T² D(softmax(t / T), softmax(s / T)) averaged over the positions where mask == 1;
        D = forward KL(p ‖ q), reverse KL(q ‖ p) or JSD_β (β = 0: forward, β = 1: reverse)
    run_kd_loss(student_logits, teacher_logits, labels, alpha, temperature)
        Hinton's mixture α T² KL(p ‖ q) + (1 - α) CE(labels, softmax(s)), soft term over the
        labelled positions (labels != -100)

The checks, registered into `CHECKS` with lesson="lesson17". Expected values are computed here
independently, in float64 numpy, never by calling minift's reference functions.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from minift.align.distill import distill_loss, kd_loss
from minift.model import IGNORE_INDEX

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_T, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def run_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask=None,
                     temperature: float = 1.0, divergence: str = "forward", beta: float = 0.5) -> torch.Tensor:
    """The soft-target loss of `minift.align.distill.distill_loss`. student_logits, teacher_logits:
    (N, K) float; mask: (N,) of 0/1 or None (every row). Returns a scalar, differentiable in the
    student's logits."""
    s, t = tensor_arg("student_logits", student_logits), tensor_arg("teacher_logits", teacher_logits)
    return distill_loss(s, t, None if mask is None else tensor_arg("mask", mask), temperature, divergence, beta)


def run_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                alpha: float = 0.5, temperature: float = 2.0) -> torch.Tensor:
    """Hinton's mixture of `minift.align.distill.kd_loss` with the forward KL, the soft term over
    the rows whose label is not -100. logits: (N, K); labels: (N,) long. Returns a scalar."""
    s, t, y = tensor_arg("student_logits", student_logits), tensor_arg("teacher_logits", teacher_logits), \
        tensor_arg("labels", labels)
    return kd_loss(s, t, y, y != IGNORE_INDEX, alpha, temperature, "forward")


# ---- the checks ----------------------------------------------------------------------------------

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


@property_check("run_distill_loss", lesson=17, examples=60, x=_logit_pairs(), T=_TEMPS,
                divergence=st.sampled_from(["forward", "reverse", "jsd"]),
                beta=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
def distill_loss_matches_formula(loss, x, T, divergence, beta):
    """distill_loss(s, t, mask, T, divergence, beta) equals T² times the float64 divergence (forward
    KL(p ‖ q), reverse KL(q ‖ p), or JSD_β with m = β p + (1-β) q; β = 0 and 1 are the forward
    and reverse KL), p = softmax(t/T), q = softmax(s/T), averaged over the rows where mask = 1."""
    s, t, mask = x
    what = f"run_distill_loss(s, t, mask, temperature={T}, divergence={divergence!r}, beta={beta})"
    y = output(loss(tensor(s), tensor(t), tensor(mask), T, divergence, beta), (), what)
    d = divergence64(s.astype(np.float64), t.astype(np.float64), T, divergence, beta)
    expected = T ** 2 * (d * mask).sum() / mask.sum()
    assert_close(y, expected, f"{what} vs T² Σ_i m_i D_i / Σ_i m_i", atol=2e-5 * T ** 2, rtol=1e-4)


@property_check("run_distill_loss", lesson=17, examples=40, x=_logit_pairs(), T=_TEMPS,
                divergence=st.sampled_from(["forward", "reverse", "jsd"]),
                beta=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def distill_loss_zero_for_identical_never_negative(loss, x, T, divergence, beta):
    """the distillation loss is 0 when student and teacher logits are equal (any T, divergence and β),
    and >= 0 for any pair."""
    s, t, mask = x
    what = f"run_distill_loss(t, t, mask, temperature={T}, divergence={divergence!r}, beta={beta})"
    same = output(loss(tensor(t), tensor(t), tensor(mask), T, divergence, beta), (), what)
    assert_close(same, 0.0, f"{what}: identical distributions", atol=1e-5 * T ** 2, rtol=0)
    other = float(output(loss(tensor(s), tensor(t), tensor(mask), T, divergence, beta), (), what.replace("(t, t", "(s, t")))
    if not other >= -1e-6 * T ** 2:
        raise AssertionError(f"{what.replace('(t, t', '(s, t')} = {other!r} < 0: a divergence is never negative")


@property_check("run_distill_loss", lesson=17, examples=40, x=_logit_pairs(),
                T=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]))
def distill_loss_gradient_scale(loss, x, T):
    """the gradient of T² KL(softmax(t/T) ‖ softmax(s/T)) (forward, no mask) with respect to
    the student logits s is T (softmax(s/T) - softmax(t/T)) / N: the T² keeps it on one scale."""
    s, t, _ = x
    what = f"d run_distill_loss(s, t, None, temperature={T}, divergence='forward') / d s"
    s_t = tensor(s).requires_grad_(True)
    y = loss(s_t, tensor(t), None, T, "forward", 0.5)
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        raise AssertionError(f"{what}: the loss must be a tensor with a gradient in the student logits")
    y.backward()
    p, q = np.exp(log_softmax64(t.astype(np.float64) / T)), np.exp(log_softmax64(s.astype(np.float64) / T))
    expected = T * (q - p) / s.shape[0]
    assert_close(output(s_t.grad, s.shape, what), expected, f"{what} vs T (q - p) / N", atol=2e-6 * T, rtol=1e-4)


@property_check("run_kd_loss", lesson=17, examples=50, x=_logit_pairs(), T=_TEMPS,
                alpha=st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]), data=st.data())
def kd_loss_matches_formula(loss, x, T, alpha, data):
    """kd_loss(s, t, labels, alpha, T) equals alpha T² KL(softmax(t/T) ‖ softmax(s/T)) (mean over rows
    with a label) + (1 - alpha) CE(labels, softmax(s)) (mean over the same rows), in float64; alpha
    = 0 is plain cross-entropy."""
    s, t, mask = x
    N, K = s.shape
    labels = np.array([data.draw(st.integers(0, K - 1)) if m else -100 for m in mask], dtype=np.int64)
    what = f"run_kd_loss(s, t, labels, alpha={alpha}, temperature={T})"
    y = output(loss(tensor(s), tensor(t), torch.tensor(labels), alpha, T), (), what)
    keep = labels != -100
    s64, t64 = s.astype(np.float64)[keep], t.astype(np.float64)[keep]
    soft = T ** 2 * kl64(log_softmax64(t64 / T), log_softmax64(s64 / T)).mean()
    hard = -log_softmax64(s64)[np.arange(keep.sum()), labels[keep]].mean()
    assert_close(y, alpha * soft + (1 - alpha) * hard, f"{what} vs α T² KL + (1 - α) CE",
                 atol=2e-5 * max(1.0, T ** 2), rtol=1e-4)
