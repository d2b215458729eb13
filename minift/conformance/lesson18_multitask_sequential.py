"""Lesson 18 (multitask and sequential fine-tuning): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions, multitask and sequential fine-tuning (minift/align/multitask.py):
plain tensors and hyperparameters in, tensors out.

    run_mixture_weights(sizes, temperature, cap)   p_i = min(n_i, K_cap)^(1/T) / Σ_j min(n_j, K_cap)^(1/T)   (K,)
    run_sample_mixture(weights, sizes, n, seed)     n draws (task, example): task ~ weights, examples in epochs  (n, 2)
    run_forgetting(R)                               f_j = max_{l<K-1} R[l, j] - R[K-1, j], j < K-1   (K-1,)
    run_backward_transfer(R)                        BWT = mean_{j<K-1} (R[K-1, j] - R[j, j])          ()
    run_example_loss(logits, targets)               mean over examples of each one's mean token NLL   ()

The checks, registered into `CHECKS` with lesson="lesson18". Expected values are computed here
independently (float64 numpy, the formulas written out), never by calling minift's reference
functions.

The sampler is checked for its properties, not for minift's random stream: counts within a
binomial bound (a correct sampler breaks it with probability < 1e-8 per task), examples in
epochs, the same draws for the same seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import assume, strategies as st

from minift.align.multitask import (backward_transfer, forgetting, mixture_weights, per_example_nll,
                                    sample_mixture)

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def _sizes(fn: str, sizes) -> list[int]:
    sizes = tensor_arg("sizes", sizes)
    if sizes.dim() != 1:
        raise ValueError(f"{fn}: sizes must be 1-D (K,), got shape {tuple(sizes.shape)}")
    return [int(n) for n in sizes.tolist()]


def run_mixture_weights(sizes: torch.Tensor, temperature: float = 1.0, cap=None) -> torch.Tensor:
    """Mixing weights of K task sets of sizes n_i (a (K,) integer tensor, every n_i >= 1):
    p_i ∝ min(n_i, cap)^(1/temperature); temperature > 0 (math.inf: equal), cap None or >= 1.
    Returns (K,) float64 summing to 1."""
    t = temperature.item() if isinstance(temperature, torch.Tensor) else temperature
    p = mixture_weights(_sizes("run_mixture_weights", sizes), t, cap)
    return torch.tensor(p, dtype=torch.float64)


def run_sample_mixture(weights: torch.Tensor, sizes: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n draws from K task sets: row k = (task index, example index). The task is drawn with
    probability weights[i] / Σ weights; within a task, examples come in epochs (each pass a fresh
    permutation of 0..sizes[i]-1). The same seed gives the same draws. Returns (n, 2) int64."""
    w = tensor_arg("weights", weights)
    sz = _sizes("run_sample_mixture", sizes)
    if tuple(w.shape) != (len(sz),):
        raise ValueError(f"run_sample_mixture: weights must be ({len(sz)},) like sizes, got {tuple(w.shape)}")
    names = [str(i) for i in range(len(sz))]
    draws = sample_mixture(dict(zip(names, sz)), dict(zip(names, w.tolist())), int(n), int(seed))
    return torch.tensor([[int(t), i] for t, i in draws], dtype=torch.int64).reshape(-1, 2)


def run_forgetting(R: torch.Tensor) -> torch.Tensor:
    """R: (K, K) score matrix, R[i, j] = score of task j after stage i (task j trained at stage j).
    Returns (K-1,): f_j = max over the rows before the last of R[l, j], minus R[K-1, j]."""
    return forgetting(tensor_arg("R", R)).to(R.dtype if R.is_floating_point() else torch.float64)


def run_backward_transfer(R: torch.Tensor) -> torch.Tensor:
    """R: (K, K). Returns the scalar (1/(K-1)) Σ_{j<K-1} (R[K-1, j] - R[j, j])."""
    return backward_transfer(tensor_arg("R", R)).to(R.dtype if R.is_floating_point() else torch.float64)


def run_example_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits: (B, T, V); targets: (B, T) int64, -100 where no loss is taken. Each example with at
    least one target contributes its mean NLL over its targets; returns the mean over those examples."""
    return per_example_nll(tensor_arg("logits", logits), tensor_arg("targets", targets))


# ---- the checks ----------------------------------------------------------------------------------

SIZES = st.lists(st.integers(1, 5000), min_size=1, max_size=6)
TEMPS = st.one_of(st.sampled_from([1.0, 2.0, 1 / 0.3, 0.5, math.inf]), st.floats(0.2, 20.0))


def _weights64(sizes, T, cap):
    """p_i = min(n_i, K_cap)^(1/T) / Σ_j min(n_j, K_cap)^(1/T), written out (K_cap = cap; T = inf: all equal)."""
    n = np.array([min(s, cap) if cap is not None else s for s in sizes], np.float64)
    w = np.ones_like(n) if math.isinf(T) else n ** (1.0 / T)
    return w / w.sum()


@property_check("run_mixture_weights", lesson=18, examples=60, sizes=SIZES, T=TEMPS,
                cap=st.one_of(st.none(), st.integers(1, 3000)))
def mixture_weights_match_formula(fn, sizes, T, cap):
    """mixture weights are p_i = min(n_i, K_cap)^(1/T) / Σ_j min(n_j, K_cap)^(1/T) for any sizes, temperature
    T (inf: equal) and cap K_cap (None: no cap), and sum to 1."""
    what = f"run_mixture_weights(sizes={sizes}, temperature={T!r}, cap={cap})"
    got = output(fn(torch.tensor(sizes), T, cap), (len(sizes),), what, None)
    assert_close(got, _weights64(sizes, T, cap), what, atol=1e-7, rtol=1e-6)
    if abs(got.sum() - 1) > 1e-6:
        raise AssertionError(f"{what} sums to {got.sum()!r}, not 1")


@property_check("run_mixture_weights", lesson=18, examples=40, sizes=SIZES)
def mixture_weights_limits(fn, sizes):
    """T = 1 without a cap is examples-proportional (p_i = n_i / Σ n) and T = inf is equal mixing (p_i
    = 1/K), whatever the sizes."""
    n = np.array(sizes, np.float64)
    got = output(fn(torch.tensor(sizes), 1.0, None), (len(sizes),), f"run_mixture_weights({sizes}, 1.0, None)", None)
    assert_close(got, n / n.sum(), f"run_mixture_weights({sizes}, temperature=1) (proportional)", atol=1e-7)
    got = output(fn(torch.tensor(sizes), math.inf, None), (len(sizes),), f"run_mixture_weights({sizes}, inf, None)", None)
    assert_close(got, np.full(len(sizes), 1 / len(sizes)), f"run_mixture_weights({sizes}, temperature=inf) "
                 f"(equal)", atol=1e-7)


@property_check("run_mixture_weights", lesson=18, examples=40,
                sizes=st.lists(st.integers(1, 5000), min_size=2, max_size=6), cap=st.integers(1, 5000),
                T=TEMPS)
def mixture_weights_cap(fn, sizes, cap, T):
    """the cap K_cap (T5's examples-proportional mixing with limit K): every set of size >= K_cap gets the
    same weight, and a cap no set reaches changes nothing."""
    what = f"run_mixture_weights(sizes={sizes}, temperature={T!r}, cap={cap})"
    got = output(fn(torch.tensor(sizes), T, cap), (len(sizes),), what, None)
    big = [i for i, s in enumerate(sizes) if s >= cap]
    if len(big) > 1 and got[big].max() - got[big].min() > 1e-7:
        raise AssertionError(f"{what}: sets {big} all have size >= K_cap={cap} but weights {got[big].tolist()}; "
                             f"capped sets count as K_cap each")
    if cap >= max(sizes):
        free = output(fn(torch.tensor(sizes), T, None), (len(sizes),), what, None)
        assert_close(got, free, f"{what} vs cap=None (no set reaches the cap)", atol=1e-7)


def _draws(fn, w, sizes, n, seed, what):
    y = fn(torch.tensor(w, dtype=torch.float64), torch.tensor(sizes), n, seed)
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or tuple(y.shape) != (n, 2):
        raise AssertionError(f"{what} must return an (n, 2) = ({n}, 2) integer tensor, got "
                             f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    a = y.detach().cpu().to(torch.int64).numpy()
    if (a[:, 0] < 0).any() or (a[:, 0] >= len(sizes)).any():
        raise AssertionError(f"{what}: task index outside [0, {len(sizes)})")
    for i, s in enumerate(sizes):
        ex = a[a[:, 0] == i, 1]
        if ex.size and (ex.min() < 0 or ex.max() >= s):
            raise AssertionError(f"{what}: task {i} has {s} examples but example index {int(ex.max())} was drawn")
    return a


@property_check("run_sample_mixture", lesson=18, examples=30,
                w=st.lists(st.one_of(st.just(0.0), st.floats(0.01, 10.0)), min_size=1, max_size=5),
                size=st.integers(1, 30), n=st.integers(200, 2000), seed=st.integers(0, 2 ** 31 - 1))
def sample_mixture_proportions(fn, w, size, n, seed):
    """over n draws the count of each task is within 6 binomial standard deviations (+1) of n p_i,
    and tasks of weight 0 are never drawn."""
    assume(sum(w) > 0)
    sizes = [size + i for i in range(len(w))]
    what = f"run_sample_mixture(weights={w}, sizes={sizes}, n={n}, seed={seed})"
    a = _draws(fn, w, sizes, n, seed, what)
    p = np.array(w) / sum(w)
    for i, pi in enumerate(p):
        c = int((a[:, 0] == i).sum())
        bound = 6 * math.sqrt(n * pi * (1 - pi)) + 1
        if abs(c - n * pi) > bound:
            raise AssertionError(f"{what}: task {i} drawn {c} times, expected n p = {n * pi:.1f} ± {bound:.1f} "
                                 f"(p = {pi:.4f})")


@property_check("run_sample_mixture", lesson=18, examples=30,
                sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4), n=st.integers(1, 150),
                seed=st.integers(0, 10 ** 6))
def sample_mixture_epochs_deterministic(fn, sizes, n, seed):
    """within a task the examples come in epochs (after c draws of a task of size s each example was
    drawn floor(c/s) or ceil(c/s) times), and the same seed gives the same draws."""
    w = [1.0] * len(sizes)
    what = f"run_sample_mixture(weights={w}, sizes={sizes}, n={n}, seed={seed})"
    a = _draws(fn, w, sizes, n, seed, what)
    b = _draws(fn, w, sizes, n, seed, what)
    if not np.array_equal(a, b):
        raise AssertionError(f"{what} called twice gave different draws; a seed must fix them")
    for i, s in enumerate(sizes):
        ex = a[a[:, 0] == i, 1]
        counts = np.bincount(ex, minlength=s)
        lo, hi = ex.size // s, -(-ex.size // s)
        if counts.min() < lo or counts.max() > hi:
            raise AssertionError(f"{what}: task {i} (size {s}) drawn {ex.size} times, per-example counts "
                                 f"{counts.tolist()}; epochs give each example {lo} or {hi}")


def _matrix(K):
    return arrays((K, K), f32(-10, 10))


@property_check("run_forgetting", lesson=18, examples=40, data=st.data(), K=st.integers(2, 6))
def forgetting_matches_definition(fn, data, K):
    """forgetting f_j = max_{l<K-1} R[l, j] - R[K-1, j] for every task j < K-1 of a (K, K) score matrix
    (Chaudhry et al., 2018)."""
    R = data.draw(_matrix(K)).astype(np.float64)
    want = np.array([max(R[l, j] for l in range(K - 1)) - R[K - 1, j] for j in range(K - 1)])
    what = f"run_forgetting(R={R.tolist()})"
    assert_close(output(fn(torch.tensor(R)), (K - 1,), what, None), want, what, atol=1e-9)


@property_check("run_backward_transfer", lesson=18, examples=40, data=st.data(), K=st.integers(2, 6))
def backward_transfer_matches_definition(fn, data, K):
    """BWT = (1/(K-1)) Σ_{j<K-1} (R[K-1, j] - R[j, j]) (Lopez-Paz & Ranzato, 2017), and 0 when every
    task keeps the score it had right after its stage."""
    R = data.draw(_matrix(K)).astype(np.float64)
    want = sum(R[K - 1, j] - R[j, j] for j in range(K - 1)) / (K - 1)
    what = f"run_backward_transfer(R={R.tolist()})"
    assert_close(output(fn(torch.tensor(R)), (), what, None), np.float64(want), what, atol=1e-9)
    kept = R.copy()
    for i in range(K):                                   # every row after stage j holds R[j, j] in column j
        for j in range(i + 1):
            kept[i, j] = R[j, j]
    assert_close(output(fn(torch.tensor(kept)), (), what, None), np.float64(0.0), f"{what} with no forgetting", atol=1e-9)


@st.composite
def _example_loss_case(draw):
    """logits (B, T, V) and targets (B, T) with -100 ignored; maybe one example with no target."""
    B, T, V = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 8))
    logits = draw(arrays((B, T, V), f32(-8, 8)))
    tg = np.array(draw(st.lists(st.integers(-1, V - 1), min_size=B * T, max_size=B * T))).reshape(B, T)
    tg = np.where(tg < 0, -100, tg)
    blank = draw(st.integers(-1, B - 1))                  # an example with no target at all (B' < B)
    if blank >= 0 and B > 1:
        tg[blank] = -100
    return logits, tg


def _short_and_long() -> tuple:
    """One target in example 0 (predicted with near certainty), three in example 1 (uniform: log 4
    each), one example with none: the mean of the two examples' means (log 4 / 2) is not the mean
    over the four targets (3 log 4 / 4), and B = 3 is not B' = 2."""
    logits = np.zeros((3, 3, 4), np.float32)
    logits[0, 0, 1] = 20.0
    return logits, np.array([[1, -100, -100], [0, 2, 3], [-100, -100, -100]])


@property_check("run_example_loss", lesson=18, examples=40, explicit=[dict(case=_short_and_long())],
                case=_example_loss_case())
def example_loss_matches_formula(fn, case):
    """the per-example loss is the mean over examples (with at least one target) of each example's mean
    -log softmax(logits)[target] over its non-ignored positions; examples without a target do not count."""
    logits, tg = case
    B, T, V = logits.shape
    assume((tg != -100).any())
    per = []
    for b in range(B):
        keep = [t for t in range(T) if tg[b, t] != -100]
        if not keep:
            continue
        nll = []
        for t in keep:
            z = logits[b, t].astype(np.float64)
            nll.append(-(z[tg[b, t]] - z.max() - math.log(np.exp(z - z.max()).sum())))
        per.append(sum(nll) / len(nll))
    what = f"run_example_loss(logits of shape {(B, T, V)}, targets={tg.tolist()})"
    got = output(fn(tensor(logits), torch.tensor(tg, dtype=torch.int64)), (), what)
    assert_close(got, np.float64(sum(per) / len(per)), what, atol=1e-5, rtol=1e-5)
