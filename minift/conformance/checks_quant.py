"""Conformance checks of lessons 11 and 12 (int8 and LLM.int8(); NF4, 4-bit packing, LoftQ),
registered into `checks.CHECKS`. The NF4 table is the one printed in the QLoRA paper (appendix E),
written out here; every expected value is computed in float64 numpy from the definitions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .checks import _adapter, _assert_close, _out, _register, _run, _t
from .strategies import arrays, check_settings, f32

NF4_TABLE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                      -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                      0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                      0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])


@st.composite
def _blocked(draw, blocks=(2, 4, 8, 16)):
    B = draw(st.sampled_from(blocks))
    n = B * draw(st.integers(1, 4))
    return draw(arrays((n,), f32(-8, 8))), B


def _int_codes(t, n, what):
    if not isinstance(t, torch.Tensor):
        raise AssertionError(f"{what} must return a torch.Tensor, got {type(t).__name__}")
    c = t.detach().cpu().reshape(-1).to(torch.int64).numpy()
    if c.shape != (n,):
        raise AssertionError(f"{what} returned {c.size} codes, expected {n}")
    if c.min() < 0 or c.max() > 15:
        raise AssertionError(f"{what}: codes must be in 0..15, got range [{c.min()}, {c.max()}]")
    return c


def _groups64(x, granularity, block):
    x = np.asarray(x, np.float64)
    return {"tensor": x.reshape(1, -1), "row": x.reshape(-1, x.shape[-1]), "block": x.reshape(-1, block)}[granularity]


MIN_SCALE = 2.0 ** -126           # the smallest normal float32: no group's step is smaller (lesson 11)


@_register("run_int8_quantize", "int8_quantize(x, granularity, block, zero_point) is within half a step of x "
           "(absmax: max|x_g| / 127; zero point: (max(hi,0) - min(lo,0)) / 255 per group g; never below "
           "2^-126, the smallest normal float32), exact at each group's absmax (when its step is above "
           "2^-126), and keeps 0 exactly.", lesson="lesson11")
def check_int8_quantize_within_half_a_step(impl):
    quantize = _adapter(impl, "run_int8_quantize")
    tiny = np.array([[1.1e-39, 1.1e-39]], np.float32)          # subnormal: absmax / 127 underflows float32

    @check_settings(60)
    @example(x=tiny, granularity="tensor", zp=False)
    @example(x=tiny, granularity="row", zp=True)
    @given(x=arrays(st.tuples(st.integers(1, 4), st.sampled_from([2, 4, 6])),
                    st.one_of(f32(-50, 50), f32(-2.0 ** -120, 2.0 ** -120))),
           granularity=st.sampled_from(["tensor", "row", "block"]), zp=st.booleans())
    def int8_quantize_within_half_a_step(x, granularity, zp):
        what = f"run_int8_quantize(x, granularity={granularity!r}, block_size=2, zero_point={zp})"
        y = _groups64(_out(quantize(_t(x), granularity, block_size=2, zero_point=zp), x.shape, what), granularity, 2)
        g = _groups64(x, granularity, 2)
        if zp:
            step = (np.maximum(g.max(1), 0) - np.minimum(g.min(1), 0)) / 255
        else:
            step = np.abs(g).max(1) / 127
        normal = step >= MIN_SCALE                                # (groups,) steps float32 holds exactly enough
        step = np.maximum(step, MIN_SCALE)
        _assert_close(y, g, what + " vs x (at most half a quantization step of its group, the step at least 2^-126)",
                      atol=step[:, None] / 2 * (1 + 1e-5) + 1e-6 * np.abs(g), rtol=0)
        if not normal.all():                                      # the documented floor: s = 2^-126 exactly
            _assert_close(y[~normal], np.round(g[~normal] / MIN_SCALE) * MIN_SCALE,
                          what + " on groups whose step is below 2^-126 vs round(x / 2^-126) 2^-126", atol=0, rtol=0)
        if not zp:
            big = (np.abs(g) == np.abs(g).max(1, keepdims=True)) & normal[:, None]
            _assert_close(y[big], g[big], what + " at each group's absmax (q = ±127 is exact)",
                          atol=1e-6 * np.abs(g[big]), rtol=0)
        zeros = g == 0
        if zeros.any() and np.abs(y[zeros]).max() > 0:
            raise AssertionError(f"{what}: 0 must stay exactly 0, got {float(np.abs(y[zeros]).max())!r}")
    _run(int8_quantize_within_half_a_step)


@_register("run_nf4_quantize", "nf4_quantize(w, block) gives absmax = max |w| per block and, for every "
           "element, the index of an NF4 value (the paper's table) nearest to w / absmax.", lesson="lesson12")
def check_nf4_quantize_picks_the_nearest_code(impl):
    quantize = _adapter(impl, "run_nf4_quantize")

    @check_settings(60)
    @given(wb=_blocked())
    def nf4_quantize_picks_the_nearest_code(wb):
        w, B = wb
        codes, absmax = quantize(_t(w), block_size=B)
        what = f"run_nf4_quantize(w, block_size={B})"
        c = _int_codes(codes, w.size, what)
        blocks = w.astype(np.float64).reshape(-1, B)
        am = np.abs(blocks).max(1)
        _assert_close(_out(absmax, am.shape, what + " absmax"), am, what + " absmax vs max |w| per block",
                      atol=0, rtol=1e-7)
        scaled = np.divide(blocks, am[:, None], out=np.zeros_like(blocks), where=am[:, None] > 0).reshape(-1)
        dist = np.abs(scaled[:, None] - NF4_TABLE)                              # (n, 16)
        chosen, best = dist[np.arange(w.size), c], dist.min(1)
        bad = np.nonzero(chosen > best + 1e-6)[0]
        if bad.size:
            j = int(bad[0])
            raise AssertionError(f"{what}: element {j} (w = {float(w[j])!r}, w / absmax = {scaled[j]:.6f}) got "
                                 f"code {c[j]} = {NF4_TABLE[c[j]]:.6f}, but code {int(dist[j].argmin())} = "
                                 f"{NF4_TABLE[dist[j].argmin()]:.6f} is nearer")
    _run(nf4_quantize_picks_the_nearest_code)


@_register("run_nf4_dequantize", "nf4_dequantize(codes, absmax, block) equals NF4[codes[j]] * absmax[j // block] "
           "with the paper's table.", lesson="lesson12")
def check_nf4_dequantize_matches_table(impl):
    dequantize = _adapter(impl, "run_nf4_dequantize")

    @check_settings(40)
    @given(B=st.sampled_from([2, 4, 8]), data=st.data())
    def nf4_dequantize_matches_table(B, data):
        nb = data.draw(st.integers(1, 4))
        codes = data.draw(hnp.arrays(np.uint8, nb * B, elements=st.integers(0, 15)))
        absmax = data.draw(arrays((nb,), f32(0, 10)))
        y = _out(dequantize(torch.from_numpy(codes.copy()), _t(absmax), block_size=B), (nb * B,),
                 f"run_nf4_dequantize(codes, absmax, block_size={B})")
        exp = NF4_TABLE[codes.astype(np.int64)] * np.repeat(absmax.astype(np.float64), B)
        _assert_close(y, exp, "run_nf4_dequantize vs NF4[codes] * absmax", atol=1e-6, rtol=1e-6)
    _run(nf4_dequantize_matches_table)


@_register("run_pack_4bit", "pack_4bit(codes) puts codes[2i] in the high nibble and codes[2i+1] in the low "
           "nibble of byte i (a zero low nibble for odd lengths): ceil(n/2) uint8 bytes.", lesson="lesson12")
def check_pack_4bit_nibble_order(impl):
    pack = _adapter(impl, "run_pack_4bit")

    @check_settings(40)
    @given(codes=hnp.arrays(np.uint8, st.integers(1, 21), elements=st.integers(0, 15)))
    def pack_4bit_nibble_order(codes):
        got = pack(torch.from_numpy(codes.copy()))
        if not isinstance(got, torch.Tensor) or got.dtype != torch.uint8:
            raise AssertionError(f"run_pack_4bit must return a uint8 tensor, got {getattr(got, 'dtype', type(got))}")
        padded = np.concatenate([codes, np.zeros(codes.size % 2, np.uint8)]).astype(np.int64)
        exp = 16 * padded[0::2] + padded[1::2]
        g = got.reshape(-1).to(torch.int64).numpy()
        if g.shape != exp.shape or not np.array_equal(g, exp):
            raise AssertionError(f"run_pack_4bit({codes.tolist()}) = {g.tolist()}, expected {exp.tolist()} "
                                 f"(16 * codes[2i] + codes[2i+1])")
    _run(pack_4bit_nibble_order)


def _vectorwise64(x, W):
    sx, sw = np.abs(x).max(1) / 127, np.abs(W).max(1) / 127
    qx = np.round(np.divide(x, sx[:, None], out=np.zeros_like(x), where=sx[:, None] > 0))
    qw = np.round(np.divide(W, sw[:, None], out=np.zeros_like(W), where=sw[:, None] > 0))
    return (qx @ qw.T) * sx[:, None] * sw[None, :]


@st.composite
def _xw(draw):
    N, K, M = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 5))
    return draw(arrays((N, K), f32(-20, 20))), draw(arrays((M, K), f32(-1, 1)))


@_register("run_int8_matmul", "int8_matmul(x, W, threshold) equals the LLM.int8() decomposition in float64: "
           "columns with max |x| > threshold in float, the rest vector-wise absmax int8 (x per row, W per "
           "row), summed exactly and rescaled; threshold inf is plain int8, 0 the float product.",
           lesson="lesson11")
def check_int8_matmul_decomposition(impl):
    matmul = _adapter(impl, "run_int8_matmul")

    @check_settings(60)
    @given(xw=_xw(), threshold=st.one_of(st.just(math.inf), st.just(0.0), st.floats(0.5, 15)))
    def int8_matmul_decomposition(xw, threshold):
        x, W = (a.astype(np.float64) for a in xw)
        O = np.abs(x).max(0) > threshold
        exp = x[:, O] @ W[:, O].T
        if (~O).any():
            exp = exp + _vectorwise64(x[:, ~O], W[:, ~O])
        what = f"run_int8_matmul(x, W, threshold={threshold!r})"
        y = _out(matmul(_t(xw[0]), _t(xw[1]), threshold=threshold), exp.shape, what)
        _assert_close(y, exp, what + " vs float outlier columns + vector-wise int8 of the rest",
                      atol=1e-5 * (np.abs(x).sum() + 1), rtol=1e-5)
    _run(int8_matmul_decomposition)


@_register("run_loftq", "loftq(W, r, iters) returns Q on the NF4 grid of W's blocks, A (r, in), B (out, r) with "
           "||W - (Q + B A)||_F <= ||W - nf4(W)||_F (it never does worse than plain quantization).",
           lesson="lesson12")
def check_loftq_not_worse_than_plain(impl):
    run = _adapter(impl, "run_loftq")

    @check_settings(25)
    @given(W=arrays(st.tuples(st.integers(2, 8), st.sampled_from([8, 16])), f32(-1, 1)),
           r=st.integers(1, 2), iters=st.integers(1, 3))
    def loftq_not_worse_than_plain(W, r, iters):
        out, inn = W.shape
        Q, A, B = run(_t(W), r, iters, block_size=8)
        what = f"run_loftq(W {W.shape}, r={r}, iters={iters}, block_size=8)"
        Q, A, B = _out(Q, W.shape, what + " Q"), _out(A, (r, inn), what + " A"), _out(B, (out, r), what + " B")
        blocks = Q.reshape(-1, 8)
        am = np.abs(blocks).max(1, keepdims=True)
        on_grid = np.abs(np.divide(blocks, am, out=np.zeros_like(blocks), where=am > 0)[..., None] - NF4_TABLE).min(-1)
        if on_grid.max() > 1e-5:
            raise AssertionError(f"{what}: Q is not on the NF4 grid of its blocks (an entry is "
                                 f"{on_grid.max():.2e} away from NF4 * absmax)")
        W64 = W.astype(np.float64).reshape(-1, 8)
        am_w = np.abs(W64).max(1, keepdims=True)
        s = np.divide(W64, am_w, out=np.zeros_like(W64), where=am_w > 0)
        plain = (NF4_TABLE[np.abs(s[..., None] - NF4_TABLE).argmin(-1)] * am_w).reshape(W.shape)
        e_plain = np.linalg.norm(W - plain)
        e = np.linalg.norm(W - (Q + B @ A))
        if e > e_plain * (1 + 1e-5) + 1e-6:
            raise AssertionError(f"{what}: ||W - (Q + B A)|| = {e:.6g} is larger than plain NF4's {e_plain:.6g}")
    _run(loftq_not_worse_than_plain)
