"""Lesson 21 exercise: the three pieces of data-parallel training, written for one process.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 21`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain Python and tensor operations; do not call minift.
"""
import torch  # noqa: F401


def run_rank_micro_batches(n_micro, world_size, rank):
    """Which of a step's n_micro micro-batches rank `rank` of `world_size` computes, as a list.

    Every rank draws the same seeded stream of n_micro = grad_accum * W micro-batches and keeps
    micro-batches rank, rank + W, rank + 2W, ... (so rank 0 of 2 with 4 micro-batches: [0, 2]).
    """
    raise NotImplementedError("run_rank_micro_batches: not written yet; its docstring and "
                              "lessons/21_distributed/README.md, \"The maths\", say what it computes")


def run_average_gradients(grads):
    """What the all-reduce leaves on every rank: (1/W) Σ_r g_r for grads = [g_0, ..., g_{W-1}]
    (tensors of one shape). Return a tensor of that shape."""
    raise NotImplementedError("run_average_gradients: not written yet; its docstring and "
                              "lessons/21_distributed/README.md, \"The maths\", say what it computes")


def run_ring_allreduce_bytes(payload, world_size):
    """Bytes each rank sends in a ring all-reduce of `payload` bytes over W ranks.

    Reduce-scatter: W - 1 steps, each sending one chunk of payload / W; all-gather: W - 1 more.
    So 2 (W - 1) / W * payload (0 for one rank). Return a float.
    """
    raise NotImplementedError("run_ring_allreduce_bytes: not written yet; its docstring and "
                              "lessons/21_distributed/README.md, \"The maths\", say what it computes")
