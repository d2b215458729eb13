"""Reference `run_*` adapters of lesson 17, distillation (minift/align/distill.py): plain tensors
and hyperparameters in, tensors out, computed by minift's own functions.

    run_distill_loss(student_logits, teacher_logits, mask, temperature, divergence, beta)
        T² D(softmax(t / T), softmax(s / T)) averaged over the positions where mask == 1;
        D = forward KL(p ‖ q), reverse KL(q ‖ p) or JSD_β (β = 0: forward, β = 1: reverse)
    run_kd_loss(student_logits, teacher_logits, labels, alpha, temperature)
        Hinton's mixture α T² KL(p ‖ q) + (1 - α) CE(labels, softmax(s)), soft term over the
        labelled positions (labels != -100)

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

import torch

from minift.align.distill import distill_loss, kd_loss
from minift.model import IGNORE_INDEX

__all__: list[str] = ["run_distill_loss", "run_kd_loss"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def run_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask=None,
                     temperature: float = 1.0, divergence: str = "forward", beta: float = 0.5) -> torch.Tensor:
    """The soft-target loss of `minift.align.distill.distill_loss`. student_logits, teacher_logits:
    (N, K) float; mask: (N,) of 0/1 or None (every row). Returns a scalar, differentiable in the
    student's logits."""
    s, t = _tensor("student_logits", student_logits), _tensor("teacher_logits", teacher_logits)
    return distill_loss(s, t, None if mask is None else _tensor("mask", mask), temperature, divergence, beta)


def run_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                alpha: float = 0.5, temperature: float = 2.0) -> torch.Tensor:
    """Hinton's mixture of `minift.align.distill.kd_loss` with the forward KL, the soft term over
    the rows whose label is not -100. logits: (N, K); labels: (N,) long. Returns a scalar."""
    s, t, y = _tensor("student_logits", student_logits), _tensor("teacher_logits", teacher_logits), \
        _tensor("labels", labels)
    return kd_loss(s, t, y, y != IGNORE_INDEX, alpha, temperature, "forward")
