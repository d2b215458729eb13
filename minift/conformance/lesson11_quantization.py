"""Lesson 11 (quantization: int8 and LLM.int8()): the reference `run_*` functions and their conformance checks.

The reference functions, computed by `minift/quant/int8.py`:

    run_int8_quantize(x, granularity, block_size, zero_point)   absmax or zero-point int8, dequantized
    run_int8_matmul(x, W, threshold)                            LLM.int8(): outlier columns in float,
                                                                the rest vector-wise int8

Every expected value is computed in float64 numpy from the definitions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from minift.quant.int8 import int8_matmul, quantize_absmax, quantize_zeropoint

from .harness import assert_close, output, property_check, tensor
from .strategies import arrays, f32


# ---- the reference functions --------------------------------------------------------------------

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


def run_int8_matmul(x: torch.Tensor, W: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """LLM.int8(): x (N, in) @ W (out, in)^T. Columns j with max_i |x_ij| > threshold are multiplied
    in float; the rest: x rows and W rows absmax-quantized to int8 (round(127 v / absmax)), the
    integer product summed exactly and rescaled by s_x s_w^T."""
    return int8_matmul(x, W, threshold)


# ---- the checks ----------------------------------------------------------------------------------

def _groups64(x, granularity, block):
    x = np.asarray(x, np.float64)
    return {"tensor": x.reshape(1, -1), "row": x.reshape(-1, x.shape[-1]), "block": x.reshape(-1, block)}[granularity]


MIN_SCALE = 2.0 ** -126           # the smallest normal float32: no group's step is smaller (lesson 11)


_TINY = np.array([[1.1e-39, 1.1e-39]], np.float32)          # subnormal: absmax / 127 underflows float32
_SPREAD = np.array([[1.0, 50.0, -3.0, 7.0], [0.5, -20.0, 9.0, 2.0]], np.float32)   # blocks of 2 far finer than rows


@property_check("run_int8_quantize", lesson=11, examples=60,
                explicit=[dict(x=_TINY, granularity="tensor", zp=False), dict(x=_TINY, granularity="row", zp=True),
                          dict(x=_SPREAD, granularity="block", zp=False)],
                x=arrays(st.tuples(st.integers(1, 4), st.sampled_from([2, 4, 6])),
                         st.one_of(f32(-50, 50), f32(-2.0 ** -120, 2.0 ** -120))),
                granularity=st.sampled_from(["tensor", "row", "block"]), zp=st.booleans())
def int8_quantize_within_half_a_step(quantize, x, granularity, zp):
    """int8_quantize(x, granularity, block, zero_point) is within half a step of x (absmax: max|x_g|
    / 127; zero point: (max(hi,0) - min(lo,0)) / 255 per group g; never below 2^-126, the smallest
    normal float32), exact at each group's absmax (when its step is above 2^-126), and keeps 0
    exactly."""
    what = f"run_int8_quantize(x, granularity={granularity!r}, block_size=2, zero_point={zp})"
    y = _groups64(output(quantize(tensor(x), granularity, block_size=2, zero_point=zp), x.shape, what), granularity, 2)
    g = _groups64(x, granularity, 2)
    if zp:
        step = (np.maximum(g.max(1), 0) - np.minimum(g.min(1), 0)) / 255
    else:
        step = np.abs(g).max(1) / 127
    normal = step >= MIN_SCALE                                # (groups,) steps float32 holds exactly enough
    step = np.maximum(step, MIN_SCALE)
    assert_close(y, g, what + " vs x (at most half a quantization step of its group, the step at least 2^-126)",
                 atol=step[:, None] / 2 * (1 + 1e-5) + 1e-6 * np.abs(g), rtol=0)
    if not normal.all():                                      # the documented floor: s = 2^-126 exactly
        assert_close(y[~normal], np.round(g[~normal] / MIN_SCALE) * MIN_SCALE,
                     what + " on groups whose step is below 2^-126 vs round(x / 2^-126) 2^-126", atol=0, rtol=0)
    if not zp:
        big = (np.abs(g) == np.abs(g).max(1, keepdims=True)) & normal[:, None]
        assert_close(y[big], g[big], what + " at each group's absmax (q = ±127 is exact)",
                     atol=1e-6 * np.abs(g[big]), rtol=0)
    zeros = g == 0
    if zeros.any() and np.abs(y[zeros]).max() > 0:
        raise AssertionError(f"{what}: 0 must stay exactly 0, got {float(np.abs(y[zeros]).max())!r}")


def _vectorwise64(x, W):
    sx, sw = np.abs(x).max(1) / 127, np.abs(W).max(1) / 127
    qx = np.round(np.divide(x, sx[:, None], out=np.zeros_like(x), where=sx[:, None] > 0))
    qw = np.round(np.divide(W, sw[:, None], out=np.zeros_like(W), where=sw[:, None] > 0))
    return (qx @ qw.T) * sx[:, None] * sw[None, :]


@st.composite
def _xw(draw):
    N, K, M = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 5))
    return draw(arrays((N, K), f32(-20, 20))), draw(arrays((M, K), f32(-1, 1)))


@st.composite
def _planted_outliers(draw):
    """(x, W, threshold) with x's entries within the threshold except 1 to 3 planted outliers: some
    feature columns hold an outlier in one token only, so other tokens have ordinary values in an
    outlier column, and some tokens have no outlier at all (what separates per-column from per-row);
    W's outlier columns are sometimes 4x larger (so W's row scale over the kept columns matters)."""
    N, K, M = draw(st.integers(2, 4)), draw(st.integers(2, 8)), draw(st.integers(1, 5))
    threshold = draw(st.sampled_from([6.0, 1.0, 0.5]))
    x = draw(arrays((N, K), f32(-1, 1))) * np.float32(threshold)              # |x| <= threshold
    W = draw(arrays((M, K), f32(-1, 1)))
    for _ in range(draw(st.integers(1, min(3, N - 1)))):
        i, j = draw(st.integers(0, N - 1)), draw(st.integers(0, K - 1))
        x[i, j] = np.float32(draw(st.sampled_from([-1, 1])) * threshold * draw(st.floats(1.5, 20, width=32)))
        W[:, j] *= np.float32(draw(st.sampled_from([4.0, 1.0])))                # W's largest entries may sit there
    return x.astype(np.float32), W.astype(np.float32), threshold


@st.composite
def _any_threshold(draw):
    x, W = draw(_xw())
    return x, W, draw(st.one_of(st.just(math.inf), st.just(0.0), st.floats(0.5, 15)))


# Column 0 is an outlier feature (token 0 has 10 > 6); token 1 has none: LLM.int8() multiplies token 1's
# 0.5 in column 0 in float and quantizes W's rows over column 1 only. Per-row outliers would send token 0
# to float whole and quantize token 1 over both columns (W's row scale then set by its 1.0 in column 0).
_OUTLIER_EXAMPLE = (np.array([[10.0, 0.3], [0.5, 0.7]], np.float32), np.array([[1.0, 0.33], [-1.0, 0.01]], np.float32), 6.0)


@property_check("run_int8_matmul", lesson=11, examples=60, explicit=[dict(xwt=_OUTLIER_EXAMPLE)],
                xwt=st.one_of(_planted_outliers(), _any_threshold()))
def int8_matmul_decomposition(matmul, xwt):
    """int8_matmul(x, W, threshold) equals the LLM.int8() decomposition in float64: a feature column j
    in which some token has |x_ij| > threshold goes in float for every token, the other columns
    vector-wise absmax int8 (x per row, W per row, over the kept columns), summed exactly and rescaled;
    threshold inf is plain int8, 0 the float product."""
    x, W = (a.astype(np.float64) for a in xwt[:2])
    threshold = xwt[2]
    O = np.abs(x).max(0) > threshold
    exp = x[:, O] @ W[:, O].T
    if (~O).any():
        exp = exp + _vectorwise64(x[:, ~O], W[:, ~O])
    what = f"run_int8_matmul(x, W, threshold={threshold!r})"
    y = output(matmul(tensor(xwt[0]), tensor(xwt[1]), threshold=threshold), exp.shape, what)
    assert_close(y, exp, what + " vs float outlier columns + vector-wise int8 of the rest",
                 atol=1e-5 * (np.abs(x).sum() + 1), rtol=1e-5)
