"""Reference `run_*` adapters of lessons 11 and 12 (int8, NF4, LoftQ): plain tensors and
hyperparameters in, tensors out, computed by `minift/quant/`.

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

import torch

from minift.quant.int8 import int8_matmul, quantize_absmax, quantize_zeropoint
from minift.quant.nf4 import dequantize_blockwise, nf4_code, pack_4bit, quantize_blockwise
from minift.quant.qlora import loftq

__all__ = ["run_int8_quantize", "run_nf4_quantize", "run_nf4_dequantize", "run_pack_4bit", "run_int8_matmul", "run_loftq"]


def run_int8_quantize(x: torch.Tensor, granularity: str = "tensor", block_size: int = 64,
                      zero_point: bool = False) -> torch.Tensor:
    """int8 quantize then dequantize x: one scale per group ("tensor": all of x; "row": each row of
    the last dim; "block": consecutive block_size values of x flattened).
    absmax:     s = max|x_g| / 127, q = round(x / s) in [-127, 127], x_hat = s q
    zero point: s = (max(hi, 0) - min(lo, 0)) / 255, z = -128 - round(min(lo, 0) / s),
                q = clamp(round(x / s) + z, -128, 127), x_hat = s (q - z).
    Either scale is at least 2^-126, the smallest normal float32. Returns x_hat, x's shape, float32."""
    t = (quantize_zeropoint if zero_point else quantize_absmax)(x, granularity, block_size)
    return t.dequantize()


def run_nf4_quantize(w: torch.Tensor, block_size: int = 64):
    """Blockwise NF4 of w, flattened row-major: (codes (numel,) uint8 in 0..15 indexing the sorted
    16-value NF4 table, absmax (numel / block_size,) float32). codes[j] is the NF4 value nearest to
    w[j] / absmax[block of j]; an all-zero block has absmax 0."""
    return quantize_blockwise(w, nf4_code(), block_size)


def run_nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """w_hat[j] = NF4[codes[j]] * absmax[j // block_size], flat (numel,) float32."""
    return dequantize_blockwise(codes, absmax, nf4_code(), block_size)


def run_pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """(n,) codes in 0..15 -> (ceil(n/2),) uint8: codes[2i] in the high nibble, codes[2i+1] in the low
    one; an odd n gets a zero low nibble at the end."""
    return pack_4bit(codes)


def run_int8_matmul(x: torch.Tensor, W: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """LLM.int8(): x (N, in) @ W (out, in)^T. Columns j with max_i |x_ij| > threshold are multiplied
    in float; the rest: x rows and W rows absmax-quantized to int8 (round(127 v / absmax)), the
    integer product summed exactly and rescaled by s_x s_w^T."""
    return int8_matmul(x, W, threshold)


def run_loftq(W: torch.Tensor, r: int, iters: int, block_size: int = 64):
    """LoftQ with the NF4 quantizer (no double quantization) and s = 1: returns (Q, A, B) with Q on
    the NF4 grid of its blocks (Q = dequant(quant(T)) for some T), A (r, in), B (out, r), and
    ||W - (Q + B A)||_F no larger than ||W - dequant(quant(W))||_F."""
    def quantize(t):
        q, a = quantize_blockwise(t, nf4_code(), block_size)
        return dequantize_blockwise(q, a, nf4_code(), block_size).reshape(t.shape)
    out = loftq(W, r, 1.0, quantize, iters)
    return quantize(out["target"]), out["A"], out["B"]
