"""Reference `run_*` adapters of lesson 08 (prompt tuning): plain tensors and hyperparameters in,
tensors out, computed by minift's own module (`minift/peft/prompt.py`).

    run_soft_prompt(embeds, prompt, attention_mask)   ([P ; embeds], [1 ; mask])   (B, n+T, C), (B, n+T)
    run_prompt_init_from_text(token_embeds, n)         P_i = E[i mod m]: the text cut or repeated to n rows
    run_prompt_positions(attention_mask, n)            positions 0..n-1 for P, real tokens counted on from n
    run_prompt_loss(logits, targets, n)                next-token loss of the prompted logits, P skipped

`adapters.py` re-exports everything in `__all__`, so `minift.conformance.adapters` stays the one
reference implementation that `--impl` replaces.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import IGNORE_INDEX, at_least_fp32
from ..peft.prompt import prepend_soft_prompt, prompt_positions, text_init_rows

__all__: list[str] = ["run_soft_prompt", "run_prompt_init_from_text", "run_prompt_positions", "run_prompt_loss"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be an integer >= 0 (the number of virtual tokens)")
    return n


def run_soft_prompt(embeds: torch.Tensor, prompt: torch.Tensor, attention_mask: torch.Tensor):
    """What SoftPrompt.pre feeds the GPT: (inputs_embeds, attention_mask) = ([P ; embeds], [1 ; mask]).
    embeds (B, T, C) float, prompt (n, C) (n may be 0), attention_mask (B, T) of 0/1.
    Returns ((B, n + T, C), (B, n + T))."""
    embeds, prompt, attention_mask = _tensor("embeds", embeds), _tensor("prompt", prompt), \
        _tensor("attention_mask", attention_mask)
    if embeds.dim() != 3 or prompt.dim() != 2 or prompt.shape[1] != embeds.shape[2] \
            or tuple(attention_mask.shape) != tuple(embeds.shape[:2]):
        raise ValueError(f"run_soft_prompt: expected embeds (B, T, C), prompt (n, C), attention_mask (B, T); got "
                         f"{tuple(embeds.shape)}, {tuple(prompt.shape)}, {tuple(attention_mask.shape)}")
    x, mask, _ = prepend_soft_prompt(embeds, prompt, attention_mask)
    return x, mask


def run_prompt_init_from_text(token_embeds: torch.Tensor, n: int) -> torch.Tensor:
    """The "text" initialisation: row i of P is row (i mod m) of the text's token embeddings (m, C):
    the first n if m >= n, the text repeated if m < n. m = 0 or n < 1 raises ValueError. Returns (n, C)."""
    token_embeds = _tensor("token_embeds", token_embeds)
    if token_embeds.dim() != 2:
        raise ValueError(f"run_prompt_init_from_text: token_embeds must be (m, C), got {tuple(token_embeds.shape)}")
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"n={n!r} must be an integer >= 1")
    rows = text_init_rows(token_embeds.shape[0], n)                        # ValueError on m = 0 or n < 1
    return token_embeds[torch.tensor(rows, dtype=torch.long)].clone()


def run_prompt_positions(attention_mask: torch.Tensor, n: int) -> torch.Tensor:
    """The position of every slot of the prompted sequence (B, n + T): P at 0 .. n-1, each real token
    (mask 1) at n + the number of real tokens before it. Padding slots: any value (they are masked)."""
    attention_mask = _tensor("attention_mask", attention_mask)
    if attention_mask.dim() != 2:
        raise ValueError(f"run_prompt_positions: attention_mask must be (B, T), got {tuple(attention_mask.shape)}")
    return prompt_positions(attention_mask, _n(n))


def run_prompt_loss(logits: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
    """The loss of a prompted forward: logits (B, n + T, V) over [P ; tokens], targets (B, T) of the
    real tokens (-100 = no loss). Mean over counted targets of -log softmax(logits[b, n + t])[targets[b, t]]:
    the targets are extended with n -100 in front (SoftPrompt.pre), never shifted. Returns a scalar."""
    logits, targets = _tensor("logits", logits), _tensor("targets", targets)
    n = _n(n)
    if logits.dim() != 3 or targets.dim() != 2 or logits.shape[0] != targets.shape[0] \
            or logits.shape[1] != n + targets.shape[1]:
        raise ValueError(f"run_prompt_loss: expected logits (B, n + T, V) and targets (B, T) with n={n}; got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    x = logits.new_zeros(logits.shape[0], targets.shape[1], 1)
    _, _, t = prepend_soft_prompt(x, logits.new_zeros(n, 1), None, targets.long())   # (B, n + T)
    return F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.shape[-1])), t.reshape(-1),
                           ignore_index=IGNORE_INDEX)
