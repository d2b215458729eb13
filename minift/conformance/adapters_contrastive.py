"""Reference `run_*` adapters of lesson 16, contrastive learning (minift/align/contrastive.py): plain
tensors and hyperparameters in, tensors out.

    run_info_nce(a, b, temperature, negatives, symmetric)   mean_i -log softmax_j(cos(a_i, [b; n]_j)/τ)[i]
    run_sentence_embedding(h, attention_mask, pooling)      mean of h over real tokens, or the last real one

`adapters.py` re-exports everything in `__all__`, so `minift.conformance.adapters` stays the one
reference implementation that `--impl` replaces.
"""
from __future__ import annotations

from typing import Optional

import torch

from minift.align.contrastive import info_nce, pool

__all__: list[str] = ["run_info_nce", "run_sentence_embedding"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def run_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05,
                 negatives: Optional[torch.Tensor] = None, symmetric: bool = False) -> torch.Tensor:
    """InfoNCE with in-batch negatives over cosine similarities, as `minift.align.contrastive.info_nce`:

        ℓ_i = -log exp(cos(a_i, b_i)/τ) / [Σ_j exp(cos(a_i, b_j)/τ) + Σ_k exp(cos(a_i, n_k)/τ)]
        L = mean_i ℓ_i;   symmetric: (L + L_{b -> a}) / 2, the b -> a direction over the a_j only

    a, b: (N, C), row i of b the positive of row i of a; negatives: None or (M, C). Returns a
    0-dim tensor. Uninformative (all equal) embeddings give log(N + M)."""
    a, b = _tensor("a", a), _tensor("b", b)
    if negatives is not None:
        negatives = _tensor("negatives", negatives)
    with torch.no_grad():
        return info_nce(a, b, temperature, negatives, symmetric)


def run_sentence_embedding(h: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "last") -> torch.Tensor:
    """One vector per sequence from hidden states h (B, T, C) and attention_mask (B, T) (1 = real):
    pooling="mean": Σ_t m_t h_t / Σ_t m_t; pooling="last": h at the last position with m_t = 1.
    What sits at padded positions never matters. Returns (B, C)."""
    h, attention_mask = _tensor("h", h), _tensor("attention_mask", attention_mask)
    with torch.no_grad():
        return pool(h, attention_mask, pooling)
