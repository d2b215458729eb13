"""Reference `run_*` adapters of lesson 21 (data-parallel fine-tuning, minift/distributed.py):
plain tensors and integers in, computed by minift's own functions.

    run_rank_micro_batches(n_micro, world_size, rank)   [rank, rank + W, ...]: the micro-batches rank r computes
    run_average_gradients(grads)                        (1/W) Σ_r g_r: what the all-reduce leaves on every rank
    run_ring_allreduce_bytes(payload, world_size)       2 (W − 1) / W · payload: bytes each rank sends

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

from minift.distributed import average_gradients, rank_micro_batches, ring_allreduce_bytes

__all__: list[str] = ["run_rank_micro_batches", "run_average_gradients", "run_ring_allreduce_bytes"]


def run_rank_micro_batches(n_micro: int, world_size: int, rank: int) -> list:
    return rank_micro_batches(n_micro, world_size, rank)


def run_average_gradients(grads: list):
    return average_gradients(list(grads))


def run_ring_allreduce_bytes(payload: int, world_size: int) -> float:
    return ring_allreduce_bytes(payload, world_size)
