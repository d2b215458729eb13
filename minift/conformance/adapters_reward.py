"""Reference `run_*` adapters of lesson 14, reward models (minift/align/reward.py): plain tensors and
hyperparameters in, tensors out.

    run_reward_loss(r_chosen, r_rejected, margin=0.0)     −log σ(r_w − r_l − m) per pair        (B,)
    run_reward_at_last_token(hidden, attention_mask, w, b)  w · h[b, last real token] + b       (B,)

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

import torch

from minift.align.reward import reward_loss
from minift.heads import last_real_index

__all__: list[str] = ["run_reward_loss", "run_reward_at_last_token"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def run_reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The Bradley–Terry loss of `minift.align.reward.reward_loss`, per pair:
    −log σ(r_chosen − r_rejected − margin). r_chosen, r_rejected: (B,). Returns (B,)."""
    return reward_loss(_tensor("r_chosen", r_chosen), _tensor("r_rejected", r_rejected), float(margin))


def run_reward_at_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor, w: torch.Tensor,
                             b: torch.Tensor) -> torch.Tensor:
    """The scalar head of `RewardModel.forward` on given final hidden states: w · h[i, t_i] + b, with
    t_i the LAST position whose attention_mask is 1 (left, right or no padding).
    hidden: (B, T, C); attention_mask: (B, T) of 0/1, every row with a 1; w: (C,); b: () or (1,). Returns (B,)."""
    hidden, attention_mask, w, b = (_tensor(n, t) for n, t in (("hidden", hidden), ("attention_mask", attention_mask),
                                                               ("w", w), ("b", b)))
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]) or tuple(w.shape) != hidden.shape[2:]:
        raise ValueError(f"run_reward_at_last_token: expected hidden (B, T, C), attention_mask (B, T), w (C,); got "
                         f"{tuple(hidden.shape)}, {tuple(attention_mask.shape)}, {tuple(w.shape)}")
    B, T, _ = hidden.shape
    last = last_real_index(attention_mask, B, T, hidden.device)                    # (B,)
    return hidden[torch.arange(B), last] @ w + b.reshape(())
