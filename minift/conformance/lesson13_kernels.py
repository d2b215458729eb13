"""Lesson 13 (the fused quantized-LoRA matmul): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions: plain tensors in, tensors out, computed by
`minift.quant.ops.quant_lora_matmul` (the C++ kernel when it is built, else the reference; see
`minift.quant.ops.backend()`).

    run_nf4_dot(x, packed, absmax, block_size=64)      Σ_j x_j · NF4[q_j] · absmax[j // block_size]
    run_nf4_lora_matmul(x, packed, absmax, out_features, block_size=64, A=None, B=None, scaling=1.0, bias=None)
                                                       x Ŵᵀ + s (x Aᵀ) Bᵀ + b

The checks, registered into `CHECKS` with lesson="lesson13". Expected values are computed in float64
numpy from the definitions: the paper's NF4 table, nibbles read high-then-low, one absmax per block
of the flattened weight.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.quant.nf4 import NF4State
from minift.quant.ops import quant_lora_matmul

from .harness import assert_close, output, property_check, tensor
from .lesson12_qlora import NF4_TABLE
from .strategies import arrays, f32


# ---- the reference functions --------------------------------------------------------------------

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


# ---- the checks ----------------------------------------------------------------------------------

def _decode64(packed: np.ndarray, absmax: np.ndarray, n: int, block: int) -> np.ndarray:
    """ŵ_j = NF4[q_j] · absmax[j // block], q_{2i} = byte_i >> 4, q_{2i+1} = byte_i & 15, float64."""
    q = np.stack([packed >> 4, packed & 15], 1).reshape(-1)[:n].astype(np.int64)
    return NF4_TABLE[q] * np.repeat(absmax.astype(np.float64), block)


@st.composite
def _nf4_weight(draw, rows=1):
    """(packed bytes, absmax, n per row, block) for a rows x n weight; n need not be a multiple of 8."""
    block = draw(st.sampled_from([2, 4, 6, 8, 64]))
    n = draw(st.integers(1, 3 if block == 64 else 12))
    while (rows * n) % block:
        n += 1
    if block == 64:
        n = 64 * draw(st.integers(1, 2))
    total = rows * n
    packed = draw(hnp.arrays(np.uint8, (total + 1) // 2, elements=st.integers(0, 255)))
    if total % 2:
        packed[-1] &= 0xF0                                       # an odd count ends in a zero low nibble
    absmax = draw(arrays((total // block,), f32(0, 4)))
    return packed, absmax, n, block


def _bound(x64: np.ndarray, w64: np.ndarray, c64: np.ndarray, n: int) -> np.ndarray:
    """Float32 summation, 2 (n + 2) 2⁻²⁴ Σ |x_j| |ŵ_j|, plus the table printed to float32 (a code value
    may be off by 3e-7 from the paper's digits): 3e-7 Σ |x_j| absmax_j, plus a floor for zero sums."""
    return 2 * (n + 2) * 2.0 ** -24 * (np.abs(x64) @ np.abs(w64).T) + 3e-7 * (np.abs(x64) @ c64.T) + 1e-7


@property_check("run_nf4_dot", lesson=13, examples=60, w=_nf4_weight(), data=st.data())
def nf4_dot_matches_float64(dot, w, data):
    """nf4_dot(x, packed, absmax, block) = Σ_j x_j · NF4[q_j] · absmax[j // block], with q_{2i}
    the high nibble of byte i and q_{2i+1} the low one (float32 summation error allowed)."""
    packed, absmax, n, block = w
    x = data.draw(arrays((n,), f32(-10, 10)))
    what = f"run_nf4_dot(x ({n},), packed, absmax, block_size={block})"
    y = output(dot(tensor(x), torch.from_numpy(packed.copy()), tensor(absmax), block_size=block), (), what)
    w64 = _decode64(packed, absmax, n, block)
    exp = float(x.astype(np.float64) @ w64)
    c64 = np.repeat(absmax.astype(np.float64), block)[None]
    assert_close(y, exp, what + " vs Σ x_j NF4[q_j] absmax[j // block] in float64",
                 atol=_bound(x.astype(np.float64)[None], w64[None], c64, n)[0, 0], rtol=0)


@st.composite
def _matmul_case(draw) -> dict:
    """x (N, in), the NF4 weight of out_f rows, and A, B (LoRA, rank r), bias and s, each maybe absent."""
    out_f = draw(st.integers(1, 4))
    packed, absmax, in_f, block = draw(_nf4_weight(rows=out_f))
    N, r = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    lora, use_bias = draw(st.booleans()), draw(st.booleans())
    return dict(x=draw(arrays((N, in_f), f32(-4, 4))), packed=packed, absmax=absmax, out_f=out_f, block=block,
                A=draw(arrays((r, in_f), f32(-2, 2))) if lora else None,
                B=draw(arrays((out_f, r), f32(-2, 2))) if lora else None,
                b=draw(arrays((out_f,), f32(-2, 2))) if use_bias else None, s=draw(st.sampled_from([1.0, 0.5, 2.0])))


# 2 rows of 3 weights in blocks of 2: row 1 starts mid-byte (the low nibble of byte 1) and mid-block (block 1
# holds row 0's last weight and row 1's first), with three different absmax. Drawn shapes reach this too, but not
# in every run of 40 examples.
_ROWS_SHARE_A_BLOCK = dict(x=np.array([[1.0, -2.0, 3.0]], np.float32), packed=np.array([0x1F, 0xA3, 0x70], np.uint8),
                           absmax=np.array([1.0, 2.0, 3.0], np.float32), out_f=2, block=2, A=None, B=None, b=None, s=1.0)


# One row of 2 weights (codes 15 and 0: +1 and -1), every term present and s = 2: x Ŵᵀ = 1 - 2 = -1, s (x Aᵀ) Bᵀ
# = 2 · 3 = 6, bias 0.5, so y = 5.5 (without s, 2.5). Random draws often leave the LoRA branch out or s = 1.
_EVERY_TERM = dict(x=np.array([[1.0, 2.0]], np.float32), packed=np.array([0xF0], np.uint8),
                   absmax=np.array([1.0], np.float32), out_f=1, block=2, A=np.array([[1.0, 1.0]], np.float32),
                   B=np.array([[1.0]], np.float32), b=np.array([0.5], np.float32), s=2.0)


@property_check("run_nf4_lora_matmul", lesson=13, examples=40,
                explicit=[dict(case=_ROWS_SHARE_A_BLOCK), dict(case=_EVERY_TERM)], case=_matmul_case())
def nf4_lora_matmul_matches_float64(matmul, case):
    """nf4_lora_matmul(x, packed, absmax, out, block, A, B, s, bias) = x Ŵᵀ + s (x Aᵀ) Bᵀ + bias, Ŵ
    (out, in) decoded row-major from the packed NF4 bytes (rows may start mid-byte and mid-block)."""
    x, packed, absmax, out_f, block, A, B, b, s = (case[k] for k in ("x", "packed", "absmax", "out_f", "block",
                                                                      "A", "B", "b", "s"))
    (N, in_f), r = x.shape, 0 if A is None else A.shape[0]
    lora, use_bias = A is not None, b is not None
    what = (f"run_nf4_lora_matmul(x {x.shape}, out_features={out_f}, block_size={block}, "
            f"{'A, B, ' if lora else ''}scaling={s}{', bias' if use_bias else ''})")
    y = output(matmul(tensor(x), torch.from_numpy(packed.copy()), tensor(absmax), out_f, block_size=block,
                    A=None if A is None else tensor(A), B=None if B is None else tensor(B), scaling=s,
                    bias=None if b is None else tensor(b)), (N, out_f), what)
    W64 = _decode64(packed, absmax, out_f * in_f, block).reshape(out_f, in_f)
    x64 = x.astype(np.float64)
    exp = x64 @ W64.T
    tol = _bound(x64, W64, np.repeat(absmax.astype(np.float64), block).reshape(out_f, in_f), in_f + r)
    if lora:
        z = x64 @ A.astype(np.float64).T
        exp = exp + s * z @ B.astype(np.float64).T
        tol = tol + 2 * (in_f + r + 2) * 2.0 ** -24 * s * (np.abs(z) @ np.abs(B.astype(np.float64)).T)
    if use_bias:
        exp = exp + b.astype(np.float64)
        tol = tol + 2.0 ** -23 * np.abs(b.astype(np.float64))
    assert_close(y, exp, what + " vs x Ŵᵀ + s (x Aᵀ) Bᵀ + bias in float64", atol=tol, rtol=0)
