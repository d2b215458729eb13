"""Conformance checks of lesson 15, DPO and its variants (minift/align/dpo.py), registered into `checks.CHECKS`
with lesson="lesson15". Expected values are computed here independently, in float64 numpy, never by
calling minift's reference adapters.

    run_dpo_loss      sigmoid, cDPO, IPO and hinge against their formulas; log 2 (and 1/(4β²), 1) when
                      the policy equals the reference; stable for margins up to |βh| = 400; the mirror
                      L(−h) when chosen and rejected swap; the gradient −β[(1−ε)σ(−βh) − εσ(βh)]
    run_dpo_rewards   β (log π − log π_ref) of each side
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
from .strategies import MAX_B, arrays, check_settings, f32

BETAS = st.sampled_from([0.01, 0.1, 0.5, 1.0, 2.0])


def _log_sigmoid64(x: np.ndarray) -> np.ndarray:
    """log σ(x) = −log(1 + e^{−x}) without overflow: min(x, 0) − log1p(e^{−|x|})."""
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_sigmoid64(x))


def _h64(pc, pr, rc, rr) -> np.ndarray:
    pc, pr, rc, rr = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr))
    return (pc - rc) - (pr - rr)


def _expected(h: np.ndarray, beta: float, loss_type: str, eps: float = 0.0) -> np.ndarray:
    if loss_type == "sigmoid":
        return -(1 - eps) * _log_sigmoid64(beta * h) - eps * _log_sigmoid64(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return np.maximum(0.0, 1 - beta * h)


@st.composite
def _logps(draw, lo=-40.0, hi=0.0):
    """Four (B,) float32 arrays of log-probabilities: policy chosen, policy rejected, ref chosen, ref rejected."""
    B = draw(st.integers(1, 2 * MAX_B))
    return tuple(draw(arrays((B,), f32(lo, hi))) for _ in range(4))


def _atol(beta, h, loss_type):
    """float32 rounding of inputs up to 40 in size moves h by ~4 · 2^-24 · 40; the loss by β (or 2|h|) times that."""
    dh = 4 * 2.0 ** -24 * 40 * 4
    scale = 2 * (np.abs(h) + 1 / (2 * beta)) if loss_type == "ipo" else beta
    return 1e-6 + scale * dh


def _loss_matches_formula(impl, loss_type: str, eps_values) -> None:
    loss = _adapter(impl, "run_dpo_loss")

    @check_settings(60)
    @given(x=_logps(), beta=BETAS, eps=st.sampled_from(eps_values))
    def dpo_loss_matches_formula(x, beta, eps):
        what = f"run_dpo_loss(pc, pr, rc, rr, beta={beta}, loss_type={loss_type!r}, label_smoothing={eps})"
        y = _out(loss(*(_t(a) for a in x), beta, loss_type=loss_type, label_smoothing=eps), x[0].shape, what)
        h = _h64(*x)
        _assert_close(y, _expected(h, beta, loss_type, eps), f"{what} vs the float64 formula",
                      atol=_atol(beta, h, loss_type), rtol=1e-5)
    _run(dpo_loss_matches_formula)


@_register("run_dpo_loss", "loss_type='sigmoid', label_smoothing=0 is the DPO loss −log σ(β h), h = (pc − rc) − "
           "(pr − rr), in float64 (log-probs in [−40, 0], β in {0.01 .. 2}).", lesson="lesson15")
def check_dpo_sigmoid_matches_formula(impl):
    _loss_matches_formula(impl, "sigmoid", [0.0])


@_register("run_dpo_loss", "label_smoothing ε (conservative DPO) gives −(1 − ε) log σ(β h) − ε log σ(−β h), in "
           "float64 (ε in {0, 0.1, 0.25, 0.4}); ε = 0 is the plain loss.", lesson="lesson15")
def check_cdpo_matches_formula(impl):
    _loss_matches_formula(impl, "sigmoid", [0.0, 0.1, 0.25, 0.4])


@_register("run_dpo_loss", "loss_type='ipo' is (h − 1/(2β))², in float64.", lesson="lesson15")
def check_ipo_matches_formula(impl):
    _loss_matches_formula(impl, "ipo", [0.0])


@_register("run_dpo_loss", "loss_type='hinge' (SLiC) is max(0, 1 − β h), in float64.", lesson="lesson15")
def check_hinge_matches_formula(impl):
    _loss_matches_formula(impl, "hinge", [0.0])


@_register("run_dpo_loss", "when the policy equals the reference (h = 0) every pair's loss is log 2 for 'sigmoid' "
           "(any ε), 1/(4β²) for 'ipo' and 1 for 'hinge'; the implicit rewards are 0.", lesson="lesson15")
def check_dpo_at_reference(impl):
    loss, rewards = _adapter(impl, "run_dpo_loss"), _adapter(impl, "run_dpo_rewards")

    @check_settings(40)
    @given(x=_logps(), beta=BETAS, eps=st.sampled_from([0.0, 0.1, 0.3]))
    def dpo_at_reference(x, beta, eps):
        c, r = x[0], x[1]                                      # π = π_ref on both sides
        for lt, e, expected in (("sigmoid", eps, np.log(2.0)), ("ipo", 0.0, 1 / (4 * beta ** 2)), ("hinge", 0.0, 1.0)):
            what = f"run_dpo_loss(c, r, c, r, beta={beta}, loss_type={lt!r}, label_smoothing={e})"
            y = _out(loss(_t(c), _t(r), _t(c), _t(r), beta, loss_type=lt, label_smoothing=e), c.shape, what)
            _assert_close(y, np.full(c.shape, expected), what, atol=1e-6, rtol=1e-6)
        w = _out(rewards(_t(c), _t(r), _t(c), _t(r), beta), (2,) + c.shape, f"run_dpo_rewards(c, r, c, r, beta={beta})")
        _assert_close(w, np.zeros_like(w), "the implicit rewards when the policy equals the reference", atol=1e-7, rtol=0)
    _run(dpo_at_reference)


@_register("run_dpo_loss", "the sigmoid loss is numerically stable: for |β h| up to 400 it equals "
           "log(1 + exp(−β h)) (≈ −β h when β h << 0, ≈ 0 when β h >> 0), finite, never inf or NaN.",
           lesson="lesson15")
def check_dpo_sigmoid_stable_for_large_margins(impl):
    loss = _adapter(impl, "run_dpo_loss")

    @check_settings(40)
    @given(x=_logps(-200.0, 0.0), beta=st.sampled_from([1.0, 2.0]))
    def dpo_sigmoid_stable_for_large_margins(x, beta):
        what = f"run_dpo_loss(pc, pr, rc, rr, beta={beta}) with log-probs down to −200"
        y = _out(loss(*(_t(a) for a in x), beta), x[0].shape, what)
        h = _h64(*x)
        _assert_close(y, _expected(h, beta, "sigmoid"), what, atol=1e-6 + beta * 4 * 2.0 ** -24 * 200 * 4, rtol=1e-5)
    _run(dpo_sigmoid_stable_for_large_margins)


@_register("run_dpo_loss", "swapping chosen and rejected (on the policy and the reference) gives the mirrored "
           "loss L(−h) of each variant; for 'sigmoid', L(swapped) − L = β h.", lesson="lesson15")
def check_dpo_swap_mirrors(impl):
    loss = _adapter(impl, "run_dpo_loss")

    @check_settings(40)
    @given(x=_logps(), beta=BETAS, lt=st.sampled_from(["sigmoid", "ipo", "hinge"]))
    def dpo_swap_mirrors(x, beta, lt):
        pc, pr, rc, rr = x
        what = f"run_dpo_loss with chosen and rejected swapped, beta={beta}, loss_type={lt!r}"
        y = _out(loss(_t(pr), _t(pc), _t(rr), _t(rc), beta, loss_type=lt), pc.shape, what)
        h = _h64(*x)
        _assert_close(y, _expected(-h, beta, lt), f"{what} vs L(−h)", atol=_atol(beta, h, lt), rtol=1e-5)
        if lt == "sigmoid":
            y0 = _out(loss(*(_t(a) for a in x), beta), pc.shape, "run_dpo_loss(pc, pr, rc, rr)")
            _assert_close(y - y0, beta * h, "L(swapped) − L vs β h", atol=2 * _atol(beta, h, lt), rtol=1e-4)
    _run(dpo_swap_mirrors)


@_register("run_dpo_loss", "the gradient of Σ loss w.r.t. the policy's chosen log-prob is "
           "−β[(1−ε)σ(−βh) − εσ(βh)] "
           "(< 0 for ε = 0: descent raises log π(y_w|x)) and exactly minus that w.r.t. the rejected one; the "
           "reference log-probs get none through the policy terms.", lesson="lesson15")
def check_dpo_gradient(impl):
    loss = _adapter(impl, "run_dpo_loss")

    @check_settings(40)
    @given(x=_logps(-20.0, 0.0), beta=BETAS, eps=st.sampled_from([0.0, 0.1, 0.3]))
    def dpo_gradient(x, beta, eps):
        pc, pr = _t(x[0]).requires_grad_(True), _t(x[1]).requires_grad_(True)
        y = loss(pc, pr, _t(x[2]), _t(x[3]), beta, label_smoothing=eps)
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            raise AssertionError("run_dpo_loss must return a tensor with a gradient w.r.t. the policy log-probs "
                                 "(compute it with torch operations on the inputs)")
        y.sum().backward()
        h = _h64(*x)
        g = -beta * ((1 - eps) * _sigmoid64(-beta * h) - eps * _sigmoid64(beta * h))
        tol = 1e-6 + beta ** 2 * 4 * 2.0 ** -24 * 20 * 4
        _assert_close(_out(pc.grad, pc.shape, "d Σ loss / d policy_chosen_logps"), g,
                      f"d Σ loss / d policy_chosen_logps (beta={beta}, ε={eps})", atol=tol, rtol=1e-4)
        _assert_close(_out(pr.grad, pr.shape, "d Σ loss / d policy_rejected_logps"), -g,
                      f"d Σ loss / d policy_rejected_logps (beta={beta}, ε={eps})", atol=tol, rtol=1e-4)
    _run(dpo_gradient)


@_register("run_dpo_rewards", "run_dpo_rewards returns the implicit rewards [β (pc − rc), β (pr − rr)] as a "
           "(2, B) tensor, in float64.", lesson="lesson15")
def check_dpo_rewards_are_beta_log_ratios(impl):
    rewards = _adapter(impl, "run_dpo_rewards")

    @check_settings(40)
    @given(x=_logps(), beta=BETAS)
    def dpo_rewards_are_beta_log_ratios(x, beta):
        pc, pr, rc, rr = (a.astype(np.float64) for a in x)
        y = _out(rewards(*(_t(a) for a in x), beta), (2,) + x[0].shape, f"run_dpo_rewards(pc, pr, rc, rr, beta={beta})")
        _assert_close(y, np.stack([beta * (pc - rc), beta * (pr - rr)]), "run_dpo_rewards vs β (log π − log π_ref)",
                      atol=1e-6 + beta * 4 * 2.0 ** -24 * 40, rtol=1e-5)
    _run(dpo_rewards_are_beta_log_ratios)
