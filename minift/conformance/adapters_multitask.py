"""Reference `run_*` adapters of lesson 18, multitask and sequential fine-tuning (minift/align/multitask.py):
plain tensors and hyperparameters in, tensors out. `adapters.py` re-exports everything in `__all__`.

    run_mixture_weights(sizes, temperature, cap)   p_i = min(n_i, K)^(1/T) / Σ_j min(n_j, K)^(1/T)   (K,)
    run_sample_mixture(weights, sizes, n, seed)     n draws (task, example): task ~ weights, examples in epochs  (n, 2)
    run_forgetting(R)                               f_j = max_{l<K-1} R[l, j] - R[K-1, j], j < K-1   (K-1,)
    run_backward_transfer(R)                        BWT = mean_{j<K-1} (R[K-1, j] - R[j, j])          ()
    run_example_loss(logits, targets)               mean over examples of each one's mean token NLL   ()
"""
from __future__ import annotations

import torch

from minift.align.multitask import backward_transfer, forgetting, mixture_weights, per_example_nll, sample_mixture

__all__: list[str] = ["run_mixture_weights", "run_sample_mixture", "run_forgetting", "run_backward_transfer",
                      "run_example_loss"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _sizes(fn: str, sizes) -> list[int]:
    sizes = _tensor("sizes", sizes)
    if sizes.dim() != 1:
        raise ValueError(f"{fn}: sizes must be 1-D (K,), got shape {tuple(sizes.shape)}")
    return [int(n) for n in sizes.tolist()]


def run_mixture_weights(sizes: torch.Tensor, temperature: float = 1.0, cap=None) -> torch.Tensor:
    """Mixing weights of K task sets of sizes n_i (a (K,) integer tensor, every n_i >= 1):
    p_i ∝ min(n_i, cap)^(1/temperature); temperature > 0 (math.inf: equal), cap None or >= 1.
    Returns (K,) float64 summing to 1."""
    t = temperature.item() if isinstance(temperature, torch.Tensor) else temperature
    p = mixture_weights(_sizes("run_mixture_weights", sizes), t, cap)
    return torch.tensor(p, dtype=torch.float64)


def run_sample_mixture(weights: torch.Tensor, sizes: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n draws from K task sets: row k = (task index, example index). The task is drawn with
    probability weights[i] / Σ weights; within a task, examples come in epochs (each pass a fresh
    permutation of 0..sizes[i]-1). The same seed gives the same draws. Returns (n, 2) int64."""
    w = _tensor("weights", weights)
    sz = _sizes("run_sample_mixture", sizes)
    if tuple(w.shape) != (len(sz),):
        raise ValueError(f"run_sample_mixture: weights must be ({len(sz)},) like sizes, got {tuple(w.shape)}")
    names = [str(i) for i in range(len(sz))]
    draws = sample_mixture(dict(zip(names, sz)), dict(zip(names, w.tolist())), int(n), int(seed))
    return torch.tensor([[int(t), i] for t, i in draws], dtype=torch.int64).reshape(-1, 2)


def run_forgetting(R: torch.Tensor) -> torch.Tensor:
    """R: (K, K) score matrix, R[i, j] = score of task j after stage i (task j trained at stage j).
    Returns (K-1,): f_j = max over the rows before the last of R[l, j], minus R[K-1, j]."""
    return forgetting(_tensor("R", R)).to(R.dtype if R.is_floating_point() else torch.float64)


def run_backward_transfer(R: torch.Tensor) -> torch.Tensor:
    """R: (K, K). Returns the scalar (1/(K-1)) Σ_{j<K-1} (R[K-1, j] - R[j, j])."""
    return backward_transfer(_tensor("R", R)).to(R.dtype if R.is_floating_point() else torch.float64)


def run_example_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits: (B, T, V); targets: (B, T) int64, -100 where no loss is taken. Each example with at
    least one target contributes its mean NLL over its targets; returns the mean over those examples."""
    return per_example_nll(_tensor("logits", logits), _tensor("targets", targets))
