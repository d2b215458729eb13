"""Lesson 09 (random masking): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions: plain tensors and hyperparameters in, tensors out, computed by
minift's own module (`minift/peft/masking.py`).

    run_random_mask(shape, density, seed)              k = ⌊density · n + ½⌋ distinct flat positions in [0, n)
    run_masked_update(W0, idx, values)                 W0 + scatter(idx, values): W0 off the mask, bit for bit
    run_masked_linear(x, W0, b, idx, values)           x (W0 + scatter(idx, values))^T + b
    run_masked_adamw_step(x, W0, b, idx, values, grad_out, lr, weight_decay)
                                                       the weight after one AdamW step on the values only

The checks, registered into `CHECKS` with lesson="lesson09". Expected values are computed here
independently (float64 numpy or a textbook construction), never by calling minift's reference
functions.

None of them demands minift's random stream: a mask is checked for its properties (exactly
k = ⌊density · n + ½⌋ distinct positions in range, a function of its seed), never for which
positions it picked.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from hypothesis import assume, strategies as st

from minift.peft.masking import MaskedLinear, masked_count, random_mask

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def _layer(fn: str, W0, b, idx, values) -> MaskedLinear:
    """A MaskedLinear around a copy of W0 (out, in) and b, with the given positions and values."""
    W0, idx, values = tensor_arg("W0", W0), tensor_arg("idx", idx), tensor_arg("values", values)
    if W0.dim() != 2:
        raise ValueError(f"{fn}: W0 must be (out, in) (nn.Linear layout), got {tuple(W0.shape)}")
    if idx.dim() != 1 or tuple(values.shape) != tuple(idx.shape):
        raise ValueError(f"{fn}: idx and values must both be (k,), got {tuple(idx.shape)} and {tuple(values.shape)}")
    if b is not None and tuple(b.shape) != (W0.shape[0],):
        raise ValueError(f"{fn}: b must be (out,)=({W0.shape[0]},) or None, got {tuple(b.shape)}")
    out_f, in_f = W0.shape
    lin = nn.Linear(in_f, out_f, bias=b is not None, dtype=W0.dtype)
    with torch.no_grad():
        lin.weight.copy_(W0)
        if b is not None:
            lin.bias.copy_(b)
    order = idx.long().argsort()                                           # MaskedLinear keeps them sorted
    layer = MaskedLinear(lin, idx.long()[order])
    with torch.no_grad():
        layer.mask_values.copy_(values[order])
    return layer.eval()


def run_random_mask(shape, density: float, seed: int) -> torch.Tensor:
    """The mask `apply_masking` draws, for one matrix of `shape`: k = ⌊density · n + ½⌋ distinct flat
    positions (into W.view(-1)) out of n = prod(shape), uniformly at random from a generator seeded by
    `seed`. Returns (k,) int64; the same arguments always give the same mask. 0 < density <= 1."""
    n = math.prod(int(s) for s in shape)
    if isinstance(density, bool) or not 0 < float(density) <= 1:
        raise ValueError(f"run_random_mask: density={density!r} must be in (0, 1]")
    return random_mask(n, masked_count(n, float(density)), int(seed))


def run_masked_update(W0: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The merged weight of `MaskedLinear.merge`: W = W0 + scatter(idx, values), i.e. W.view(-1)[idx[j]] =
    W0.view(-1)[idx[j]] + values[j], every other entry W0's, bit for bit. W0: (out, in); idx: (k,) distinct
    flat positions; values: (k,). Returns (out, in), W0's dtype; W0 is not modified."""
    layer = _layer("run_masked_update", W0, None, idx, values)
    layer.merge()
    return layer.weight.detach().clone()


def run_masked_linear(x: torch.Tensor, W0: torch.Tensor, b, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`MaskedLinear.forward` (unmerged): h = x (W0 + scatter(idx, values))^T + b.
    x: (N, in); W0: (out, in); b: (out,) or None; idx, values: (k,). Returns (N, out)."""
    x = tensor_arg("x", x)
    layer = _layer("run_masked_linear", W0, b, idx, values)
    if x.shape[-1:] != (layer.in_features,):
        raise ValueError(f"run_masked_linear: x must be (..., in={layer.in_features}), got {tuple(x.shape)}")
    with torch.no_grad():
        return layer(x)


def run_masked_adamw_step(x: torch.Tensor, W0: torch.Tensor, b, idx: torch.Tensor, values: torch.Tensor,
                          grad_out: torch.Tensor, lr: float, weight_decay: float) -> torch.Tensor:
    """One training step of a MaskedLinear: loss L = Σ grad_out ⊙ h with h = run_masked_linear(x, ...),
    backward (only `values` has requires_grad), then one torch.optim.AdamW step (betas (0.9, 0.999),
    eps 1e-8, fresh state) on the values. Returns the new effective weight W0 + scatter(idx, values'),
    (out, in): off the mask it is W0, bit for bit."""
    x, grad_out = tensor_arg("x", x), tensor_arg("grad_out", grad_out)
    layer = _layer("run_masked_adamw_step", W0, b, idx, values)
    y = layer(x)
    if tuple(grad_out.shape) != tuple(y.shape):
        raise ValueError(f"run_masked_adamw_step: grad_out must be {tuple(y.shape)} like the output, "
                         f"got {tuple(grad_out.shape)}")
    (y * grad_out).sum().backward()
    opt = torch.optim.AdamW([layer.mask_values], lr=float(lr), betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=float(weight_decay))
    opt.step()
    return layer.effective_weight().detach().clone()


# ---- the checks ----------------------------------------------------------------------------------

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


@property_check("run_random_mask", lesson=9, examples=60,
                shape=st.tuples(st.integers(1, 12), st.integers(1, 12)), density=DENSITIES,
                seed=st.integers(0, 2 ** 16))
def random_mask_count_distinct_deterministic(mask, shape, density, seed):
    """random_mask(shape, density, seed) returns exactly k = ⌊density · n + ½⌋ distinct flat positions
    in [0, n) (n = prod(shape)), and the same ones when called again with the same arguments."""
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


@property_check("run_random_mask", lesson=9, examples=20,
                shape=st.tuples(st.integers(2, 8), st.integers(8, 12)))
def random_mask_depends_on_seed(mask, shape):
    """the mask is random, not a fixed pattern: for n >= 16 weights at density 1/2, seeds 0..7 do not
    all give the same positions (chance of that for a uniform draw: < 1e-30)."""
    n = shape[0] * shape[1]
    masks = {tuple(sorted(_positions(mask(shape, 0.5, s), n, f"run_random_mask({shape}, 0.5, {s})").tolist()))
             for s in range(8)}
    if len(masks) == 1:
        raise AssertionError(f"run_random_mask(shape={shape}, density=0.5, seed) gave the same positions "
                             f"{sorted(masks.pop())[:8]} ... for seeds 0..7; the mask must be drawn at random")


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
    return None if a is None else tensor(a)


def _patched(W0: np.ndarray, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """W0 + scatter(idx, values) in float64."""
    W = W0.astype(np.float64).copy().reshape(-1)
    W[idx] += values.astype(np.float64)
    return W.reshape(W0.shape)


@property_check("run_masked_update", lesson=9, examples=60, inp=_masked_inputs(bias=False))
def masked_update_matches_formula(update, inp):
    """masked_update(W0, idx, values) equals W0 + scatter(idx, values) (float64, one float32 rounding)
    at the k masked positions, is W0 bit for bit everywhere else, keeps W0's shape and dtype
    and leaves W0 unmodified."""
    W0, idx, v = inp["W0"], inp["idx"], inp["values"]
    what = f"run_masked_update(W0 {W0.shape}, idx={idx.tolist()}, values)"
    W0_t = tensor(W0)
    y = update(W0_t, _i(idx), tensor(v))
    if isinstance(y, torch.Tensor) and y.dtype != torch.float32:
        raise AssertionError(f"{what} returned dtype {y.dtype}; the patched weight keeps W0's dtype (float32)")
    got = output(y, W0.shape, what)
    off = np.ones(W0.size, bool)
    off[idx] = False
    off = off.reshape(W0.shape)
    assert_close(got[off], W0.astype(np.float64)[off], f"{what} off the mask vs W0 (must not change a bit)",
                 atol=0, rtol=0)
    expected = _patched(W0, idx, v)
    assert_close(got, expected, f"{what} vs W0 + scatter(idx, values)",
                 atol=2.0 ** -23 * (np.abs(W0) + np.abs(_patched(np.zeros_like(W0), idx, np.abs(v)))) + 1e-30,
                 rtol=0)
    assert_close(W0_t.numpy(), W0, f"{what} modified its input W0", atol=0, rtol=0)


@property_check("run_masked_linear", lesson=9, examples=60, inp=_masked_inputs())
def masked_linear_matches_formula(lin, inp):
    """masked_linear(x, W0, b, idx, values) equals x (W0 + scatter(idx, values))^T + b in float64 (b
    may be None; idx in any order)."""
    x, W0, b, idx, v = (inp[k] for k in ("x", "W0", "b", "idx", "values"))
    W = _patched(W0, idx, v)
    x64 = x.astype(np.float64)
    expected = x64 @ W.T + (0.0 if b is None else b.astype(np.float64))
    what = f"run_masked_linear(x, W0, b, idx={idx.tolist()}, values)"
    y = output(lin(tensor(x), tensor(W0), _opt(b), _i(idx), tensor(v)), expected.shape, what)
    bound = np.abs(x64) @ np.abs(W).T + (0.0 if b is None else np.abs(b))
    assert_close(y, expected, f"{what} vs x (W0 + scatter(idx, values))^T + b", atol=1e-5 * bound + 1e-6, rtol=0)


@property_check("run_masked_linear", lesson=9, examples=40, inp=_masked_inputs())
def masked_zero_values_is_base(lin, inp):
    """zero values are an exact no-op: masked_linear(x, W0, b, idx, 0) is bit for bit masked_linear(x,
    W0, b, no positions, no values), for any idx, and equals x W0^T + b."""
    x, W0, b, idx = (inp[k] for k in ("x", "W0", "b", "idx"))
    shape = (x.shape[0], W0.shape[0])
    y0 = output(lin(tensor(x), tensor(W0), _opt(b), _i(idx), torch.zeros(idx.size)), shape,
                f"run_masked_linear(x, W0, b, idx={idx.tolist()}, values=0)")
    y_none = output(lin(tensor(x), tensor(W0), _opt(b), _i(np.zeros(0, np.int64)), torch.zeros(0)), shape,
                    "run_masked_linear(x, W0, b, idx=[], values=[])")
    assert_close(y0, y_none, "with zero values the masked layer must be the base layer, bit for bit",
                 atol=0, rtol=0)
    x64, W64 = x.astype(np.float64), W0.astype(np.float64)
    base = x64 @ W64.T + (0.0 if b is None else b.astype(np.float64))
    assert_close(y0, base, "run_masked_linear with zero values vs x W0^T + b",
                 atol=1e-5 * (np.abs(x64) @ np.abs(W64).T + (0.0 if b is None else np.abs(b))) + 1e-6, rtol=0)


@property_check("run_masked_update", "run_masked_linear", lesson=9, examples=40, inp=_masked_inputs())
def masked_merge_then_forward(update, lin, inp):
    """merge then forward equals the unmerged forward: x W^T + b with W = masked_update(W0, idx,
    values) matches masked_linear(x, W0, b, idx, values) (both adapters)."""
    x, W0, b, idx, v = (inp[k] for k in ("x", "W0", "b", "idx", "values"))
    W = output(update(tensor(W0), _i(idx), tensor(v)), W0.shape, "run_masked_update(W0, idx, values)")
    merged = x.astype(np.float64) @ W.T + (0.0 if b is None else b.astype(np.float64))
    y = output(lin(tensor(x), tensor(W0), _opt(b), _i(idx), tensor(v)), merged.shape, "run_masked_linear(x, W0, b, idx, values)")
    bound = np.abs(x) @ np.abs(W).T + (0.0 if b is None else np.abs(b))
    assert_close(y, merged, "unmerged run_masked_linear vs x W_merged^T + b", atol=2e-5 * bound + 1e-6, rtol=0)


@property_check("run_masked_adamw_step", lesson=9, examples=40, inp=_masked_inputs(), data=st.data(),
                lr=st.sampled_from([1e-3, 1e-2, 1e-1, 1.0]), wd=st.sampled_from([0.0, 0.01, 0.1, 1.0]))
def masked_adamw_step_touches_only_the_mask(step, inp, data, lr, wd):
    """one AdamW step (weight decay included) changes only the masked entries: off the mask the weight
    is W0 bit for bit; at position p = idx[j] it is W0[p] + v_j (1 - lr wd) - lr g_j / (|g_j|
    + 1e-8), with g_j = (grad_out^T x)[p] (float64; |g_j| >= 1e-3)."""
    x, W0, b, idx, v = (inp[k] for k in ("x", "W0", "b", "idx", "values"))
    gy = data.draw(arrays((x.shape[0], W0.shape[0]), f32(-2, 2)), label="grad_out")
    G = gy.astype(np.float64).T @ x.astype(np.float64)                 # dL/dW = grad_out^T x  (out, in)
    g = G.reshape(-1)[idx]
    assume(idx.size == 0 or np.abs(g).min() >= 1e-3)
    what = f"run_masked_adamw_step(x, W0, b, idx={idx.tolist()}, values, grad_out, lr={lr}, weight_decay={wd})"
    got = output(step(tensor(x), tensor(W0), _opt(b), _i(idx), tensor(v), tensor(gy), lr, wd), W0.shape, what)
    off = np.ones(W0.size, bool)
    off[idx] = False
    off = off.reshape(W0.shape)
    assert_close(got[off], W0.astype(np.float64)[off], f"{what} off the mask vs W0 (must not change a bit)",
                 atol=0, rtol=0)
    v_new = v.astype(np.float64) * (1 - lr * wd) - lr * g / (np.abs(g) + 1e-8)   # AdamW, step 1
    expected = _patched(W0, idx, v_new)
    scale = np.abs(W0) + _patched(np.zeros_like(W0), idx, np.abs(v) + lr)
    assert_close(got, expected, f"{what} vs W0 + scatter(idx, v (1 - lr wd) - lr g / (|g| + eps))",
                 atol=1e-6 * scale + 1e-7, rtol=0)
