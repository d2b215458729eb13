"""Conformance checks of lesson 21 (data-parallel fine-tuning), registered with lesson="lesson21".
Expected values are computed here independently (float64 numpy, plain counting).

    run_rank_micro_batches     over all ranks a partition of the step's micro-batches, W·a of them,
                               each rank a of them, rank r's in order from r with stride W
    run_average_gradients      the float64 mean over ranks; the same whatever the ranks' order
    run_ring_allreduce_bytes   reduce-scatter + all-gather of W − 1 chunks of payload / W each
"""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t
from .strategies import arrays, check_settings, f32


@_register("run_rank_micro_batches", "rank r of W computes micro-batches r, r + W, ... of the step's W·a: "
           "the ranks' lists partition range(W·a), a each", lesson="lesson21")
def check_rank_micro_batches_partition(impl):
    f = _adapter(impl, "run_rank_micro_batches")

    @check_settings(40)
    @given(world=st.integers(1, 8), accum=st.integers(1, 4))
    def prop(world, accum):
        n = world * accum
        got = [list(f(n, world, r)) for r in range(world)]
        seen = sorted(i for g in got for i in g)
        assert seen == list(range(n)), f"run_rank_micro_batches({n}, {world}, r) over r: {got} is not a partition of range({n})"
        for r, g in enumerate(got):
            expected = [r + k * world for k in range(accum)]        # counted, not sliced
            assert g == expected, f"run_rank_micro_batches({n}, {world}, {r}) = {g}, expected {expected}"
    _run(prop)


@_register("run_average_gradients", "the all-reduce average (1/W) Σ_r g_r equals the float64 mean over ranks, "
           "whatever the ranks' order", lesson="lesson21")
def check_average_gradients_is_the_mean(impl):
    f = _adapter(impl, "run_average_gradients")

    @check_settings(40)
    @given(world=st.integers(1, 5), shape=st.lists(st.integers(1, 4), min_size=1, max_size=2), data=st.data())
    def prop(world, shape, data):
        gs = [data.draw(arrays(tuple(shape), f32(-10, 10))) for _ in range(world)]
        expected = np.mean(np.stack([g.astype(np.float64) for g in gs]), axis=0)
        got = _out(f([_t(g) for g in gs]), tuple(shape), "run_average_gradients(grads)")
        _assert_close(got, expected, "run_average_gradients(grads)", atol=1e-5, rtol=1e-5)
        rev = _out(f([_t(g) for g in reversed(gs)]), tuple(shape), "run_average_gradients(reversed grads)")
        _assert_close(rev, expected, "run_average_gradients(reversed grads)", atol=1e-5, rtol=1e-5)
    _run(prop)


@_register("run_ring_allreduce_bytes", "a ring all-reduce sends 2 (W − 1) chunks of payload / W per rank "
           "(reduce-scatter, then all-gather); nothing for one rank", lesson="lesson21")
def check_ring_allreduce_bytes(impl):
    f = _adapter(impl, "run_ring_allreduce_bytes")

    @check_settings(40)
    @given(world=st.integers(1, 64), payload=st.integers(0, 10 ** 9))
    def prop(world, payload):
        chunk = payload / world
        expected = (world - 1) * chunk + (world - 1) * chunk         # the two phases, step by step
        got = float(f(payload, world))
        assert abs(got - expected) <= 1e-9 * max(1.0, expected), \
            f"run_ring_allreduce_bytes({payload}, {world}) = {got}, expected {expected}"
    _run(prop)
