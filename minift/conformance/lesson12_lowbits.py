"""Lesson 12, part 3b ("Fewer bits", LoftQ's 2- and 3-bit experiments): the reference `run_*`
functions of the k-bit NormalFloat code and of k-bit packing, and their checks.

    run_nf_code(bits)                   the 2^bits NF-k values: NF4's construction with 2^(bits-1)
                                        positive quantiles, 2^(bits-1) - 1 negative ones and 0, at
                                        NF4's outermost quantile δ for every bits (as bitsandbytes'
                                        and LoftQ's k-bit NormalFloat); run_nf_code(4) is NF4
    run_pack_bits(codes, bits)          (n,) indices in 0..2^bits - 1 -> ⌈n bits / 8⌉ uint8: one
                                        big-endian bit stream, element 0's most significant bit
                                        first, zero-padded to a whole byte (at 4 bits: pack_4bit)
    run_unpack_bits(packed, n, bits)    its inverse: the first n bits-wide fields of the stream

The reference delegates to `minift/quant/nf4.py` (`nf_code`, `pack_bits`, `unpack_bits`). The
expected values are built here from first principles: the normal quantiles by bisection on
math.erfc in float64 (no torch.special, no statistics module), the bit streams one bit at a time
in Python integers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.quant.nf4 import nf_code, pack_bits, unpack_bits

from .harness import assert_close, output, property_check, tensor_arg
from .lesson12_qlora import NF4_TABLE

DELTA = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2          # NF4's outermost quantile, for every k (0.96770833...)


# ---- the reference functions --------------------------------------------------------------------

def run_nf_code(bits: int) -> torch.Tensor:
    """The 2^bits NF-k values, sorted, float32 in [-1, 1]: with h = 2^(bits-1), Φ⁻¹ of h evenly spaced
    p from δ down towards 1/2 (p⁺_k = δ - k (δ - ½) / h), minus Φ⁻¹ of h - 1 (p⁻_k = δ - k (δ - ½) /
    (h - 1)), and 0, all divided by Φ⁻¹(δ); δ = 1 - (1/30 + 1/32) / 2 whatever bits (2..8) is."""
    return nf_code(bits)


def run_pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(n,) integer indices in 0..2^bits - 1 -> (⌈n bits / 8⌉,) uint8: each index written with `bits`
    binary digits, most significant first, one after the other, zero bits appended to fill the last
    byte, and each byte read with its first bit as the most significant (128)."""
    return pack_bits(tensor_arg("codes", codes), bits)


def run_unpack_bits(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """(⌈n bits / 8⌉,) uint8 -> (n,) uint8: the n consecutive bits-wide fields of the big-endian stream
    (the padding bits at the end, whatever they hold, are ignored)."""
    return unpack_bits(tensor_arg("packed", packed), n, bits)


# ---- first principles -------------------------------------------------------------------------------

def _phi_inv(p: float) -> float:
    """Φ⁻¹(p) in float64, by bisection on Φ(x) = erfc(-x / √2) / 2 (120 halvings of [-10, 10]:
    below one float64 step)."""
    lo, hi = -10.0, 10.0
    for _ in range(120):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _nf_expected(bits: int) -> np.ndarray:
    """The NF-k values from the definition, float64, sorted."""
    h = 2 ** (bits - 1)
    top = _phi_inv(DELTA)
    pos = [_phi_inv(DELTA - k * (DELTA - 0.5) / h) / top for k in range(h)]             # h values, from 1 down
    neg = [-_phi_inv(DELTA - k * (DELTA - 0.5) / (h - 1)) / top for k in range(h - 1)]   # h - 1 values, from -1 up
    return np.array(sorted(neg + [0.0] + pos))


def _stream(codes, bits: int) -> list[int]:
    """The bytes of the big-endian stream, one bit at a time: bit j of index i (from the top) is
    ⌊q_i / 2^(bits-1-j)⌋ mod 2; eight bits make a byte, the first one worth 128."""
    out, acc, filled = [], 0, 0
    for q in codes:
        for j in range(bits):
            acc = 2 * acc + (int(q) // 2 ** (bits - 1 - j)) % 2
            filled += 1
            if filled == 8:
                out.append(acc)
                acc, filled = 0, 0
    if filled:
        out.append(acc * 2 ** (8 - filled))                                    # zero bits to fill the byte
    return out


def _fields(data: list[int], n: int, bits: int) -> list[int]:
    """The first n bits-wide fields of the big-endian stream `data` (bytes), one bit at a time."""
    flat = [(b // 2 ** (7 - j)) % 2 for b in data for j in range(8)]
    return [sum(flat[i * bits + j] * 2 ** (bits - 1 - j) for j in range(bits)) for i in range(n)]


def _uint8(y, n: int, what: str) -> np.ndarray:
    if not isinstance(y, torch.Tensor) or y.dtype != torch.uint8:
        raise AssertionError(f"{what} must return a torch.uint8 tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    return output(y, (n,), what, torch.uint8).astype(np.int64)


# ---- the code ---------------------------------------------------------------------------------------

def _code(code, bits: int) -> np.ndarray:
    what = f"run_nf_code({bits})"
    v = code(bits)
    if not isinstance(v, torch.Tensor) or v.dtype != torch.float32:
        raise AssertionError(f"{what} must return a float32 tensor, got {getattr(v, 'dtype', type(v).__name__)}")
    return output(v, (2 ** bits,), what)


@property_check("run_nf_code", lesson=12, examples=7, explicit=[dict(bits=2), dict(bits=3)], bits=st.integers(2, 8))
def nf_code_is_built_from_normal_quantiles(code, bits):
    """nf_code(k) (k = 2..8) is sorted, with h - 1 negative values, an exact 0 at index h - 1 and h
    positive ones (h = 2^(k-1)), exactly -1 and 1 at the ends, and each value within 1e-6 of Φ⁻¹(p) /
    Φ⁻¹(δ) for its evenly spaced p, δ = 1 - (1/30 + 1/32) / 2 for every k (Φ⁻¹ by bisection here)."""
    v, h, what = _code(code, bits), 2 ** (bits - 1), f"run_nf_code({bits})"
    if not (np.diff(v) > 0).all():
        raise AssertionError(f"{what} must be strictly increasing, got {v.tolist()}")
    if (v < 0).sum() != h - 1 or v[h - 1] != 0 or (v > 0).sum() != h:
        raise AssertionError(f"{what}: expected {h - 1} negative values, an exact 0 at index {h - 1} and {h} positive "
                             f"ones, got {int((v < 0).sum())} negative, {int((v == 0).sum())} zeros, "
                             f"{int((v > 0).sum())} positive")
    if v[0] != -1 or v[-1] != 1:
        raise AssertionError(f"{what} must span [-1, 1] exactly (divided by Φ⁻¹(δ)), got [{v[0]!r}, {v[-1]!r}]")
    assert_close(v, _nf_expected(bits), what + " vs Φ⁻¹(p) / Φ⁻¹(δ), p evenly spaced from δ down to 1/2, "
                 "δ = 1 - (1/30 + 1/32) / 2 at every k", atol=1e-6, rtol=0)


@property_check("run_nf_code", lesson=12, examples=1, once=st.just(None))
def nf_code_at_4_bits_is_nf4(code, once):
    """nf_code(4) is the QLoRA paper's NF4 table within 2e-7 (a float32 step: built from the exact δ or
    from bitsandbytes' 0.9677083), and the positive half of NF-k is contained in NF-(k+1)'s (k = 2, 3:
    h p-steps of (δ - ½) / h are every other step of 2h), within 1e-7."""
    v = _code(code, 4)
    assert_close(v, NF4_TABLE, "run_nf_code(4) vs the paper's NF4 table", atol=2e-7, rtol=0)
    for k in (2, 3):
        small, big = _code(code, k), _code(code, k + 1)
        h = 2 ** (k - 1)
        assert_close(small[h:], big[2 * h + 1::2], f"run_nf_code({k})'s {h} positive values vs every other positive "
                     f"value of run_nf_code({k + 1}), from its largest down", atol=1e-7, rtol=0)


# ---- packing ------------------------------------------------------------------------------------------

_INDICES = st.integers(2, 8).flatmap(lambda b: st.tuples(
    st.just(b), hnp.arrays(np.int64, st.integers(0, 29), elements=st.integers(0, 2 ** b - 1))))


@property_check("run_pack_bits", lesson=12, examples=60, bq=_INDICES,
                explicit=[dict(bq=(3, np.array([7, 0, 5], np.int64))), dict(bq=(4, np.array([1, 15, 9], np.int64))),
                          dict(bq=(2, np.array([3, 1, 2, 0, 2], np.int64))), dict(bq=(5, np.array([17], np.int64)))])
def pack_bits_is_a_big_endian_bit_stream(pack, bq):
    """pack_bits(q, k) returns ⌈n k / 8⌉ uint8 bytes: the k binary digits of each index, most significant
    first, one index after the other, zero bits at the end of the last byte, each byte's first bit worth
    128 (built here bit by bit). At k = 4 that is byte_i = 16 q_2i + q_2i+1, a 0 low nibble for odd n."""
    bits, q = bq
    what = f"run_pack_bits(codes {q.tolist()}, bits={bits})"
    nbytes = -(-q.size * bits // 8)
    got = _uint8(pack(torch.from_numpy(q.copy()), bits), nbytes, what)
    want = np.array(_stream(q, bits), np.int64)
    bad = np.nonzero(got != want)[0]
    if bad.size:
        i = int(bad[0])
        raise AssertionError(f"{what}: byte {i} is {got[i]} = {int(got[i]):08b}, the stream's byte {i} is "
                             f"{want[i]} = {int(want[i]):08b} (the whole stream: {' '.join(f'{b:08b}' for b in want)})")


@st.composite
def _streams(draw):
    """(bits, n, bytes): a stream of ⌈n bits / 8⌉ arbitrary bytes (its padding bits too)."""
    bits, n = draw(st.integers(2, 8)), draw(st.integers(0, 29))
    data = draw(hnp.arrays(np.uint8, -(-n * bits // 8), elements=st.integers(0, 255)))
    return bits, n, data


@property_check("run_unpack_bits", lesson=12, examples=60, s=_streams(),
                explicit=[dict(s=(3, 3, np.array([0b11100010, 0b11111111], np.uint8))),
                          dict(s=(4, 3, np.array([0x1F, 0x9A], np.uint8)))])
def unpack_bits_reads_the_stream_back(unpack, s):
    """unpack_bits(bytes, n, k) returns n uint8 indices: the n consecutive k-bit fields of the stream,
    each byte's most significant bit first (read here bit by bit); the padding bits at the end are
    ignored, whatever they hold. So unpack_bits(pack_bits(q, k), n, k) = q."""
    bits, n, data = s
    what = f"run_unpack_bits(packed {data.tolist()}, n={n}, bits={bits})"
    got = _uint8(unpack(torch.from_numpy(data.copy()), n, bits), n, what)
    want = np.array(_fields([int(b) for b in data], n, bits), np.int64)
    bad = np.nonzero(got != want)[0]
    if bad.size:
        i = int(bad[0])
        stream = "".join(f"{int(b):08b}" for b in data)
        raise AssertionError(f"{what}: index {i} is {got[i]}, the stream's bits {i * bits}..{i * bits + bits - 1} "
                             f"('{stream[i * bits:(i + 1) * bits]}') are {want[i]}")
