"""Lesson 12 (QLoRA: NF4, 4-bit packing, LoftQ): the reference `run_*` functions and their conformance checks.

The reference functions, computed by `minift/quant/nf4.py` and `minift/quant/qlora.py`:

    run_nf4_quantize(w, block_size)            (codes, absmax): the nearest NF4 value per element
    run_nf4_dequantize(codes, absmax, block_size)   NF4[codes] * absmax of each block
    run_pack_4bit(codes)                       two codes per byte, high nibble first
    run_loftq(W, r, iters)                     (Q, A, B) with Q + B A closer to W than NF4(W) alone

and the assignment "NF4 end to end" (lesson12_nf4.py: the code from normal quantiles, double
quantization of the absmax, the whole quantize-pack-unpack-dequantize pipeline).

The NF4 table is the one printed in the QLoRA paper (appendix E), written out here; every
expected value is computed in float64 numpy from the definitions.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.quant.nf4 import dequantize_blockwise, nf4_code, pack_4bit, quantize_blockwise
from minift.quant.qlora import loftq

from .harness import assert_close, output, property_check, tensor
from .strategies import arrays, f32


# ---- the reference functions --------------------------------------------------------------------

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


def run_loftq(W: torch.Tensor, r: int, iters: int, block_size: int = 64):
    """LoftQ with the NF4 quantizer (no double quantization) and s = 1: returns (Q, A, B) with Q on
    the NF4 grid of its blocks (Q = dequant(quant(T)) for some T), A (r, in), B (out, r), and
    ||W - (Q + B A)||_F no larger than ||W - dequant(quant(W))||_F."""
    def quantize(t):
        q, a = quantize_blockwise(t, nf4_code(), block_size)
        return dequantize_blockwise(q, a, nf4_code(), block_size).reshape(t.shape)
    out = loftq(W, r, 1.0, quantize, iters)
    return quantize(out["target"]), out["A"], out["B"]


# ---- the checks ----------------------------------------------------------------------------------

NF4_TABLE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                      -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                      0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                      0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])
SUBNORMAL_ROUNDING = 2.0 ** -150   # float32 rounds a subnormal result by up to half of 2^-149, absolutely


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


@property_check("run_nf4_quantize", lesson=12, examples=60, wb=_blocked())
def nf4_quantize_picks_the_nearest_code(quantize, wb):
    """nf4_quantize(w, block) gives absmax = max |w| per block and, for every element, the index of an
    NF4 value (the paper's table) nearest to w / absmax."""
    w, B = wb
    codes, absmax = quantize(tensor(w), block_size=B)
    what = f"run_nf4_quantize(w, block_size={B})"
    c = _int_codes(codes, w.size, what)
    blocks = w.astype(np.float64).reshape(-1, B)
    am = np.abs(blocks).max(1)
    assert_close(output(absmax, am.shape, what + " absmax"), am, what + " absmax vs max |w| per block",
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


def _ties() -> list[tuple[int, float]]:
    """(k, m): the midpoints m = (NF4[k] + NF4[k+1]) / 2 that float32 holds exactly (6 of the 15),
    so that w / absmax can land on one."""
    t = NF4_TABLE.astype(np.float32).astype(np.float64)
    mids = [(k, (t[k] + t[k + 1]) / 2) for k in range(15)]                   # exact in float64
    return [(k, m) for k, m in mids if float(np.float32(m)) == m]


@property_check("run_nf4_quantize", lesson=12, examples=4, scale=st.sampled_from([1.0, 0.5, 4.0, 2.0 ** -20]))
def nf4_quantize_ties_go_to_the_lower_code(quantize, scale):
    """a value exactly halfway between two NF4 values gets the lower index, as bitsandbytes'
    comparisons (x > midpoint) send it: every midpoint float32 holds, in blocks [scale, m · scale]
    (scale a power of two, so w / absmax is m exactly)."""
    ties = _ties()
    w = np.array([[scale, m * scale] for _, m in ties], np.float32).reshape(-1)   # (2 · ties,)
    codes, _ = quantize(tensor(w), block_size=2)
    what = f"run_nf4_quantize(w, block_size=2), blocks [{scale!r}, m · {scale!r}]"
    for (k, m), got in zip(ties, _int_codes(codes, w.size, what)[1::2]):
        if got != k:
            raise AssertionError(f"{what}: w / absmax = {m!r}, halfway between NF4[{k}] = {NF4_TABLE[k]:.9f} and "
                                 f"NF4[{k + 1}] = {NF4_TABLE[k + 1]:.9f}, got index {got}: a tie takes the lower one")


@property_check("run_nf4_dequantize", lesson=12, examples=40, B=st.sampled_from([2, 4, 8]), data=st.data())
def nf4_dequantize_matches_table(dequantize, B, data):
    """nf4_dequantize(codes, absmax, block) equals NF4[codes[j]] * absmax[j // block] with the paper's
    table."""
    nb = data.draw(st.integers(1, 4))
    codes = data.draw(hnp.arrays(np.uint8, nb * B, elements=st.integers(0, 15)))
    absmax = data.draw(arrays((nb,), f32(0, 10)))
    y = output(dequantize(torch.from_numpy(codes.copy()), tensor(absmax), block_size=B), (nb * B,),
               f"run_nf4_dequantize(codes, absmax, block_size={B})")
    exp = NF4_TABLE[codes.astype(np.int64)] * np.repeat(absmax.astype(np.float64), B)
    assert_close(y, exp, "run_nf4_dequantize vs NF4[codes] * absmax", atol=1e-6, rtol=1e-6)


@property_check("run_pack_4bit", lesson=12, examples=40,
                codes=hnp.arrays(np.uint8, st.integers(1, 21), elements=st.integers(0, 15)))
def pack_4bit_nibble_order(pack, codes):
    """pack_4bit(codes) puts codes[2i] in the high nibble and codes[2i+1] in the low nibble of byte i
    (a zero low nibble for odd lengths): ceil(n/2) uint8 bytes."""
    got = pack(torch.from_numpy(codes.copy()))
    if not isinstance(got, torch.Tensor) or got.dtype != torch.uint8:
        raise AssertionError(f"run_pack_4bit must return a uint8 tensor, got {getattr(got, 'dtype', type(got))}")
    padded = np.concatenate([codes, np.zeros(codes.size % 2, np.uint8)]).astype(np.int64)
    exp = 16 * padded[0::2] + padded[1::2]
    g = got.reshape(-1).to(torch.int64).numpy()
    if g.shape != exp.shape or not np.array_equal(g, exp):
        raise AssertionError(f"run_pack_4bit({codes.tolist()}) = {g.tolist()}, expected {exp.tolist()} "
                             f"(16 * codes[2i] + codes[2i+1])")


def _tiny_w() -> np.ndarray:
    """A (2, 8) weight whose absmax is 512 * 2^-149: NF4 * absmax rounds by 2^-150 there (subnormal)."""
    w = np.full((2, 8), 512 * 2.0 ** -149, np.float32)
    w[0, 0] = np.float32(256 * 2.0 ** -149)
    return w


@property_check("run_loftq", lesson=12, examples=25,
                W=arrays(st.tuples(st.integers(2, 8), st.sampled_from([8, 16])), f32(-1, 1)),
                r=st.integers(1, 2), iters=st.integers(1, 3), explicit=[dict(W=_tiny_w(), r=1, iters=1)])
def loftq_not_worse_than_plain(run, W, r, iters):
    """loftq(W, r, iters) returns Q on the NF4 grid of W's blocks, A (r, in), B (out, r) with ||W - (Q
    + B A)||_F <= ||W - nf4(W)||_F (it never does worse than plain quantization)."""
    out, inn = W.shape
    Q, A, B = run(tensor(W), r, iters, block_size=8)
    what = f"run_loftq(W {W.shape}, r={r}, iters={iters}, block_size=8)"
    Q, A, B = output(Q, W.shape, what + " Q"), output(A, (r, inn), what + " A"), output(B, (out, r), what + " B")
    blocks = Q.reshape(-1, 8)
    am = np.abs(blocks).max(1, keepdims=True)
    # on the grid: within 1e-5 absmax of some NF4 * absmax, plus float32's rounding of that product where
    # it is subnormal (absolute: a relative test fails every block whose absmax is below ~2^-133)
    dist = np.abs(blocks[..., None] - NF4_TABLE * am[..., None]).min(-1)          # (blocks, 8)
    over = dist - (1e-5 * am + SUBNORMAL_ROUNDING)
    if not over.max() <= 0:                                    # (a NaN in Q fails too)
        k = np.unravel_index(over.argmax(), over.shape)
        raise AssertionError(f"{what}: Q is not on the NF4 grid of its blocks (entry {k} of the (blocks, 8) view, "
                             f"{blocks[k]!r}, is {dist[k]:.2e} from the nearest NF4 * absmax, absmax {am[k[0], 0]!r})")
    W64 = W.astype(np.float64).reshape(-1, 8)
    am_w = np.abs(W64).max(1, keepdims=True)
    s = np.divide(W64, am_w, out=np.zeros_like(W64), where=am_w > 0)
    plain = (NF4_TABLE[np.abs(s[..., None] - NF4_TABLE).argmin(-1)] * am_w).reshape(W.shape)
    e_plain = np.linalg.norm(W - plain)
    e = np.linalg.norm(W - (Q + B @ A))
    if not e <= e_plain * (1 + 1e-5) + 1e-6:
        raise AssertionError(f"{what}: ||W - (Q + B A)|| = {e:.6g} is larger than plain NF4's {e_plain:.6g}")
