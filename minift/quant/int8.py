"""int8 quantization and LLM.int8() (Dettmers et al., 2022, "LLM.int8(): 8-bit Matrix Multiplication
for Transformers at Scale").

**Absmax (symmetric)** quantization of a group g of numbers (a whole tensor, one row, or one block):

    s_g = max_{j in g} |x_j| / 127          q_j = round(x_j / s_g) in [-127, 127]      x̂_j = s_g q_j

**Zero-point (asymmetric)** quantization uses all 256 levels for a range [lo, hi] that need not be
centred on 0 (e.g. after a ReLU):

    s_g = (hi - lo) / 255     z_g = -128 - round(lo / s_g)     q_j = clamp(round(x_j / s_g) + z_g, -128, 127)
    x̂_j = s_g (q_j - z_g)

Both are exact at the group's extremes and err by at most s_g / 2 elsewhere. One exception, at
the bottom of float32's range: a scale is never smaller than 2^-126 ≈ 1.18e-38, the smallest
*normal* float32 (below it, float32 keeps fewer significant bits, and s_g · 127 would no longer
give the absmax back). A group whose s_g would be smaller (absmax < 127 · 2^-126 ≈ 1.5e-36 for
absmax quantization) is quantized with s_g = 2^-126: still within s_g / 2 = 2^-127 of every
value, but no longer exact at its absmax. Real weights and activations never come near it. The *granularity*
decides how far one large number spoils the others: "tensor" (one scale), "row" (one per row:
the paper's vector-wise quantization) or "block" (one per block of `block_size` values).

**LLM.int8()** multiplies X (N, in) by W (out, in)ᵀ. Vector-wise: X gets one scale per row
(token), W one per output row, so X Wᵀ ≈ (s_x s_wᵀ) ⊙ (Q_x Q_wᵀ), an exact int32 product rescaled.
Large language models have a few *feature columns* of X with huge magnitudes (the emergent
outliers); one of them in a row forces that row's scale up and rounds every other entry to 0.
The mixed-precision decomposition takes those columns out:

    O = { j : max_i |X_ij| > threshold }           (threshold 6.0 in the paper)
    X Wᵀ ≈ X[:, O] W[:, O]ᵀ  (floating point)  +  s_x s_wᵀ ⊙ (Q_x[:, ~O] Q_w[:, ~O]ᵀ)  (int8, int32 sums)

threshold = inf gives plain vector-wise int8; threshold = 0 sends every non-zero column to the
float path, so the product is the float matmul.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

GRANULARITIES = ("tensor", "row", "block")
MIN_SCALE = torch.finfo(torch.float32).tiny      # 2^-126, the smallest normal float32 (see the docstring)


def _groups(x: torch.Tensor, granularity: str, block_size: int) -> torch.Tensor:
    """x viewed as (n_groups, group_len), each row sharing one scale."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor to quantize, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError("x is empty: nothing to quantize")
    x = x.detach().to(torch.float32)                     # quantization works in float32: check after the cast
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf in float32 (|x| > 3.4e38 overflows the cast): refusing to "
                         "quantize (the scale would be garbage)")
    if granularity == "tensor":
        return x.reshape(1, -1)
    if granularity == "row":
        if x.dim() < 2:
            raise ValueError(f"granularity='row' needs a tensor of >= 2 dims (rows, features), got shape {tuple(x.shape)}")
        return x.reshape(-1, x.shape[-1])
    if granularity == "block":
        if not (isinstance(block_size, int) and block_size >= 1) or x.numel() % block_size:
            raise ValueError(f"block_size={block_size!r} must be a positive integer dividing x.numel()={x.numel()}")
        return x.reshape(-1, block_size)
    raise ValueError(f"granularity={granularity!r} must be one of {GRANULARITIES}")


@dataclass
class Int8Tensor:
    """An int8-quantized tensor: q (same shape as x), one scale (and zero point) per group."""
    q: torch.Tensor                        # int8, x's shape
    scale: torch.Tensor                    # (n_groups,) fp32
    zero_point: Optional[torch.Tensor]     # (n_groups,) int32, None for absmax
    granularity: str
    block_size: int

    def dequantize(self) -> torch.Tensor:
        g = self.q.reshape(self.scale.numel(), -1).to(torch.float32)             # (n_groups, len)
        if self.zero_point is not None:
            g = g - self.zero_point[:, None].to(torch.float32)                   # q - z
        return (g * self.scale[:, None]).reshape(self.q.shape)                   # s (q - z)


def quantize_absmax(x: torch.Tensor, granularity: str = "tensor", block_size: int = 64) -> Int8Tensor:
    g = _groups(x, granularity, block_size)                                      # (n, len)
    scale = (g.abs().amax(dim=1) / 127).clamp(min=MIN_SCALE)                     # s = max(absmax / 127, 2^-126)
    q = torch.round(g.double() / scale.double()[:, None]).clamp(-127, 127)       # round(x / s)
    return Int8Tensor(q.to(torch.int8).reshape(x.shape), scale, None, granularity, block_size)


def quantize_zeropoint(x: torch.Tensor, granularity: str = "tensor", block_size: int = 64) -> Int8Tensor:
    g = _groups(x, granularity, block_size)                                      # (n, len)
    lo, hi = g.amin(dim=1).clamp(max=0), g.amax(dim=1).clamp(min=0)              # the range holds 0 exactly
    scale = ((hi.double() - lo.double()) / 255).float().clamp(min=MIN_SCALE)     # s = max((hi - lo) / 255, 2^-126)
    zero = (-128 - torch.round(lo / scale)).to(torch.int32)                      # z: lo -> -128
    q = (torch.round(g / scale[:, None]) + zero[:, None]).clamp(-128, 127)
    return Int8Tensor(q.to(torch.int8).reshape(x.shape), scale, zero, granularity, block_size)


# ---- LLM.int8() -------------------------------------------------------------------------------

def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask (in,) of the feature columns of x (N, in) with some |x_ij| > threshold."""
    return x.abs().amax(dim=0) > threshold


def _int_matmul(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    # int8 @ int8 in torch stays int8 and overflows: widen to int32 first (127 · 127 · in < 2^31)
    if qx.device.type == "cpu":
        return qx.to(torch.int32) @ qw.to(torch.int32).T                        # (N, out), exact
    # CUDA has no general integer matmul; float64 holds every partial sum exactly (integers < 2^31 < 2^53),
    # so the product is the same int32 result in any summation order
    return (qx.to(torch.float64) @ qw.to(torch.float64).T).to(torch.int32)      # (N, out), exact


def int8_matmul(x: torch.Tensor, W: torch.Tensor, threshold: float = 6.0,
                W_q: Optional[Int8Tensor] = None) -> torch.Tensor:
    """LLM.int8(): x (N, in) @ W (out, in)^T with vector-wise int8 and the outlier decomposition.

    Given a float W, its non-outlier columns W[:, ~O] are quantized per row, as in the paper's
    equation. Given W_q instead (a weight stored in int8 once, per row over all columns: what
    Int8Linear holds, since O depends on the input), the stored codes and scales are used on ~O
    and the dequantized columns on O."""
    if x.dim() != 2:
        raise ValueError(f"int8_matmul: x must be (N, in), got shape {tuple(x.shape)}")
    if W_q is None and (W is None or W.dim() != 2 or W.shape[1] != x.shape[1]):
        raise ValueError(f"int8_matmul: W must be (out, in={x.shape[1]}), got {None if W is None else tuple(W.shape)}")
    if W_q is not None and W_q.q.shape[1] != x.shape[1]:
        raise ValueError(f"int8_matmul: x has in={x.shape[1]} features, the weight {W_q.q.shape[1]}")
    if x.shape[1] * 127 * 127 >= 2 ** 31:
        raise ValueError(f"int8_matmul: in={x.shape[1]} is too large for exact int32 sums (< 133,144)")
    if not (isinstance(threshold, (int, float)) and threshold >= 0) or math.isnan(threshold):
        raise ValueError(f"threshold={threshold!r} must be a number >= 0 (math.inf: no outliers)")
    x = x.to(torch.float32)
    O = outlier_columns(x, threshold)                                           # (in,) bool
    y = x.new_zeros(x.shape[0], (W if W_q is None else W_q.q).shape[0])          # (N, out) on x's device
    if bool(O.any()):                                                            # X[:, O] W[:, O]^T in float
        W_o = (W if W_q is None else W_q.dequantize())[:, O].to(torch.float32)
        y = y + x[:, O] @ W_o.T
    keep = ~O
    if bool(keep.any()):
        xq = quantize_absmax(x[:, keep], "row")                                  # s_x: one scale per row
        wq = quantize_absmax(W[:, keep], "row") if W_q is None else Int8Tensor(
            W_q.q[:, keep], W_q.scale, None, "row", 0)                          # s_w: one scale per out row
        acc = _int_matmul(xq.q, wq.q)                                            # Q_x Q_w^T  (N, out) int32
        y = y + acc.to(torch.float32) * xq.scale[:, None] * wq.scale[None, :]    # s_x s_w^T ⊙ ...
    return y


class _LLMInt8(torch.autograd.Function):
    """Forward: LLM.int8(). Backward (to the input only; the weight is frozen): dL/dx = g · dequant(W),
    as bitsandbytes does. Without this the rounding inside int8_matmul would cut the gradient that
    adapters in earlier layers need (QLoRA trains through the frozen quantized layers)."""

    @staticmethod
    def forward(ctx, x, weight_q, weight_scale, threshold):
        ctx.save_for_backward(weight_q, weight_scale)
        return int8_matmul(x, None, threshold, W_q=Int8Tensor(weight_q, weight_scale, None, "row", 0))

    @staticmethod
    def backward(ctx, g):
        weight_q, weight_scale = ctx.saved_tensors
        W = Int8Tensor(weight_q, weight_scale, None, "row", 0).dequantize()          # (out, in)
        return g @ W.to(g.dtype), None, None, None                                   # (N, in)


class Int8Linear(nn.Module):
    """A frozen linear layer with int8 weights (one absmax scale per output row) computing
    y = LLM.int8(x, W) + b. Only the int8 weight and its scales are stored."""

    def __init__(self, linear: nn.Linear, threshold: float = 6.0, weight: Optional[torch.Tensor] = None):
        """weight: quantize this (out, in) tensor instead of linear.weight (LoftQ quantizes W - ΔW)."""
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear wraps an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features, self.threshold = linear.in_features, linear.out_features, threshold
        w = linear.weight if weight is None else weight
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"Int8Linear: weight must be {(self.out_features, self.in_features)}, got {tuple(w.shape)}")
        wq = quantize_absmax(w, "row")
        self.register_buffer("weight_q", wq.q)                                  # (out, in) int8
        self.register_buffer("weight_scale", wq.scale)                          # (out,) fp32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def weight_int8(self) -> Int8Tensor:
        return Int8Tensor(self.weight_q, self.weight_scale, None, "row", 0)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8().dequantize()                                   # (out, in)

    def forward(self, x):
        shape = x.shape
        y = _LLMInt8.apply(x.reshape(-1, shape[-1]).to(torch.float32), self.weight_q, self.weight_scale,
                           self.threshold)                                      # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"
