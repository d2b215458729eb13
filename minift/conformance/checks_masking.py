"""Conformance checks of lesson 09 (random masking), registered into `checks.CHECKS` with
lesson="lesson09". Expected values are computed here independently (float64 numpy or a
textbook construction), never by calling minift's reference adapters.

None of them demands minift's random stream: a mask is checked for its properties (exactly
k = ⌊density · n + ½⌋ distinct positions in range, a function of its seed), never for which
positions it picked.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
from .strategies import MAX_B, MAX_D, arrays, check_settings, f32

DENSITIES = st.one_of(st.sampled_from([1.0, 0.5, 0.25, 0.1, 0.01]), st.floats(1e-3, 1.0))


def _k(n: int, density: float) -> int:
    """⌊density · n + ½⌋, in exact rational arithmetic where float rounding could tip a half."""
    from fractions import Fraction
    return int(math.floor(Fraction(density) * n + Fraction(1, 2)))


def _positions(y, n: int, what: str) -> np.ndarray:
    """The impl's mask as int64 numpy, after checking it is a 1-D integer tensor of positions in [0, n)."""
    if not isinstance(y, torch.Tensor):
        raise AssertionError(f"{what} must return a torch.Tensor of positions, got {type(y).__name__}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise AssertionError(f"{what} must return a 1-D integer tensor of flat positions, got {y.dtype} "
                             f"of shape {tuple(y.shape)}")
    a = y.detach().cpu().to(torch.int64).numpy()
    if a.size and (a.min() < 0 or a.max() >= n):
        raise AssertionError(f"{what} holds position {int(a.max() if a.max() >= n else a.min())} outside [0, {n})")
    return a


@_register("run_random_mask", "random_mask(shape, density, seed) returns exactly k = ⌊density · n + ½⌋ distinct "
           "flat positions in [0, n) (n = prod(shape)), and the same ones when called again with the same "
           "arguments.", lesson="lesson09")
def check_random_mask_count_distinct_deterministic(impl):
    mask = _adapter(impl, "run_random_mask")

    @check_settings(60)
    @given(shape=st.tuples(st.integers(1, 12), st.integers(1, 12)), density=DENSITIES,
           seed=st.integers(0, 2 ** 16))
    def random_mask_count_distinct_deterministic(shape, density, seed):
        n, k = shape[0] * shape[1], _k(shape[0] * shape[1], density)
        what = f"run_random_mask(shape={shape}, density={density!r}, seed={seed})"
        a = _positions(mask(shape, density, seed), n, what)
        if a.size != k:
            raise AssertionError(f"{what} returned {a.size} positions, expected k = ⌊{density!r} · {n} + ½⌋ "
                                 f"= {k}")
        u, c = np.unique(a, return_counts=True)
        if (c > 1).any():
            raise AssertionError(f"{what} repeats positions {u[c > 1].tolist()[:8]}; a mask has k distinct entries")
        again = _positions(mask(shape, density, seed), n, what)
        if sorted(a.tolist()) != sorted(again.tolist()):
            raise AssertionError(f"{what} called twice gave two different masks; the mask is fixed by its seed")
    _run(random_mask_count_distinct_deterministic)


@_register("run_random_mask", "the mask is random, not a fixed pattern: for n >= 16 weights at density 1/2, "
           "seeds 0..7 do not all give the same positions (chance of that for a uniform draw: < 1e-30).",
           lesson="lesson09")
def check_random_mask_depends_on_seed(impl):
    mask = _adapter(impl, "run_random_mask")

    @check_settings(20)
    @given(shape=st.tuples(st.integers(2, 8), st.integers(8, 12)))
    def random_mask_depends_on_seed(shape):
        n = shape[0] * shape[1]
        masks = {tuple(sorted(_positions(mask(shape, 0.5, s), n, f"run_random_mask({shape}, 0.5, {s})").tolist()))
                 for s in range(8)}
        if len(masks) == 1:
            raise AssertionError(f"run_random_mask(shape={shape}, density=0.5, seed) gave the same positions "
                                 f"{sorted(masks.pop())[:8]} ... for seeds 0..7; the mask must be drawn at random")
    _run(random_mask_depends_on_seed)


@st.composite
def _masked_inputs(draw, bias=None):
    """x (N, in), W0 (out, in), b (out,) or None, idx (k,) distinct flat positions in any order, values (k,)."""
    fin, fout, n = draw(st.integers(1, MAX_D)), draw(st.integers(1, MAX_D)), draw(st.integers(1, 2 * MAX_B))
    idx = np.array(draw(st.lists(st.integers(0, fin * fout - 1), unique=True, max_size=fin * fout)), np.int64)
    has_bias = draw(st.booleans()) if bias is None else bias
    return dict(x=draw(arrays((n, fin), f32(-2, 2))), W0=draw(arrays((fout, fin), f32(-2, 2))),
                b=draw(arrays((fout,), f32(-1, 1))) if has_bias else None, idx=idx,
                values=draw(arrays((idx.size,), f32(-2, 2))))


def _i(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.int64)


def _opt(a):
    return None if a is None else _t(a)


def _patched(W0: np.ndarray, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """W0 + scatter(idx, values) in float64."""
    W = W0.astype(np.float64).copy().reshape(-1)
    W[idx] += values.astype(np.float64)
    return W.reshape(W0.shape)


@_register("run_masked_update", "masked_update(W0, idx, values) equals W0 + scatter(idx, values) (float64, one "
           "float32 rounding) at the k masked positions, is W0 bit for bit everywhere else, keeps W0's shape and "
           "dtype and leaves W0 unmodified.", lesson="lesson09")
def check_masked_update_matches_formula(impl):
    update = _adapter(impl, "run_masked_update")

    @check_settings(60)
    @given(inp=_masked_inputs(bias=False))
    def masked_update_matches_formula(inp):
        W0, idx, v = inp["W0"], inp["idx"], inp["values"]
        what = f"run_masked_update(W0 {W0.shape}, idx={idx.tolist()}, values)"
        W0_t = _t(W0)
        y = update(W0_t, _i(idx), _t(v))
        if isinstance(y, torch.Tensor) and y.dtype != torch.float32:
            raise AssertionError(f"{what} returned dtype {y.dtype}; the patched weight keeps W0's dtype (float32)")
        got = _out(y, W0.shape, what)
        off = np.ones(W0.size, bool)
        off[idx] = False
        off = off.reshape(W0.shape)
        _assert_close(got[off], W0.astype(np.float64)[off], f"{what} off the mask vs W0 (must not change a bit)",
                      atol=0, rtol=0)
        expected = _patched(W0, idx, v)
        _assert_close(got, expected, f"{what} vs W0 + scatter(idx, values)",
                      atol=2.0 ** -23 * (np.abs(W0) + np.abs(_patched(np.zeros_like(W0), idx, np.abs(v)))) + 1e-30,
                      rtol=0)
        _assert_close(W0_t.numpy(), W0, f"{what} modified its input W0", atol=0, rtol=0)
    _run(masked_update_matches_formula)


@_register("run_masked_linear", "masked_linear(x, W0, b, idx, values) equals x (W0 + scatter(idx, values))^T + b "
           "in float64 (b may be None; idx in any order).", lesson="lesson09")
def check_masked_linear_matches_formula(impl):
    lin = _adapter(impl, "run_masked_linear")

    @check_settings(60)
    @given(inp=_masked_inputs())
    def masked_linear_matches_formula(inp):
        x, W0, b, idx, v = (inp[k] for k in ("x", "W0", "b", "idx", "values"))
        W = _patched(W0, idx, v)
        x64 = x.astype(np.float64)
        expected = x64 @ W.T + (0.0 if b is None else b.astype(np.float64))
        what = f"run_masked_linear(x, W0, b, idx={idx.tolist()}, values)"
        y = _out(lin(_t(x), _t(W0), _opt(b), _i(idx), _t(v)), expected.shape, what)
        bound = np.abs(x64) @ np.abs(W).T + (0.0 if b is None else np.abs(b))
        _assert_close(y, expected, f"{what} vs x (W0 + scatter(idx, values))^T + b", atol=1e-5 * bound + 1e-6, rtol=0)
    _run(masked_linear_matches_formula)


@_register("run_masked_linear", "zero values are an exact no-op: masked_linear(x, W0, b, idx, 0) is bit for bit "
           "masked_linear(x, W0, b, no positions, no values), for any idx, and equals x W0^T + b.",
           lesson="lesson09")
def check_masked_zero_values_is_base(impl):
    lin = _adapter(impl, "run_masked_linear")

    @check_settings(40)
    @given(inp=_masked_inputs())
    def masked_zero_values_is_base(inp):
        x, W0, b, idx = (inp[k] for k in ("x", "W0", "b", "idx"))
        shape = (x.shape[0], W0.shape[0])
        y0 = _out(lin(_t(x), _t(W0), _opt(b), _i(idx), torch.zeros(idx.size)), shape,
                  f"run_masked_linear(x, W0, b, idx={idx.tolist()}, values=0)")
        y_none = _out(lin(_t(x), _t(W0), _opt(b), _i(np.zeros(0, np.int64)), torch.zeros(0)), shape,
                      "run_masked_linear(x, W0, b, idx=[], values=[])")
        _assert_close(y0, y_none, "with zero values the masked layer must be the base layer, bit for bit",
                      atol=0, rtol=0)
        x64, W64 = x.astype(np.float64), W0.astype(np.float64)
        base = x64 @ W64.T + (0.0 if b is None else b.astype(np.float64))
        _assert_close(y0, base, "run_masked_linear with zero values vs x W0^T + b",
                      atol=1e-5 * (np.abs(x64) @ np.abs(W64).T + (0.0 if b is None else np.abs(b))) + 1e-6, rtol=0)
    _run(masked_zero_values_is_base)


@_register("run_masked_update", "merge then forward equals the unmerged forward: x W^T + b with W = "
           "masked_update(W0, idx, values) matches masked_linear(x, W0, b, idx, values) (both adapters).",
           lesson="lesson09")
def check_masked_merge_then_forward(impl):
    update, lin = _adapter(impl, "run_masked_update"), _adapter(impl, "run_masked_linear")

    @check_settings(40)
    @given(inp=_masked_inputs())
    def masked_merge_then_forward(inp):
        x, W0, b, idx, v = (inp[k] for k in ("x", "W0", "b", "idx", "values"))
        W = _out(update(_t(W0), _i(idx), _t(v)), W0.shape, "run_masked_update(W0, idx, values)")
        merged = x.astype(np.float64) @ W.T + (0.0 if b is None else b.astype(np.float64))
        y = _out(lin(_t(x), _t(W0), _opt(b), _i(idx), _t(v)), merged.shape, "run_masked_linear(x, W0, b, idx, values)")
        bound = np.abs(x) @ np.abs(W).T + (0.0 if b is None else np.abs(b))
        _assert_close(y, merged, "unmerged run_masked_linear vs x W_merged^T + b", atol=2e-5 * bound + 1e-6, rtol=0)
    _run(masked_merge_then_forward)


@_register("run_masked_adamw_step", "one AdamW step (weight decay included) changes only the masked entries: off "
           "the mask the weight is W0 bit for bit; at position p = idx[j] it is W0[p] + v_j (1 - lr wd) - lr g_j / "
           "(|g_j| + 1e-8), with g_j = (grad_out^T x)[p] (float64; |g_j| >= 1e-3).", lesson="lesson09")
def check_masked_adamw_step_touches_only_the_mask(impl):
    step = _adapter(impl, "run_masked_adamw_step")

    @check_settings(40)
    @given(inp=_masked_inputs(), data=st.data(), lr=st.sampled_from([1e-3, 1e-2, 1e-1, 1.0]),
           wd=st.sampled_from([0.0, 0.01, 0.1, 1.0]))
    def masked_adamw_step_touches_only_the_mask(inp, data, lr, wd):
        x, W0, b, idx, v = (inp[k] for k in ("x", "W0", "b", "idx", "values"))
        gy = data.draw(arrays((x.shape[0], W0.shape[0]), f32(-2, 2)), label="grad_out")
        G = gy.astype(np.float64).T @ x.astype(np.float64)                 # dL/dW = grad_out^T x  (out, in)
        g = G.reshape(-1)[idx]
        assume(idx.size == 0 or np.abs(g).min() >= 1e-3)
        what = f"run_masked_adamw_step(x, W0, b, idx={idx.tolist()}, values, grad_out, lr={lr}, weight_decay={wd})"
        got = _out(step(_t(x), _t(W0), _opt(b), _i(idx), _t(v), _t(gy), lr, wd), W0.shape, what)
        off = np.ones(W0.size, bool)
        off[idx] = False
        off = off.reshape(W0.shape)
        _assert_close(got[off], W0.astype(np.float64)[off], f"{what} off the mask vs W0 (must not change a bit)",
                      atol=0, rtol=0)
        v_new = v.astype(np.float64) * (1 - lr * wd) - lr * g / (np.abs(g) + 1e-8)   # AdamW, step 1
        expected = _patched(W0, idx, v_new)
        scale = np.abs(W0) + _patched(np.zeros_like(W0), idx, np.abs(v) + lr)
        _assert_close(got, expected, f"{what} vs W0 + scatter(idx, v (1 - lr wd) - lr g / (|g| + eps))",
                      atol=1e-6 * scale + 1e-7, rtol=0)
    _run(masked_adamw_step_touches_only_the_mask)
