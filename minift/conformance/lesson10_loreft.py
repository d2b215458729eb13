"""Lesson 10 (LoReFT): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions: plain tensors and hyperparameters in, tensors out, computed by
minift's own module (`minift/peft/reft.py`).

    run_loreft(h, R, W, b)          h + (h W^T + b - h R^T) R        Φ(h) = h + Rᵀ(W h + b − R h), rows h
    run_orthonormal_rows(A)         R with R Rᵀ = I and A = G R, G lower triangular, diag(G) > 0

The checks, registered into `CHECKS` with lesson="lesson10". Expected values are computed here
independently (float64 numpy or a textbook construction), never by calling minift's reference
functions.

    run_loreft(h, R, W, b)     Φ(h) = h + Rᵀ(W h + b − R h) in float64; W = R, b = 0 is h exactly;
                               Φ(h) − h lies in the row space of R; R Φ(h) = W h + b
    run_orthonormal_rows(A)    Gram–Schmidt on the rows of A (textbook loop, float64); R Rᵀ = I and
                               the rows of A lie in the span of R's rows
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, strategies as st

from minift.peft.reft import loreft, orthonormal_rows

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def run_loreft(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LoReFT (Wu et al., 2024) on row vectors, as `minift.peft.reft.ReFTLayer` edits a hidden state:

        Φ(h) = h + Rᵀ (W h + b − R h)      in rows: h + (h Wᵀ + b − h Rᵀ) R

    h: (N, C); R, W: (r, C), R with orthonormal rows (used as given, not re-orthonormalised); b: (r,).
    Returns (N, C). With W = R and b = 0 the output is h exactly."""
    h, R, W, b = tensor_arg("h", h), tensor_arg("R", R), tensor_arg("W", W), tensor_arg("b", b)
    C = h.shape[-1] if h.dim() else -1
    r = R.shape[0] if R.dim() == 2 else -1
    if h.dim() != 2 or tuple(R.shape) != (r, C) or tuple(W.shape) != (r, C) or tuple(b.shape) != (r,) or r < 1:
        raise ValueError(f"run_loreft: expected h (N, C), R (r, C), W (r, C), b (r,); got {tuple(h.shape)}, "
                         f"{tuple(R.shape)}, {tuple(W.shape)}, {tuple(b.shape)}")
    with torch.no_grad():
        return loreft(h, R.to(h.dtype), W.to(h.dtype), b.to(h.dtype))


def run_orthonormal_rows(A: torch.Tensor) -> torch.Tensor:
    """Gram–Schmidt on the rows of a full-rank A (r, C), r <= C, as `minift.peft.reft.orthonormal_rows`
    turns ReFTLayer.R_raw into R: the unique R (r, C) with R Rᵀ = I_r and A = G R, G lower triangular
    with a positive diagonal (row i of R is row i of A minus its projection on rows 0..i-1, normalised)."""
    A = tensor_arg("A", A)
    if A.dim() != 2 or not 1 <= A.shape[0] <= A.shape[1]:
        raise ValueError(f"run_orthonormal_rows: A must be (r, C) with 1 <= r <= C, got {tuple(A.shape)}")
    with torch.no_grad():
        return orthonormal_rows(A)


# ---- the checks ----------------------------------------------------------------------------------

def _gram_schmidt64(A: np.ndarray) -> np.ndarray:
    """Modified Gram–Schmidt on the rows of A, in float64: row i minus its projections on the
    rows already done, normalised. Returns Q (r, C) with A = G Q, G lower triangular, diag > 0."""
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
def _loreft_inputs(draw, edit=True):
    """h (N, C), R (r, C) with orthonormal rows (float32, from float64 Gram–Schmidt), and with
    edit=True W (r, C), b (r,) (a check that sets W and b itself draws only h and R)."""
    R = _gram_schmidt64(draw(_matrix())).astype(np.float32)
    r, C = R.shape
    n = draw(st.integers(1, 2 * MAX_B))
    inp = dict(h=draw(arrays((n, C), f32(-3, 3))), R=R)
    if edit:
        inp.update(W=draw(arrays((r, C), f32(-2, 2))), b=draw(arrays((r,), f32(-2, 2))))
    return inp


def _call(loreft, inp, W=None, b=None):
    W = inp["W"] if W is None else W
    b = inp["b"] if b is None else b
    what = f"run_loreft(h {inp['h'].shape}, R {inp['R'].shape}, W, b)"
    return output(loreft(tensor(inp["h"]), tensor(inp["R"]), tensor(W), tensor(b)), inp["h"].shape, what), what


def _bound(inp):
    """|h| + (|h| (|W| + |R|)ᵀ + |b|) |R|: the size of every term, for a float32 tolerance."""
    h, R, W, b = (np.abs(inp[k].astype(np.float64)) for k in ("h", "R", "W", "b"))
    return h + (h @ (W + R).T + b) @ R


@property_check("run_loreft", lesson=10, examples=60, inp=_loreft_inputs())
def loreft_matches_formula(loreft, inp):
    """run_loreft(h, R, W, b) equals Φ(h) = h + Rᵀ(W h + b − R h), i.e. h + (h Wᵀ + b − h Rᵀ) R for
    rows h (N, C), in float64 (R (r, C) with orthonormal rows, W (r, C), b (r,))."""
    h, R, W, b = (inp[k].astype(np.float64) for k in ("h", "R", "W", "b"))
    expected = h + (h @ W.T + b - h @ R.T) @ R                         # (N, C)
    y, what = _call(loreft, inp)
    assert_close(y, expected, f"{what} vs h + (h Wᵀ + b − h Rᵀ) R", atol=1e-5 * _bound(inp) + 1e-6, rtol=0)


@property_check("run_loreft", lesson=10, examples=40, inp=_loreft_inputs(edit=False))
def loreft_w_equals_r_is_identity(loreft, inp):
    """LoReFT's initialisation W = R, b = 0 is an exact no-op: run_loreft(h, R, R, 0) returns h bit for
    bit (compute W h + b − R h first: it is exactly 0)."""
    y, what = _call(loreft, inp, W=inp["R"].copy(), b=np.zeros(inp["R"].shape[0], np.float32))
    assert_close(y, inp["h"], f"{what.replace('W, b', 'W=R, b=0')} vs h (the edit is exactly 0)", atol=0, rtol=0)


@property_check("run_loreft", lesson=10, examples=40, inp=_loreft_inputs())
def loreft_edit_in_row_space(loreft, inp):
    """the edit lives in the subspace: Φ(h) − h lies in the row space of R (projecting it onto that
    space, (Φ(h) − h) Rᵀ R, changes nothing)."""
    y, what = _call(loreft, inp)
    R = inp["R"].astype(np.float64)
    d = y - inp["h"].astype(np.float64)                                # (N, C)
    residual = d - d @ R.T @ R                                         # the part outside span(R)
    assert_close(residual, np.zeros_like(d), f"{what}: (Φ(h) − h) minus its projection on the rows of R",
                 atol=2e-5 * _bound(inp) + 1e-6, rtol=0)


@property_check("run_loreft", lesson=10, examples=40, inp=_loreft_inputs())
def loreft_subspace_coordinates(loreft, inp):
    """inside the subspace the representation becomes the target: R Φ(h) = W h + b (with R Rᵀ = I),
    i.e. run_loreft(h, R, W, b) Rᵀ = h Wᵀ + b."""
    y, what = _call(loreft, inp)
    h, R, W, b = (inp[k].astype(np.float64) for k in ("h", "R", "W", "b"))
    tol = 2e-5 * (_bound(inp) @ np.abs(R).T + np.abs(h) @ np.abs(W).T + np.abs(b)) + 1e-6
    assert_close(y @ R.T, h @ W.T + b, f"{what}: Φ(h) Rᵀ vs h Wᵀ + b", atol=tol, rtol=0)


@property_check("run_orthonormal_rows", lesson=10, examples=60, A=_matrix())
def orthonormal_rows_matches_gram_schmidt(ortho, A):
    """run_orthonormal_rows(A) is Gram–Schmidt on the rows of A (r <= C, full rank): row i minus its
    projections on rows 0..i-1, normalised; i.e. A = G R, G lower triangular with a positive
    diagonal (float64 loop)."""
    what = f"run_orthonormal_rows(A {A.shape})"
    y = output(ortho(tensor(A)), A.shape, what)
    assert_close(y, _gram_schmidt64(A), f"{what} vs Gram–Schmidt on the rows of A",
                 atol=2e-6 * _cond(A) ** 2 + 1e-6, rtol=0)


@property_check("run_orthonormal_rows", lesson=10, examples=40, A=_matrix())
def orthonormal_rows_orthonormal_and_spanning(ortho, A):
    """R = run_orthonormal_rows(A) has orthonormal rows (R Rᵀ = I) that span the rows of A (A Rᵀ R
    = A)."""
    what = f"run_orthonormal_rows(A {A.shape})"
    R = output(ortho(tensor(A)), A.shape, what)
    assert_close(R @ R.T, np.eye(A.shape[0]), f"{what}: R Rᵀ vs I", atol=1e-5, rtol=0)
    A64 = A.astype(np.float64)
    assert_close(A64 @ R.T @ R, A64, f"{what}: A Rᵀ R vs A (the rows of A in the span of R)",
                 atol=1e-5 * np.abs(A64).sum(1, keepdims=True) * A.shape[1] + 1e-6, rtol=0)
