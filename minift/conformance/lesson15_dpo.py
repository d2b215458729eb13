"""Lesson 15 (DPO and its variants): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions, DPO and its variants (minift/align/dpo.py): plain tensors and
hyperparameters in, tensors out.

    run_dpo_loss(pc, pr, rc, rr, beta, loss_type="sigmoid", label_smoothing=0.0)    per-pair loss (B,)
        h = (pc − rc) − (pr − rr);  sigmoid: −(1−ε) log σ(βh) − ε log σ(−βh);  ipo: (h − 1/(2β))²;
        hinge: max(0, 1 − βh)
    run_dpo_rewards(pc, pr, rc, rr, beta)       the implicit rewards [β (pc − rc), β (pr − rr)]   (2, B)

pc, pr: the policy's log π(y_w|x), log π(y_l|x); rc, rr: the reference's; all (B,).

The checks, registered into `CHECKS` with lesson="lesson15". Expected values are computed here
independently, in float64 numpy, never by calling minift's reference functions.

    run_dpo_loss      sigmoid, cDPO, IPO and hinge against their formulas; log 2 (and 1/(4β²), 1) when
                      the policy equals the reference; stable for margins up to |βh| = 400; the mirror
                      L(−h) when chosen and rejected swap; the gradient −β[(1−ε)σ(−βh) − εσ(βh)]
    run_dpo_rewards   β (log π − log π_ref) of each side

The assignment's functions (run_response_logps, run_dpo_step) and checks are in lesson15_dpo_step.py.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from minift.align.dpo import dpo_loss

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def _four(pc, pr, rc, rr):
    return tuple(tensor_arg(n, t) for n, t in (("policy_chosen_logps", pc), ("policy_rejected_logps", pr),
                                            ("ref_chosen_logps", rc), ("ref_rejected_logps", rr)))


def run_dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
                 loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """The per-pair losses of `minift.align.dpo.dpo_loss` (differentiable in the policy log-probs):

        h = (policy_chosen − ref_chosen) − (policy_rejected − ref_rejected)
        sigmoid: −(1 − ε) log σ(β h) − ε log σ(−β h)      (ε = label_smoothing; 0 is the paper's DPO)
        ipo:     (h − 1 / (2 β))²
        hinge:   max(0, 1 − β h)

    All four log-prob tensors (B,); beta > 0. Returns (B,)."""
    losses, _, _ = dpo_loss(*_four(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps),
                            beta, loss_type, label_smoothing)
    return losses


def run_dpo_rewards(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """The implicit rewards of `dpo_loss`, stacked: row 0 = β (policy_chosen − ref_chosen), row 1 =
    β (policy_rejected − ref_rejected). All four (B,); beta > 0. Returns (2, B)."""
    _, rw, rl = dpo_loss(*_four(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps),
                         beta)
    return torch.stack([rw, rl])


# ---- the checks ----------------------------------------------------------------------------------

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


def _loss_matches_formula(name: str, loss_type: str, eps_values, description: str) -> None:
    """Register check `name`: run_dpo_loss(..., loss_type, label_smoothing=eps) against its float64 formula."""
    def prop(loss, x, beta, eps):
        what = f"run_dpo_loss(pc, pr, rc, rr, beta={beta}, loss_type={loss_type!r}, label_smoothing={eps})"
        y = output(loss(*(tensor(a) for a in x), beta, loss_type=loss_type, label_smoothing=eps), x[0].shape, what)
        h = _h64(*x)
        assert_close(y, _expected(h, beta, loss_type, eps), f"{what} vs the float64 formula",
                     atol=_atol(beta, h, loss_type), rtol=1e-5)
    prop.__name__ = prop.__qualname__ = name
    property_check("run_dpo_loss", lesson=15, examples=60, description=description,
                   x=_logps(), beta=BETAS, eps=st.sampled_from(eps_values))(prop)


_loss_matches_formula("dpo_sigmoid_matches_formula", "sigmoid", [0.0],
                      "loss_type='sigmoid', label_smoothing=0 is the DPO loss −log σ(β h), h = (pc − rc) − "
                      "(pr − rr), in float64 (log-probs in [−40, 0], β in {0.01 .. 2}).")
_loss_matches_formula("cdpo_matches_formula", "sigmoid", [0.0, 0.1, 0.25, 0.4],
                      "label_smoothing ε (conservative DPO) gives −(1 − ε) log σ(β h) − ε log σ(−β h), in "
                      "float64 (ε in {0, 0.1, 0.25, 0.4}); ε = 0 is the plain loss.")
_loss_matches_formula("ipo_matches_formula", "ipo", [0.0], "loss_type='ipo' is (h − 1/(2β))², in float64.")
_loss_matches_formula("hinge_matches_formula", "hinge", [0.0], "loss_type='hinge' (SLiC) is max(0, 1 − β h), in float64.")


@property_check("run_dpo_loss", "run_dpo_rewards", lesson=15, examples=40, x=_logps(), beta=BETAS,
                eps=st.sampled_from([0.0, 0.1, 0.3]))
def dpo_at_reference(loss, rewards, x, beta, eps):
    """when the policy equals the reference (h = 0) every pair's loss is log 2 for 'sigmoid' (any ε),
    1/(4β²) for 'ipo' and 1 for 'hinge'; the implicit rewards are 0."""
    c, r = x[0], x[1]                                      # π = π_ref on both sides
    for lt, e, expected in (("sigmoid", eps, np.log(2.0)), ("ipo", 0.0, 1 / (4 * beta ** 2)), ("hinge", 0.0, 1.0)):
        what = f"run_dpo_loss(c, r, c, r, beta={beta}, loss_type={lt!r}, label_smoothing={e})"
        y = output(loss(tensor(c), tensor(r), tensor(c), tensor(r), beta, loss_type=lt, label_smoothing=e), c.shape, what)
        assert_close(y, np.full(c.shape, expected), what, atol=1e-6, rtol=1e-6)
    w = output(rewards(tensor(c), tensor(r), tensor(c), tensor(r), beta), (2,) + c.shape, f"run_dpo_rewards(c, r, c, r, beta={beta})")
    assert_close(w, np.zeros_like(w), "the implicit rewards when the policy equals the reference", atol=1e-7, rtol=0)


@property_check("run_dpo_loss", lesson=15, examples=40, x=_logps(-200.0, 0.0),
                beta=st.sampled_from([1.0, 2.0]))
def dpo_sigmoid_stable_for_large_margins(loss, x, beta):
    """the sigmoid loss is numerically stable: for |β h| up to 400 it equals log(1 + exp(−β h)) (≈ −β h
    when β h << 0, ≈ 0 when β h >> 0), finite, never inf or NaN."""
    what = f"run_dpo_loss(pc, pr, rc, rr, beta={beta}) with log-probs down to −200"
    y = output(loss(*(tensor(a) for a in x), beta), x[0].shape, what)
    h = _h64(*x)
    assert_close(y, _expected(h, beta, "sigmoid"), what, atol=1e-6 + beta * 4 * 2.0 ** -24 * 200 * 4, rtol=1e-5)


@property_check("run_dpo_loss", lesson=15, examples=40, x=_logps(), beta=BETAS,
                lt=st.sampled_from(["sigmoid", "ipo", "hinge"]))
def dpo_swap_mirrors(loss, x, beta, lt):
    """swapping chosen and rejected (on the policy and the reference) gives the mirrored loss L(−h)
    of each variant; for 'sigmoid', L(swapped) − L = β h."""
    pc, pr, rc, rr = x
    what = f"run_dpo_loss with chosen and rejected swapped, beta={beta}, loss_type={lt!r}"
    y = output(loss(tensor(pr), tensor(pc), tensor(rr), tensor(rc), beta, loss_type=lt), pc.shape, what)
    h = _h64(*x)
    assert_close(y, _expected(-h, beta, lt), f"{what} vs L(−h)", atol=_atol(beta, h, lt), rtol=1e-5)
    if lt == "sigmoid":
        y0 = output(loss(*(tensor(a) for a in x), beta), pc.shape, "run_dpo_loss(pc, pr, rc, rr)")
        assert_close(y - y0, beta * h, "L(swapped) − L vs β h", atol=2 * _atol(beta, h, lt), rtol=1e-4)


@property_check("run_dpo_loss", lesson=15, examples=40, x=_logps(-20.0, 0.0), beta=BETAS,
                eps=st.sampled_from([0.0, 0.1, 0.3]))
def dpo_gradient(loss, x, beta, eps):
    """the gradient of Σ loss w.r.t. the policy's chosen log-prob is −β[(1−ε)σ(−βh) − εσ(βh)] (< 0 for
    ε = 0: descent raises log π(y_w|x)) and exactly minus that w.r.t. the rejected one;
    the reference log-probs get none through the policy terms."""
    pc, pr = tensor(x[0]).requires_grad_(True), tensor(x[1]).requires_grad_(True)
    y = loss(pc, pr, tensor(x[2]), tensor(x[3]), beta, label_smoothing=eps)
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        raise AssertionError("run_dpo_loss must return a tensor with a gradient w.r.t. the policy log-probs "
                             "(compute it with torch operations on the inputs)")
    y.sum().backward()
    h = _h64(*x)
    g = -beta * ((1 - eps) * _sigmoid64(-beta * h) - eps * _sigmoid64(beta * h))
    tol = 1e-6 + beta ** 2 * 4 * 2.0 ** -24 * 20 * 4
    assert_close(output(pc.grad, pc.shape, "d Σ loss / d policy_chosen_logps"), g,
                 f"d Σ loss / d policy_chosen_logps (beta={beta}, ε={eps})", atol=tol, rtol=1e-4)
    assert_close(output(pr.grad, pr.shape, "d Σ loss / d policy_rejected_logps"), -g,
                 f"d Σ loss / d policy_rejected_logps (beta={beta}, ε={eps})", atol=tol, rtol=1e-4)


@property_check("run_dpo_rewards", lesson=15, examples=40, x=_logps(), beta=BETAS)
def dpo_rewards_are_beta_log_ratios(rewards, x, beta):
    """run_dpo_rewards returns the implicit rewards [β (pc − rc), β (pr − rr)] as a (2, B) float32
    tensor (compared with the float64 formula)."""
    pc, pr, rc, rr = (a.astype(np.float64) for a in x)
    y = output(rewards(*(tensor(a) for a in x), beta), (2,) + x[0].shape, f"run_dpo_rewards(pc, pr, rc, rr, beta={beta})")
    assert_close(y, np.stack([beta * (pc - rc), beta * (pr - rr)]), "run_dpo_rewards vs β (log π − log π_ref)",
                 atol=1e-6 + beta * 4 * 2.0 ** -24 * 40, rtol=1e-5)
