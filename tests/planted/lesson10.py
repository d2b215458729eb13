"""Planted bugs for lesson 10 (LoReFT): buggy copies of the reference `run_*` functions, one
plausible learner mistake each. tests/test_planted.py swaps each into the reference and asserts that
the checks of its run_* function catch it. Do not copy from this file.
"""
import torch

from minift.conformance import reference as ref


def run_loreft__expanded(h, R, W, b):
    """expands the product, h + h Wᵀ R + b R − h Rᵀ R: the same algebra, but W = R is no longer exactly h."""
    return h + h @ W.T @ R + b @ R - h @ R.T @ R


def run_loreft__maps_back_with_w(h, R, W, b):
    """maps the coordinates back with W instead of R: h + (h Wᵀ + b − h Rᵀ) W."""
    return h + (h @ W.T + b - h @ R.T) @ W


def run_loreft__no_bias(h, R, W, b):
    """forgets the bias b."""
    return ref.run_loreft(h, R, W, torch.zeros_like(b))


def run_loreft__sign_flipped(h, R, W, b):
    """subtracts the edit: h − Rᵀ (W h + b − R h)."""
    return 2 * h - ref.run_loreft(h, R, W, b)


def run_orthonormal_rows__qr_without_signs(A):
    """takes Q from the QR of Aᵀ without fixing the signs, so some rows come out negated."""
    return torch.linalg.qr(A.T)[0].T.contiguous()


def run_orthonormal_rows__not_normalised(A):
    """subtracts the projections but forgets to divide by the norm."""
    rows = []
    for a in A:
        u = a.clone()
        for q in rows:
            u = u - (u @ q) / (q @ q) * q
        rows.append(u)
    return torch.stack(rows)


def run_orthonormal_rows__normalise_only(A):
    """normalises each row without removing its projections on the earlier rows."""
    return A / A.norm(dim=1, keepdim=True)
