"""Conformance checks of lesson 13 (the fused quantized-LoRA matmul), registered into `checks.CHECKS`
with lesson="lesson13". Expected values are computed in float64 numpy from the definitions: the
paper's NF4 table, nibbles read high-then-low, one absmax per block of the flattened weight."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
from .checks_quant import NF4_TABLE
from .strategies import arrays, check_settings, f32


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


@_register("run_nf4_dot", "nf4_dot(x, packed, absmax, block) = Σ_j x_j · NF4[q_j] · absmax[j // block], with "
           "q_{2i} the high nibble of byte i and q_{2i+1} the low one (float32 summation error allowed).",
           lesson="lesson13")
def check_nf4_dot_matches_float64(impl):
    dot = _adapter(impl, "run_nf4_dot")

    @check_settings(60)
    @given(w=_nf4_weight(), data=st.data())
    def nf4_dot_matches_float64(w, data):
        packed, absmax, n, block = w
        x = data.draw(arrays((n,), f32(-10, 10)))
        what = f"run_nf4_dot(x ({n},), packed, absmax, block_size={block})"
        y = _out(dot(_t(x), torch.from_numpy(packed.copy()), _t(absmax), block_size=block), (), what)
        w64 = _decode64(packed, absmax, n, block)
        exp = float(x.astype(np.float64) @ w64)
        c64 = np.repeat(absmax.astype(np.float64), block)[None]
        _assert_close(y, exp, what + " vs Σ x_j NF4[q_j] absmax[j // block] in float64",
                      atol=_bound(x.astype(np.float64)[None], w64[None], c64, n)[0, 0], rtol=0)
    _run(nf4_dot_matches_float64)


@_register("run_nf4_lora_matmul", "nf4_lora_matmul(x, packed, absmax, out, block, A, B, s, bias) = x Ŵᵀ + "
           "s (x Aᵀ) Bᵀ + bias, Ŵ (out, in) decoded row-major from the packed NF4 bytes (rows may start "
           "mid-byte and mid-block).", lesson="lesson13")
def check_nf4_lora_matmul_matches_float64(impl):
    matmul = _adapter(impl, "run_nf4_lora_matmul")

    @check_settings(40)
    @given(out_f=st.integers(1, 4), data=st.data())
    def nf4_lora_matmul_matches_float64(out_f, data):
        packed, absmax, in_f, block = data.draw(_nf4_weight(rows=out_f))
        N, r = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
        x = data.draw(arrays((N, in_f), f32(-4, 4)))
        lora, use_bias = data.draw(st.booleans()), data.draw(st.booleans())
        A = data.draw(arrays((r, in_f), f32(-2, 2))) if lora else None
        B = data.draw(arrays((out_f, r), f32(-2, 2))) if lora else None
        b = data.draw(arrays((out_f,), f32(-2, 2))) if use_bias else None
        s = data.draw(st.sampled_from([1.0, 0.5, 2.0]))
        what = (f"run_nf4_lora_matmul(x {x.shape}, out_features={out_f}, block_size={block}, "
                f"{'A, B, ' if lora else ''}scaling={s}{', bias' if use_bias else ''})")
        y = _out(matmul(_t(x), torch.from_numpy(packed.copy()), _t(absmax), out_f, block_size=block,
                        A=None if A is None else _t(A), B=None if B is None else _t(B), scaling=s,
                        bias=None if b is None else _t(b)), (N, out_f), what)
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
        _assert_close(y, exp, what + " vs x Ŵᵀ + s (x Aᵀ) Bᵀ + bias in float64", atol=tol, rtol=0)
    _run(nf4_lora_matmul_matches_float64)
