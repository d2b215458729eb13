"""Lesson 21 exercise: the three pieces of data-parallel training, written for one process.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 21`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain Python and tensor operations; do not call minift.
"""
import torch  # noqa: F401


def run_rank_micro_batches(n_micro, world_size, rank):
    """Which of a step's n_micro micro-batches rank r of W computes, as a list, equation (21.2) of
    the README.

    Every rank draws the same seeded stream of n_micro = a · W micro-batches (a = grad_accum) and
    keeps micro-batches r, r + W, r + 2W, ..., r + (a − 1) W, in that order (so rank 0 of 2 with 4
    micro-batches: [0, 2]).
    """
    raise NotImplementedError("run_rank_micro_batches: not written yet; lessons/21_distributed/README.md, "
                              "\"The maths\", equation (21.2), says what it computes")


def run_average_gradients(grads):
    """What the all-reduce leaves on every rank, equation (21.1) of the README:

        g = (1/W) Σ_r g_r        for grads = [g_0, ..., g_{W−1}] (tensors of one shape)

    Return a new tensor of that shape; leave every g_r as it was."""
    raise NotImplementedError("run_average_gradients: not written yet; lessons/21_distributed/README.md, "
                              "\"The maths\", equation (21.1), says what it computes")


def run_ring_allreduce_bytes(payload, world_size):
    """Bytes each rank sends in a ring all-reduce of `payload` bytes over W ranks, equation (21.3)
    of the README.

    Reduce-scatter: W − 1 steps, each sending one chunk of payload / W; all-gather: W − 1 more.
    So 2 (W − 1) / W · payload (0 for one rank). Return a float.
    """
    raise NotImplementedError("run_ring_allreduce_bytes: not written yet; lessons/21_distributed/README.md, "
                              "\"The maths\", equation (21.3), says what it computes")
