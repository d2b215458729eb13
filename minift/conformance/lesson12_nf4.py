"""Lesson 12's assignment, "NF4 end to end": the reference `run_*` functions and their checks.

    run_nf4_code()                                     the 16 NF4 values, built from normal quantiles
                                                       exactly as bitsandbytes builds them
    run_double_quantize(absmax, block_size=256)        (q8 int8, scales fp32, mean fp32): the absmax
                                                       constants centred and quantized to int8 again
    run_nf4_roundtrip(W, block_size=64, double_quant=False, dq_block_size=256)
                                                       (packed uint8, W_hat): quantize, pack, unpack,
                                                       dequantize, the whole storage path of QLoRA

The reference delegates to `minift/quant/nf4.py` (`quantize_blockwise`, `pack_4bit`,
`quantize_absmax` and their inverses). `nf_code(4)` there builds the code in float64 from the exact δ and lands
within 1.8e-7 of the paper's table, and `nf4_code()` is that table; `run_nf4_code` follows bitsandbytes' recipe (δ rounded to 0.9677083,
p in float32, Φ⁻¹ in float64, the division by the largest value in float32), which gives the
printed table bit for bit. The checks compare with that table (`NF4_TABLE`), with the golden
vectors in data/golden (loaded through `golden.load`), and with float64 numpy formulas.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import torch
from hypothesis import assume, strategies as st

from minift.quant.nf4 import (dequantize_absmax, dequantize_blockwise, pack_4bit, quantize_absmax, quantize_blockwise,
                              unpack_4bit)
from minift.validate import check_bool, check_int

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .lesson12_qlora import NF4_TABLE, SUBNORMAL_ROUNDING
from .strategies import arrays, f32

NF4_DELTA = 0.9677083                    # δ = 1 - (1/30 + 1/32) / 2, rounded as bitsandbytes writes it
GAPS = np.diff(NF4_TABLE)                # (15,) distances between neighbouring NF4 values


def _rebuild_slack(n: int, magnitude):
    """float32's rounding of c_hat = mean + s q8 over n absmax values (the mean's sum, the scale, x |q8| <= 127):
    relative, 2^-24 an operation, of `magnitude`; and where the mean or s is subnormal, SUBNORMAL_ROUNDING an
    operation."""
    return (n + 8) * 2.0 ** -23 * magnitude + (n + 128) * SUBNORMAL_ROUNDING


# ---- the reference functions --------------------------------------------------------------------

def run_nf4_code() -> torch.Tensor:
    """The 16 NF4 values, sorted, float32: Φ⁻¹ of 8 (positive half) and 7 (negative half, negated)
    evenly spaced probabilities from δ down to 1/2 (1/2 itself dropped), plus 0, divided by the
    largest. p in float32, Φ⁻¹ in float64, the 16 values cast to float32 before the division."""
    pos = torch.special.ndtri(torch.linspace(NF4_DELTA, 0.5, 9, dtype=torch.float32).double())[:8]
    neg = -torch.special.ndtri(torch.linspace(NF4_DELTA, 0.5, 8, dtype=torch.float32).double())[:7]
    v = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).to(torch.float32).sort().values
    return v / v.max()                                                          # in float32, (16,)


def run_double_quantize(absmax: torch.Tensor, block_size: int = 256):
    """Second-level quantization of the (n,) block absmax c: mean m = mean(c) (float32), then per
    block k of block_size consecutive values s_k = max |c_j - m| / 127 and q8_j = round((c_j - m) / s_k)
    (0 where s_k = 0). Returns (q8 (n,) int8, scales (ceil(n / block_size),) float32, mean 0-dim float32)."""
    c = tensor_arg("absmax", absmax)
    if c.dim() != 1 or c.numel() == 0 or not c.is_floating_point():
        raise ValueError(f"absmax must be a non-empty 1-D float tensor, got {c.dtype} of shape {tuple(c.shape)}")
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"block_size={block_size!r} must be an integer >= 1")
    return quantize_absmax(c.to(torch.float32), block_size)


def run_nf4_roundtrip(W: torch.Tensor, block_size: int = 64, double_quant: bool = False, dq_block_size: int = 256):
    """Quantize W (any shape, numel divisible by block_size) to NF4 blockwise, pack two codes per byte,
    then rebuild it from what is stored. Returns (packed (ceil(numel / 2),) uint8, W_hat (W's shape)
    float32); with double_quant the block absmax used to rebuild is the double-quantized one. The code
    is `run_nf4_code()`, the paper's table bit for bit (minift's `nf4_code()` returns that table)."""
    check_bool("run_nf4_roundtrip", "double_quant", double_quant)
    check_int("run_nf4_roundtrip", "dq_block_size", dq_block_size, lo=1)
    code = run_nf4_code()
    q, absmax = quantize_blockwise(tensor_arg("W", W), code, block_size)        # (numel,) uint8, (n_blocks,)
    packed = pack_4bit(q)                                                       # (ceil(numel / 2),) uint8
    if double_quant:
        absmax = dequantize_absmax(*quantize_absmax(absmax, dq_block_size), dq_block_size)   # ĉ = mean + s q8
    W_hat = dequantize_blockwise(unpack_4bit(packed, W.numel()), absmax, code, block_size)
    return packed, W_hat.reshape(W.shape)


# ---- shared float64 maths -----------------------------------------------------------------------

def _unpack64(packed, n: int, what: str) -> np.ndarray:
    """(n,) int64 codes of a packed uint8 tensor: q_{2i} = byte_i // 16, q_{2i+1} = byte_i mod 16."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise AssertionError(f"{what}: packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    b = packed.detach().cpu().reshape(-1).numpy().astype(np.int64)
    if b.size != (n + 1) // 2:
        raise AssertionError(f"{what}: packed has {b.size} bytes, {n} codes need {(n + 1) // 2}")
    return np.stack([b // 16, b % 16], 1).reshape(-1)[:n]


def _absmax64(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(blocks (n_blocks, B), c (n_blocks,)) of w flattened row-major, in float64."""
    blocks = np.asarray(w, np.float64).reshape(-1, block)
    return blocks, np.abs(blocks).max(1)


def _dq64(c: np.ndarray, block: int):
    """The double quantization in float64: mean, per-value scale s (of its block), x = (c - mean) / s."""
    mean = c.mean()
    centred = c - mean
    pad = np.concatenate([centred, np.zeros((-c.size) % block)]).reshape(-1, block)
    s = np.repeat(np.abs(pad).max(1) / 127, block)[:c.size]                    # s of each value's block
    x = np.divide(centred, s, out=np.zeros_like(c), where=s > 0)
    return mean, s, x


# ---- part 1: the code ---------------------------------------------------------------------------

def _code(code, what="run_nf4_code()") -> np.ndarray:
    v = code()
    if not isinstance(v, torch.Tensor) or v.dtype != torch.float32:
        raise AssertionError(f"{what} must return a float32 tensor, got {getattr(v, 'dtype', type(v).__name__)}")
    return output(v, (16,), what)


@property_check("run_nf4_code", lesson=12, examples=1, once=st.just(None))
def nf4_code_is_the_published_table(code, once):
    """nf4_code() returns the 16 float32 values of the QLoRA paper's table (bitsandbytes' NF4) bit
    for bit: -1, -0.6961928009986877, ..., 0, ..., 0.7229568362236023, 1."""
    v = _code(code)
    bad = np.nonzero(v != NF4_TABLE)[0]
    if bad.size:
        i = int(bad[0])
        ulp = abs(v[i] - NF4_TABLE[i]) / np.spacing(np.float32(abs(NF4_TABLE[i]) or 1.0))
        raise AssertionError(f"run_nf4_code(): {bad.size} of 16 values differ from the paper's table; first at "
                             f"index {i}: got {v[i]!r}, expected {NF4_TABLE[i]!r} ({ulp:.0f} float32 steps apart)")


@property_check("run_nf4_code", lesson=12, examples=1, once=st.just(None))
def nf4_code_is_built_from_normal_quantiles(code, once):
    """nf4_code() is sorted, has 7 negative values, an exact 0 at index 7, 8 positive values, ends at
    exactly -1 and 1, and each value times Φ⁻¹(δ) is the normal quantile Φ⁻¹(p) of its evenly spaced
    p (δ = 0.9677083 down to 1/2) within 1e-6."""
    v = _code(code)
    what = "run_nf4_code()"
    if not (np.diff(v) > 0).all():
        raise AssertionError(f"{what} must be strictly increasing, got {v.tolist()}")
    if (v < 0).sum() != 7 or v[7] != 0 or (v > 0).sum() != 8:
        raise AssertionError(f"{what}: expected 7 negative values, an exact 0 at index 7 and 8 positive ones, got "
                             f"{int((v < 0).sum())} negative, {int((v == 0).sum())} zeros, {int((v > 0).sum())} positive")
    if v[0] != -1 or v[15] != 1:
        raise AssertionError(f"{what} must span [-1, 1] exactly (divided by its largest value), got [{v[0]!r}, {v[15]!r}]")
    inv = NormalDist().inv_cdf
    top = inv(NF4_DELTA)
    exp = np.array([-inv(NF4_DELTA - k * (NF4_DELTA - 0.5) / 7) for k in range(7)]
                   + [0.0] + [inv(NF4_DELTA - k * (NF4_DELTA - 0.5) / 8) for k in range(7, -1, -1)]) / top
    assert_close(v, exp, what + " vs Φ⁻¹(p) / Φ⁻¹(δ) (p evenly spaced from δ down to 1/2)", atol=1e-6, rtol=0)


# ---- part 2: double quantization of the absmax -------------------------------------------------

@st.composite
def _constants(draw):
    """(absmax (n,) positive float32, block): spread out, or bunched far from 0 (where centring matters)."""
    block = draw(st.sampled_from([2, 3, 4, 256]))
    n = draw(st.integers(1, 300 if block == 256 else 3 * block + 1))
    c = draw(arrays((n,), f32(0, 8)))
    offset = draw(st.sampled_from([0.0, 100.0, 10.0]))
    return (c + np.float32(offset)).astype(np.float32), block


def _dq_outputs(dq, c, block, what):
    out = dq(tensor(c), block_size=block)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise AssertionError(f"{what} must return (q8, scales, mean), got {type(out).__name__}")
    q8, scales, mean = out
    if not isinstance(q8, torch.Tensor) or q8.dtype != torch.int8:
        raise AssertionError(f"{what}: q8 must be an int8 tensor, got {getattr(q8, 'dtype', type(q8).__name__)}")
    nb = -(-c.size // block)
    m = output(mean, tuple(mean.shape), what + " mean") if isinstance(mean, torch.Tensor) else None
    if m is None or m.size != 1:
        raise AssertionError(f"{what}: mean must be a one-element tensor")
    return (output(q8, (c.size,), what + " q8", torch.int8), output(scales, (nb,), what + " scales"), float(m.reshape(())))


@property_check("run_double_quantize", lesson=12, examples=40,
                explicit=[dict(cb=(np.array([10.0, 10.5, 10.25, 10.75], np.float32), 2)),
                          dict(cb=(np.array([6.59375, 7.4375, 7.4375], np.float32), 2)),    # (c_1 - mean) / s = 63.5
                          dict(cb=(np.array([1e-42, 5e-43, 0.0, 2e-43], np.float32), 4)),   # subnormal s: x = 136.7
                          dict(cb=(np.array([1e-45, 0.0], np.float32), 2))],                 # a subnormal mean
                cb=_constants())
def double_quantize_matches_formula(dq, cb):
    """double_quantize(c, block) returns mean = mean(c), per block k scales s_k = max |c_j - mean| / 127
    and q8_j = round((c_j - mean) / s_k) in -127..127 (int8), as float64 formulas (q8 may be off by one
    only at an exact tie)."""
    c, block = cb
    what = f"run_double_quantize(absmax ({c.size},), block_size={block})"
    q8, s, mean = _dq_outputs(dq, c, block, what)
    c64 = c.astype(np.float64)
    # float32 rounding: relative, or one subnormal step (2^-149) where the mean is subnormal (absmax near 1e-45)
    assert_close(mean, c64.mean(), what + " mean vs the mean of absmax", atol=2.0 ** -149, rtol=(c.size + 2) * 2.0 ** -24)
    centred = c64 - mean                                                         # with their mean: no knock-on
    pad = np.concatenate([centred, np.zeros((-c.size) % block)]).reshape(-1, block)
    s64 = np.abs(pad).max(1) / 127
    assert_close(s, s64, what + " scales vs max |c - mean| / 127 per block", atol=1e-30, rtol=2.0 ** -22)
    sj = np.repeat(s, block)[:c.size]              # their scales too (within float32 rounding of s64, checked
    x = np.divide(centred, sj, out=np.zeros_like(c64), where=sj > 0)   # above): a subnormal s rounds by up to 2^-150,
    x = np.clip(x, -127, 127)                      # so x may pass 127 there; the codes stop at ±127
    # within half a step of x: round(x) itself, or either neighbour at an exact tie (x = 63.5 may be 63 or 64)
    assert_close(q8, x, what + " q8 vs round((c - mean) / s): |q8 - (c - mean) / s| <= 1/2", atol=0.5 + 1e-3, rtol=0)
    if np.abs(q8).max() > 127:
        raise AssertionError(f"{what}: q8 must stay in -127..127, got {int(np.abs(q8).max())}")


@property_check("run_double_quantize", lesson=12, examples=40,
                explicit=[dict(cb=(np.array([100.0, 100.125, 101.0, 100.5, 100.25], np.float32), 4)),
                          dict(cb=(np.array([0.0, 1.1754944e-38, 1.1754944e-38], np.float32), 2)),    # subnormal s
                          dict(cb=(np.array([1e-42, 5e-43, 0.0, 2e-43], np.float32), 4))],             # s rounded far down
                cb=_constants())
def double_quantize_reconstructs_within_half_a_step(dq, cb):
    """mean + s_k q8_j rebuilds every absmax c_j within half a step s_k / 2 (s_k = max |c - mean(c)| / 127
    of its block, in float64), exactly (to float32 rounding) at the value of each block farthest from
    the mean."""
    c, block = cb
    what = f"run_double_quantize(absmax ({c.size},), block_size={block})"
    q8, s, mean = _dq_outputs(dq, c, block, what)
    c64 = c.astype(np.float64)
    m64, s64, _ = _dq64(c64, block)
    rebuilt = mean + np.repeat(s, block)[:c.size] * q8
    slack = _rebuild_slack(c.size, np.abs(c64) + abs(m64))     # float32 mean and scales (subnormal near 1e-38)
    assert_close(rebuilt, c64, what + " mean + s q8 vs absmax (half a step, s = max |c - mean| / 127)",
                 atol=s64 / 2 * (1 + 1e-5) + slack, rtol=0)
    pad = np.concatenate([np.abs(c64 - m64), np.full((-c.size) % block, -1.0)]).reshape(-1, block)
    far = np.zeros(pad.size, bool)
    far[np.arange(pad.shape[0]) * block + pad.argmax(1)] = True
    far = far[:c.size]
    assert_close(rebuilt[far], c64[far], what + " at each block's value farthest from the mean (q8 = ±127 is exact)",
                 atol=slack[far], rtol=0)


# ---- part 3: the whole pipeline ------------------------------------------------------------------

@st.composite
def _weights(draw, dq=None):
    """(W, block, double_quant, dq_block): W of 1 to 6 blocks, as (n,), (blocks, B) or (2, n / 2)."""
    block = draw(st.sampled_from([2, 4, 8, 64]))
    nb = draw(st.integers(1, 2 if block == 64 else 6))
    shape = draw(st.sampled_from([(nb * block,), (nb, block), (2, nb * block // 2)]))
    w = draw(arrays(shape, f32(-8, 8)))
    level = draw(st.sampled_from([1.0, 1.0, 1e-3, 50.0]))                       # some blocks far from 0
    w = (w * np.float32(level)).astype(np.float32)
    double = draw(st.booleans()) if dq is None else dq
    return w, block, double, draw(st.sampled_from([2, 3, 256]))


def _roundtrip(run, w, block, dq, dqb):
    what = f"run_nf4_roundtrip(W {w.shape}, block_size={block}, double_quant={dq}, dq_block_size={dqb})"
    out = run(tensor(w), block_size=block, double_quant=dq, dq_block_size=dqb)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AssertionError(f"{what} must return (packed, W_hat), got {type(out).__name__}")
    packed, W_hat = out
    q = _unpack64(packed, w.size, what)
    if not isinstance(W_hat, torch.Tensor) or W_hat.dtype != torch.float32:
        raise AssertionError(f"{what}: W_hat must be a float32 tensor, got {getattr(W_hat, 'dtype', type(W_hat).__name__)}")
    return what, packed, q, output(W_hat, w.shape, what + " W_hat").reshape(-1)


def _golden_cases():
    """[(w, block, codes, absmax)] of data/golden's run_nf4_quantize cases, and its run_nf4_roundtrip cases."""
    from . import golden                                          # late: golden imports every lesson's checks
    try:
        cases, tensors = golden.load(golden.GOLDEN_DIR)
    except ValueError:
        return [], []
    quant, trips = [], []
    for c in cases:
        args, kw = golden.decode(c["args"], tensors), golden.decode(c["kwargs"], tensors)
        if c["adapter"] == "run_nf4_quantize":
            codes, absmax = golden.decode(c["output"], tensors)
            quant.append((args[0].numpy(), kw.get("block_size", args[1] if len(args) > 1 else 64),
                          codes.numpy().astype(np.int64), absmax.numpy().astype(np.float64)))
        elif c["adapter"] == "run_nf4_roundtrip":
            trips.append((c["id"], args, kw, golden.decode(c["output"], tensors), c["atol"], c["rtol"]))
    return quant, trips


def _fallback():
    """A fixed case for a checkout without data/golden: w_j = (j - 5.5) / 4 in blocks of 4, its codes and
    absmax from the float64 formula."""
    w = ((np.arange(12) - 5.5) / 4).astype(np.float32)
    blocks, c = _absmax64(w, 4)
    codes = np.abs((blocks / c[:, None]).reshape(-1)[:, None] - NF4_TABLE).argmin(1)
    return [(w, 4, codes, c)]


@property_check("run_nf4_roundtrip", lesson=12, examples=1, once=st.just(None))
def nf4_roundtrip_matches_golden_vectors(run, once):
    """On every NF4 input of the golden vectors (data/golden), nf4_roundtrip(W, block) packs exactly the
    golden codes (high nibble first) and rebuilds W_hat = NF4[q] · absmax bit for bit; the golden
    run_nf4_roundtrip cases match too (bit for bit without double quantization)."""
    from . import golden
    quant, trips = _golden_cases()
    for w, block, codes, absmax in quant or _fallback():
        what, packed, q, W_hat = _roundtrip(run, w, block, False, 256)
        bad = np.nonzero(q != codes)[0]
        if bad.size:
            j = int(bad[0])
            raise AssertionError(f"{what} on w = {w.tolist()}: code {j} (unpacked high nibble first) is {q[j]}, the "
                                 f"golden code is {codes[j]}")
        exp = (NF4_TABLE[codes] * np.repeat(absmax, block)).astype(np.float32)
        assert_close(W_hat, exp, what + " W_hat vs the golden NF4[q] · absmax (bit for bit)", atol=0, rtol=0)
    for cid, args, kw, expected, atol, rtol in trips:
        got = run(*args, **kw)
        exact = not kw.get("double_quant", args[2] if len(args) > 2 else False)
        msg = golden.compare(expected, tuple(got) if isinstance(got, list) else got,
                             0.0 if exact else atol, 0.0 if exact else rtol, "run_nf4_roundtrip" + cid[cid.rfind("."):])
        if msg:
            raise AssertionError(f"golden case {cid}: {msg}")


@property_check("run_nf4_roundtrip", lesson=12, examples=40, wb=_weights(),
                explicit=[dict(wb=(np.array([1.0, -10.0, 0.5, 10.25, 3.0, 10.5], np.float32), 2, True, 256)),
                          # groups of 2 uneven constants: ĉ ≠ c, so skipping double quantization shows
                          dict(wb=(np.array([1.0, -3.0, 0.5, 2.0, 7.0, -1.0, 0.25, 5.5], np.float32), 2, True, 2))])
def nf4_roundtrip_matches_formula(run, wb):
    """nf4_roundtrip(W, block, dq, dq_block) packs, high nibble first, the index of an NF4 value nearest
    to w_j / c_b (c_b = max |w| of the block) and returns W_hat_j = NF4[q_j] · ĉ_b: ĉ = c bit for bit
    without double quantization, ĉ = mean + s_k round((c - mean) / s_k) with it (float64 formula)."""
    w, block, dq, dqb = wb
    what, packed, q, W_hat = _roundtrip(run, w, block, dq, dqb)
    blocks, c = _absmax64(w, block)
    scaled = np.divide(blocks, c[:, None], out=np.zeros_like(blocks), where=c[:, None] > 0).reshape(-1)
    dist = np.abs(scaled[:, None] - NF4_TABLE)
    bad = np.nonzero(dist[np.arange(w.size), q] > dist.min(1) + 1e-6)[0]
    if bad.size:
        j = int(bad[0])
        raise AssertionError(f"{what}: element {j} (w / c = {scaled[j]:.6f}) has code {q[j]} = {NF4_TABLE[q[j]]:.6f}, "
                             f"but code {int(dist[j].argmin())} = {NF4_TABLE[dist[j].argmin()]:.6f} is nearer")
    if not dq:
        assert_close(W_hat, (NF4_TABLE[q] * np.repeat(c, block)).astype(np.float32),
                     what + " W_hat vs NF4[q] · c (one float32 product, bit for bit)", atol=0, rtol=0)
        return
    mean, s, x = _dq64(c, dqb)
    lo, hi = mean + s * np.round(x - 1e-4), mean + s * np.round(x + 1e-4)         # either side of a near-tie
    tol = np.repeat((c.size + 8) * 2.0 ** -23 * (abs(mean) + 127 * s), block) * np.abs(NF4_TABLE[q]) + 1e-30
    v = NF4_TABLE[q]
    ok = (np.abs(W_hat - v * np.repeat(lo, block)) <= tol) | (np.abs(W_hat - v * np.repeat(hi, block)) <= tol)
    if not ok.all():
        j = int(np.nonzero(~ok)[0][0])
        raise AssertionError(f"{what}: W_hat[{j}] = {W_hat[j]!r}, expected NF4[{q[j]}] · ĉ = {v[j] * lo[j // block]!r} "
                             f"with ĉ = mean + s round((c - mean) / s) = {lo[j // block]!r} (c = {c[j // block]!r})")


@property_check("run_nf4_roundtrip", lesson=12, examples=40, wb=_weights(),
                explicit=[dict(wb=(np.array([10.0, 1.0, -10.25, 2.0, 10.125, -3.0, 10.5, 0.0], np.float32), 2, True, 256)),
                          # subnormal blocks: float32 rounds NF4 · c_b (and the mean and s_k) by 2^-150, not relatively
                          dict(wb=(np.array([5, -4], np.float32) * np.float32(2.0 ** -149), 2, False, 256)),
                          dict(wb=(np.array([2.0 ** -149, 0, 0, 0], np.float32), 2, True, 256))])
def nf4_roundtrip_error_bound(run, wb):
    """|W_hat_j - w_j| is at most half the gap between the two NF4 values around w_j / c_b, times c_b,
    plus (with double quantization) half a second-level step s_k / 2: the dequantized error bound. Each
    float32 operation adds its rounding: relative where the result is normal, up to 2^-150 where it is
    subnormal (the product NF4 · c_b; with double quantization the mean and s_k, as in
    double_quantize_reconstructs_within_half_a_step)."""
    w, block, dq, dqb = wb
    what, _, _, W_hat = _roundtrip(run, w, block, dq, dqb)
    blocks, c = _absmax64(w, block)
    scaled = np.divide(blocks, c[:, None], out=np.zeros_like(blocks), where=c[:, None] > 0).reshape(-1)
    i = np.clip(np.searchsorted(NF4_TABLE, scaled) - 1, 0, 14)                   # NF4[i] <= w / c <= NF4[i + 1]
    bound = np.repeat(c, block) * GAPS[i] / 2 * (1 + 1e-6) + 2.0 ** -23 * np.abs(w.reshape(-1)) + SUBNORMAL_ROUNDING
    if dq:
        mean, s, _ = _dq64(c, dqb)
        bound = bound + np.repeat(s / 2 * (1 + 1e-5) + _rebuild_slack(c.size, abs(mean) + 127 * s), block)
    assert_close(W_hat, w.reshape(-1).astype(np.float64), what + " W_hat vs W (half the NF4 gap times c_b"
                 + (", plus s_k / 2)" if dq else ")"), atol=bound, rtol=0)


@property_check("run_nf4_roundtrip", lesson=12, examples=30, wb=_weights(dq=False),
                explicit=[dict(wb=(np.array([1, -0.8, 0.3, -0.05], np.float32) * np.float32(2.0 ** -126), 4, False, 256))])
def nf4_roundtrip_is_idempotent(run, wb):
    """Without double quantization nf4_roundtrip is a projection: quantizing W_hat again gives the same
    packed bytes and the same W_hat bit for bit (and W itself is left unchanged). Where a block's absmax
    c_b is subnormal it is not, for any float32 implementation: NF4 · c_b rounds to a multiple of 2^-149,
    which can fall nearer another code (c_b = 5 · 2^-149: -0.6962 c_b -> -3 · 2^-149 = -0.6 c_b, nearer
    -0.5251), so the check takes blocks whose absmax is 0 or normal (>= 2^-126)."""
    w, block, _, _ = wb
    assume(all(c == 0 or c >= 2.0 ** -126 for c in _absmax64(w, block)[1]))
    W = tensor(w)
    what = f"run_nf4_roundtrip(W {w.shape}, block_size={block})"
    packed, W_hat = run(W, block_size=block, double_quant=False, dq_block_size=256)
    if not np.array_equal(W.numpy(), w):
        raise AssertionError(f"{what} changed its input W in place")
    if not isinstance(W_hat, torch.Tensor) or not isinstance(packed, torch.Tensor):
        raise AssertionError(f"{what} must return two tensors (packed, W_hat)")
    again = run(W_hat.detach().clone().to(torch.float32).reshape(w.shape), block_size=block, double_quant=False,
                dq_block_size=256)
    q1, q2 = _unpack64(packed, w.size, what), _unpack64(again[0], w.size, what + " on W_hat")
    if not np.array_equal(q1, q2):
        j = int(np.nonzero(q1 != q2)[0][0])
        raise AssertionError(f"{what}: quantizing W_hat again changes code {j} from {q1[j]} to {q2[j]}")
    assert_close(output(again[1], w.shape, what + " on W_hat"), W_hat.detach().to(torch.float64).numpy(),
                 what + ": W_hat quantized again vs W_hat (bit for bit)", atol=0, rtol=0)

