"""Sequence log-probabilities of responses: the quantity every preference method is built on.

A language model scores a response y = (y_1 .. y_n) to a prompt x by the chain rule:

    log π(y | x) = Σ_{t=1..n} log π(y_t | x, y_<t)                  (summed)
                 = (1/n) Σ_{t=1..n} log π(y_t | x, y_<t)             (averaged, average=True)

In token space the prompt and response are one sequence ids = [x ; y] (B, T), and the logits at
position t predict the token at t + 1. So the log-probability of token t is read from the
logits at t - 1 (the shift), and only response tokens count: `response_mask` (B, T) is 1 on the
tokens being scored (the response and its final EOS, exactly tokenizer.encode_pair's loss mask)
and 0 on the prompt and on padding. The first token of a sequence has no prediction, so its mask
must be 0 (it is <|prompt|> in minift's template).

Padding never changes a score: the model gives real tokens positions counted over real tokens
(attention_mask), so the same pair left- or right-padded into any batch scores the same.

Reward models (reward.py), PPO (ppo.py) and DPO (dpo.py) all call `sequence_logps` or
`token_logps`; preference.py turns TinyWorld preference pairs into the tensors they take.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..model import at_least_fp32
from ..train import model_device, to_device


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log π(ids_t | ids_<t) for t = 1 .. T-1 from next-token logits.

    logits: (B, T, V), ids: (B, T) -> (B, T - 1); entry t - 1 scores token t."""
    if logits.dim() != 3 or ids.dim() != 2 or logits.shape[:2] != ids.shape:
        raise ValueError(f"logits must be (B, T, V) and ids (B, T) with the same B, T; got logits "
                         f"{tuple(logits.shape)} and ids {tuple(ids.shape)}")
    logp = F.log_softmax(at_least_fp32(logits[:, :-1]), dim=-1)       # (B, T-1, V) predicts tokens 1..T-1
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)              # (B, T-1)


def check_01(mask: torch.Tensor, name: str = "mask") -> None:
    """A mask is 0/1 (or bool): 1 = the position counts, 0 = it does not. Anything else raises."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 0 and 1, got {type(mask).__name__}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1")


def zero_masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values where mask is 1, exactly 0 where it is 0: a select, not a product. m · v would carry a
    NaN or inf at a masked position into the result (0 · NaN = NaN) and into the gradients of the
    real positions; a select gives the masked positions no value and a zero gradient. mask: values'
    shape, or its leading dims (it is then broadcast over the trailing ones, e.g. (B, T) over (B, T, K))."""
    keep = mask.bool()
    keep = keep.reshape(keep.shape + (1,) * (values.dim() - keep.dim()))
    return torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))


def check_finite(name: str, values: torch.Tensor, mask: Optional[torch.Tensor] = None, who: str = "") -> None:
    """NaN or inf at a position that counts (mask 1; every position if mask is None) raises, naming the
    argument: a loss of such input would be NaN, or finite with NaN gradients. Masked positions may hold anything."""
    bad = ~torch.isfinite(values)
    if mask is not None:
        bad = bad & mask.bool().reshape(mask.shape + (1,) * (values.dim() - mask.dim()))
    if bool(bad.any()):
        where = "" if mask is None else " at a real (mask 1) position"
        raise ValueError(f"{who + ': ' if who else ''}{name} holds NaN or inf{where}; it must be finite there")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Σ_t m_t v_t per row (or the mean over the rows' masked entries): (B, T) -> (B,).
    mask: 0/1. Masked entries are selected out (zero_masked), so whatever they hold changes neither
    the result nor a gradient. A row with an empty mask raises: it would score nothing (sum 0, mean undefined)."""
    check_01(mask)
    n = mask.to(values.dtype).sum(-1)                                 # (B,)
    if bool((n == 0).any()):
        raise ValueError(f"rows {torch.nonzero(n == 0).flatten().tolist()} of the mask have no token to score")
    s = zero_masked(values, mask).sum(-1)                             # Σ_t m_t v_t  (B,)
    return s / n if average else s


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(1 / Σ m) Σ m v over the whole batch, a scalar (the plain mean when mask is None): the
    token-level mean that PPO's losses and statistics and distillation's loss take. mask: 0/1;
    masked entries are selected out, never multiplied (zero_masked)."""
    if mask is None:
        return values.mean()
    check_01(mask)
    return zero_masked(values, mask).sum() / mask.to(values.dtype).sum()   # Σ m v / Σ m


def check_masks(ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> None:
    """ids, attention_mask, response_mask: (B, T) each; the response only on real tokens, never at t = 0."""
    if ids.dim() != 2:
        raise ValueError(f"ids must be (batch, time), got shape {tuple(ids.shape)}")
    for name, m in (("attention_mask", attention_mask), ("response_mask", response_mask)):
        if tuple(m.shape) != tuple(ids.shape):
            raise ValueError(f"{name} must have the shape of ids {tuple(ids.shape)}, got {tuple(m.shape)}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{name} must hold only 0 and 1")
    if bool((response_mask.bool() & ~attention_mask.bool()).any()):
        raise ValueError("response_mask marks padding (attention_mask 0) as response")
    if bool(response_mask[:, 0].bool().any()):
        raise ValueError("response_mask[:, 0] must be 0: the first token has no prediction to score")


def sequence_logps(model, ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                   average: bool = False, return_logits: bool = False):
    """log π(y | x) of the response tokens of each row (see the module docstring).

    model: a minift GPT (or anything called as model(ids, attention_mask=...) with .logits (B, T, V));
    ids, attention_mask, response_mask: (B, T), moved to the model's device. Returns (B,) on that
    device in float32, or float64 for a float64 model (half-precision logits are upcast, never
    down), with gradients if the model has them; with return_logits=True also the logits
    (B, T, V), for losses that need more (e.g. entropy)."""
    check_masks(ids, attention_mask, response_mask)
    ids, attention_mask, response_mask = to_device((ids, attention_mask, response_mask), model_device(model))
    logits = model(ids, attention_mask=attention_mask).logits        # (B, T, V)
    per_token = token_logps(logits, ids)                              # (B, T-1): token t at t-1
    out = masked_sum(per_token, response_mask[:, 1:], average)        # (B,)
    return (out, logits) if return_logits else out
