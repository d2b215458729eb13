"""Reference `run_*` adapters of lesson 13 (the fused quantized-LoRA matmul): plain tensors in, tensors
out, computed by `minift.quant.ops.quant_lora_matmul` (the C++ kernel when it is built, else the
reference; see `minift.quant.ops.backend()`).

    run_nf4_dot(x, packed, absmax, block_size=64)      Σ_j x_j · NF4[q_j] · absmax[j // block_size]
    run_nf4_lora_matmul(x, packed, absmax, out_features, block_size=64, A=None, B=None, scaling=1.0, bias=None)
                                                       x Ŵᵀ + s (x Aᵀ) Bᵀ + b

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

import torch

from minift.quant.nf4 import NF4State
from minift.quant.ops import quant_lora_matmul

__all__: list[str] = ["run_nf4_dot", "run_nf4_lora_matmul"]


def _state(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple, block_size: int) -> NF4State:
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"packed must be a 1-D uint8 tensor, got "
                        f"{packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__}")
    n = shape[0] * shape[1]
    if packed.numel() != (n + 1) // 2 or absmax.numel() * block_size != n:
        raise ValueError(f"{n} weights need {(n + 1) // 2} packed bytes and {n // block_size} absmax values "
                         f"(block_size={block_size}), got {packed.numel()} and {absmax.numel()}")
    return NF4State(packed.contiguous(), tuple(shape), block_size, "nf4", absmax=absmax.to(torch.float32).contiguous())


def run_nf4_dot(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """The scalar NF4 dot product: x (n,) float32; packed (ceil(n/2),) uint8 with q_{2i} in the HIGH
    nibble of byte i and q_{2i+1} in the low one; absmax (n / block_size,). Returns a 0-dim tensor
    Σ_j x_j · NF4[q_j] · absmax[j // block_size] (NF4: the paper's sorted 16-value table)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 1:
        raise ValueError(f"x must be a 1-D tensor, got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    st = _state(packed, absmax, (1, x.numel()), block_size)
    return quant_lora_matmul(x.to(torch.float32)[None], st).reshape(())


def run_nf4_lora_matmul(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, out_features: int,
                        block_size: int = 64, A=None, B=None, scaling: float = 1.0, bias=None) -> torch.Tensor:
    """y = x Ŵᵀ + s (x Aᵀ) Bᵀ + b for x (N, in) and the NF4 weight Ŵ (out_features, in) stored flat,
    row-major, in `packed` / `absmax` as in run_nf4_dot. A (r, in), B (out, r), bias (out,) optional.
    Returns (N, out_features) float32."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D (N, in) tensor, got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    st = _state(packed, absmax, (int(out_features), x.shape[1]), block_size)
    return quant_lora_matmul(x.to(torch.float32), st, A, B, scaling, bias)
