"""Planted bugs for lesson 21 (data-parallel fine-tuning): copies of the reference `run_*`
functions, each with one plausible learner mistake. tests/test_planted.py checks that lesson 21's
checks catch every one. Do not copy from this file."""
from minift.conformance import reference as ref


def run_rank_micro_batches__contiguous_block(n_micro, world_size, rank):
    """gives rank r the contiguous block r a, ..., r a + a − 1 instead of every W-th micro-batch"""
    a = n_micro // world_size
    return list(range(rank * a, (rank + 1) * a))


def run_rank_micro_batches__starts_after_rank(n_micro, world_size, rank):
    """off by one: starts at r + 1 (and wraps the last rank's to 0)"""
    return sorted((i + 1) % n_micro for i in ref.run_rank_micro_batches(n_micro, world_size, rank))


def run_average_gradients__sum_not_mean(grads):
    """the all-reduce's sum, never divided by W"""
    return ref.run_average_gradients(grads) * len(grads)


def run_average_gradients__divides_by_w_minus_1(grads):
    """divides the sum by W − 1 (by 1 for a single rank)"""
    return ref.run_average_gradients(grads) * len(grads) / max(1, len(grads) - 1)


def run_average_gradients__in_place(grads):
    """accumulates into grads[0] in place, so rank 0's own gradient is overwritten"""
    total = grads[0]
    for g in grads[1:]:
        total += g
    total /= len(grads)
    return total


def run_ring_allreduce_bytes__no_chunking(payload, world_size):
    """sends the whole payload at each of the 2 (W − 1) steps, not a chunk of payload / W"""
    return 2.0 * (world_size - 1) * payload


def run_ring_allreduce_bytes__one_phase(payload, world_size):
    """counts the reduce-scatter and forgets the all-gather"""
    return ref.run_ring_allreduce_bytes(payload, world_size) / 2


def run_ring_allreduce_bytes__w_steps(payload, world_size):
    """W steps per phase instead of W − 1: 2 · payload, even for one rank"""
    return 2.0 * payload
