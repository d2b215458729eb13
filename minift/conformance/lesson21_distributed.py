"""Lesson 21 (data-parallel fine-tuning): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions: plain tensors and integers in, computed by minift's own functions.

    run_rank_micro_batches(n_micro, world_size, rank)   [rank, rank + W, ...]: the micro-batches rank r computes
    run_average_gradients(grads)                        (1/W) Σ_r g_r: what the all-reduce leaves on every rank
    run_ring_allreduce_bytes(payload, world_size)       2 (W − 1) / W · payload: bytes each rank sends

The checks, registered with lesson="lesson21". Expected values are computed here independently
(float64 numpy, plain counting).

    run_rank_micro_batches     over all ranks a partition of the step's micro-batches, W·a of them,
                               each rank a of them, rank r's in order from r with stride W
    run_average_gradients      the float64 mean over ranks; the same whatever the ranks' order; the
                               ranks' gradients left unchanged
    run_ring_allreduce_bytes   reduce-scatter + all-gather of W − 1 chunks of payload / W each
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minift import distributed

from .harness import assert_close, output, property_check, tensor
from .strategies import arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def run_rank_micro_batches(n_micro: int, world_size: int, rank: int) -> list:
    return distributed.rank_micro_batches(n_micro, world_size, rank)


def run_average_gradients(grads: list):
    return distributed.average_gradients(list(grads))


def run_ring_allreduce_bytes(payload: int, world_size: int) -> float:
    return distributed.ring_allreduce_bytes(payload, world_size)


# ---- the checks ----------------------------------------------------------------------------------

@property_check("run_rank_micro_batches", lesson=21, examples=40, world=st.integers(1, 8),
                accum=st.integers(1, 4))
def rank_micro_batches_partition(f, world, accum):
    """rank r of W computes micro-batches r, r + W, ... of the step's W·a: the ranks' lists partition
    range(W·a), a each"""
    n = world * accum
    got = [list(f(n, world, r)) for r in range(world)]
    seen = sorted(i for g in got for i in g)
    assert seen == list(range(n)), f"run_rank_micro_batches({n}, {world}, r) over r: {got} is not a partition of range({n})"
    for r, g in enumerate(got):
        expected = [r + k * world for k in range(accum)]        # counted, not sliced
        assert g == expected, f"run_rank_micro_batches({n}, {world}, {r}) = {g}, expected {expected}"


@property_check("run_average_gradients", lesson=21, examples=40, world=st.integers(1, 5),
                shape=st.lists(st.integers(1, 4), min_size=1, max_size=2), data=st.data())
def average_gradients_is_the_mean(f, world, shape, data):
    """the all-reduce average (1/W) Σ_r g_r equals the float64 mean over ranks, whatever the ranks'
    order, and leaves every rank's own gradient g_r as it was"""
    gs = [data.draw(arrays(tuple(shape), f32(-10, 10))) for _ in range(world)]
    expected = np.mean(np.stack([g.astype(np.float64) for g in gs]), axis=0)
    given = [tensor(g) for g in gs]
    got = output(f(given), tuple(shape), "run_average_gradients(grads)")
    assert_close(got, expected, "run_average_gradients(grads)", atol=1e-5, rtol=1e-5)
    for r, (t, g) in enumerate(zip(given, gs)):
        assert_close(output(t, g.shape, f"grads[{r}]"), g, f"grads[{r}] after run_average_gradients(grads) "
                     f"(an input must not change)", atol=0, rtol=0)
    rev = output(f([tensor(g) for g in reversed(gs)]), tuple(shape), "run_average_gradients(reversed grads)")
    assert_close(rev, expected, "run_average_gradients(reversed grads)", atol=1e-5, rtol=1e-5)


@property_check("run_ring_allreduce_bytes", lesson=21, examples=40, world=st.integers(1, 64),
                payload=st.integers(0, 10 ** 9))
def ring_allreduce_bytes(f, world, payload):
    """a ring all-reduce sends 2 (W − 1) chunks of payload / W per rank (reduce-scatter, then
    all-gather); nothing for one rank"""
    chunk = payload / world
    expected = (world - 1) * chunk + (world - 1) * chunk         # the two phases, step by step
    got = float(f(payload, world))
    assert abs(got - expected) <= 1e-9 * max(1.0, expected), \
        f"run_ring_allreduce_bytes({payload}, {world}) = {got}, expected {expected}"
