"""Conformance checks of lesson 10 (LoReFT), registered into `checks.CHECKS` with
lesson="lesson10". Expected values are computed here independently (float64 numpy or a
textbook construction), never by calling minift's reference adapters.

    run_loreft(h, R, W, b)     Φ(h) = h + Rᵀ(W h + b − R h) in float64; W = R, b = 0 is h exactly;
                               Φ(h) − h lies in the row space of R; R Φ(h) = W h + b
    run_orthonormal_rows(A)    Gram–Schmidt on the rows of A (textbook loop, float64); R Rᵀ = I and
                               the rows of A lie in the span of R's rows
"""
from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
from .strategies import MAX_B, MAX_D, arrays, check_settings, f32


def _gram_schmidt64(A: np.ndarray) -> np.ndarray:
    """Modified Gram–Schmidt on the rows of A, in float64: row i minus its projections on the
    rows already done, normalised. Returns Q (r, C) with A = L Q, L lower triangular, diag > 0."""
    Q = []
    for a in np.asarray(A, np.float64):
        v = a.copy()
        for q in Q:
            v = v - (v @ q) * q
        Q.append(v / np.linalg.norm(v))
    return np.array(Q).reshape(np.shape(A))


def _cond(A: np.ndarray) -> float:
    s = np.linalg.svd(np.asarray(A, np.float64), compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")


@st.composite
def _matrix(draw, min_c=1):
    """A well-conditioned (r, C) float32 matrix, 1 <= r <= C <= MAX_D."""
    C = draw(st.integers(min_c, MAX_D))
    r = draw(st.integers(1, C))
    A = draw(arrays((r, C), f32(-2, 2)))
    assume(np.linalg.norm(A, axis=1).min() > 0.1 and _cond(A) < 50)
    return A


@st.composite
def _loreft_inputs(draw):
    """h (N, C), R (r, C) with orthonormal rows (float32, from float64 Gram–Schmidt), W (r, C), b (r,)."""
    R = _gram_schmidt64(draw(_matrix())).astype(np.float32)
    r, C = R.shape
    n = draw(st.integers(1, 2 * MAX_B))
    return dict(h=draw(arrays((n, C), f32(-3, 3))), R=R, W=draw(arrays((r, C), f32(-2, 2))),
                b=draw(arrays((r,), f32(-2, 2))))


def _call(loreft, inp, W=None, b=None):
    W = inp["W"] if W is None else W
    b = inp["b"] if b is None else b
    what = f"run_loreft(h {inp['h'].shape}, R {inp['R'].shape}, W, b)"
    return _out(loreft(_t(inp["h"]), _t(inp["R"]), _t(W), _t(b)), inp["h"].shape, what), what


def _bound(inp):
    """|h| + (|h| (|W| + |R|)ᵀ + |b|) |R|: the size of every term, for a float32 tolerance."""
    h, R, W, b = (np.abs(inp[k].astype(np.float64)) for k in ("h", "R", "W", "b"))
    return h + (h @ (W + R).T + b) @ R


@_register("run_loreft", "run_loreft(h, R, W, b) equals Φ(h) = h + Rᵀ(W h + b − R h), i.e. h + (h Wᵀ + b − h Rᵀ) R "
           "for rows h (N, C), in float64 (R (r, C) with orthonormal rows, W (r, C), b (r,)).", lesson="lesson10")
def check_loreft_matches_formula(impl):
    loreft = _adapter(impl, "run_loreft")

    @check_settings(60)
    @given(inp=_loreft_inputs())
    def loreft_matches_formula(inp):
        h, R, W, b = (inp[k].astype(np.float64) for k in ("h", "R", "W", "b"))
        expected = h + (h @ W.T + b - h @ R.T) @ R                         # (N, C)
        y, what = _call(loreft, inp)
        _assert_close(y, expected, f"{what} vs h + (h Wᵀ + b − h Rᵀ) R", atol=1e-5 * _bound(inp) + 1e-6, rtol=0)
    _run(loreft_matches_formula)


@_register("run_loreft", "LoReFT's initialisation W = R, b = 0 is an exact no-op: run_loreft(h, R, R, 0) returns h "
           "bit for bit (compute W h + b − R h first: it is exactly 0).", lesson="lesson10")
def check_loreft_w_equals_r_is_identity(impl):
    loreft = _adapter(impl, "run_loreft")

    @check_settings(40)
    @given(inp=_loreft_inputs())
    def loreft_w_equals_r_is_identity(inp):
        y, what = _call(loreft, inp, W=inp["R"].copy(), b=np.zeros_like(inp["b"]))
        _assert_close(y, inp["h"], f"{what.replace('W, b', 'W=R, b=0')} vs h (the edit is exactly 0)", atol=0, rtol=0)
    _run(loreft_w_equals_r_is_identity)


@_register("run_loreft", "the edit lives in the subspace: Φ(h) − h lies in the row space of R (projecting it onto "
           "that space, (Φ(h) − h) Rᵀ R, changes nothing).", lesson="lesson10")
def check_loreft_edit_in_row_space(impl):
    loreft = _adapter(impl, "run_loreft")

    @check_settings(40)
    @given(inp=_loreft_inputs())
    def loreft_edit_in_row_space(inp):
        y, what = _call(loreft, inp)
        R = inp["R"].astype(np.float64)
        d = y - inp["h"].astype(np.float64)                                # (N, C)
        residual = d - d @ R.T @ R                                         # the part outside span(R)
        _assert_close(residual, np.zeros_like(d), f"{what}: (Φ(h) − h) minus its projection on the rows of R",
                      atol=2e-5 * _bound(inp) + 1e-6, rtol=0)
    _run(loreft_edit_in_row_space)


@_register("run_loreft", "inside the subspace the representation becomes the target: R Φ(h) = W h + b (with "
           "R Rᵀ = I), i.e. run_loreft(h, R, W, b) Rᵀ = h Wᵀ + b.", lesson="lesson10")
def check_loreft_subspace_coordinates(impl):
    loreft = _adapter(impl, "run_loreft")

    @check_settings(40)
    @given(inp=_loreft_inputs())
    def loreft_subspace_coordinates(inp):
        y, what = _call(loreft, inp)
        h, R, W, b = (inp[k].astype(np.float64) for k in ("h", "R", "W", "b"))
        tol = 2e-5 * (_bound(inp) @ np.abs(R).T + np.abs(h) @ np.abs(W).T + np.abs(b)) + 1e-6
        _assert_close(y @ R.T, h @ W.T + b, f"{what}: Φ(h) Rᵀ vs h Wᵀ + b", atol=tol, rtol=0)
    _run(loreft_subspace_coordinates)


@_register("run_orthonormal_rows", "run_orthonormal_rows(A) is Gram–Schmidt on the rows of A (r <= C, full rank): "
           "row i minus its projections on rows 0..i-1, normalised; i.e. A = L R, L lower triangular with "
           "a positive diagonal (float64 loop).", lesson="lesson10")
def check_orthonormal_rows_matches_gram_schmidt(impl):
    ortho = _adapter(impl, "run_orthonormal_rows")

    @check_settings(60)
    @given(A=_matrix())
    def orthonormal_rows_matches_gram_schmidt(A):
        what = f"run_orthonormal_rows(A {A.shape})"
        y = _out(ortho(_t(A)), A.shape, what)
        _assert_close(y, _gram_schmidt64(A), f"{what} vs Gram–Schmidt on the rows of A",
                      atol=2e-6 * _cond(A) ** 2 + 1e-6, rtol=0)
    _run(orthonormal_rows_matches_gram_schmidt)


@_register("run_orthonormal_rows", "R = run_orthonormal_rows(A) has orthonormal rows (R Rᵀ = I) that span the rows "
           "of A (A Rᵀ R = A).", lesson="lesson10")
def check_orthonormal_rows_orthonormal_and_spanning(impl):
    ortho = _adapter(impl, "run_orthonormal_rows")

    @check_settings(40)
    @given(A=_matrix())
    def orthonormal_rows_orthonormal_and_spanning(A):
        what = f"run_orthonormal_rows(A {A.shape})"
        R = _out(ortho(_t(A)), A.shape, what)
        _assert_close(R @ R.T, np.eye(A.shape[0]), f"{what}: R Rᵀ vs I", atol=1e-5, rtol=0)
        A64 = A.astype(np.float64)
        _assert_close(A64 @ R.T @ R, A64, f"{what}: A Rᵀ R vs A (the rows of A in the span of R)",
                      atol=1e-5 * np.abs(A64).sum(1, keepdims=True) * A.shape[1] + 1e-6, rtol=0)
    _run(orthonormal_rows_orthonormal_and_spanning)
