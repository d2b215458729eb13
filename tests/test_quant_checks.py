"""The quantization checks (minift/conformance/lesson11_quantization.py, lesson12_qlora.py) catch the usual bugs, each with a
counterexample, and pass minift's reference."""
import math
from types import SimpleNamespace

import pytest
import torch

from minift.conformance import FAIL, PASS, run_checks
from minift.conformance import reference as ref

pytestmark = pytest.mark.conformance

QUANT_CHECKS = ["int8_quantize_within_half_a_step", "int8_matmul_decomposition", "nf4_quantize_picks_the_nearest_code", "nf4_dequantize_matches_table",
                "pack_4bit_nibble_order", "loftq_not_worse_than_plain"]


def _results(impl):
    return {r.name: r for r in run_checks(impl, only=",".join(QUANT_CHECKS))}


def test_the_reference_passes():
    assert {n: r.status for n, r in _results(ref).items()} == {n: PASS for n in QUANT_CHECKS}


def _uniform_int4_quantize(w, block_size=64):          # bug: a uniform grid is not NF4
    b = w.reshape(-1, block_size)
    am = b.abs().amax(1)
    grid = torch.arange(-7, 8) / 7
    q = ((b / am.clamp(min=1e-30)[:, None])[..., None] - grid).abs().argmin(-1) + 1
    return q.reshape(-1).to(torch.uint8), am


def _low_nibble_first(codes):                           # bug: the other nibble order
    c = torch.cat([codes, codes.new_zeros(codes.numel() % 2)]).to(torch.uint8)
    return c[0::2] | (c[1::2] << 4)


def _no_outliers(x, W, threshold=6.0):                  # bug: ignores the threshold
    return ref.run_int8_matmul(x, W, math.inf)


def _truncating_int8(x, granularity="tensor", block_size=64, zero_point=False):   # bug: trunc, not round
    s = x.abs().amax() / 127
    return torch.trunc(x / s) * s


def _float_q(W, r, iters, block_size=64):                # bug: "Q" is the float weight
    return W.clone(), torch.zeros(r, W.shape[1]), torch.zeros(W.shape[0], r)


WRONG = SimpleNamespace(run_int8_quantize=_truncating_int8, run_nf4_quantize=_uniform_int4_quantize, run_nf4_dequantize=ref.run_nf4_dequantize,
                        run_pack_4bit=_low_nibble_first, run_int8_matmul=_no_outliers, run_loftq=_float_q)


def test_each_bug_fails_its_check_with_a_counterexample():
    res = _results(WRONG)
    for name in ("int8_quantize_within_half_a_step", "nf4_quantize_picks_the_nearest_code", "pack_4bit_nibble_order", "int8_matmul_decomposition",
                 "loftq_not_worse_than_plain"):
        assert res[name].status == FAIL, name
        assert res[name].counterexample.startswith(f"{name}("), name
    assert res["nf4_dequantize_matches_table"].status == PASS                # the one function left correct


def test_loftq_that_returns_nan_fails():
    """NaN compares False with everything: `if off.max() > 0` let an all-NaN Q through as on the grid."""
    def nan_q(W, r, iters, block_size=64):
        Q, A, B = ref.run_loftq(W, r, iters, block_size)
        return torch.full_like(Q, math.nan), A, B
    res = {r.name: r for r in run_checks(SimpleNamespace(run_loftq=nan_q), only="loftq_not_worse_than_plain")}
    assert res["loftq_not_worse_than_plain"].status == FAIL
    assert "not on the NF4 grid" in res["loftq_not_worse_than_plain"].error
