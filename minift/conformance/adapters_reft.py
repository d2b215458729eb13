"""Reference `run_*` adapters of lesson 10 (LoReFT): plain tensors and hyperparameters in,
tensors out, computed by minift's own module (`minift/peft/reft.py`).

    run_loreft(h, R, W, b)          h + (h W^T + b - h R^T) R        Φ(h) = h + Rᵀ(W h + b − R h), rows h
    run_orthonormal_rows(A)         R with R Rᵀ = I and A = L R, L lower triangular, diag(L) > 0

`adapters.py` re-exports everything in `__all__`, so `minift.conformance.adapters` stays the one
reference implementation that `--impl` replaces.
"""
from __future__ import annotations

import torch

from minift.peft.reft import loreft, orthonormal_rows

__all__: list[str] = ["run_loreft", "run_orthonormal_rows"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def run_loreft(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LoReFT (Wu et al., 2024) on row vectors, as `minift.peft.reft.ReFTLayer` edits a hidden state:

        Φ(h) = h + Rᵀ (W h + b − R h)      in rows: h + (h Wᵀ + b − h Rᵀ) R

    h: (N, C); R, W: (r, C), R with orthonormal rows (used as given, not re-orthonormalised); b: (r,).
    Returns (N, C). With W = R and b = 0 the output is h exactly."""
    h, R, W, b = _tensor("h", h), _tensor("R", R), _tensor("W", W), _tensor("b", b)
    C = h.shape[-1] if h.dim() else -1
    r = R.shape[0] if R.dim() == 2 else -1
    if h.dim() != 2 or tuple(R.shape) != (r, C) or tuple(W.shape) != (r, C) or tuple(b.shape) != (r,) or r < 1:
        raise ValueError(f"run_loreft: expected h (N, C), R (r, C), W (r, C), b (r,); got {tuple(h.shape)}, "
                         f"{tuple(R.shape)}, {tuple(W.shape)}, {tuple(b.shape)}")
    with torch.no_grad():
        return loreft(h, R.to(h.dtype), W.to(h.dtype), b.to(h.dtype))


def run_orthonormal_rows(A: torch.Tensor) -> torch.Tensor:
    """Gram–Schmidt on the rows of a full-rank A (r, C), r <= C, as `minift.peft.reft.orthonormal_rows`
    turns ReFTLayer.R_raw into R: the unique R (r, C) with R Rᵀ = I_r and A = L R, L lower triangular
    with a positive diagonal (row i of R is row i of A minus its projection on rows 0..i-1, normalised)."""
    A = _tensor("A", A)
    if A.dim() != 2 or not 1 <= A.shape[0] <= A.shape[1]:
        raise ValueError(f"run_orthonormal_rows: A must be (r, C) with 1 <= r <= C, got {tuple(A.shape)}")
    with torch.no_grad():
        return orthonormal_rows(A)
