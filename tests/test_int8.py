"""int8 absmax / zero-point quantization and LLM.int8() (minift/quant/int8.py). Expected values
are computed here in float64 numpy from the definitions."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.quant.int8 import GRANULARITIES, MIN_SCALE, Int8Linear, int8_matmul, quantize_absmax, quantize_zeropoint

pytestmark = pytest.mark.lesson11

mats = st.tuples(st.integers(1, 5), st.sampled_from([2, 4, 8])).flatmap(
    lambda s: hnp.arrays(np.float32, s, elements=st.floats(-50, 50, width=32, allow_subnormal=False)))


def _np_groups(x, granularity, block):
    x = np.asarray(x, np.float64)
    return {"tensor": x.reshape(1, -1), "row": x.reshape(-1, x.shape[-1]), "block": x.reshape(-1, block)}[granularity]


@given(x=mats, granularity=st.sampled_from(GRANULARITIES), zp=st.booleans())
def test_round_trip_error_is_at_most_half_a_step_of_its_group(x, granularity, zp):
    t = (quantize_zeropoint if zp else quantize_absmax)(torch.from_numpy(x), granularity, block_size=2)
    assert t.q.dtype == torch.int8 and t.q.shape == x.shape
    g = _np_groups(x, granularity, 2)
    if zp:
        step = (np.maximum(g.max(1), 0) - np.minimum(g.min(1), 0)) / 255
    else:
        step = np.abs(g).max(1) / 127
    step = np.maximum(step, MIN_SCALE)                                        # the documented floor, 2^-126
    err = np.abs(_np_groups(t.dequantize().numpy(), granularity, 2) - g)
    assert np.all(err <= step[:, None] / 2 * (1 + 1e-5) + 1e-6 * np.abs(g) + 1e-30)


@given(x=mats, granularity=st.sampled_from(GRANULARITIES))
def test_absmax_is_exact_at_the_extremes_and_requantizes_to_the_same_codes(x, granularity):
    t = quantize_absmax(torch.from_numpy(x), granularity, block_size=2)
    g, q = _np_groups(x, granularity, 2), _np_groups(t.q.numpy(), granularity, 2)
    normal = np.abs(g).max(1, keepdims=True) / 127 >= MIN_SCALE                # scale above the floor 2^-126
    big = np.abs(g) == np.abs(g).max(1, keepdims=True)
    assert np.all(np.abs(q[big & (g != 0) & normal]) == 127)                  # absmax -> ±127
    again = quantize_absmax(t.dequantize(), granularity, block_size=2)
    assert torch.equal(again.q, t.q)


def test_zero_point_keeps_zero_exact_and_uses_the_whole_range():
    x = torch.tensor([[0.0, 0.5, 1.0, 3.0], [0.0, -1.0, 2.0, 0.25]])            # ReLU-like rows
    t = quantize_zeropoint(x, "row")
    d = t.dequantize()
    assert d[0, 0] == 0 and d[1, 0] == 0
    assert int(t.q[0].min()) == -128 and int(t.q[0].max()) == 127
    a = quantize_absmax(x, "row")                                             # on [0, 3] absmax wastes half
    assert (d - x).abs()[0].max() < (a.dequantize() - x).abs()[0].max()


def _np_vectorwise(x, W):
    """Plain vector-wise int8: rows of x and rows of W quantized by absmax, integer product rescaled."""
    x, W = np.asarray(x, np.float64), np.asarray(W, np.float64)
    sx, sw = np.abs(x).max(1) / 127, np.abs(W).max(1) / 127
    qx = np.round(np.divide(x, sx[:, None], out=np.zeros_like(x), where=sx[:, None] > 0))
    qw = np.round(np.divide(W, sw[:, None], out=np.zeros_like(W), where=sw[:, None] > 0))
    return (qx @ qw.T) * sx[:, None] * sw[None, :]


xw = st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 5)).flatmap(lambda s: st.tuples(
    hnp.arrays(np.float32, (s[0], s[1]), elements=st.floats(-20, 20, width=32)),
    hnp.arrays(np.float32, (s[2], s[1]), elements=st.floats(-1, 1, width=32))))


@given(xw=xw)
def test_llm_int8_with_infinite_threshold_is_plain_vectorwise_int8(xw):
    x, W = xw
    got = int8_matmul(torch.from_numpy(x), torch.from_numpy(W), threshold=math.inf).double().numpy()
    exp = _np_vectorwise(x, W)
    assert np.allclose(got, exp, atol=1e-5 * (np.abs(exp).max() + 1), rtol=1e-5)


@given(xw=xw)
def test_llm_int8_with_zero_threshold_is_the_float_matmul(xw):
    x, W = xw
    got = int8_matmul(torch.from_numpy(x), torch.from_numpy(W), threshold=0.0).double().numpy()
    exp = x.astype(np.float64) @ W.astype(np.float64).T
    assert np.allclose(got, exp, atol=1e-5 * (np.abs(x).sum() + 1), rtol=1e-5)


@given(xw=xw, threshold=st.floats(0.5, 15))
def test_llm_int8_is_float_on_outlier_columns_plus_int8_on_the_rest(xw, threshold):
    x, W = xw
    O = np.abs(x).max(0) > threshold
    exp = x[:, O].astype(np.float64) @ W[:, O].astype(np.float64).T
    if (~O).any():
        exp = exp + _np_vectorwise(x[:, ~O], W[:, ~O])
    got = int8_matmul(torch.from_numpy(x), torch.from_numpy(W), threshold=threshold).double().numpy()
    assert np.allclose(got, exp, atol=1e-5 * (np.abs(x).sum() + 1), rtol=1e-5)


def test_outliers_break_vectorwise_int8_and_the_decomposition_saves_it():
    torch.manual_seed(0)
    x, W = torch.randn(16, 256), torch.randn(64, 256) * 0.05
    x[:, [7, 100]] *= 40                                                      # two emergent outlier features
    exact = x.double() @ W.double().T
    err = {t: float((int8_matmul(x, W, t).double() - exact).abs().mean()) for t in (math.inf, 6.0)}
    assert err[6.0] * 5 < err[math.inf], err


def test_int8_linear_stores_int8_and_passes_gradients_to_its_input():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    m = Int8Linear(lin)
    assert m.weight_q.dtype == torch.int8 and m.weight_scale.shape == (16,)
    assert not [t for t in m.buffers() if t.is_floating_point() and t.numel() == 32 * 16]
    x = torch.randn(3, 4, 32, requires_grad=True)
    y = m(x)
    assert y.shape == (3, 4, 16)
    assert torch.allclose(y, lin(x), atol=0.05)                               # int8 is close, not exact
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, g @ m.dequantized_weight(), atol=1e-5)      # dL/dx = g · dequant(W)


def test_bad_inputs_are_refused_with_their_names():
    with pytest.raises(ValueError, match="block_size=5 must be a positive integer dividing"):
        quantize_absmax(torch.randn(8), "block", block_size=5)
    with pytest.raises(ValueError, match="granularity='col' must be one of"):
        quantize_absmax(torch.randn(8), "col")
    with pytest.raises(ValueError, match="granularity='row' needs"):
        quantize_zeropoint(torch.randn(8), "row")
    with pytest.raises(TypeError, match="floating-point"):
        quantize_absmax(torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_absmax(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match=r"W must be \(out, in=4\)"):
        int8_matmul(torch.randn(2, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="threshold=-1 must be a number >= 0"):
        int8_matmul(torch.randn(2, 4), torch.randn(3, 4), threshold=-1)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        Int8Linear(nn.Identity())


@pytest.mark.parametrize("zero_point", [False, True])
def test_a_tensor_finite_in_float64_but_not_in_float32_is_refused(zero_point):
    """We quantize in float32: 1e300 is finite as a float64 but becomes inf in the cast."""
    x = torch.tensor([[1.0, 1e300]], dtype=torch.float64)
    with pytest.raises(ValueError, match="float32"):
        (quantize_zeropoint if zero_point else quantize_absmax)(x)


def test_zero_point_range_wider_than_float32_max_still_has_a_finite_scale():
    """hi - lo can overflow float32 (3e38 - -3e38) although both are finite: the scale must not be inf."""
    x = torch.tensor([-3e38, 3e38, 0.0, 1e37])
    xh = quantize_zeropoint(x).dequantize()
    assert torch.isfinite(xh).all() and xh[2] == 0
    assert torch.allclose(xh, x, rtol=0, atol=float(6e38 / 255 / 2 * 1.001))
