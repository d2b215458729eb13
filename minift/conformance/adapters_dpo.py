"""Reference `run_*` adapters of lesson 15, DPO and its variants (minift/align/dpo.py): plain tensors and
hyperparameters in, tensors out.

    run_dpo_loss(pc, pr, rc, rr, beta, loss_type="sigmoid", label_smoothing=0.0)    per-pair loss (B,)
        h = (pc − rc) − (pr − rr);  sigmoid: −(1−ε) log σ(βh) − ε log σ(−βh);  ipo: (h − 1/(2β))²;
        hinge: max(0, 1 − βh)
    run_dpo_rewards(pc, pr, rc, rr, beta)       the implicit rewards [β (pc − rc), β (pr − rr)]   (2, B)

pc, pr: the policy's log π(y_w|x), log π(y_l|x); rc, rr: the reference's; all (B,).
`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

import torch

from minift.align.dpo import dpo_loss

__all__: list[str] = ["run_dpo_loss", "run_dpo_rewards"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _four(pc, pr, rc, rr):
    return tuple(_tensor(n, t) for n, t in (("policy_chosen_logps", pc), ("policy_rejected_logps", pr),
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
