"""The conformance checks: hypothesis properties that any implementation of the `run_*` adapters
must satisfy, with the expected values computed here, independently, in float64 numpy.

A check is a plain function `check_<name>(impl)`: `impl` is any object or module with `run_*`
attributes (minift's `adapters`, a student's exercise file, a wrapper around another library).
It runs a hypothesis property test inside and raises on failure; hypothesis shrinks the failure
first, and attaches the minimal falsifying example to the exception as a note.
`run_check`/`run_checks` turn that into a `Result` (PASS / FAIL / NOT IMPLEMENTED / MISSING) with
the counterexample as text.

Nothing here calls minift's reference adapters: the expected values are the textbook formulas
(exp/sum, the biased-variance LayerNorm, a naive loop over query positions, ...) written out
in numpy float64, so a bug in minift fails its own checks.

Inputs are float32 (what a model runs in); tolerances allow float32 rounding, no more.
"""
from __future__ import annotations

import math
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.reporting import with_reporter

from .strategies import (MAX_B, MAX_D, MAX_H, MAX_T, MAX_V, arrays, attention_shapes, block_inputs,
                         check_settings, dyadic, f32, shapes, shared)

PASS, FAIL, NOT_IMPLEMENTED, MISSING = "PASS", "FAIL", "NOT IMPLEMENTED", "MISSING"


# ---- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str            # "softmax_stable_large"
    adapter: str         # the run_* function it needs: "run_softmax"
    lesson: str          # the pytest marker of the lesson that teaches it: "lesson00"
    description: str     # the property, in one sentence
    fn: Callable = field(repr=False, compare=False)

    def __call__(self, impl) -> None:
        """Run the property against `impl`; raises on failure (see `run_check` for a Result)."""
        self.fn(impl)


@dataclass
class Result:
    name: str
    adapter: str
    lesson: str
    description: str
    status: str                   # PASS | FAIL | NOT IMPLEMENTED | MISSING
    seconds: float = 0.0
    error: str = ""               # "AssertionError: run_softmax(x) ... got nan, expected 1.0"
    counterexample: str = ""      # "Falsifying example: softmax_stable_large(x=array([89.], ...))"

    @property
    def passed(self) -> bool:
        return self.status == PASS


CHECKS: dict[str, Check] = {}


def _register(adapter: str, description: str, lesson: str = "lesson00"):
    def deco(fn):
        name = fn.__name__.removeprefix("check_")
        CHECKS[name] = Check(name, adapter, lesson, description, fn)
        return fn
    return deco


# ---- calling the implementation under test -------------------------------------------------

class MissingAdapter(AttributeError):
    """The implementation has no such run_* function."""


class _Unimplemented(BaseException):
    """NotImplementedError from the impl, re-raised as a BaseException so that hypothesis lets it
    through at once instead of shrinking a stub's failure (turned back into NotImplementedError)."""


def _adapter(impl, name: str) -> Callable:
    fn = getattr(impl, name, None)
    if not callable(fn):
        raise MissingAdapter(f"the implementation has no callable {name}")

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as e:
            raise _Unimplemented(f"{name}: {e}" if str(e) else f"{name} raises NotImplementedError") from e
    return call


def _run(prop: Callable[[], None]) -> None:
    try:
        prop()
    except _Unimplemented as e:
        raise NotImplementedError(str(e)) from None


def _t(a: np.ndarray) -> torch.Tensor:
    """A fresh float32 tensor (a copy: an impl that works in place cannot corrupt our inputs)."""
    return torch.tensor(np.array(a, dtype=np.float32))


def _out(y, shape, what: str) -> np.ndarray:
    """The impl's output as float64 numpy, after checking it is a tensor of the expected shape."""
    if not isinstance(y, torch.Tensor):
        raise AssertionError(f"{what} must return a torch.Tensor, got {type(y).__name__}")
    if tuple(y.shape) != tuple(shape):
        raise AssertionError(f"{what} returned shape {tuple(y.shape)}, expected {tuple(shape)}")
    return y.detach().cpu().to(torch.float64).numpy()


def _assert_close(got: np.ndarray, expected: np.ndarray, what: str, atol=1e-6, rtol=1e-5) -> None:
    """|got - expected| <= atol + rtol |expected| elementwise (atol may be an array); NaN fails."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    err = np.abs(got - expected)
    ok = err <= atol + rtol * np.abs(expected)
    if ok.all():
        return
    err = np.where(np.isnan(err), np.inf, err)
    bad = ~ok
    worst = np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), got.shape) if got.ndim else ()
    idx = tuple(int(i) for i in worst)
    g, e = got[idx] if got.ndim else got, expected[idx] if expected.ndim else expected
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {bad.size} values wrong; worst at index {idx}: got {float(g)!r}, "
        f"expected {float(e)!r} (|diff| {float(np.abs(g - e))!r} > atol + rtol |expected|, "
        f"atol={float(np.broadcast_to(atol, got.shape)[idx]):.3g}, rtol={rtol:g})")


# ---- the independent float64 maths --------------------------------------------------------

def softmax64(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)                    # shift: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def gelu64(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm64(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)         # biased: divide by C, not C - 1
    return (x - mu) / np.sqrt(var + eps) * w + b


def _ln_atol(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Per-row tolerance of a float32 LayerNorm: rounding x - mean at float32 (relative 2^-24 of
    max|x|) is amplified by 1/sqrt(var + eps), which is up to 1/sqrt(eps) for flat rows."""
    x = np.asarray(x, np.float64)
    var = x.var(axis=-1, keepdims=True)
    scale = np.abs(x).max(axis=-1, keepdims=True) + 1.0
    return 1e-5 + 64 * 2.0 ** -24 * scale / np.sqrt(var + eps) * (np.abs(w).max() + 1e-3)


def cross_entropy64(logits: np.ndarray, targets: np.ndarray, ignore_index: int) -> float:
    keep = targets != ignore_index
    z = logits[keep]
    m = z.max(axis=-1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))   # log softmax, shifted
    return float(-logp[np.arange(z.shape[0]), targets[keep]].mean())


def attention64(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The naive loop: query t attends keys 0..t with weights softmax(q_t . k_s / sqrt(D))."""
    B, H, T, D = q.shape
    out = np.zeros((B, H, T, D))
    for b in range(B):
        for h in range(H):
            for t in range(T):
                s = np.array([q[b, h, t] @ k[b, h, j] for j in range(t + 1)]) / math.sqrt(D)
                w = np.exp(s - s.max())
                w = w / w.sum()
                out[b, h, t] = sum(w[j] * v[b, h, j] for j in range(t + 1))
    return out


def gpt_block64(x: np.ndarray, p: dict, n_head: int, eps: float) -> np.ndarray:
    """h = x + c_proj(Attn(LN_1 x)); out = h + mlp.c_proj(GELU(mlp.c_fc(LN_2 h))), written out."""
    p = {k: v.detach().to(torch.float64).numpy() for k, v in p.items()}
    B, T, C = x.shape
    D = C // n_head
    h = layer_norm64(x, p["ln_1.weight"], p["ln_1.bias"], eps)
    qkv = h @ p["attn.c_attn.weight"].T + p["attn.c_attn.bias"]               # (B, T, 3C)
    heads = [qkv[..., i * C:(i + 1) * C].reshape(B, T, n_head, D).transpose(0, 2, 1, 3)
             for i in range(3)]                                                 # 3 x (B, H, T, D)
    y = attention64(*heads).transpose(0, 2, 1, 3).reshape(B, T, C)             # (B, T, C)
    a = x + y @ p["attn.c_proj.weight"].T + p["attn.c_proj.bias"]
    h2 = layer_norm64(a, p["ln_2.weight"], p["ln_2.bias"], eps)
    m = gelu64(h2 @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"])               # (B, T, 4C)
    return a + m @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]


# ---- strategies local to the checks ----------------------------------------------------------

def _dims(shape):
    return st.integers(-len(shape), len(shape) - 1)


def _softmax_inputs(key: str, lo: float, hi: float):
    """x of a small shape (1 to 3 dims) and a dim to normalise along (negative or not)."""
    shape = shared(shapes(1, 3), key)
    return arrays(shape, f32(lo, hi)), shared(shape.flatmap(_dims), key + "-dim")


# ---- softmax ---------------------------------------------------------------------------------

@_register("run_softmax", "softmax(x, dim) is a probability distribution along dim: entries in "
           "[0, 1] that sum to 1 (|x| <= 30).")
def check_softmax_sums_to_one(impl):
    softmax = _adapter(impl, "run_softmax")
    xs, dims = _softmax_inputs("sm1", -30, 30)

    @check_settings(50)
    @given(x=xs, dim=dims)
    def softmax_sums_to_one(x, dim):
        y = _out(softmax(_t(x), dim=dim), x.shape, "run_softmax(x, dim)")
        _assert_close(np.clip(y, 0.0, 1.0), y, "run_softmax(x, dim) entries outside [0, 1]", atol=1e-7, rtol=0)
        _assert_close(y.sum(axis=dim), np.ones(np.delete(x.shape, dim % x.ndim)),
                      "run_softmax(x, dim).sum(dim)", atol=1e-5, rtol=0)
    _run(softmax_sums_to_one)


@_register("run_softmax", "softmax(x, dim) equals exp(x) / sum exp(x) along dim, computed in "
           "float64, for moderate inputs (|x| <= 20).")
def check_softmax_matches_formula(impl):
    softmax = _adapter(impl, "run_softmax")
    xs, dims = _softmax_inputs("sm2", -20, 20)

    @check_settings(50)
    @given(x=xs, dim=dims)
    def softmax_matches_formula(x, dim):
        x64 = x.astype(np.float64)
        e = np.exp(x64)                                        # unshifted: fine for |x| <= 20
        expected = e / e.sum(axis=dim, keepdims=True)
        y = _out(softmax(_t(x), dim=dim), x.shape, "run_softmax(x, dim)")
        _assert_close(y, expected, "run_softmax(x, dim) vs exp(x)/sum(exp(x))", atol=1e-6, rtol=1e-5)
    _run(softmax_matches_formula)


@_register("run_softmax", "softmax(x + c, dim) equals softmax(x, dim) for c constant along dim "
           "(a different constant per row; |x| <= 10, |c| <= 20).")
def check_softmax_shift_invariant(impl):
    softmax = _adapter(impl, "run_softmax")
    shape = shared(shapes(1, 3), "sm3")
    dim = shared(shape.flatmap(_dims), "sm3-dim")
    # c has x's shape with size 1 along dim: one constant per row
    cs = st.tuples(shape, dim).flatmap(
        lambda sd: arrays(tuple(1 if i == sd[1] % len(sd[0]) else n for i, n in enumerate(sd[0])),
                          f32(-20, 20)))

    @check_settings(50)
    @given(x=arrays(shape, f32(-10, 10)), dim=dim, c=cs)
    def softmax_shift_invariant(x, dim, c):
        y = _out(softmax(_t(x), dim=dim), x.shape, "run_softmax(x, dim)")
        y_shift = _out(softmax(_t(x + c), dim=dim), x.shape, "run_softmax(x + c, dim)")
        _assert_close(y_shift, y, "run_softmax(x + c, dim) vs run_softmax(x, dim)", atol=1e-5, rtol=1e-4)
    _run(softmax_shift_invariant)


@_register("run_softmax", "softmax is numerically stable: for float32 inputs up to |x| = 1e4 it "
           "is finite and equals the shifted float64 formula exp(x - max) / sum exp(x - max).")
def check_softmax_stable_large(impl):
    softmax = _adapter(impl, "run_softmax")
    xs, dims = _softmax_inputs("sm4", -1e4, 1e4)

    @check_settings(60)
    @given(x=xs, dim=dims)
    def softmax_stable_large(x, dim):
        y = _out(softmax(_t(x), dim=dim), x.shape, "run_softmax(x, dim)")
        _assert_close(y, softmax64(x.astype(np.float64), axis=dim),
                      "run_softmax(x, dim) vs exp(x - max)/sum(exp(x - max))", atol=1e-6, rtol=1e-4)
    _run(softmax_stable_large)


# ---- GELU ------------------------------------------------------------------------------------

@_register("run_gelu", "gelu(x) equals the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) "
           "(x + 0.044715 x^3))) in float64 (not the exact erf GELU).")
def check_gelu_matches_formula(impl):
    gelu = _adapter(impl, "run_gelu")

    @check_settings(50)
    @given(x=arrays(shapes(1, 3), f32(-12, 12)))
    def gelu_matches_formula(x):
        y = _out(gelu(_t(x)), x.shape, "run_gelu(x)")
        _assert_close(y, gelu64(x.astype(np.float64)), "run_gelu(x) vs tanh-approximation formula",
                      atol=1e-6, rtol=1e-5)
    _run(gelu_matches_formula)


@_register("run_gelu", "gelu(0) = 0 and gelu(x) - gelu(-x) = x (GELU is x times a function "
           "phi with phi(x) + phi(-x) = 1).")
def check_gelu_odd_part_is_identity(impl):
    gelu = _adapter(impl, "run_gelu")

    @check_settings(40)
    @given(x=arrays(shapes(1, 3), f32(-12, 12)))
    def gelu_odd_part_is_identity(x):
        zero = _out(gelu(_t(np.zeros_like(x))), x.shape, "run_gelu(0)")
        _assert_close(zero, np.zeros(x.shape), "run_gelu(0)", atol=0, rtol=0)
        y = _out(gelu(_t(x)), x.shape, "run_gelu(x)")
        y_neg = _out(gelu(_t(-x)), x.shape, "run_gelu(-x)")
        _assert_close(y - y_neg, x.astype(np.float64), "run_gelu(x) - run_gelu(-x) vs x", atol=1e-5, rtol=1e-5)
    _run(gelu_odd_part_is_identity)


# ---- LayerNorm -------------------------------------------------------------------------------

def _ln_inputs(key: str, min_c: int, x_elems):
    shape = shared(shapes(1, 3, max_last=16, min_last=min_c), key)
    wshape = shape.map(lambda s: (s[-1],))
    return arrays(shape, x_elems), arrays(wshape, f32(-3, 3)), arrays(wshape, f32(-3, 3))


@_register("run_layer_norm", "layer_norm(x, w, b, eps) equals (x - mean) / sqrt(var + eps) * w + b "
           "over the last dim, with the biased variance (divide by C), in float64 (C >= 2).")
def check_layer_norm_matches_formula(impl):
    layer_norm = _adapter(impl, "run_layer_norm")
    xs, ws, bs = _ln_inputs("ln1", 2, f32(-10, 10))

    @check_settings(60)
    @given(x=xs, weight=ws, bias=bs, eps=st.sampled_from([1e-5, 1e-2]))
    def layer_norm_matches_formula(x, weight, bias, eps):
        y = _out(layer_norm(_t(x), _t(weight), _t(bias), eps=eps), x.shape,
                 "run_layer_norm(x, weight, bias, eps)")
        x64, w64, b64 = (a.astype(np.float64) for a in (x, weight, bias))
        _assert_close(y, layer_norm64(x64, w64, b64, eps), "run_layer_norm vs (x - mean)/sqrt(var + eps)*w + b",
                      atol=_ln_atol(x64, w64, eps), rtol=1e-5)
    _run(layer_norm_matches_formula)


def _spread(x: np.ndarray) -> np.ndarray:
    """x[..., 0] = x[..., 1] + 2, so every row has variance >= 4 / (2 C) >= 1/8: non-negligible."""
    x = x.copy()
    x[..., 0] = x[..., 1] + 2.0
    return x


@_register("run_layer_norm", "with weight 1 and bias 0 each row of layer_norm(x) has mean 0 and "
           "(biased) variance 1, up to eps / var (rows of C >= 2 with variance >= 1/8).")
def check_layer_norm_standardizes(impl):
    layer_norm = _adapter(impl, "run_layer_norm")
    shape = shapes(1, 3, max_last=16, min_last=2)

    @check_settings(40)
    @given(x=arrays(shape, f32(-10, 10)).map(_spread))
    def layer_norm_standardizes(x):
        C = x.shape[-1]
        y = _out(layer_norm(_t(x), torch.ones(C), torch.zeros(C), eps=1e-5), x.shape,
                 "run_layer_norm(x, ones, zeros, eps=1e-5)")
        var_in = x.astype(np.float64).var(axis=-1)
        _assert_close(y.mean(axis=-1), np.zeros(x.shape[:-1]), "row mean of run_layer_norm(x, 1, 0)",
                      atol=1e-5, rtol=0)
        _assert_close(y.var(axis=-1), np.ones(x.shape[:-1]),
                      "row variance (divide by C) of run_layer_norm(x, 1, 0)", atol=1e-5 / var_in + 1e-4, rtol=0)
    _run(layer_norm_standardizes)


@_register("run_layer_norm", "layer_norm(a x + c, eps = a^2 eps0) equals layer_norm(x, eps0) for "
           "a > 0 and c constant per row (C >= 2; on a dyadic grid, so a x + c is exact in float32).")
def check_layer_norm_affine_invariant(impl):
    layer_norm = _adapter(impl, "run_layer_norm")
    xs, ws, bs = _ln_inputs("ln3", 2, dyadic(-8, 8))
    cs = shared(shapes(1, 3, max_last=16, min_last=2), "ln3").flatmap(lambda s: arrays(s[:-1] + (1,), dyadic(-8, 8, 1)))

    @check_settings(40)
    @given(x=xs, weight=ws, bias=bs, a=st.sampled_from([0.25, 0.5, 2.0, 4.0]), c=cs,
           eps=st.sampled_from([1e-5, 1e-2]))
    def layer_norm_affine_invariant(x, weight, bias, a, c, eps):
        z = (a * x + c).astype(np.float32)                     # exact: powers of two and integers
        y = _out(layer_norm(_t(x), _t(weight), _t(bias), eps=eps), x.shape, "run_layer_norm(x, w, b, eps)")
        y_aff = _out(layer_norm(_t(z), _t(weight), _t(bias), eps=eps * a * a), x.shape,
                     "run_layer_norm(a x + c, w, b, a^2 eps)")
        w64 = weight.astype(np.float64)
        tol = _ln_atol(x, w64, eps) + _ln_atol(z, w64, eps * a * a)
        _assert_close(y_aff, y, "run_layer_norm(a x + c, w, b, a^2 eps) vs run_layer_norm(x, w, b, eps)",
                      atol=tol, rtol=1e-5)
    _run(layer_norm_affine_invariant)


# ---- cross-entropy ---------------------------------------------------------------------------

@st.composite
def _ce_targets(draw, n: int, v: int, ignore_index: int, min_ignored: int = 0):
    """(n,) int64 targets in [0, v) or ignore_index; row 0 always real (the mean is defined)."""
    t = [draw(st.integers(0, v - 1))] + [draw(st.one_of(st.integers(0, v - 1), st.just(ignore_index)))
                                         for _ in range(n - 1)]
    for i in range(1, min(min_ignored + 1, n)):
        t[i] = ignore_index
    return np.array(t, dtype=np.int64)


def _ce_inputs(key: str, lo: float, hi: float, min_ignored: int = 0, min_n: int = 1):
    nv = shared(st.tuples(st.integers(min_n, MAX_T), st.integers(1, MAX_V)), key)
    ii = shared(st.sampled_from([-100, -1]), key + "-ii")
    logits = nv.flatmap(lambda s: arrays(s, f32(lo, hi)))
    targets = st.tuples(nv, ii).flatmap(lambda a: _ce_targets(a[0][0], a[0][1], a[1], min_ignored))
    return logits, targets, ii


@_register("run_cross_entropy", "cross_entropy(logits, targets, ignore_index) equals the mean over "
           "non-ignored rows of -log softmax(logits)[target], in float64.")
def check_cross_entropy_matches_formula(impl):
    ce = _adapter(impl, "run_cross_entropy")
    logits_s, targets_s, ii_s = _ce_inputs("ce1", -20, 20)

    @check_settings(50)
    @given(logits=logits_s, targets=targets_s, ignore_index=ii_s)
    def cross_entropy_matches_formula(logits, targets, ignore_index):
        loss = _out(ce(_t(logits), torch.tensor(targets), ignore_index=ignore_index), (),
                    "run_cross_entropy(logits, targets, ignore_index)")
        _assert_close(loss, cross_entropy64(logits.astype(np.float64), targets, ignore_index),
                      "run_cross_entropy vs mean(-log softmax(logits)[target])", atol=1e-5, rtol=1e-5)
    _run(cross_entropy_matches_formula)


@_register("run_cross_entropy", "rows whose target is ignore_index do not count: changing their "
           "logits leaves the loss unchanged, and it equals the loss over the kept rows alone.")
def check_cross_entropy_ignores_ignored_targets(impl):
    ce = _adapter(impl, "run_cross_entropy")
    logits_s, targets_s, ii_s = _ce_inputs("ce2", -20, 20, min_ignored=1, min_n=2)
    other_s = shared(st.tuples(st.integers(2, MAX_T), st.integers(1, MAX_V)), "ce2").flatmap(
        lambda s: arrays(s, f32(-1e3, 1e3)))

    @check_settings(50)
    @given(logits=logits_s, targets=targets_s, ignore_index=ii_s, other=other_s)
    def cross_entropy_ignores_ignored_targets(logits, targets, ignore_index, other):
        ignored = targets == ignore_index
        changed = np.where(ignored[:, None], other, logits)    # new logits on ignored rows only
        what = "run_cross_entropy(logits, targets, ignore_index)"
        loss = _out(ce(_t(logits), torch.tensor(targets), ignore_index=ignore_index), (), what)
        loss_changed = _out(ce(_t(changed), torch.tensor(targets), ignore_index=ignore_index), (),
                            "run_cross_entropy with the ignored rows' logits changed")
        _assert_close(loss_changed, loss, f"{what}, ignored rows' logits changed, vs unchanged",
                      atol=1e-6, rtol=1e-6)
        loss_kept = _out(ce(_t(logits[~ignored]), torch.tensor(targets[~ignored]), ignore_index=ignore_index),
                         (), "run_cross_entropy(logits[kept], targets[kept])")
        _assert_close(loss, loss_kept, f"{what} vs the same over the non-ignored rows only",
                      atol=1e-6, rtol=1e-5)
    _run(cross_entropy_ignores_ignored_targets)


@_register("run_cross_entropy", "cross-entropy is numerically stable: logits up to |1e4| in float32 "
           "give a finite loss equal to the float64 log-sum-exp formula.")
def check_cross_entropy_stable_large(impl):
    ce = _adapter(impl, "run_cross_entropy")
    logits_s, targets_s, ii_s = _ce_inputs("ce3", -1e4, 1e4)

    @check_settings(50)
    @given(logits=logits_s, targets=targets_s, ignore_index=ii_s)
    def cross_entropy_stable_large(logits, targets, ignore_index):
        loss = _out(ce(_t(logits), torch.tensor(targets), ignore_index=ignore_index), (),
                    "run_cross_entropy(logits, targets, ignore_index)")
        _assert_close(loss, cross_entropy64(logits.astype(np.float64), targets, ignore_index),
                      "run_cross_entropy vs float64 log-sum-exp formula", atol=1e-4, rtol=1e-5)
    _run(cross_entropy_stable_large)


# ---- causal attention ------------------------------------------------------------------------

@_register("run_causal_attention", "causal_attention(q, k, v) equals the naive loop over queries: "
           "out_t = softmax(q_t . k_s / sqrt(D), s <= t) weighted sum of v_s, in float64.")
def check_causal_attention_matches_naive_loop(impl):
    attention = _adapter(impl, "run_causal_attention")
    shape = shared(attention_shapes(), "at1")

    @check_settings(50)
    @given(q=arrays(shape, f32(-3, 3)), k=arrays(shape, f32(-3, 3)), v=arrays(shape, f32(-3, 3)))
    def causal_attention_matches_naive_loop(q, k, v):
        y = _out(attention(_t(q), _t(k), _t(v)), q.shape, "run_causal_attention(q, k, v)")
        expected = attention64(*(a.astype(np.float64) for a in (q, k, v)))
        _assert_close(y, expected, "run_causal_attention vs naive per-query loop", atol=2e-5, rtol=1e-4)
    _run(causal_attention_matches_naive_loop)


@_register("run_causal_attention", "causality: changing k and v at positions > t leaves the output "
           "at positions <= t unchanged.")
def check_causal_attention_is_causal(impl):
    attention = _adapter(impl, "run_causal_attention")
    shape = shared(attention_shapes(), "at2")

    @check_settings(50)
    @given(q=arrays(shape, f32(-3, 3)), k=arrays(shape, f32(-3, 3)), v=arrays(shape, f32(-3, 3)),
           k_new=arrays(shape, f32(-3, 3)), v_new=arrays(shape, f32(-3, 3)),
           t=shape.flatmap(lambda s: st.integers(0, s[2] - 1)))
    def causal_attention_is_causal(q, k, v, k_new, v_new, t):
        k2, v2 = k.copy(), v.copy()
        k2[:, :, t + 1:], v2[:, :, t + 1:] = k_new[:, :, t + 1:], v_new[:, :, t + 1:]   # the future
        y = _out(attention(_t(q), _t(k), _t(v)), q.shape, "run_causal_attention(q, k, v)")
        y2 = _out(attention(_t(q), _t(k2), _t(v2)), q.shape, "run_causal_attention(q, k', v')")
        _assert_close(y2[:, :, :t + 1], y[:, :, :t + 1],
                      f"output at positions <= t={t} after changing k, v at positions > t", atol=1e-6, rtol=1e-5)
    _run(causal_attention_is_causal)


# ---- GPT block -------------------------------------------------------------------------------

def _block_args():
    return dict(B=st.integers(1, MAX_B), T=st.integers(1, MAX_T), n_head=st.integers(1, MAX_H),
                head_dim=st.integers(1, MAX_D), seed=st.integers(0, 2 ** 32 - 1))


@_register("run_gpt_block", "gpt_block(x, params, n_head, eps) equals x + c_proj(Attn(LN_1 x)), "
           "then + mlp.c_proj(GELU(mlp.c_fc(LN_2 .))), written out in float64 with the naive "
           "attention loop (inputs: strategies.block_inputs(B, T, n_head, head_dim, seed)).")
def check_gpt_block_matches_formula(impl):
    block = _adapter(impl, "run_gpt_block")

    @check_settings(40)
    @given(**_block_args(), eps=st.sampled_from([1e-5, 1e-3]))
    def gpt_block_matches_formula(B, T, n_head, head_dim, seed, eps):
        assume(n_head * head_dim >= 2)                         # C = 1: LayerNorm is just its bias
        x, params = block_inputs(B, T, n_head, head_dim, seed)
        expected = gpt_block64(x.double().numpy(), params, n_head, eps)
        y = _out(block(x.clone(), {k: v.clone() for k, v in params.items()}, n_head, eps=eps), x.shape,
                 "run_gpt_block(x, params, n_head, eps)")
        _assert_close(y, expected, "run_gpt_block vs explicit float64 block", atol=1e-4, rtol=1e-4)
    _run(gpt_block_matches_formula)


@_register("run_gpt_block", "the block is causal: changing x at positions > t leaves the output at "
           "positions <= t unchanged (inputs: strategies.block_inputs(..., seed), new future from "
           "seed_new).")
def check_gpt_block_is_causal(impl):
    block = _adapter(impl, "run_gpt_block")

    @check_settings(40)
    @given(**_block_args(), seed_new=st.integers(0, 2 ** 32 - 1), t=st.integers(0, MAX_T - 1))
    def gpt_block_is_causal(B, T, n_head, head_dim, seed, seed_new, t):
        assume(n_head * head_dim >= 2)
        t = min(t, T - 1)
        x, params = block_inputs(B, T, n_head, head_dim, seed)
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed_new))[:, t + 1:]
        y = _out(block(x.clone(), {k: v.clone() for k, v in params.items()}, n_head), x.shape,
                 "run_gpt_block(x, params, n_head)")
        y2 = _out(block(x2, {k: v.clone() for k, v in params.items()}, n_head), x.shape,
                  "run_gpt_block(x', params, n_head)")
        _assert_close(y2[:, :t + 1], y[:, :t + 1],
                      f"block output at positions <= t={t} after changing x at positions > t",
                      atol=1e-5, rtol=1e-5)
    _run(gpt_block_is_causal)


# ---- running checks and collecting results -------------------------------------------------

def _notes(e: BaseException) -> list[str]:
    notes = list(getattr(e, "__notes__", None) or [])
    for sub in getattr(e, "exceptions", None) or ():          # an ExceptionGroup of several bugs
        notes += _notes(sub)
    return notes


def _describe(e: BaseException) -> str:
    """`Type: message`, plus where it was raised when it is not one of our assertions."""
    msg = f"{type(e).__name__}: {e}".rstrip(": ")
    if not isinstance(e, AssertionError):
        here = os.path.dirname(os.path.abspath(__file__))
        frames = [f for f in traceback.extract_tb(e.__traceback__)       # the impl's frames only
                  if "hypothesis" not in f.filename and not os.path.abspath(f.filename).startswith(here)]
        if frames:
            f = frames[-1]
            msg += f"\n  (raised at {f.filename}:{f.lineno} in {f.name})"
    return msg


def run_check(check: Check, impl) -> Result:
    """Run one check against `impl` and return its Result; never raises for a failing impl."""
    res = Result(check.name, check.adapter, check.lesson, check.description, PASS)
    t0 = time.perf_counter()
    printed: list[str] = []
    try:
        if not callable(getattr(impl, check.adapter, None)):
            raise MissingAdapter(f"the implementation has no callable {check.adapter}")
        with with_reporter(printed.append), warnings.catch_warnings():
            warnings.simplefilter("ignore")                   # an impl's warning, x hundreds of examples
            check.fn(impl)
    except MissingAdapter as e:
        res.status, res.error = MISSING, str(e)
    except NotImplementedError as e:
        res.status, res.error = NOT_IMPLEMENTED, str(e) or f"{check.adapter} raises NotImplementedError"
    except Exception as e:                                     # noqa: BLE001 - any failure is a FAIL
        res.status, res.error = FAIL, _describe(e)
        notes = [n for n in _notes(e) if n.strip()]
        res.counterexample = "\n".join(notes) if notes else "\n".join(p for p in printed if p.strip())
    res.seconds = time.perf_counter() - t0
    return res


def select(only: Optional[Iterable[str] | str] = None) -> list[str]:
    """Check names for `only`: None (all), or names separated by commas; each name is a check name,
    an adapter (`run_softmax`: its checks) or a lesson marker (`lesson00`). Unknown -> ValueError."""
    if only is None:
        return list(CHECKS)
    if isinstance(only, str):
        only = only.split(",")
    chosen, unknown = [], []
    for raw in only:
        name = raw.strip()
        if not name:
            continue
        hits = [c.name for c in CHECKS.values() if name in (c.name, c.adapter, c.lesson)]
        if not hits:
            unknown.append(name)
        chosen += [h for h in hits if h not in chosen]
    if unknown:
        raise ValueError(f"unknown check name(s) {unknown}; valid names: {', '.join(CHECKS)} "
                         f"(or an adapter: {', '.join(sorted({c.adapter for c in CHECKS.values()}))}; "
                         f"or a lesson: {', '.join(sorted({c.lesson for c in CHECKS.values()}))})")
    if not chosen:
        raise ValueError(f"no check selected by only={list(only)!r}; valid names: {', '.join(CHECKS)}")
    return chosen


def run_checks(impl=None, only=None) -> list[Result]:
    """Run the checks (all, or those `select(only)` names) against `impl`.

    impl: a module/object with run_* attributes, a path to a Python file (see `load_impl`), or
    None for minift's reference adapters.
    """
    if impl is None:
        from . import adapters as impl
    elif isinstance(impl, (str, bytes)) or hasattr(impl, "__fspath__"):
        from .verify import load_impl
        impl = load_impl(impl)
    return [run_check(CHECKS[name], impl) for name in select(only)]
