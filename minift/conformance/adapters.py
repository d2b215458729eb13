"""The reference `run_*` adapters: plain tensors and hyperparameters in, tensors out.

Each adapter reaches the function minift itself uses, so the conformance checks grade minift's
own code when no `--impl` is given. A student's file or another library's wrapper provides
functions with the same names and signatures; `minift verify --impl FILE` swaps them in.

    run_softmax(x, dim=-1)                         exp(x) / sum exp(x) along dim
    run_gelu(x)                                    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    run_layer_norm(x, weight, bias, eps=1e-5)      (x - mean) / sqrt(var + eps) * weight + bias, last dim
    run_cross_entropy(logits, targets, ignore_index=-100)   mean -log softmax(logits)[target]
    run_causal_attention(q, k, v)                  softmax(q k^T / sqrt(D) + causal mask) v
    run_gpt_block(x, params, n_head, eps=1e-5)     x + Attn(LN_1 x), then + MLP(LN_2 .)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minift.model import Block, GPTConfig, causal_attention

__all__ = ["run_softmax", "run_gelu", "run_layer_norm", "run_cross_entropy",
           "run_causal_attention", "run_gpt_block"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def run_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax along `dim` (what attention and sampling use). Any shape -> same shape."""
    return torch.softmax(_tensor("x", x), dim=dim)


def run_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2's), as in `minift.model.MLP`. Any shape -> same shape."""
    return F.gelu(_tensor("x", x), approximate="tanh")


def run_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim (biased variance), as `nn.LayerNorm` in `minift.model.Block`.
    x: (..., C); weight, bias: (C,). Returns (..., C)."""
    x, weight, bias = _tensor("x", x), _tensor("weight", weight), _tensor("bias", bias)
    C = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or tuple(weight.shape) != (C,) or tuple(bias.shape) != (C,):
        raise ValueError(f"run_layer_norm: weight and bias must have shape (C,)=({C},) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)} and {tuple(bias.shape)}")
    return F.layer_norm(x, (C,), weight.to(x.dtype), bias.to(x.dtype), eps)


def run_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                      ignore_index: int = -100) -> torch.Tensor:
    """Mean over non-ignored rows of -log softmax(logits)[target], as in `GPT.forward`.
    logits: (N, V) float; targets: (N,) integer. Returns a scalar."""
    logits, targets = _tensor("logits", logits), _tensor("targets", targets)
    if logits.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"run_cross_entropy: expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    return F.cross_entropy(logits, targets.long(), ignore_index=ignore_index)


def run_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product causal attention, `minift.model.causal_attention` with no extra mask.
    q, k, v: (B, H, T, D). Returns (B, H, T, D)."""
    q, k, v = _tensor("q", q), _tensor("k", k), _tensor("v", v)
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"run_causal_attention: q, k, v must share one shape (B, H, T, D), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return causal_attention(q, k, v)


def run_gpt_block(x: torch.Tensor, params: dict, n_head: int, eps: float = 1e-5) -> torch.Tensor:
    """One GPT block in eval mode: a `minift.model.Block` loaded with `params`.

    x: (B, T, C). params: exactly the keys of `Block(cfg).state_dict()` (bias=True), nn.Linear
    layout, e.g. "attn.c_attn.weight" (3C, C). n_head must divide C. Returns (B, T, C).
    """
    x = _tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"run_gpt_block: x must have shape (B, T, C), got {tuple(x.shape)}")
    B, T, C = x.shape
    if not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"run_gpt_block: n_head={n_head!r} must be a positive integer dividing C={C}")
    cfg = GPTConfig(vocab_size=1, block_size=max(T, 1), n_layer=1, n_head=n_head, n_embd=C,
                    dropout=0.0, bias=True, layer_norm_epsilon=eps)
    block = Block(cfg).to(device=x.device, dtype=x.dtype).eval()
    block.load_state_dict(params, strict=True)   # names every missing / unexpected / misshapen key
    with torch.no_grad():
        y, _ = block(x)
    return y                                                               # (B, T, C)
