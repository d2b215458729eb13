"""The conformance checks: hypothesis properties that any implementation of the `run_*` adapters
must satisfy, with the expected values computed here, independently, in float64 numpy.

A check is a plain function `check_<name>(impl)`: `impl` is any object or module with `run_*`
attributes (minift's `adapters`, a student's exercise file, a wrapper around another library).
It runs a hypothesis property test inside and raises on failure; hypothesis shrinks the failure
first, and `_run` attaches the minimal failing arguments to the exception as our own text
(`softmax_stable_large(x=array([89.], dtype=float32))`), so a report reads the
same whichever hypothesis version found it.
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
    counterexample: str = ""      # "softmax_stable_large(x=array([89.], dtype=float32))": the failing call

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


class _DrawRecorder:
    """Stands in for hypothesis' `st.data()` object and remembers each value drawn from it, so a
    counterexample shows the drawn tensors, not just `data=data(...)`."""

    def __init__(self, data, draws: list):
        self._data, self._draws = data, draws

    def draw(self, strategy, label=None):
        value = self._data.draw(strategy, label=label)
        self._draws.append(value)
        return value


def _recording(inner: Callable, failures: list) -> Callable:
    """Wrap a property's body so that every call that fails appends its arguments to `failures`.
    Hypothesis replays the minimal failing example last, so failures[-1] is the counterexample."""
    def body(*args, **kwargs):
        draws: list = []
        kwargs = {k: _DrawRecorder(v, draws) if type(v).__name__ == "DataObject" else v
                  for k, v in kwargs.items()}
        try:
            return inner(*args, **kwargs)
        except Exception:
            failures.append(({k: (draws if isinstance(v, _DrawRecorder) else v) for k, v in kwargs.items()}))
            raise
    return body


def _format_value(v) -> str:
    """A value as Python text that reproduces it bit for bit (arrays at full float precision)."""
    if isinstance(v, np.ndarray):
        with np.printoptions(threshold=10 ** 9, floatmode="unique", linewidth=100):
            return repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_format_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_format_value(x) for x in v) + "]"
    return repr(v)


def format_counterexample(name: str, kwargs: dict) -> str:
    """`prop(x=array([89.], dtype=float32), zp=True)`: the property's name and its
    failing arguments (values drawn inside it, from `data`, as the list of draws in order)."""
    args = [f"{k}={_format_value(v)}" for k, v in kwargs.items()]
    one_line = f"{name}({', '.join(args)})"
    if len(one_line) <= 100 and "\n" not in one_line:
        return one_line
    return f"{name}(\n" + "".join(f"    {a},\n".replace("\n ", "\n     ") for a in args) + ")"


def _run(prop: Callable[[], None]) -> None:
    """Run a @given property. On failure the exception carries `counterexample`: our own text of the
    minimal failing arguments (the same whichever hypothesis version found them)."""
    failures: list = []
    prop.hypothesis.inner_test = _recording(prop.hypothesis.inner_test, failures)
    try:
        prop()
    except _Unimplemented as e:
        raise NotImplementedError(str(e)) from None
    except Exception as e:
        if failures:
            e.counterexample = format_counterexample(prop.__name__, failures[-1])
        raise


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


# ---- lesson 01: the next-token loss -----------------------------------------------------------

from hypothesis.extra import numpy as hnp  # noqa: E402  (integer token arrays)

def next_token_loss64(logits: np.ndarray, tokens: np.ndarray, mask: Optional[np.ndarray]) -> float:
    """The naive loop: position t of row b predicts tokens[b, t + 1]; it counts when
    mask[b, t + 1] is 1 (the mask marks targets). Mean of logsumexp(z) - z[target]; 0 if none."""
    B, T, V = logits.shape
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            if mask is not None and not mask[b, t + 1]:
                continue
            z = logits[b, t]
            m = z.max()
            total += m + math.log(np.exp(z - m).sum()) - z[tokens[b, t + 1]]
            n += 1
    return total / n if n else 0.0


def _ntl_inputs(key: str, lo: float, hi: float):
    """logits (B, T, V) float32, tokens (B, T) int64 in [0, V), loss_mask (B, T) int64 of 0/1
    with mask[0, 1] = 1 (at least one target counts); T >= 2, V >= 2."""
    shape = shared(st.tuples(st.integers(1, MAX_B), st.integers(2, MAX_T), st.integers(2, MAX_V)), key)
    logits = shape.flatmap(lambda s: arrays(s, f32(lo, hi)))
    tokens = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.integers(0, s[2] - 1)))

    def one_target(m):
        m = m.copy()
        m[0, 1] = 1
        return m
    mask = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.integers(0, 1))).map(one_target)
    return shape, logits, tokens, mask


@_register("run_next_token_loss", "next_token_loss(logits, tokens, loss_mask) equals the mean over "
           "(b, t) with loss_mask[b, t+1] = 1 of -log softmax(logits[b, t])[tokens[b, t+1]] (logits "
           "at t predict the token at t+1; mask None = every target counts), in float64.",
           lesson="lesson01")
def check_next_token_loss_matches_formula(impl):
    ntl = _adapter(impl, "run_next_token_loss")
    _, logits_s, tokens_s, mask_s = _ntl_inputs("ntl1", -20, 20)

    @check_settings(50)
    @given(logits=logits_s, tokens=tokens_s, loss_mask=mask_s, use_mask=st.booleans())
    def next_token_loss_matches_formula(logits, tokens, loss_mask, use_mask):
        mask = loss_mask if use_mask else None
        what = f"run_next_token_loss(logits, tokens, {'loss_mask' if use_mask else 'None'})"
        loss = _out(ntl(_t(logits), torch.tensor(tokens), None if mask is None else torch.tensor(mask)),
                    (), what)
        _assert_close(loss, next_token_loss64(logits.astype(np.float64), tokens, mask),
                      f"{what} vs mean over counted targets of -log softmax(logits[t])[tokens[t+1]]",
                      atol=1e-5, rtol=1e-5)
    _run(next_token_loss_matches_formula)


@_register("run_next_token_loss", "only counted targets matter: new logits at the last position and "
           "at positions whose target is masked, and new tokens where loss_mask is 0 or t = 0, leave "
           "the loss unchanged; loss_mask=None equals an all-ones mask; no counted target gives 0.",
           lesson="lesson01")
def check_next_token_loss_counts_only_targets(impl):
    ntl = _adapter(impl, "run_next_token_loss")
    shape, logits_s, tokens_s, mask_s = _ntl_inputs("ntl2", -20, 20)
    other_logits = shape.flatmap(lambda s: arrays(s, f32(-1e3, 1e3)))
    other_tokens = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.integers(0, s[2] - 1)))

    @check_settings(50)
    @given(logits=logits_s, tokens=tokens_s, loss_mask=mask_s, other_logits=other_logits,
           other_tokens=other_tokens)
    def next_token_loss_counts_only_targets(logits, tokens, loss_mask, other_logits, other_tokens):
        B, T, V = logits.shape
        mt = torch.tensor                                                 # int64 arrays -> long tensors
        loss = _out(ntl(_t(logits), mt(tokens), mt(loss_mask)), (), "run_next_token_loss(logits, tokens, loss_mask)")
        # logits at t are scored against tokens[t+1]: position T-1 and masked targets never count
        unused = np.zeros((B, T), dtype=bool)
        unused[:, -1] = True
        unused[:, :-1] = loss_mask[:, 1:] == 0
        logits2 = np.where(unused[..., None], other_logits, logits)
        not_target = loss_mask == 0                                       # a token is a target only if counted
        not_target[:, 0] = True                                           # tokens[:, 0] is never a target
        tokens2 = np.where(not_target, other_tokens, tokens)
        loss2 = _out(ntl(_t(logits2), mt(tokens2), mt(loss_mask)), (),
                     "run_next_token_loss with logits and tokens changed where they do not count")
        _assert_close(loss2, loss, "loss after changing logits/tokens that are not scored vs before",
                      atol=1e-5, rtol=1e-5)
        ones = np.ones((B, T), dtype=np.int64)
        loss_none = _out(ntl(_t(logits), mt(tokens), None), (), "run_next_token_loss(logits, tokens, None)")
        loss_ones = _out(ntl(_t(logits), mt(tokens), mt(ones)), (), "run_next_token_loss(logits, tokens, ones)")
        _assert_close(loss_none, loss_ones, "loss_mask=None vs an all-ones loss_mask", atol=1e-6, rtol=1e-6)
        none_counted = loss_mask.copy()
        none_counted[:, 1:] = 0                                           # mask[:, 0] is never a target
        loss0 = _out(ntl(_t(logits), mt(tokens), mt(none_counted)), (),
                     "run_next_token_loss with loss_mask[:, 1:] = 0 (no target counts)")
        _assert_close(loss0, np.zeros(()), "loss with no counted target (0, not NaN)", atol=0, rtol=0)
    _run(next_token_loss_counts_only_targets)


# ---- lesson 01: the learning-rate schedule ----------------------------------------------------

def lr_schedule64(step: int, steps: int, warmup: int, lr: float, ratio: float) -> float:
    """Linear warmup to lr over `warmup` steps (step 0 gets lr / warmup), then half a cosine from lr
    down to lr_min = lr * ratio at step `steps`, flat afterwards."""
    if step < warmup:
        return lr * (step + 1) / warmup
    lo = lr * ratio
    p = min(1.0, (step - warmup) / (steps - warmup))
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


def _scalar(y, what: str) -> float:
    """The impl's output as a Python float: a real number or a one-element tensor."""
    if isinstance(y, torch.Tensor):
        if y.numel() != 1:
            raise AssertionError(f"{what} must return a number, got a tensor of shape {tuple(y.shape)}")
        y = y.item()
    if isinstance(y, bool) or not isinstance(y, (int, float, np.integer, np.floating)):
        raise AssertionError(f"{what} must return a number, got {type(y).__name__}")
    return float(y)


def _schedules(min_span: int = 1):
    """(steps, warmup_steps) with 0 <= warmup < steps, steps - warmup >= min_span."""
    return st.tuples(st.integers(0, 40), st.integers(min_span, 120)).map(lambda t: (t[0] + t[1], t[0]))


_LRS = st.floats(1e-5, 1.0, allow_nan=False, allow_infinity=False)
_RATIOS = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, allow_nan=False))


@_register("run_lr_schedule", "lr_schedule(step, steps, warmup, lr, ratio) equals lr (step + 1) / warmup "
           "for step < warmup, then lr_min + (lr - lr_min) (1 + cos(pi p)) / 2 with p = min(1, (step - "
           "warmup) / (steps - warmup)) and lr_min = lr ratio, in float64.", lesson="lesson01")
def check_lr_schedule_matches_formula(impl):
    sched = _adapter(impl, "run_lr_schedule")

    @check_settings(80)
    @given(sw=_schedules(), lr=_LRS, min_lr_ratio=_RATIOS, frac=st.floats(0.0, 1.5))
    def lr_schedule_matches_formula(sw, lr, min_lr_ratio, frac):
        steps, warmup = sw
        step = int(frac * steps)
        y = _scalar(sched(step, steps, warmup, lr, min_lr_ratio),
                    f"run_lr_schedule({step}, {steps}, {warmup}, {lr!r}, {min_lr_ratio!r})")
        _assert_close(y, lr_schedule64(step, steps, warmup, lr, min_lr_ratio),
                      f"run_lr_schedule(step={step}, steps={steps}, warmup_steps={warmup}, lr={lr!r}, "
                      f"min_lr_ratio={min_lr_ratio!r}) vs warmup + cosine formula", atol=1e-12, rtol=1e-6)
    _run(lr_schedule_matches_formula)


@_register("run_lr_schedule", "warmup is linear and reaches lr: for step < warmup the rate is "
           "lr (step + 1) / warmup (equal increments of lr / warmup), and step warmup - 1 gets lr.",
           lesson="lesson01")
def check_lr_warmup_is_linear(impl):
    sched = _adapter(impl, "run_lr_schedule")

    @check_settings(40)
    @given(warmup=st.integers(1, 60), extra=st.integers(1, 100), lr=_LRS, min_lr_ratio=_RATIOS)
    def lr_warmup_is_linear(warmup, extra, lr, min_lr_ratio):
        steps = warmup + extra
        ys = np.array([_scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
                       for s in range(warmup)])
        _assert_close(ys, lr * np.arange(1, warmup + 1) / warmup,
                      f"warmup rates lr (step + 1) / warmup for steps 0..{warmup - 1} (steps={steps}, lr={lr!r})",
                      atol=1e-12, rtol=1e-6)
        _assert_close(ys[-1], lr, f"rate at the last warmup step {warmup - 1} vs lr", atol=1e-12, rtol=1e-6)
    _run(lr_warmup_is_linear)


@_register("run_lr_schedule", "the rate stays in range: 0 < rate <= lr during warmup, lr_min <= rate "
           "<= lr after it, and rate = lr_min from step `steps` on (lr_min = lr min_lr_ratio).",
           lesson="lesson01")
def check_lr_schedule_bounded(impl):
    sched = _adapter(impl, "run_lr_schedule")

    @check_settings(40)
    @given(sw=_schedules(), lr=_LRS, min_lr_ratio=_RATIOS)
    def lr_schedule_bounded(sw, lr, min_lr_ratio):
        steps, warmup = sw
        lo, tol = lr * min_lr_ratio, 1e-6 * lr
        for s in range(steps + 10):
            y = _scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
            where = (f"run_lr_schedule(step={s}, steps={steps}, warmup_steps={warmup}, lr={lr!r}, "
                     f"min_lr_ratio={min_lr_ratio!r}) = {y!r}")
            if not (y <= lr + tol and (y > 0 or s >= warmup)):
                raise AssertionError(f"{where} is outside {'(0, lr]' if s < warmup else '[lr_min, lr]'}")
            if s >= warmup and y < lo - tol:
                raise AssertionError(f"{where} is below lr_min = {lo!r} after warmup")
            if s >= steps and abs(y - lo) > tol:
                raise AssertionError(f"{where} but from step `steps` on the rate must be lr_min = {lo!r}")
    _run(lr_schedule_bounded)


@_register("run_lr_schedule", "the cosine starts at lr (step = warmup), passes (lr + lr_min) / 2 "
           "half-way (step = warmup + (steps - warmup) / 2) and ends at lr_min (step = steps).",
           lesson="lesson01")
def check_lr_cosine_midpoint(impl):
    sched = _adapter(impl, "run_lr_schedule")

    @check_settings(40)
    @given(warmup=st.integers(0, 40), half=st.integers(1, 60), lr=_LRS, min_lr_ratio=_RATIOS)
    def lr_cosine_midpoint(warmup, half, lr, min_lr_ratio):
        steps = warmup + 2 * half
        lo = lr * min_lr_ratio
        for s, want, name in ((warmup, lr, "lr at the end of warmup"),
                              (warmup + half, (lr + lo) / 2, "(lr + lr_min) / 2 half-way through the cosine"),
                              (steps, lo, "lr_min at step `steps`")):
            y = _scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
            _assert_close(y, want, f"run_lr_schedule(step={s}, steps={steps}, warmup_steps={warmup}, "
                                   f"lr={lr!r}, min_lr_ratio={min_lr_ratio!r}) vs {name}", atol=1e-12, rtol=1e-6)
    _run(lr_cosine_midpoint)


@_register("run_lr_schedule", "the rate rises during warmup and never rises after it: "
           "rate(s + 1) <= rate(s) for every s >= warmup - 1, past `steps` too.", lesson="lesson01")
def check_lr_monotone_after_warmup(impl):
    sched = _adapter(impl, "run_lr_schedule")

    @check_settings(40)
    @given(sw=_schedules(), lr=_LRS, min_lr_ratio=st.floats(0.0, 0.9))
    def lr_monotone_after_warmup(sw, lr, min_lr_ratio):
        steps, warmup = sw
        ys = [_scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
              for s in range(steps + 10)]
        for s in range(steps + 9):
            rising = ys[s + 1] > ys[s] + 1e-9 * lr
            if (s < warmup - 1 and not ys[s + 1] > ys[s]) or (s >= warmup - 1 and rising):
                raise AssertionError(
                    f"run_lr_schedule(steps={steps}, warmup_steps={warmup}, lr={lr!r}, min_lr_ratio="
                    f"{min_lr_ratio!r}): rate {ys[s]!r} at step {s}, {ys[s + 1]!r} at step {s + 1}; it must "
                    f"{'rise during warmup' if s < warmup - 1 else 'not rise after warmup'}")
    _run(lr_monotone_after_warmup)


# ---- lesson 01: perplexity --------------------------------------------------------------------

def _ppl_inputs(key: str, max_nll: float = 10.0):
    """(N,) per-batch summed NLL (float32) and (N,) token counts (int64, 1..500), N in 1..8."""
    n = shared(st.integers(1, 8), key)
    counts = n.flatmap(lambda k: hnp.arrays(np.int64, (k,), elements=st.integers(1, 500)))
    means = n.flatmap(lambda k: arrays((k,), f32(0.0, max_nll)))          # mean NLL of each batch
    return counts, means


@_register("run_perplexity", "perplexity(nll_sums, n_tokens) equals exp(sum nll_sums / sum n_tokens) "
           "(the token-weighted mean NLL, not the mean of per-batch means), in float64.", lesson="lesson01")
def check_perplexity_matches_formula(impl):
    ppl = _adapter(impl, "run_perplexity")
    counts_s, means_s = _ppl_inputs("ppl1")

    @check_settings(50)
    @given(n_tokens=counts_s, batch_mean_nll=means_s)
    def perplexity_matches_formula(n_tokens, batch_mean_nll):
        sums = (batch_mean_nll.astype(np.float64) * n_tokens).astype(np.float32)   # (N,) summed NLL
        y = _scalar(ppl(_t(sums), torch.tensor(n_tokens)), "run_perplexity(nll_sums, n_tokens)")
        want = math.exp(sums.astype(np.float64).sum() / n_tokens.sum())
        _assert_close(y, want, "run_perplexity vs exp(sum nll_sums / sum n_tokens)", atol=0, rtol=1e-5)
    _run(perplexity_matches_formula)


@_register("run_perplexity", "a uniform model over V tokens has perplexity V: every token costs "
           "log V nats, so nll_sums = n_tokens log V gives V (V up to 50000).", lesson="lesson01")
def check_perplexity_uniform_is_vocab_size(impl):
    ppl = _adapter(impl, "run_perplexity")
    counts_s, _ = _ppl_inputs("ppl2")

    @check_settings(40)
    @given(n_tokens=counts_s, V=st.integers(1, 50_000))
    def perplexity_uniform_is_vocab_size(n_tokens, V):
        # uniform logits: -log softmax = logsumexp(0, ..., 0) - 0 = log V for every target
        sums = (n_tokens * math.log(V)).astype(np.float32)
        y = _scalar(ppl(_t(sums), torch.tensor(n_tokens)), "run_perplexity(n_tokens log V, n_tokens)")
        _assert_close(y, float(V), f"perplexity of a uniform model over V={V} tokens vs V", atol=0, rtol=1e-5)
    _run(perplexity_uniform_is_vocab_size)


@_register("run_perplexity", "how the corpus is cut into batches does not matter: the per-batch "
           "(nll_sums, n_tokens) give the same perplexity as their totals in one batch.", lesson="lesson01")
def check_perplexity_is_token_weighted(impl):
    ppl = _adapter(impl, "run_perplexity")
    counts_s, means_s = _ppl_inputs("ppl3")

    @check_settings(40)
    @given(n_tokens=counts_s, batch_mean_nll=means_s)
    def perplexity_is_token_weighted(n_tokens, batch_mean_nll):
        sums = (batch_mean_nll.astype(np.float64) * n_tokens).astype(np.float32)
        y = _scalar(ppl(_t(sums), torch.tensor(n_tokens)), "run_perplexity(nll_sums, n_tokens)")
        merged = _scalar(ppl(_t(np.array([sums.astype(np.float64).sum()])), torch.tensor([int(n_tokens.sum())])),
                         "run_perplexity([sum nll_sums], [sum n_tokens])")
        _assert_close(y, merged, "perplexity over the batches vs over one merged batch", atol=0, rtol=1e-5)
    _run(perplexity_is_token_weighted)



# ---- lesson 03: the SFT loss mask and loss -----------------------------------------------------

def _mask_list(y, n: int, what: str) -> list:
    """The impl's mask as a list of n ints in {0, 1} (a list, tuple or 1-D tensor is accepted)."""
    if isinstance(y, torch.Tensor):
        y = y.reshape(-1).tolist() if y.dim() <= 1 else y
    if not isinstance(y, (list, tuple)):
        raise AssertionError(f"{what} must return a list of 0/1 ints, got {type(y).__name__}")
    if len(y) != n:
        raise AssertionError(f"{what} returned {len(y)} values, expected one per target: "
                             f"prompt_len + response_len = {n}")
    if any(isinstance(v, bool) or v not in (0, 1) for v in y):
        raise AssertionError(f"{what} = {list(y)} must hold only the ints 0 and 1")
    return [int(v) for v in y]


@_register("run_response_loss_mask", "response_loss_mask(P, R) marks the P + R targets ids[1:] of "
           "[<|prompt|>] prompt [<|response|>] response [EOS] (P prompt ids, markers included; R "
           "response tokens): 0 for the P - 1 targets inside the prompt, then 1 for the R response "
           "tokens and the EOS.", lesson="lesson03")
def check_response_loss_mask_layout(impl):
    mask_fn = _adapter(impl, "run_response_loss_mask")

    @check_settings(60)
    @given(prompt_len=st.integers(2, 40), response_len=st.integers(0, 20))
    def response_loss_mask_layout(prompt_len, response_len):
        what = f"run_response_loss_mask(prompt_len={prompt_len}, response_len={response_len})"
        got = _mask_list(mask_fn(prompt_len, response_len), prompt_len + response_len, what)
        # the token sequence, position by position, and which of its targets are response or EOS
        kinds = ["marker"] + ["prompt"] * (prompt_len - 2) + ["marker"] + ["response"] * response_len + ["eos"]
        want = [int(k in ("response", "eos")) for k in kinds[1:]]          # targets = ids[1:]
        if got != want:
            bad = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            raise AssertionError(f"{what} = {got}, expected {want}: target {bad} is the token at position "
                                 f"{bad + 1} ({kinds[bad + 1]}), which must {'' if want[bad] else 'not '}"
                                 f"take loss")
    _run(response_loss_mask_layout)


@_register("run_response_loss_mask", "the mask selects exactly the response and its EOS from real "
           "sequences: [ids[t + 1] for t where mask[t] = 1] equals response + [EOS], and with "
           "train_on_prompt=True every one of the P + R targets counts.", lesson="lesson03")
def check_response_loss_mask_selects_response(impl):
    mask_fn = _adapter(impl, "run_response_loss_mask")
    EOS, PROMPT, RESPONSE = 0, 2, 3

    @check_settings(40)
    @given(prompt=st.lists(st.integers(4, 50), max_size=30), response=st.lists(st.integers(4, 50), max_size=15))
    def response_loss_mask_selects_response(prompt, response):
        ids = [PROMPT] + prompt + [RESPONSE] + response + [EOS]
        P, R = len(prompt) + 2, len(response)
        what = f"run_response_loss_mask(prompt_len={P}, response_len={R})"
        mask = _mask_list(mask_fn(P, R), P + R, what)
        picked = [ids[t + 1] for t, m in enumerate(mask) if m]
        if picked != response + [EOS]:
            raise AssertionError(f"{what}: on ids {ids} the targets with mask 1 are {picked}, expected the "
                                 f"response and EOS {response + [EOS]}")
        what_all = f"run_response_loss_mask(prompt_len={P}, response_len={R}, train_on_prompt=True)"
        full = _mask_list(mask_fn(P, R, train_on_prompt=True), P + R, what_all)
        if full != [1] * (P + R):
            raise AssertionError(f"{what_all} = {full}: without the mask every target takes loss")
    _run(response_loss_mask_selects_response)


def sft_loss64(logits: np.ndarray, targets: np.ndarray) -> float:
    """The naive loop: every (b, t) whose target is not -100 adds logsumexp(z) - z[target]; the sum
    is divided by the number of such targets in the whole batch; 0 if there are none."""
    B, T, V = logits.shape
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            y = int(targets[b, t])
            if y == -100:
                continue
            z = logits[b, t]
            m = z.max()
            total += m + math.log(np.exp(z - m).sum()) - z[y]
            n += 1
    return total / n if n else 0.0


def _sft_inputs(key: str, lo: float, hi: float):
    """logits (B, T, V) float32 and targets (B, T) int64 in [0, V) or -100 (prompt / padding)."""
    shape = shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_V)), key)
    logits = shape.flatmap(lambda s: arrays(s, f32(lo, hi)))
    targets = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.one_of(
        st.integers(0, s[2] - 1), st.just(-100))))
    return logits, targets


@_register("run_sft_loss", "sft_loss(logits, targets) equals the mean over the whole batch of "
           "-log softmax(logits[b, t])[targets[b, t]] for targets != -100 (one token-weighted mean, "
           "not a mean of per-sequence means), and 0 (not NaN) when every target is -100; float64 loop.",
           lesson="lesson03")
def check_sft_loss_matches_formula(impl):
    loss_fn = _adapter(impl, "run_sft_loss")
    logits_s, targets_s = _sft_inputs("sft1", -20, 20)

    @check_settings(60)
    @given(logits=logits_s, targets=targets_s)
    def sft_loss_matches_formula(logits, targets):
        loss = _out(loss_fn(_t(logits), torch.tensor(targets)), (), "run_sft_loss(logits, targets)")
        _assert_close(loss, sft_loss64(logits.astype(np.float64), targets),
                      f"run_sft_loss vs mean over the {int((targets != -100).sum())} targets != -100 of "
                      f"-log softmax(logits)[target]", atol=1e-5, rtol=1e-5)
    _run(sft_loss_matches_formula)


@_register("run_sft_loss", "prompt and padding positions (target -100) do not count: new logits there "
           "(up to |1e3|) leave the loss unchanged, the loss is finite for logits up to |1e4|, and a "
           "batch's loss is the token-weighted average of its rows' losses.", lesson="lesson03")
def check_sft_loss_ignores_prompt_and_padding(impl):
    loss_fn = _adapter(impl, "run_sft_loss")
    logits_s, targets_s = _sft_inputs("sft2", -1e4, 1e4)
    other_s = shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_V)),
                     "sft2").flatmap(lambda s: arrays(s, f32(-1e3, 1e3)))

    @check_settings(50)
    @given(logits=logits_s, targets=targets_s, other=other_s)
    def sft_loss_ignores_prompt_and_padding(logits, targets, other):
        what = "run_sft_loss(logits, targets)"
        loss = _out(loss_fn(_t(logits), torch.tensor(targets)), (), what)
        _assert_close(loss, sft_loss64(logits.astype(np.float64), targets), f"{what} for large logits "
                      f"vs the float64 log-sum-exp formula", atol=1e-3, rtol=1e-5)
        changed = np.where((targets == -100)[..., None], other, logits)
        loss_changed = _out(loss_fn(_t(changed), torch.tensor(targets)), (),
                            "run_sft_loss with new logits where targets == -100")
        _assert_close(loss_changed, loss, f"{what}, logits changed where targets == -100, vs unchanged",
                      atol=1e-6, rtol=1e-6)
        n = (targets != -100).sum(axis=1)                                   # (B,) counted targets per row
        rows = [_out(loss_fn(_t(logits[b:b + 1]), torch.tensor(targets[b:b + 1])), (), f"run_sft_loss on row {b}")
                for b in range(len(n))]
        want = float(np.dot(n, rows) / n.sum()) if n.sum() else 0.0
        _assert_close(loss, want, f"{what} vs sum_b n_b loss(row b) / sum_b n_b (n_b = targets != -100 in "
                      f"row b: {n.tolist()})", atol=1e-3, rtol=1e-5)
    _run(sft_loss_ignores_prompt_and_padding)


# ---- running checks and collecting results -------------------------------------------------

def _counterexample(e: BaseException) -> str:
    """The counterexample `_run` attached to the failure (or to one of a group's failures)."""
    if getattr(e, "counterexample", ""):
        return e.counterexample
    for sub in getattr(e, "exceptions", None) or ():          # an ExceptionGroup of several bugs
        if _counterexample(sub):
            return _counterexample(sub)
    return ""


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
    try:
        if not callable(getattr(impl, check.adapter, None)):
            raise MissingAdapter(f"the implementation has no callable {check.adapter}")
        with with_reporter(lambda text: None), warnings.catch_warnings():   # hypothesis' own report: ours is _run's
            warnings.simplefilter("ignore")                   # an impl's warning, x hundreds of examples
            check.fn(impl)
    except MissingAdapter as e:
        res.status, res.error = MISSING, str(e)
    except NotImplementedError as e:
        res.status, res.error = NOT_IMPLEMENTED, str(e) or f"{check.adapter} raises NotImplementedError"
    except Exception as e:                                     # noqa: BLE001 - any failure is a FAIL
        res.status, res.error = FAIL, _describe(e)
        res.counterexample = _counterexample(e)
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


# ---- lesson 02: last-token pooling, first-subtoken labels, entity F1 --------------------------

from hypothesis.extra import numpy as hnp  # noqa: E402,F811  (integer masks; also imported for lesson 01)

def _pool_masks(B: int, T: int):
    """(B, T) int64 masks of 0/1 with at least one 1 per row: any padding side, holes allowed."""
    def one_real(m):
        m = m.copy()
        for b in range(m.shape[0]):
            if not m[b].any():
                m[b, -1] = 1
        return m
    return hnp.arrays(np.int64, (B, T), elements=st.integers(0, 1)).map(one_real)


@_register("run_last_token_pool", "last_token_pool(hidden, mask)[b] equals hidden[b, t] at the largest t "
           "with mask[b, t] = 1 (the naive loop), for any 0/1 mask with a 1 in each row: left, right or no "
           "padding, holes too.", lesson="lesson02")
def check_last_token_pool_matches_loop(impl):
    pool = _adapter(impl, "run_last_token_pool")
    shape = shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_D)), "ltp1")

    @check_settings(50)
    @given(hidden=shape.flatmap(lambda s: arrays(s, f32(-10, 10))),
           mask=shape.flatmap(lambda s: _pool_masks(s[0], s[1])))
    def last_token_pool_matches_loop(hidden, mask):
        B, T, C = hidden.shape
        expected = np.zeros((B, C))
        for b in range(B):
            last = max(t for t in range(T) if mask[b, t] == 1)
            expected[b] = hidden[b, last]
        y = _out(pool(_t(hidden), torch.tensor(mask)), (B, C), "run_last_token_pool(hidden, attention_mask)")
        _assert_close(y, expected, f"run_last_token_pool with attention_mask={mask.tolist()} vs hidden at "
                                   f"each row's last 1", atol=0, rtol=0)
    _run(last_token_pool_matches_loop)


@_register("run_last_token_pool", "padding side does not matter: the same sequences padded on the right "
           "and on the left (different junk in the pads) pool to the same vectors, each row's last real "
           "token.", lesson="lesson02")
def check_last_token_pool_padding_side(impl):
    pool = _adapter(impl, "run_last_token_pool")
    dims = shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_D)), "ltp2")

    @check_settings(40)
    @given(dims=dims, real=dims.flatmap(lambda s: arrays(s, f32(-10, 10))),
           junk=dims.flatmap(lambda s: arrays(s, f32(-10, 10))),
           lengths=dims.flatmap(lambda s: st.lists(st.integers(1, s[1]), min_size=s[0], max_size=s[0])))
    def last_token_pool_padding_side(dims, real, junk, lengths):
        B, T, C = dims
        right, left = junk.copy(), junk[:, ::-1].copy()
        m_right, m_left = np.zeros((B, T), np.int64), np.zeros((B, T), np.int64)
        expected = np.zeros((B, C))
        for b, n in enumerate(lengths):                       # row b: real tokens real[b, :n]
            right[b, :n], m_right[b, :n] = real[b, :n], 1
            left[b, T - n:], m_left[b, T - n:] = real[b, :n], 1
            expected[b] = real[b, n - 1]
        y_r = _out(pool(_t(right), torch.tensor(m_right)), (B, C), "run_last_token_pool(right-padded)")
        y_l = _out(pool(_t(left), torch.tensor(m_left)), (B, C), "run_last_token_pool(left-padded)")
        _assert_close(y_r, expected, f"right-padded batch, lengths {lengths}: pooled vs last real token",
                      atol=0, rtol=0)
        _assert_close(y_l, expected, f"left-padded batch, lengths {lengths}: pooled vs last real token",
                      atol=0, rtol=0)
    _run(last_token_pool_padding_side)


def _int_list(y, what: str) -> list[int]:
    """The impl's output as a list of Python ints (a list, tuple or 1-D integer tensor)."""
    if isinstance(y, torch.Tensor):
        if y.dim() != 1 or y.is_floating_point():
            raise AssertionError(f"{what} must return a list of ints, got a tensor {tuple(y.shape)} {y.dtype}")
        y = y.tolist()
    if not isinstance(y, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in y):
        raise AssertionError(f"{what} must return a list of ints, got {y!r:.120}")
    return [int(v) for v in y]


@_register("run_first_subtoken_labels", "first_subtoken_labels(word_lengths, tags) has one label per "
           "token (sum of word_lengths): word w's tag on its first token, -100 on its other tokens "
           "(the naive loop).", lesson="lesson02")
def check_first_subtoken_labels_matches_loop(impl):
    labels_of = _adapter(impl, "run_first_subtoken_labels")
    n_words = shared(st.integers(1, MAX_T), "fsl")

    @check_settings(60)
    @given(word_lengths=n_words.flatmap(lambda n: st.lists(st.integers(1, 4), min_size=n, max_size=n)),
           tags=n_words.flatmap(lambda n: st.lists(st.integers(0, 8), min_size=n, max_size=n)))
    def first_subtoken_labels_matches_loop(word_lengths, tags):
        expected = []
        for n, tag in zip(word_lengths, tags):
            expected.append(tag)
            for _ in range(n - 1):
                expected.append(-100)
        what = f"run_first_subtoken_labels({word_lengths}, {tags})"
        got = _int_list(labels_of(list(word_lengths), list(tags)), what)
        if got != expected:
            raise AssertionError(f"{what} = {got}, expected {expected}")
    _run(first_subtoken_labels_matches_loop)


_ENTITY_TYPES = ("PER", "LOC", "ANIMAL", "FOOD")


def _bio(spans, n: int) -> list[str]:
    """Strict BIO tags of n tokens from non-overlapping spans (type, start, end), end exclusive."""
    tags = ["O"] * n
    for typ, a, b in spans:
        tags[a] = "B-" + typ
        for i in range(a + 1, b):
            tags[i] = "I-" + typ
    return tags


@st.composite
def _tagged_sentences(draw):
    """(pred_tags, gold_tags, pred_spans, gold_spans): 1-3 sentences of 1-10 tokens. Gold spans are
    drawn first; predicted spans copy, drop, retype or move the end of each, plus spurious one-token
    spans. Both are written in strict BIO, so the spans are known without reading the tags back."""
    preds, golds, pred_spans, gold_spans = [], [], set(), set()
    for s in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 10))
        gold, t = [], 0
        while t < n:
            if draw(st.booleans()):
                length = draw(st.integers(1, min(3, n - t)))
                gold.append((draw(st.sampled_from(_ENTITY_TYPES)), t, t + length))
                t += length
            else:
                t += 1
        pred = []
        for k, (typ, a, b) in enumerate(gold):
            nxt = gold[k + 1][1] if k + 1 < len(gold) else n
            op = draw(st.sampled_from(("keep", "keep", "drop", "type", "end")))
            if op == "keep" or (op == "end" and nxt == a + 1 == b):
                pred.append((typ, a, b))
            elif op == "type":
                pred.append((draw(st.sampled_from([x for x in _ENTITY_TYPES if x != typ])), a, b))
            elif op == "end":
                pred.append((typ, a, draw(st.sampled_from([e for e in range(a + 1, nxt + 1) if e != b]))))
        taken = {i for _, a, b in pred for i in range(a, b)}
        for i in range(n):
            if i not in taken and draw(st.integers(0, 4)) == 0:
                pred.append((draw(st.sampled_from(_ENTITY_TYPES)), i, i + 1))
        golds.append(_bio(gold, n))
        preds.append(_bio(pred, n))
        gold_spans |= {(s, *g) for g in gold}
        pred_spans |= {(s, *p) for p in pred}
    return preds, golds, pred_spans, gold_spans


@_register("run_entity_f1", "entity_f1(pred_tags, gold_tags) is the span-level micro F1 = 2 P R / (P + R) "
           "with P = tp / #predicted spans, R = tp / #gold spans, a span counting only when type, start "
           "and end all match, summed over sentences; a ratio with denominator 0 is 0 (strict BIO inputs).",
           lesson="lesson02")
def check_entity_f1_matches_span_sets(impl):
    f1_of = _adapter(impl, "run_entity_f1")

    @check_settings(80)
    @given(data=_tagged_sentences())
    def entity_f1_matches_span_sets(data):
        preds, golds, pred_spans, gold_spans = data
        tp = len(pred_spans & gold_spans)
        p = tp / len(pred_spans) if pred_spans else 0.0
        r = tp / len(gold_spans) if gold_spans else 0.0
        expected = 2 * p * r / (p + r) if p + r else 0.0
        what = f"run_entity_f1(pred_tags={preds}, gold_tags={golds})"
        got = _scalar(f1_of([list(x) for x in preds], [list(x) for x in golds]), what)
        _assert_close(got, expected, f"{what} vs F1 of {len(pred_spans)} predicted and {len(gold_spans)} gold "
                                     f"spans with {tp} exact matches", atol=1e-12, rtol=1e-9)
    _run(entity_f1_matches_span_sets)


# ---- lesson 04: selective fine-tuning ------------------------------------------------------------

_BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
_OUTER_PARAMS = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                 "transformer.ln_f.bias", "lm_head.weight")


@st.composite
def _gpt_param_names(draw):
    """(n_layer, names): GPT-2 parameter names of 1-4 blocks, each block with a non-empty subset of
    its tensors, some of the outer ones, sometimes wrapped as a classifier (`body.` + `head.*`);
    shuffled."""
    L = draw(st.integers(1, 4))
    prefix = draw(st.sampled_from(("", "body.")))
    names = [f"{prefix}transformer.h.{i}.{p}" for i in range(L)
             for p in draw(st.lists(st.sampled_from(_BLOCK_PARAMS), min_size=1, unique=True))]
    names += [prefix + n for n in draw(st.lists(st.sampled_from(_OUTER_PARAMS), unique=True))]
    if prefix:
        names += draw(st.lists(st.sampled_from(("head.weight", "head.bias")), unique=True))
    return L, draw(st.permutations(names))


def _name_list(y, what: str) -> list[str]:
    if not isinstance(y, (list, tuple)) or not all(isinstance(n, str) for n in y):
        raise AssertionError(f"{what} must return a list of parameter names (str), got {y!r:.120}")
    if len(set(y)) != len(y):
        raise AssertionError(f"{what} lists a name twice: {sorted(n for n in set(y) if list(y).count(n) > 1)}")
    return list(y)


def _is_head(name: str) -> bool:
    return "head" in name.split(".")[:-1]                  # a module called `head` (lm_head is not)


def _diff(got: list[str], expected: set) -> str:
    return (f"missing {sorted(expected - set(got))}, unexpected {sorted(set(got) - expected)}")


@_register("run_bitfit_select", "bitfit_select(names) is exactly the names whose last part is `bias` "
           "plus the task head's (a module named `head`, never `lm_head`), any order, no duplicates "
           "(GPT-2 names of 1-4 blocks, bare or wrapped as `body.` + `head.`).", lesson="lesson04")
def check_bitfit_select_matches_rule(impl):
    bitfit_select = _adapter(impl, "run_bitfit_select")

    @check_settings(60)
    @given(model=_gpt_param_names())
    def bitfit_select_matches_rule(model):
        _, names = model
        expected = {n for n in names if n.split(".")[-1] == "bias" or _is_head(n)}
        assume(expected)                                   # BitFit on a model without biases is an error
        what = f"run_bitfit_select({names})"
        got = _name_list(bitfit_select(list(names)), what)
        if set(got) != expected:
            raise AssertionError(f"{what}: {_diff(got, expected)}")
    _run(bitfit_select_matches_rule)


@_register("run_layer_select", "layer_select(names, layers) is exactly the parameters of the blocks "
           "transformer.h.<i>, i in layers (i < 0 counts from the end: i + n_layer, n_layer = 1 + the "
           "largest block index), plus the task head's (`head.*`); any order, no duplicates.",
           lesson="lesson04")
def check_layer_select_matches_rule(impl):
    layer_select = _adapter(impl, "run_layer_select")
    model = shared(_gpt_param_names(), "lsel")

    @check_settings(60)
    @given(model=model,
           layers=model.flatmap(lambda m: st.lists(st.integers(-m[0], m[0] - 1), min_size=1, max_size=3)))
    def layer_select_matches_rule(model, layers):
        L, names = model
        blocks = {i + L if i < 0 else i for i in layers}
        expected = set()
        for n in names:
            parts = n.split(".")
            for j in range(len(parts) - 2):
                if parts[j] == "transformer" and parts[j + 1] == "h" and int(parts[j + 2]) in blocks:
                    expected.add(n)
            if _is_head(n):
                expected.add(n)
        what = f"run_layer_select({names}, layers={layers}) (n_layer={L})"
        got = _name_list(layer_select(list(names), list(layers)), what)
        if set(got) != expected:
            raise AssertionError(f"{what}: {_diff(got, expected)}")
    _run(layer_select_matches_rule)


@_register("run_trainable_share", "trainable_share(shapes, trainable) equals the sum over trainable "
           "names of prod(shape) over the sum over all names (a scalar () counts 1): 0 when nothing "
           "trains, 1 when everything does.", lesson="lesson04")
def check_trainable_share_matches_count(impl):
    share_of = _adapter(impl, "run_trainable_share")
    shape_s = st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple)

    @check_settings(60)
    @given(shapes=st.lists(shape_s, min_size=1, max_size=8), data=st.data())
    def trainable_share_matches_count(shapes, data):
        named = {f"layer{i}.{'weight' if len(s) > 1 else 'bias'}": s for i, s in enumerate(shapes)}
        trainable = data.draw(st.lists(st.sampled_from(list(named)), unique=True), label="trainable")
        size = {n: math.prod(s) for n, s in named.items()}            # math.prod(()) = 1
        expected = sum(size[n] for n in trainable) / sum(size.values())
        what = f"run_trainable_share({named}, {trainable})"
        _assert_close(_scalar(share_of(dict(named), list(trainable)), what), expected,
                      f"{what} vs trainable / total parameter count", atol=1e-12, rtol=1e-12)
    _run(trainable_share_matches_count)


# ---- lesson 05: LoRA, rsLoRA, DoRA ----------------------------------------------------------------

def lora64(x, W0, b, A, B, s):
    """x W0^T + b + s (x A^T) B^T in float64 (None bias = 0)."""
    return x @ W0.T + (0.0 if b is None else b) + s * ((x @ A.T) @ B.T)


def _lora_bound(x, W0, b, A, B, s):
    """The same sum with every term in absolute value: the scale float32 rounding is relative to."""
    ax = np.abs(x)
    return ax @ np.abs(W0).T + (0.0 if b is None else np.abs(b)) + abs(s) * ((ax @ np.abs(A).T) @ np.abs(B).T) + 1e-6


@st.composite
def _lora_inputs(draw, bias=None):
    """x (N, in), W0 (out, in), b (out,) or None, A (r, in), B (out, r), alpha; 1 <= r <= min(in, out)."""
    n, fin, fout = draw(st.integers(1, 2 * MAX_B)), draw(st.integers(1, MAX_D)), draw(st.integers(1, MAX_D))
    r = draw(st.integers(1, min(fin, fout)))
    x = draw(arrays((n, fin), f32(-2, 2)))
    W0 = draw(arrays((fout, fin), f32(-1, 1)))
    has_bias = draw(st.booleans()) if bias is None else bias
    b = draw(arrays((fout,), f32(-1, 1))) if has_bias else None
    A = draw(arrays((r, fin), f32(-1, 1)))
    B = draw(arrays((fout, r), f32(-1, 1)))
    alpha = draw(st.one_of(st.sampled_from([1.0, 2.0, 8.0, 16.0]), f32(0.125, 32)))
    return dict(x=x, W0=W0, b=b, A=A, B=B, alpha=float(alpha), r=r)


def _opt(a):
    return None if a is None else _t(a)


@_register("run_lora_linear", "lora_linear(x, W0, b, A, B, alpha, r, rslora) equals x W0^T + b + s (x A^T) B^T "
           "with s = alpha / r, or alpha / sqrt(r) when rslora, in float64 (b may be None).", lesson="lesson05")
def check_lora_linear_matches_formula(impl):
    lora = _adapter(impl, "run_lora_linear")

    @check_settings(60)
    @given(inp=_lora_inputs(), rslora=st.booleans())
    def lora_linear_matches_formula(inp, rslora):
        x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
        s = alpha / math.sqrt(r) if rslora else alpha / r
        what = f"run_lora_linear(x, W0, b, A, B, alpha={alpha!r}, r={r}, rslora={rslora})"
        y = _out(lora(_t(x), _t(W0), _opt(b), _t(A), _t(B), alpha, r, rslora=rslora), (x.shape[0], W0.shape[0]), what)
        f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B)]
        _assert_close(y, lora64(*f64, s), f"{what} vs x W0^T + b + s (x A^T) B^T with s = {s!r}",
                      atol=1e-5 * _lora_bound(*f64, s), rtol=0)
    _run(lora_linear_matches_formula)


@_register("run_lora_linear", "with B = 0 LoRA is an exact no-op: the output is bit-for-bit the same for any A, "
           "alpha and rslora, and equals x W0^T + b.", lesson="lesson05")
def check_lora_zero_B_is_base(impl):
    lora = _adapter(impl, "run_lora_linear")

    @check_settings(40)
    @given(inp=_lora_inputs(), A2=st.data(), alpha2=f32(0.125, 32), rslora=st.booleans())
    def lora_zero_B_is_base(inp, A2, alpha2, rslora):
        x, W0, b, A, r = (inp[k] for k in ("x", "W0", "b", "A", "r"))
        other_A = A2.draw(arrays(A.shape, f32(-1, 1)), label="other_A")
        Z = np.zeros((W0.shape[0], r), np.float32)
        shape_out = (x.shape[0], W0.shape[0])
        y1 = _out(lora(_t(x), _t(W0), _opt(b), _t(A), _t(Z), inp["alpha"], r), shape_out,
                  "run_lora_linear(x, W0, b, A, B=0, alpha, r)")
        y2 = _out(lora(_t(x), _t(W0), _opt(b), _t(other_A), _t(Z), float(alpha2), r, rslora=rslora), shape_out,
                  "run_lora_linear(x, W0, b, other A, B=0, other alpha, r, rslora)")
        _assert_close(y2, y1, "with B = 0, changing A, alpha and rslora must not change a single bit", atol=0, rtol=0)
        f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b)]
        base = f64[0] @ f64[1].T + (0.0 if b is None else f64[2])
        _assert_close(y1, base, "run_lora_linear with B = 0 vs the base layer x W0^T + b",
                      atol=1e-5 * _lora_bound(*f64, np.zeros_like(A, np.float64), np.zeros(Z.shape), 0.0), rtol=0)
    _run(lora_zero_B_is_base)


@_register("run_lora_linear", "rsLoRA only changes the scaling: lora_linear(..., alpha, r, rslora=True) equals "
           "lora_linear(..., alpha sqrt(r), r, rslora=False) (alpha / sqrt(r) = alpha sqrt(r) / r).", lesson="lesson05")
def check_rslora_is_rescaled_alpha(impl):
    lora = _adapter(impl, "run_lora_linear")

    @check_settings(40)
    @given(inp=_lora_inputs())
    def rslora_is_rescaled_alpha(inp):
        x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
        shape_out = (x.shape[0], W0.shape[0])
        y_rs = _out(lora(_t(x), _t(W0), _opt(b), _t(A), _t(B), alpha, r, rslora=True), shape_out,
                    f"run_lora_linear(..., alpha={alpha!r}, r={r}, rslora=True)")
        y_plain = _out(lora(_t(x), _t(W0), _opt(b), _t(A), _t(B), alpha * math.sqrt(r), r, rslora=False), shape_out,
                       f"run_lora_linear(..., alpha={alpha * math.sqrt(r)!r}, r={r}, rslora=False)")
        f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B)]
        _assert_close(y_rs, y_plain, f"rsLoRA with alpha={alpha!r} vs plain LoRA with alpha sqrt(r) (r={r})",
                      atol=2e-5 * _lora_bound(*f64, alpha / math.sqrt(r)), rtol=0)
    _run(rslora_is_rescaled_alpha)


@st.composite
def _merge_inputs(draw):
    fin, fout = draw(st.integers(1, MAX_D)), draw(st.integers(1, MAX_D))
    r = draw(st.integers(1, min(fin, fout)))
    return (draw(arrays((fout, fin), f32(-2, 2))), draw(arrays((r, fin), f32(-1, 1))),
            draw(arrays((fout, r), f32(-1, 1))), float(draw(f32(-4, 4))))


@_register("run_lora_merge", "lora_merge(W0, A, B, scaling) equals W0 + scaling B A (float64), keeps W0's shape "
           "and dtype (float32 here).", lesson="lesson05")
def check_lora_merge_matches_formula(impl):
    merge = _adapter(impl, "run_lora_merge")

    @check_settings(60)
    @given(inp=_merge_inputs())
    def lora_merge_matches_formula(inp):
        W0, A, B, s = inp
        what = f"run_lora_merge(W0, A, B, scaling={s!r})"
        y = merge(_t(W0), _t(A), _t(B), s)
        if isinstance(y, torch.Tensor) and y.dtype != torch.float32:
            raise AssertionError(f"{what} returned dtype {y.dtype}; the merged weight keeps W0's dtype (float32)")
        W, a, b_ = (t.astype(np.float64) for t in (W0, A, B))
        _assert_close(_out(y, W0.shape, what), W + s * (b_ @ a), f"{what} vs W0 + scaling B A",
                      atol=1e-5 * (np.abs(W) + abs(s) * (np.abs(b_) @ np.abs(a))) + 1e-7, rtol=0)
    _run(lora_merge_matches_formula)


@_register("run_lora_merge", "merging a bfloat16 W0 is computed in float32 and rounded once: the result is "
           "bfloat16 and within half a bfloat16 step (2^-8 relative) of W0 + scaling B A (float64).",
           lesson="lesson05")
def check_lora_merge_bfloat16_rounds_once(impl):
    merge = _adapter(impl, "run_lora_merge")

    @check_settings(60)
    @given(inp=_merge_inputs())
    def lora_merge_bfloat16_rounds_once(inp):
        W0, A, B, s = (_t(a).to(torch.bfloat16) if isinstance(a, np.ndarray) else a for a in inp)
        what = f"run_lora_merge(W0, A, B, scaling={s!r}) in bfloat16"
        y = merge(W0.clone(), A.clone(), B.clone(), s)
        if not isinstance(y, torch.Tensor) or y.dtype != torch.bfloat16:
            raise AssertionError(f"{what} returned {getattr(y, 'dtype', type(y).__name__)}; expected bfloat16, "
                                 f"W0's dtype")
        W, a, b_ = (t.to(torch.float64).numpy() for t in (W0, A, B))
        expected = W + s * (b_ @ a)
        tol = 2.0 ** -8 * np.abs(expected) + 2.0 ** -20 * (np.abs(W) + abs(s) * (np.abs(b_) @ np.abs(a))) + 1e-30
        _assert_close(_out(y, W.shape, what), expected, f"{what} vs W0 + scaling B A rounded once to bfloat16",
                      atol=tol, rtol=0)
    _run(lora_merge_bfloat16_rounds_once)


@_register("run_lora_merge", "merge then forward equals the unmerged forward: x W^T + b with W = "
           "lora_merge(W0, A, B, alpha / r) matches lora_linear(x, W0, b, A, B, alpha, r) (both adapters).",
           lesson="lesson05")
def check_lora_merge_then_forward(impl):
    merge, lora = _adapter(impl, "run_lora_merge"), _adapter(impl, "run_lora_linear")

    @check_settings(40)
    @given(inp=_lora_inputs())
    def lora_merge_then_forward(inp):
        x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
        W = _out(merge(_t(W0), _t(A), _t(B), alpha / r), W0.shape, "run_lora_merge(W0, A, B, alpha / r)")
        merged = x.astype(np.float64) @ W.T + (0.0 if b is None else b.astype(np.float64))
        y = _out(lora(_t(x), _t(W0), _opt(b), _t(A), _t(B), alpha, r), merged.shape,
                 "run_lora_linear(x, W0, b, A, B, alpha, r)")
        f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B)]
        _assert_close(y, merged, f"unmerged run_lora_linear vs x W_merged^T + b (alpha={alpha!r}, r={r})",
                      atol=2e-5 * _lora_bound(*f64, alpha / r), rtol=0)
    _run(lora_merge_then_forward)


def dora64(x, W0, b, A, B, m, s):
    V = W0 + s * (B @ A)                                                  # (out, in)
    n = np.sqrt((V ** 2).sum(axis=1))                                     # one norm per output row
    return x @ (m[:, None] * V / n[:, None]).T + (0.0 if b is None else b), n


@_register("run_dora_linear", "dora_linear(x, W0, b, A, B, m, alpha, r) equals x W'^T + b with W' = m V / ‖V‖, "
           "V = W0 + (alpha/r) B A and ‖V‖ the L2 norm of each output row of V (out, in), in float64 "
           "(rows with ‖V‖ >= 0.25).", lesson="lesson05")
def check_dora_linear_matches_formula(impl):
    dora = _adapter(impl, "run_dora_linear")

    @check_settings(60)
    @given(inp=_lora_inputs(), data=st.data())
    def dora_linear_matches_formula(inp, data):
        x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
        m = data.draw(arrays((W0.shape[0],), f32(0.125, 3)), label="m")
        s = alpha / r
        f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B, m)]
        expected, n = dora64(*f64, s)
        assume(n.min() >= 0.25)                                           # no near-zero row to divide by
        what = f"run_dora_linear(x, W0, b, A, B, m, alpha={alpha!r}, r={r})"
        y = _out(dora(_t(x), _t(W0), _opt(b), _t(A), _t(B), _t(m), alpha, r), expected.shape, what)
        Vabs = np.abs(f64[1]) + s * (np.abs(f64[4]) @ np.abs(f64[3]))     # |W0| + s |B| |A|
        cond = np.sqrt((Vabs ** 2).sum(axis=1)) / n                       # cancellation inside a row's norm
        bound = np.abs(f64[0]) @ (f64[5][:, None] * Vabs / n[:, None]).T * cond + (0.0 if b is None else np.abs(b))
        _assert_close(y, expected, f"{what} vs x (m V / ‖V‖_row)^T + b", atol=2e-5 * bound + 1e-6, rtol=0)
    _run(dora_linear_matches_formula)


@_register("run_dora_linear", "DoRA starts as the base layer: with m = ‖W0‖ (per output row) and B = 0 the output "
           "equals x W0^T + b for any A and alpha (rows of W0 with norm >= 0.1).", lesson="lesson05")
def check_dora_init_is_base(impl):
    dora = _adapter(impl, "run_dora_linear")

    @check_settings(40)
    @given(inp=_lora_inputs())
    def dora_init_is_base(inp):
        x, W0, b, A, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "alpha", "r"))
        W = W0.astype(np.float64)
        n = np.sqrt((W ** 2).sum(axis=1))
        assume(n.min() >= 0.1)
        Z = np.zeros((W0.shape[0], r), np.float32)
        base = x.astype(np.float64) @ W.T + (0.0 if b is None else b.astype(np.float64))
        what = f"run_dora_linear(x, W0, b, A, B=0, m=‖W0‖_row, alpha={alpha!r}, r={r})"
        y = _out(dora(_t(x), _t(W0), _opt(b), _t(A), _t(Z), _t(n), alpha, r), base.shape, what)
        _assert_close(y, base, f"{what} vs the base layer x W0^T + b",
                      atol=2e-5 * (np.abs(x) @ np.abs(W).T + (0.0 if b is None else np.abs(b))) + 1e-6, rtol=0)
    _run(dora_init_is_base)


# ---- lesson 06: bottleneck adapters -------------------------------------------------------------

_ACT64 = {
    "relu": lambda z: np.maximum(z, 0.0),
    "gelu": gelu64,
    "silu": lambda z: z / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "identity": lambda z: z,
}


@st.composite
def _adapter_inputs(draw):
    """h (N, C), W_down (m, C), b_down (m,), W_up (C, m), b_up (C,), activation, scaling."""
    n, C, mb = draw(st.integers(1, 2 * MAX_B)), draw(st.integers(1, MAX_D)), draw(st.integers(1, MAX_D))
    return dict(h=draw(arrays((n, C), f32(-3, 3))), W_down=draw(arrays((mb, C), f32(-1, 1))),
                b_down=draw(arrays((mb,), f32(-1, 1))), W_up=draw(arrays((C, mb), f32(-1, 1))),
                b_up=draw(arrays((C,), f32(-1, 1))), activation=draw(st.sampled_from(sorted(_ACT64))),
                scaling=float(draw(st.one_of(st.sampled_from([1.0, 4.0]), f32(-4, 4)))))


@_register("run_adapter", "adapter(h, W_down, b_down, W_up, b_up, activation, scaling) equals h + scaling "
           "(f(h W_down^T + b_down) W_up^T + b_up) in float64 (nn.Linear layout; f relu, gelu (tanh "
           "approximation), silu, tanh or identity).", lesson="lesson06")
def check_adapter_matches_formula(impl):
    adapter = _adapter(impl, "run_adapter")

    @check_settings(60)
    @given(inp=_adapter_inputs())
    def adapter_matches_formula(inp):
        h, Wd, bd, Wu, bu = (inp[k].astype(np.float64) for k in ("h", "W_down", "b_down", "W_up", "b_up"))
        f, s = inp["activation"], inp["scaling"]
        z = h @ Wd.T + bd                                                  # (N, m)
        expected = h + s * (_ACT64[f](z) @ Wu.T + bu)
        what = f"run_adapter(h, W_down, b_down, W_up, b_up, activation={f!r}, scaling={s!r})"
        y = _out(adapter(*(_t(inp[k]) for k in ("h", "W_down", "b_down", "W_up", "b_up")), activation=f, scaling=s),
                 h.shape, what)
        zb = np.abs(h) @ np.abs(Wd).T + np.abs(bd)                         # |z| bound; |f'| <= 1.1 for all f
        bound = np.abs(h) + abs(s) * ((np.abs(_ACT64[f](z)) + zb) @ np.abs(Wu).T + np.abs(bu))
        _assert_close(y, expected, f"{what} vs h + scaling (f(h W_down^T + b_down) W_up^T + b_up)",
                      atol=1e-5 * bound + 1e-6, rtol=0)
    _run(adapter_matches_formula)


@_register("run_adapter", "an adapter with W_up = 0 and b_up = 0 (its initialisation) is an exact no-op: the "
           "output is h, bit for bit, for any W_down, b_down, activation and scaling.", lesson="lesson06")
def check_adapter_zero_up_is_identity(impl):
    adapter = _adapter(impl, "run_adapter")

    @check_settings(40)
    @given(inp=_adapter_inputs())
    def adapter_zero_up_is_identity(inp):
        h = inp["h"]
        Wu, bu = np.zeros_like(inp["W_up"]), np.zeros_like(inp["b_up"])
        what = f"run_adapter(h, W_down, b_down, W_up=0, b_up=0, activation={inp['activation']!r}, " \
               f"scaling={inp['scaling']!r})"
        y = _out(adapter(_t(h), _t(inp["W_down"]), _t(inp["b_down"]), _t(Wu), _t(bu),
                         activation=inp["activation"], scaling=inp["scaling"]), h.shape, what)
        _assert_close(y, h, f"{what} vs h (a zero up-projection adds exactly 0)", atol=0, rtol=0)
    _run(adapter_zero_up_is_identity)


# ---- lessons 07-18: one file each (checks_<method>.py); importing them registers their checks ---

from . import checks_prefix, checks_prompt, checks_masking, checks_reft, checks_quant, checks_kernels  # noqa: E402,F401,I001 (lesson order)
from . import checks_reward, checks_ppo, checks_dpo, checks_contrastive, checks_distill, checks_multitask, checks_distributed, checks_choosing, checks_vision, checks_scaling  # noqa: E402,F401,I001
