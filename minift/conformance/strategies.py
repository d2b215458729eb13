"""Hypothesis strategies and settings shared by the conformance checks.

Inputs are drawn as numpy float32 arrays, not torch tensors: hypothesis prints a falsifying
numpy array at full precision (`array([89.], dtype=float32)`), so a counterexample can be pasted
back and reproduced bit for bit. The checks convert with `torch.from_numpy` just before calling
the implementation under test.

Shapes are small on purpose (B <= 3, T <= 8, H <= 3, D <= 8, V <= 20): the bugs these checks look
for (a missing max shift, a biased/unbiased variance, a forgotten mask) show up on tiny inputs,
and hypothesis shrinks them to tinier ones still.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

MAX_B, MAX_T, MAX_H, MAX_D, MAX_V = 3, 8, 3, 8, 20


# ---- settings ---------------------------------------------------------------------------------

def register_profiles() -> None:
    """Register the hypothesis profiles "ci" (derandomized, fewer examples) and "dev".

    Called by tests/conftest.py and by `minift verify`; importing minift registers nothing.
    """
    settings.register_profile("ci", max_examples=30, derandomize=True, deadline=None,
                              database=None, print_blob=False)
    settings.register_profile("dev", deadline=None)


def derandomize() -> bool:
    """Deterministic examples under CI (env CI set) or when the loaded profile says so."""
    return bool(os.environ.get("CI")) or bool(settings.default.derandomize)


_SHRINK = [True]


@contextlib.contextmanager
def no_shrinking():
    """Within this block checks stop at their first failing example instead of shrinking it: for
    tests that only ask *whether* a check fails (the planted bugs), not for its smallest example."""
    _SHRINK.append(False)
    try:
        yield
    finally:
        _SHRINK.pop()


@contextlib.contextmanager
def no_local_constants():
    """Within this block hypothesis draws no constants from the code under test. Recent versions mix
    literals they find in every loaded "local" module (not stdlib or site-packages) into their draws:
    minift's own source when installed with `pip install -e .`, and a student's or an engineer's
    --impl file. The examples would then depend on the graded file's own numbers, and derandomized
    runs would not give everyone the same examples. Hypothesis has no setting for it, so for the
    block its module function is swapped for one that finds no constants, and its cache of constant
    pools for an empty one (other hypothesis tests in the process keep theirs). A hypothesis without
    the feature is left as it is."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:                                    # pragma: no cover (no such feature)
        yield
        return
    get, cache = getattr(providers, "_get_local_constants", None), getattr(providers, "CONSTANTS_CACHE", None)
    if get is None or cache is None:                        # pragma: no cover (another layout)
        yield
        return
    # a stand-in of the cache's own type: whichever of the two names a time limit leaves swapped, the
    # other works with it. Checks run on the main thread (the swap is process-wide).
    stand_in = type(cache)(cache.max_size) if hasattr(cache, "max_size") else {}
    try:
        providers.CONSTANTS_CACHE = stand_in
        providers._get_local_constants = Constants
        yield
    finally:
        providers._get_local_constants = get
        providers.CONSTANTS_CACHE = cache


def check_settings(max_examples: int) -> settings:
    """The settings every check runs under. `max_examples` is the check's own budget, capped by
    the loaded profile's (so the "ci" profile can make every check cheaper)."""
    return settings(
        max_examples=max(1, min(max_examples, settings.default.max_examples)),
        deadline=None,
        derandomize=derandomize(),
        database=None,                  # the same check runs on many impls: no cross-talk
        print_blob=False,
        report_multiple_bugs=False,     # one minimal counterexample per check
        phases=[Phase.explicit, Phase.reuse, Phase.generate] + [Phase.shrink] * _SHRINK[-1],   # no "explain" notes
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )


# ---- elements and arrays --------------------------------------------------------------------

def f32(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite float32 values in [lo, hi]."""
    return st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False)


def dyadic(lo: int, hi: int, denom: int = 64) -> st.SearchStrategy[float]:
    """Multiples of 1/denom in [lo, hi]: exactly representable, so affine maps by powers of two and
    integer shifts are exact in float32 (only the implementation rounds)."""
    return st.integers(lo * denom, hi * denom).map(lambda i: i / denom)


def arrays(shape, elements) -> st.SearchStrategy[np.ndarray]:
    """float32 arrays of a fixed shape (a tuple) or of shapes drawn from a strategy."""
    return hnp.arrays(np.float32, shape, elements=elements)


def shapes(min_dims: int = 1, max_dims: int = 3, max_side: int = MAX_T, min_last: int = 1,
           max_last: int | None = None) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes (..., N) with small leading sides and a last side in [min_last, max_last]."""
    max_last = max_side if max_last is None else max_last
    return st.tuples(
        hnp.array_shapes(min_dims=min_dims - 1, max_dims=max_dims - 1, min_side=1, max_side=MAX_B),
        st.integers(min_last, max_last),
    ).map(lambda t: tuple(t[0]) + (t[1],))


def attention_shapes() -> st.SearchStrategy[tuple[int, int, int, int]]:
    """(B, H, T, D)."""
    return st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_H), st.integers(1, MAX_T),
                     st.integers(1, MAX_D))


def shared(strategy, key: str):
    """The same drawn value for every use of `key` within one example (e.g. one shape for q, k, v)."""
    return st.shared(strategy, key=key)


# ---- GPT block inputs ------------------------------------------------------------------------

def block_param_shapes(C: int) -> dict[str, tuple[int, ...]]:
    """Shapes of `minift.model.Block(cfg).state_dict()` (bias=True), nn.Linear layout (out, in)."""
    return {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,),
    }


def block_inputs(B: int, T: int, n_head: int, head_dim: int, seed: int):
    """x (B, T, C) float32 and a params dict for one GPT block, all random from `seed`.

    Public so that a counterexample `(B, T, n_head, head_dim, seed)` reproduces the exact tensors:
    `x, params = minift.conformance.strategies.block_inputs(B, T, n_head, head_dim, seed)`.
    Every weight is random (LayerNorm gains in [0.5, 1.5], the rest N(0, 0.3^2)), so no term of
    the block hides behind a zero or an identity.
    """
    C = n_head * head_dim
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in block_param_shapes(C).items():
        if name.startswith("ln_") and name.endswith(".weight"):
            params[name] = 0.5 + torch.rand(shape, generator=g)
        else:
            params[name] = 0.3 * torch.randn(shape, generator=g)
    x = torch.randn(B, T, C, generator=g)
    return x, params
