"""NF4, FP4 and int4 blockwise quantization, double quantization and 4-bit packing, and the 3- and
2-bit NormalFloat codes with their bit-stream packing (minift/quant/nf4.py). Expected values are computed here in float64 numpy from the definitions."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.quant.nf4 import (CODE_BITS, CODES, NF4_PUBLISHED, bits_per_parameter, dequantize_absmax,
                              dequantize_nf4, fp4_code, nf4_code, nf_code, pack_4bit, pack_bits, quantize_absmax,
                              quantize_nf4, unpack_4bit, unpack_bits)
from minift.quant.ops import NF4Linear

pytestmark = pytest.mark.lesson12

def test_nf4_construction_matches_the_published_table():
    assert torch.equal(nf4_code(), torch.tensor(NF4_PUBLISHED, dtype=torch.float32))   # what minift quantizes with
    code = nf_code(4)
    pub = torch.tensor(NF4_PUBLISHED)
    assert code.shape == (16,) and bool((code[1:] > code[:-1]).all())       # 16 distinct, sorted
    # the paper's table is the same construction rounded to float32 (offset 0.9677083 truncated)
    assert torch.allclose(code, pub, atol=2e-7, rtol=0), (code - pub).abs().max()
    assert code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1        # 0 exact, range [-1, 1]
    assert int((code < 0).sum()) == 7 and int((code > 0).sum()) == 8        # asymmetric: 7 below, 8 above


def _ppf(p):
    """Φ⁻¹(p) by bisection on math.erf: independent of torch.special."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
    return (lo + hi) / 2


def test_nf4_values_are_normal_quantiles():
    # Independent of torch.special: the 8 positive values divided by the largest are
    # Phi^-1(p_i) / Phi^-1(p_0), p = linspace(0.9677083, 0.5, 9)[:-1].
    ps = np.linspace(1 - (1 / 30 + 1 / 32) / 2, 0.5, 9)[:-1]
    pos = sorted(_ppf(p) / _ppf(ps[0]) for p in ps)
    assert np.allclose(nf_code(4)[8:].double().numpy(), pos, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_nf_k_has_2_to_the_k_normal_quantiles_with_an_exact_zero(bits):
    code, h = nf_code(bits).double().numpy(), 2 ** (bits - 1)
    off = 1 - (1 / 30 + 1 / 32) / 2                                          # NF4's δ' for every k
    top = _ppf(off)
    pos = sorted(_ppf(p) / top for p in np.linspace(off, 0.5, h + 1)[:-1])  # h values
    neg = sorted(-_ppf(p) / top for p in np.linspace(off, 0.5, h)[:-1])     # h - 1 values
    assert code.shape == (2 ** bits,) and np.all(np.diff(code) > 0)
    assert np.allclose(code, neg + [0.0] + pos, atol=1e-7, rtol=0)
    assert code[0] == -1 and code[-1] == 1 and np.sum(code == 0) == 1
    if bits == 4:
        assert torch.allclose(nf_code(4), nf4_code(), atol=2e-7, rtol=0)       # nf4_code() is the published table


def _indices(state, n):
    """The stored code indices of a state, whatever its width."""
    bits = CODE_BITS[state.code_name]
    return unpack_4bit(state.packed, n) if bits == 4 else unpack_bits(state.packed, n, bits)


def _blocks_np(w, B):
    return np.asarray(w, np.float64).reshape(-1, B)


weights = st.integers(1, 6).flatmap(lambda nb: st.sampled_from([2, 4, 8, 64]).flatmap(
    lambda B: st.tuples(st.just(B), hnp.arrays(np.float32, nb * B, elements=st.floats(-4, 4, width=32)))))


@given(bw=weights, code=st.sampled_from(sorted(CODES)))
def test_dequantized_value_is_the_nearest_code_times_the_block_absmax(bw, code):
    B, w = bw
    st_ = quantize_nf4(torch.from_numpy(w), block_size=B, code=code)
    got = _blocks_np(dequantize_nf4(st_).numpy(), B)
    blocks = _blocks_np(w, B)
    c = np.abs(blocks).max(axis=1, keepdims=True)                           # the block's absmax
    vals = CODES[code]().double().numpy()
    scaled = np.divide(blocks, c, out=np.zeros_like(blocks), where=c > 0)
    dist = np.abs(scaled[..., None] - vals)                                  # (n_blocks, B, 2^bits)
    chosen = _indices(st_, w.size).long().numpy().reshape(-1, B)            # the stored indices
    # the chosen code is a nearest one (ties: either neighbour, up to float32 rounding of w / c)
    assert np.all(dist[np.arange(dist.shape[0])[:, None], np.arange(B), chosen] <= dist.min(-1) + 1e-6)
    assert np.allclose(got, vals[chosen] * c, atol=1e-6 * c.max() + 1e-30, rtol=0)
    # per element, the error is at most half the gap to the next code, times absmax
    gaps = np.diff(vals).max()
    assert np.all(np.abs(got - blocks) <= (gaps / 2 + 1e-6) * c + 1e-30)


@given(bw=weights, code=st.sampled_from(sorted(CODES)), dq=st.booleans())
def test_quantizing_the_dequantized_weight_gives_the_same_codes(bw, code, dq):
    B, w = bw
    a = quantize_nf4(torch.from_numpy(w), block_size=B, code=code)
    b = quantize_nf4(dequantize_nf4(a), block_size=B, code=code)
    qa, qb = _indices(a, w.size), _indices(b, w.size)
    vals = CODES[code]()
    assert torch.equal(vals[qa.long()], vals[qb.long()])                    # the same code values ...
    if vals.unique().numel() == vals.numel():                                # ... and indices, unless two
        assert torch.equal(qa, qb)                                           # patterns share a value (FP4 ±0)
    assert torch.equal(a.absmax, b.absmax)                                   # the absmax element is exact
    if dq:
        d = quantize_nf4(torch.from_numpy(w), block_size=B, code=code, double_quant=True)
        assert torch.equal(d.packed, a.packed)                               # the codes do not depend on DQ


@given(q=hnp.arrays(np.uint8, st.integers(0, 41), elements=st.integers(0, 15)))
def test_pack_unpack_is_the_identity_for_odd_and_even_lengths(q):
    t = torch.from_numpy(q)
    packed = pack_4bit(t)
    assert packed.dtype == torch.uint8 and packed.numel() == (q.size + 1) // 2
    assert torch.equal(unpack_4bit(packed, q.size), t)
    if q.size >= 2:                                                          # the stated nibble order
        assert int(packed[0]) == 16 * int(q[0]) + int(q[1])


@given(q=st.integers(2, 8).flatmap(lambda b: st.tuples(
    st.just(b), hnp.arrays(np.int64, st.integers(0, 29), elements=st.integers(0, 2 ** b - 1)))))
def test_the_bit_stream_holds_each_index_msb_first(q):
    bits, idx = q
    packed = pack_bits(torch.from_numpy(idx), bits)
    stream = "".join(format(int(i), f"0{bits}b") for i in idx)               # the definition, as text
    stream += "0" * (-len(stream) % 8)
    assert packed.tolist() == [int(stream[j:j + 8], 2) for j in range(0, len(stream), 8)]
    assert unpack_bits(packed, idx.size, bits).tolist() == idx.tolist()
    if bits == 4:
        assert torch.equal(packed, pack_4bit(torch.from_numpy(idx)))          # one layout for the kernels


def test_fewer_bits_store_fewer_bytes_and_err_more():
    torch.manual_seed(0)
    w = torch.randn(256, 256)                                                # 1024 blocks of 64
    err = {}
    for code, bits in (("nf2", 2), ("nf3", 3), ("nf4", 4)):
        st_ = quantize_nf4(w, code=code)
        assert bits_per_parameter(st_) == bits + 32 / 64                     # k bits + the fp32 absmax
        err[code] = float((dequantize_nf4(st_) - w).pow(2).mean())
    assert err["nf4"] < err["nf3"] < err["nf2"], err
    with pytest.raises(ValueError, match="0..3 for 2 bits"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="need 3"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 8, 3)


def test_all_zero_and_constant_blocks():
    w = torch.cat([torch.zeros(64), torch.full((64,), -2.5), torch.full((64,), 3.0)])
    for code in CODES:
        d = dequantize_nf4(quantize_nf4(w, code=code))
        assert torch.equal(d, w), code                                       # 0 -> 0; a constant c -> ±1 · |c|


@given(absmax=hnp.arrays(np.float32, st.integers(1, 700), elements=st.floats(0, 10, width=32)))
def test_double_quantized_absmax_is_within_half_a_step(absmax):
    a = torch.from_numpy(absmax)
    q8, scales, mean = quantize_absmax(a, 256)
    back = dequantize_absmax(q8, scales, mean, 256).double().numpy()
    centred = absmax.astype(np.float64) - absmax.astype(np.float64).mean()
    pad = (-centred.size) % 256
    step = np.abs(np.concatenate([centred, np.zeros(pad)])).reshape(-1, 256).max(1) / 127
    step = np.repeat(step, 256)[:centred.size]
    assert np.all(np.abs(back - absmax) <= step / 2 + 1e-5 * (1 + np.abs(absmax)))


def test_bits_per_parameter_from_storage():
    w = torch.randn(256, 256)                                                # 1024 blocks of 64
    plain, dq = quantize_nf4(w), quantize_nf4(w, double_quant=True)
    assert bits_per_parameter(plain) == 4 + 32 / 64                          # 4.5
    # 4 + 8/64 + 32/(64*256) + one fp32 mean over 65,536 weights
    assert bits_per_parameter(dq) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / 65536, abs=1e-12)
    assert round(bits_per_parameter(dq), 3) == 4.127


def test_double_quantization_changes_the_weights_by_little():
    torch.manual_seed(0)
    w = torch.randn(128, 128) * 0.02
    e_plain = (dequantize_nf4(quantize_nf4(w)) - w).pow(2).mean()
    e_dq = (dequantize_nf4(quantize_nf4(w, double_quant=True)) - w).pow(2).mean()
    assert e_dq <= e_plain * 1.05                                            # within 5% of the error


def test_nf4_has_lower_error_than_fp4_and_int4_on_normal_weights():
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    err = {c: float((dequantize_nf4(quantize_nf4(w, code=c)) - w).pow(2).mean()) for c in CODES}
    assert err["nf4"] < err["int4"] and err["nf4"] < err["fp4"], err


def test_nf4_linear_equals_the_dequantized_matmul_and_keeps_no_float_weight():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    m = NF4Linear(lin)
    x = torch.randn(5, 128)
    w = dequantize_nf4(quantize_nf4(lin.weight, double_quant=True))
    assert torch.allclose(m(x), x @ w.T + lin.bias, atol=1e-5)
    floats = [t for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point() and t.numel() >= 64 * 128]
    assert not floats                                                        # no (out, in) float copy stored
    assert sum(p.requires_grad for p in m.parameters()) == 0                 # frozen


def test_bad_inputs_are_refused_with_their_names():
    with pytest.raises(ValueError, match="block_size=64 does not divide"):
        quantize_nf4(torch.randn(10, 10))
    with pytest.raises(ValueError, match="block_size=3 must be an even integer"):
        quantize_nf4(torch.randn(12), block_size=3)
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(torch.ones(64, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_nf4(torch.tensor([1.0, float("nan")] * 32))
    with pytest.raises(ValueError, match="code='nf5' must be one of"):
        quantize_nf4(torch.randn(64), code="nf5")
    with pytest.raises(ValueError, match="indices must be in 0..15"):
        pack_4bit(torch.tensor([3, 16]))
    with pytest.raises(ValueError, match="cannot hold n=5"):
        unpack_4bit(torch.zeros(2, dtype=torch.uint8), 5)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        NF4Linear(nn.Conv1d(2, 2, 1))
    assert fp4_code().unique().numel() == 15                                 # +0 and -0


@pytest.mark.parametrize("kw, err", [({"dq_block_size": 0}, ValueError), ({"dq_block_size": -4}, ValueError),
                                     ({"dq_block_size": 2.5}, TypeError), ({"double_quant": "yes"}, TypeError)])
def test_quantize_nf4_checks_its_arguments(kw, err):
    with pytest.raises(err, match=next(iter(kw))):
        quantize_nf4(torch.randn(128), **kw)


def test_a_weight_finite_in_float64_but_not_in_float32_is_refused():
    """We quantize in float32: 1e300 is finite as a float64 but becomes inf in the cast."""
    w = torch.zeros(64, dtype=torch.float64)
    w[3] = 1e300
    with pytest.raises(ValueError, match="float32"):
        quantize_nf4(w)
