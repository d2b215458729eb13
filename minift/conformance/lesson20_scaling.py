"""Lesson 20 (scaling laws): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions (scaling laws for fine-tuning, minift/scaling.py).

    run_scaling_law(X, D, A, alpha, beta, E)   L̂ = A X^-α D^-β + E, elementwise (float64)
    run_fit_scaling_law(X, D, L)               (A, alpha, beta, E) fitted to the points (X_i, D_i, L_i)
    run_equivalent_factor(alpha_from, alpha_to, k)   q = k^(α_from / α_to): the growth of one axis that
                                               shrinks L - E as much as k times the other

The checks, registered with lesson="lesson20". Expected values are computed here in numpy float64
from the law's definition.

    run_scaling_law       equals A X^-α D^-β + E elementwise; scaling X by k multiplies L̂ - E by k^-α
    run_fit_scaling_law   on noise-free points of a known law over a 3 x 4 grid of (X, D), the fit
                          gives the law back: its predictions within 1e-4 (relative), α and β
                          within 0.02, E within 2%
    run_equivalent_factor q = k^(α_from/α_to); the law's reducible loss after k on the first axis
                          equals it after q on the second; factors compose: q(k1 k2) = q(k1) q(k2)
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import strategies as st

from minift.scaling import equivalent_factor, fit_scaling_law, predict_loss

from .harness import assert_close, property_check


# ---- the reference functions --------------------------------------------------------------------

def run_scaling_law(X, D, A: float, alpha: float, beta: float, E: float):
    return predict_loss({"A": A, "alpha": alpha, "beta": beta, "E": E}, X, D)


def run_fit_scaling_law(X, D, L) -> tuple:
    f = fit_scaling_law(X, D, L)
    return (f["A"], f["alpha"], f["beta"], f["E"])


def run_equivalent_factor(alpha_from: float, alpha_to: float, k: float = 2.0) -> float:
    return equivalent_factor(alpha_from, alpha_to, k)


# ---- the checks ----------------------------------------------------------------------------------

GRID_X = (1e5, 3.3e5, 8e5)                # model sizes (non-embedding parameters), as in lesson 20
GRID_D = (48.0, 150.0, 480.0, 1500.0)     # fine-tuning examples


def _law64(X, D, A, alpha, beta, E):
    return A * np.asarray(X, np.float64) ** -alpha * np.asarray(D, np.float64) ** -beta + E


def _t64(a) -> torch.Tensor:
    """A fresh float64 tensor: the law spans orders of magnitude, float32 would cost the tolerance."""
    return torch.tensor(np.array(a, dtype=np.float64))


def _floats(y, what):
    try:
        return np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y, np.float64)
    except Exception as e:                                   # noqa: BLE001
        raise AssertionError(f"{what} returned {type(y).__name__}, not numbers: {e}") from None


@property_check("run_scaling_law", lesson=20, examples=40, n=st.integers(1, 6), A=st.floats(0.1, 1e3),
                alpha=st.floats(0.0, 1.5), beta=st.floats(0.0, 1.5), E=st.floats(0.0, 3.0),
                k=st.floats(1.5, 8.0), seed=st.integers(0, 2**16))
def scaling_law_matches_definition(f, n, A, alpha, beta, E, k, seed):
    """L̂ = A X^-α D^-β + E elementwise; L̂(kX, D) - E = k^-α (L̂(X, D) - E)"""
    rng = np.random.default_rng(seed)
    X, D = 10 ** rng.uniform(3, 7, n), 10 ** rng.uniform(0, 5, n)
    what = f"run_scaling_law(X={X.round(1).tolist()}, D={D.round(1).tolist()}, A={A}, alpha={alpha}, beta={beta}, E={E})"
    got = _floats(f(_t64(X), _t64(D), A, alpha, beta, E), what)
    expected = _law64(X, D, A, alpha, beta, E)
    assert_close(got.reshape(expected.shape), expected, what, atol=1e-12, rtol=1e-9)
    scaled = _floats(f(_t64(k * X), _t64(D), A, alpha, beta, E), what).reshape(expected.shape)
    assert_close(scaled - E, (expected - E) * k ** -alpha, f"{what} with X scaled by {k}", atol=1e-12, rtol=1e-9)


@property_check("run_fit_scaling_law", lesson=20, examples=15, logA=st.floats(1.0, 8.0),
                alpha=st.floats(0.1, 0.8), beta=st.floats(0.1, 0.8), E=st.floats(0.1, 2.0))
def fit_recovers_law(f, logA, alpha, beta, E):
    """fitted to noise-free points of A X^-α D^-β + E on a 3 x 4 grid, the fit predicts them within
    1e-4 and recovers α, β within 0.02 and E within 2%"""
    A = float(np.exp(logA))
    pts = list(itertools.product(GRID_X, GRID_D))
    X, D = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    L = _law64(X, D, A, alpha, beta, E)
    red = L - E
    if red.max() / red.min() < 1.5 or red.min() < 1e-3 * E:   # E swamps the power law: not identifiable
        return
    what = f"run_fit_scaling_law on the law A={A:.4g}, alpha={alpha:.4g}, beta={beta:.4g}, E={E:.4g}"
    out = f(_t64(X), _t64(D), _t64(L))
    try:
        A2, a2, b2, E2 = (float(v) for v in out)
    except (TypeError, ValueError):
        raise AssertionError(f"{what}: returned {out!r}, not four numbers (A, alpha, beta, E)") from None
    assert_close(_law64(X, D, A2, a2, b2, E2), L, f"{what}: the fit's predictions (A={A2:.4g}, "
                 f"alpha={a2:.4g}, beta={b2:.4g}, E={E2:.4g})", atol=0, rtol=1e-4)
    if abs(a2 - alpha) > 0.02 or abs(b2 - beta) > 0.02 or abs(E2 - E) > 0.02 * E:
        raise AssertionError(f"{what}: fitted alpha={a2:.4g}, beta={b2:.4g}, E={E2:.4g}")


@property_check("run_equivalent_factor", lesson=20, examples=40, alpha_from=st.floats(-1.0, 1.5),
                alpha_to=st.floats(0.05, 1.5), k=st.floats(1.1, 16.0), k2=st.floats(1.1, 4.0))
def equivalent_factor_matches_the_law(f, alpha_from, alpha_to, k, k2):
    """q = k^(α_from/α_to); k times the first factor and q times the second shrink A X^-α_from P^-α_to
    by the same amount; q(k k2) = q(k) q(k2)"""
    what = f"run_equivalent_factor(alpha_from={alpha_from}, alpha_to={alpha_to}, k={k})"
    try:
        q = float(f(alpha_from, alpha_to, k))
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{what}: did not return one number ({e})") from None
    expected = np.exp(np.log(np.float64(k)) * alpha_from / alpha_to)
    assert_close(np.float64(q), expected, what, atol=0, rtol=1e-9)
    X, P = 3.0e5, 2.0e6                                           # a point of the law: only the ratio matters
    red_model = (k * X) ** -alpha_from * P ** -alpha_to            # the model k times larger
    red_tokens = X ** -alpha_from * (q * P) ** -alpha_to           # q times the pretraining tokens
    assert_close(np.float64(red_tokens), np.float64(red_model), f"{what}={q:.6g}: the reducible loss after k on the "
                 f"first axis and after q on the second", atol=0, rtol=1e-8)
    both = float(f(alpha_from, alpha_to, k * k2))
    assert_close(np.float64(both), np.float64(q) * float(f(alpha_from, alpha_to, k2)),
                 f"run_equivalent_factor(..., k={k * k2:.6g}) against the product for k={k} and k={k2}",
                 atol=0, rtol=1e-9)
