"""The conformance harness: what every lesson's checks share.

A *check* is a hypothesis property over one of the `run_*` functions a lesson asks for (the
reference functions in `lessonNN_*.py`, a student's `exercise.py`, a wrapper around another
library). It is written once, with `property_check`:

    @property_check("run_softmax", lesson=0, examples=50, x=arrays(shapes(1, 3), f32(-30, 30)), dim=...)
    def softmax_sums_to_one(softmax, x, dim):
        '''softmax(x, dim) is a probability distribution along dim: entries in [0, 1] that sum to 1
        (|x| <= 30).'''
        y = output(softmax(tensor(x), dim=dim), x.shape, "run_softmax(x, dim)")
        ...

The decorated function receives the implementation's `run_softmax` (then one argument per
strategy, drawn by hypothesis) and raises on failure; its docstring is the property, in one
sentence (`minift verify --list` prints it). `property_check` registers it in `CHECKS` under its
own name (`softmax_sums_to_one`), with the lesson's pytest marker (`lesson00`); the
check's `fn(impl)` looks the function up on `impl`, runs the property under `check_settings` and,
when it fails, attaches the minimal failing example to the exception as our own text (the
arguments drawn, `softmax_stable_large(x=array([89.], dtype=float32), dim=0)`, and the
implementation's calls as torch code: counterexample.py), so a report reads the same whichever
hypothesis version found it. `run_check` turns that into a `Result`
(PASS / FAIL / NOT IMPLEMENTED / MISSING).

Expected values never come from minift's reference functions: they are the textbook formulas
(exp/sum, the biased-variance LayerNorm, a naive loop over query positions, ...) written out in
numpy float64, so a bug in minift fails its own checks. The formulas several lessons need live
here (`softmax64`, `gelu64`, `layer_norm64`, `cross_entropy64`, `attention64`, `gpt_block64`);
a lesson's own stay in its file.

Inputs are float32 (what a model runs in); tolerances allow float32 rounding, no more. `output`
checks the dtype too; `function_under_test` fails a call that writes into a tensor argument.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import signal
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from hypothesis import example, given
from hypothesis.reporting import with_reporter

from .counterexample import format_calls, format_counterexample, snapshot as _snapshot, written as _written
from .strategies import check_settings, no_local_constants

PASS, FAIL, NOT_IMPLEMENTED, MISSING = "PASS", "FAIL", "NOT IMPLEMENTED", "MISSING"


# ---- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str            # "softmax_stable_large"
    adapter: str         # the run_* function it grades (the exercise): "run_softmax"
    lesson: str          # the pytest marker of the lesson that teaches it: "lesson00"
    description: str     # the property, in one sentence
    fn: Callable = field(repr=False, compare=False)
    runs: tuple = ()     # every run_* function the property calls: (adapter, *more_runs)

    def __call__(self, impl) -> None:
        """Run the property against `impl`; raises on failure (see `run_check` for a Result)."""
        self.fn(impl)


@dataclass
class Result:
    name: str
    adapter: str                  # the run_* function: "run_softmax"
    lesson: str
    description: str
    status: str                   # PASS | FAIL | NOT IMPLEMENTED | MISSING
    seconds: float = 0.0
    error: str = ""               # "AssertionError: run_softmax(x) ... got nan, expected 1.0"
    counterexample: str = ""      # "softmax_stable_large(x=array([89.], dtype=float32))": the failing example
    calls: str = ""               # the calls of the implementation in that example, as torch code to paste
    follows: tuple = ()           # run_* functions it calls that fail their own checks (fix those first)
    stopped: bool = False         # a FAIL because it ran past its time limit (run_check's seconds)

    @property
    def passed(self) -> bool:
        return self.status == PASS


CHECKS: dict[str, Check] = {}


def property_check(run: str, *more_runs: str, lesson: int, examples: int, explicit: Iterable[dict] = (),
                   description: Optional[str] = None, **strategies):
    """Register the decorated property as the check `prop.__name__` of lesson `lesson`.

    prop(fn, [fn2, ...], **drawn): `fn` is the implementation's `run` (and `more_runs`, in order,
    when the property needs several functions); the drawn values are keyword arguments, one per
    strategy. `examples` is the check's hypothesis budget (capped by the loaded profile);
    `explicit` lists examples that always run first (`@example`). The check grades `run`; its
    description is `description`, else prop's docstring as one line.
    """
    runs = (run, *more_runs)

    def deco(prop: Callable) -> Callable:
        name = prop.__name__
        text = description or " ".join(inspect.cleandoc(prop.__doc__ or "").split("\n"))
        if not text:
            raise TypeError(f"check {name}: say what it tests, in its docstring")
        params = list(inspect.signature(prop).parameters.values())[len(runs):]

        def check(impl) -> None:
            calls: list = []                                   # this example's calls of the impl
            fns = [function_under_test(impl, r, calls) for r in runs]

            def test(**drawn):
                return prop(*fns, **drawn)
            test.__name__ = test.__qualname__ = name
            test.__signature__ = inspect.Signature(params)     # what hypothesis fills in
            test.__wrapped__ = prop                            # its source seeds the derandomized examples
            test = given(**strategies)(test)
            for ex in reversed(list(explicit)):
                test = example(**ex)(test)
            run_property(check_settings(examples)(test), calls)

        CHECKS[name] = Check(name, run, f"lesson{lesson:02d}", text, check, runs)
        return prop
    return deco


# ---- calling the implementation under test -------------------------------------------------

class MissingFunction(AttributeError):
    """The implementation has no such run_* function."""


class CheckTimeout(BaseException):
    """A check ran past its time limit. A BaseException, like KeyboardInterrupt, so that neither
    hypothesis (which would shrink it, running the endless loop again) nor an impl's own
    `except Exception` can swallow it."""


class _Unimplemented(BaseException):
    """NotImplementedError from the impl, re-raised as a BaseException so that hypothesis lets it
    through at once instead of shrinking a stub's failure (turned back into NotImplementedError)."""


def function_under_test(impl, name: str, calls: Optional[list] = None) -> Callable:
    """impl's `name` (a run_* function), with NotImplementedError passed through hypothesis. When
    `calls` is a list, each call appends (name, args, kwargs), with tensors copied before the call
    (an impl that writes into its inputs cannot change what the report shows)."""
    fn = getattr(impl, name, None)
    if not callable(fn):
        raise MissingFunction(f"the implementation has no callable {name}")

    try:
        params = [p for p in inspect.signature(fn).parameters]     # names for the report's variables
    except (TypeError, ValueError):
        params = []

    def call(*args, **kwargs):
        if calls is not None:
            calls.append((name, params, _snapshot(args), _snapshot(kwargs)))
        try:
            out = fn(*args, **kwargs)
            if calls is not None:                              # its inputs are inputs: never written to
                _, _, before_args, before_kwargs = calls[-1]
                named = [(params[i] if i < len(params) else f"args[{i}]", a) for i, a in enumerate(args)]
                named += list(kwargs.items())
                before = list(before_args) + list(before_kwargs.values())
                for (pname, now), was in zip(named, before):
                    where = _written(was, now, pname)
                    if where:
                        raise AssertionError(f"{name} changed its argument {where} in place: a function's "
                                             f"inputs must be left as they were (the caller still uses them)")
            return out
        except NotImplementedError as e:
            raise _Unimplemented(f"{name}: {e}" if str(e) else f"{name} raises NotImplementedError") from e
        except SystemExit as e:                              # a failure of this call, not the end of the grading
            raise AssertionError(f"{name} called sys.exit({e.code!r}): a function under test must return "
                                 f"its result") from None
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


def _recording(inner: Callable, failures: list, calls: Optional[list] = None) -> Callable:
    """Wrap a property's body so that every call that fails appends its arguments (and the impl's
    calls it made, from `calls`) to `failures`. Hypothesis replays the minimal failing example last,
    so failures[-1] is the counterexample."""
    def body(*args, **kwargs):
        if calls is not None:
            calls.clear()
        draws: list = []
        kwargs = {k: _DrawRecorder(v, draws) if type(v).__name__ == "DataObject" else v
                  for k, v in kwargs.items()}
        try:
            return inner(*args, **kwargs)
        except (Exception, CheckTimeout):                      # a timeout: the example it stopped in
            failures.append(({k: (draws if isinstance(v, _DrawRecorder) else v) for k, v in kwargs.items()},
                             list(calls or ())))
            raise
    return body


def run_property(prop: Callable[[], None], calls: Optional[list] = None) -> None:
    """Run a @given property. On failure the exception carries `counterexample`: our own text of the
    minimal failing arguments (the same whichever hypothesis version found them), and `calls`: the
    implementation's calls in that example as torch code (when `calls` is the list the functions
    under test record into)."""
    failures: list = []
    prop.hypothesis.inner_test = _recording(prop.hypothesis.inner_test, failures, calls)
    try:
        with no_local_constants():              # the examples never depend on the graded file's literals
            prop()
    except _Unimplemented as e:
        raise NotImplementedError(str(e)) from None
    except (Exception, CheckTimeout) as e:
        if failures:
            drawn, made = failures[-1]
            e.counterexample = format_counterexample(prop.__name__, drawn)
            e.calls = format_calls(made)
        raise


# ---- reading the implementation's outputs ---------------------------------------------------

def tensor(a: np.ndarray) -> torch.Tensor:
    """A fresh float32 tensor (a copy: an impl that works in place cannot corrupt our inputs)."""
    return torch.tensor(np.array(a, dtype=np.float32))


def output(y, shape, what: str, dtype: Optional[torch.dtype] = torch.float32) -> np.ndarray:
    """The impl's output as float64 numpy, once it is a tensor of the expected shape and dtype (None: any)."""
    if not isinstance(y, torch.Tensor):
        raise AssertionError(f"{what} must return a torch.Tensor, got {type(y).__name__}")
    if tuple(y.shape) != tuple(shape):
        raise AssertionError(f"{what} returned shape {tuple(y.shape)}, expected {tuple(shape)}")
    if dtype is not None and y.dtype != dtype:
        got, want = (str(t).removeprefix("torch.") for t in (y.dtype, dtype))
        raise AssertionError(f"{what} returned a{'n' * (got[0] in 'aeiou')} {got} tensor, expected {want}"
                             + " (the dtype of its inputs)" * (dtype == torch.float32))
    return y.detach().cpu().to(torch.float64).numpy()


def number(y, what: str, kind: str = "a number"):
    """The impl's output as a Python number, exactly as returned (an int stays an int): a real
    number or a one-element tensor. `kind` names what was expected in the error."""
    if isinstance(y, torch.Tensor):
        if y.numel() != 1:
            raise AssertionError(f"{what} must return a number, got a tensor of shape {tuple(y.shape)}")
        y = y.item()
    if isinstance(y, bool) or not isinstance(y, (int, float, np.integer, np.floating)):
        raise AssertionError(f"{what} must return {kind}, got {type(y).__name__}")
    return y


def scalar(y, what: str) -> float:
    """The impl's output as a Python float: a real number or a one-element tensor."""
    return float(number(y, what))


def assert_close(got: np.ndarray, expected: np.ndarray, what: str, atol=1e-6, rtol=1e-5) -> None:
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


def tensor_arg(name: str, t) -> torch.Tensor:
    """A reference function's argument, which must be a tensor (TypeError naming it otherwise)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def sgd_step(loss: torch.Tensor, model: torch.nn.Module, lr: float) -> torch.Tensor:
    """θ ← θ − lr ∇_θ L over the model's trainable parameters, with this batch's gradient only (not
    added to any .grad already there); returns the loss, detached. The assignments' reference steps
    use plain SGD so that a check can recompute the step exactly."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)                                         # θ ← θ − lr ∇L
    return loss.detach()


def assert_only_trained_moved(what: str, frozen: torch.nn.Module, frozen_before: dict, frozen_name: str,
                              trained: torch.nn.Module, trained_before: dict, trained_name: str) -> None:
    """After one step: `frozen` (a reference, a teacher) has the same weights bit for bit and no .grad,
    and `trained` moved. *_before: state_dict copies taken before the step."""
    changed = [k for k, v in frozen.state_dict().items() if not torch.equal(v, frozen_before[k])]
    if changed:
        raise AssertionError(f"{what} changed the {frozen_name}'s {changed[:3]}: only the {trained_name} trains")
    graded = [k for k, p in frozen.named_parameters() if p.grad is not None]
    if graded:
        raise AssertionError(f"{what} left gradients on the {frozen_name}'s {graded[:3]}: score it under torch.no_grad()")
    if all(torch.equal(v, trained_before[k]) for k, v in trained.state_dict().items()):
        raise AssertionError(f"{what} did not change the {trained_name}: one gradient step must move it")


# ---- the independent float64 maths shared by several lessons -------------------------------

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


def ln_atol(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
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


# ---- running checks and collecting results -------------------------------------------------

def _attached(e: BaseException, what: str) -> str:
    """What `run_property` attached to the failure (or to one of a group's failures): "counterexample"
    or "calls"."""
    if getattr(e, what, ""):
        return getattr(e, what)
    for sub in getattr(e, "exceptions", None) or ():          # an ExceptionGroup of several bugs
        if _attached(sub, what):
            return _attached(sub, what)
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


@contextlib.contextmanager
def time_limit(seconds: Optional[float]):
    """Raise CheckTimeout in this thread after `seconds` of wall time (SIGALRM: Python code is
    interrupted between bytecodes, a long C call when it returns). A no-op for None, off the main
    thread, where the OS has no SIGALRM (Windows), or while another alarm is pending (it stays
    untouched): the caller's own limit still holds there."""
    if (seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread()
            or signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0)):
        yield
        return

    def stop(signum, frame):
        raise CheckTimeout()

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_check(check: Check, impl, seconds: Optional[float] = None) -> Result:
    """Run one check against `impl` and return its Result; never raises for a failing impl.
    seconds: the check's time limit (`time_limit`); past it the check FAILs with "stopped after"."""
    if seconds is not None and not seconds > 0:
        raise ValueError(f"run_check: seconds={seconds!r} must be > 0 (or None: no limit)")
    res = Result(check.name, check.adapter, check.lesson, check.description, PASS)
    t0 = time.perf_counter()
    try:
        if not callable(getattr(impl, check.adapter, None)):
            raise MissingFunction(f"the implementation has no callable {check.adapter}")
        with with_reporter(lambda text: None), warnings.catch_warnings():   # hypothesis' own report: ours is run_property's
            warnings.simplefilter("ignore")                   # an impl's warning, x hundreds of examples
            with time_limit(seconds):
                check.fn(impl)
    except CheckTimeout as e:
        res.stopped = True
        res.status, res.error = FAIL, (f"stopped after {seconds:g} s, the time limit of one check: "
                                       f"{check.adapter} loops forever or is far too slow (the example "
                                       f"below is the one it was stopped in)")
        res.counterexample, res.calls = _attached(e, "counterexample"), _attached(e, "calls")
    except MissingFunction as e:
        res.status, res.error = MISSING, str(e)
    except NotImplementedError as e:
        res.status, res.error = NOT_IMPLEMENTED, str(e) or f"{check.adapter} raises NotImplementedError"
    except Exception as e:                                     # noqa: BLE001 - any failure is a FAIL
        res.status, res.error = FAIL, _describe(e)
        res.counterexample = _attached(e, "counterexample")
        res.calls = _attached(e, "calls")
    res.seconds = time.perf_counter() - t0
    return res


def select(only: Optional[Iterable[str] | str] = None) -> list[str]:
    """Check names for `only`: None (all), or names separated by commas; each name is a check name,
    a run_* function (`run_softmax`: its checks) or a lesson marker (`lesson00`). Unknown -> ValueError."""
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
        import difflib
        known = list(CHECKS) + sorted({c.adapter for c in CHECKS.values()}) + sorted({c.lesson for c in CHECKS.values()})
        near = [m for u in unknown for m in difflib.get_close_matches(u, known, n=3, cutoff=0.6)]
        raise ValueError(f"unknown check name(s) {unknown}" + (f"; did you mean {', '.join(dict.fromkeys(near))}?" if near else "")
                         + " (a name is a check, a run_* function or a lesson such as lesson05: `minift verify --list` "
                         "lists them)")
    if not chosen:
        raise ValueError(f"no check selected by only={list(only)!r} (`minift verify --list` lists the checks)")
    return chosen
