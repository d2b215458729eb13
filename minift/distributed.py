"""Data-parallel fine-tuning across processes, with PyTorch's own engine (torch.distributed).

W processes (ranks) each hold a full copy of the model and train on different micro-batches. After
each rank's backward pass, the gradients are averaged across ranks with one all-reduce, so every
rank takes the same optimizer step and the copies never drift apart:

    g = (1/W) Σ_r g_r                     g_r: rank r's gradient on its micro-batch(es)

This is what `torch.nn.parallel.DistributedDataParallel` does (it also overlaps the all-reduce with
the backward pass, bucket by bucket); minift writes the one all-reduce out so you can see it and
count its bytes. Only TRAINABLE parameters have gradients, so only they are communicated: a LoRA
run all-reduces the adapter's gradients, not the frozen base's. Bytes sent per step per rank, for
a ring all-reduce of N bytes: 2 (W − 1) / W · N (Patarasuk & Yuan, 2009); we report N, the payload.

Equivalence (tests/test_distributed.py): W ranks × micro-batch b × grad_accum a take the same steps
as 1 process with grad_accum W·a over micro-batches of b, because rank r takes micro-batches r,
r + W, ... of the same seeded stream of W·a micro-batches that one process would draw, and the
average of the ranks' averages is the single process's average over all W·a micro-batches.

Launch with torchrun (which sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):

    torchrun --nproc_per_node 2 lessons/21_distributed/walkthrough.py          # one machine
    torchrun --nnodes 2 --node_rank K --master_addr HOST --master_port 29500 --nproc_per_node 8 ...

and call `init_from_env()` first; `minift.train.train` then runs data-parallel by itself. End the
worker with `leave()` (see why there).

Backend and devices: `init_from_env()` picks NCCL when CUDA is available and every rank of the
node has a GPU of its own (LOCAL_WORLD_SIZE <= torch.cuda.device_count()): rank r of a node then
uses GPU r (torch.cuda.set_device(LOCAL_RANK)), and `rank_device()` says which, so the model goes
there before training. Otherwise (no GPU, or more ranks than GPUs) it picks gloo and the ranks run
on the CPU. NCCL reduces GPU tensors only: the gradient all-reduce works on a flat buffer made on
the gradients' own device, and `sum_over_ranks` puts its one number on this rank's GPU.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _local_rank_and_size() -> tuple[int, int]:
    """(LOCAL_RANK, LOCAL_WORLD_SIZE) from torchrun's environment: this process's place on its node."""
    return int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def gpus_for_every_rank() -> bool:
    """True when CUDA is available and this node has at least one GPU per local rank (NCCL's need:
    one GPU per rank). Every rank of a node computes the same answer, so they agree on a backend."""
    if not torch.cuda.is_available():
        return False
    local_rank, local_size = _local_rank_and_size()
    return local_size <= torch.cuda.device_count() and local_rank < torch.cuda.device_count()


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT, LOCAL_RANK). backend None: nccl when every rank has a GPU
    (gpus_for_every_rank), else gloo. With nccl, this rank's GPU (LOCAL_RANK) becomes the current
    CUDA device. Without torchrun's variables: a single process, nothing initialised, (0, 1)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend is None:
        backend = "nccl" if gpus_for_every_rank() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r} must be 'gloo' (CPU) or 'nccl' (GPU)")
    if backend == "nccl":
        if not gpus_for_every_rank():
            local_rank, local_size = _local_rank_and_size()
            raise ValueError(f"backend='nccl' needs one GPU per rank: local rank {local_rank} of {local_size}, "
                             f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s) here; "
                             f"use backend='gloo' or fewer processes per node")
        torch.cuda.set_device(_local_rank_and_size()[0])               # one GPU per rank, before NCCL starts
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def leave(code: int = 0) -> NoReturn:
    """End this rank's process after its work: leave the process group and exit with `code`, without
    Python's interpreter shutdown. Call it last in a torchrun worker, after rank 0 has saved what it
    keeps. Why not a plain return: gloo's worker threads can still hold the last collective's tensors
    when the interpreter shuts down; freeing them then needs the GIL, which is gone, and the rank aborts
    (std::terminate, SIGABRT) after training succeeded, so torchrun reports the run failed. Seen in
    about 1 run in 8 with both cores busy (torch 2.13, tests/test_distributed.py's worker);
    destroy_process_group alone does not stop it. os._exit skips that shutdown, so the output streams
    are flushed first."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()              # frees the communicators (NCCL asks for it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank_device() -> torch.device:
    """Where this rank's model and batches go: its GPU under an nccl process group
    (cuda:LOCAL_RANK, set by init_from_env), the CPU otherwise (gloo, or no process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_micro_batches(n_micro: int, world_size: int, rank: int) -> list[int]:
    """Which of a step's n_micro micro-batches (grad_accum · W, drawn in the same order on every
    rank) rank `rank` computes: rank, rank + W, rank + 2W, ..."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if n_micro < 1 or n_micro % world_size:
        raise ValueError(f"n_micro={n_micro} micro-batches must be a positive multiple of world_size={world_size}")
    return list(range(rank, n_micro, world_size))


def average_gradients(grads: list[torch.Tensor]) -> torch.Tensor:
    """What the all-reduce leaves on every rank, written for one process: (1/W) Σ_r g_r, summed in
    rank order (the lesson's exercise; `allreduce_gradients` does it across processes)."""
    if not grads:
        raise ValueError("average_gradients: no gradients (one per rank)")
    if any(g.shape != grads[0].shape for g in grads):
        raise ValueError(f"every rank's gradient must have one shape; got {[tuple(g.shape) for g in grads]}")
    total = grads[0].clone()
    for g in grads[1:]:
        total += g
    return total / len(grads)


def ring_allreduce_bytes(payload: int, world_size: int) -> float:
    """Bytes each rank sends in a ring all-reduce of `payload` bytes: reduce-scatter then
    all-gather, each W − 1 steps of payload / W, so 2 (W − 1) / W · payload (0 for one rank)."""
    if world_size < 1 or payload < 0:
        raise ValueError(f"world_size={world_size} must be >= 1 and payload={payload} >= 0")
    return 2 * (world_size - 1) / world_size * payload


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The micro-batch of each rank when `global_batch` examples are split over `world_size` ranks."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be an int >= 1")
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"global_batch={global_batch!r} must be an int >= 1")
    if global_batch % world_size:
        raise ValueError(f"global_batch={global_batch} is not divisible by world_size={world_size}: every rank "
                         f"must get the same micro-batch (try {global_batch - global_batch % world_size or world_size})")
    return global_batch // world_size


def _check_nccl_device(tensors: list, who: str, what: str) -> None:
    """nccl moves GPU tensors only: a CPU tensor there is a ValueError here, not an error inside NCCL."""
    if dist.get_backend() == "nccl" and any(t.device.type != "cuda" for t in tensors):
        raise ValueError(f"{who}: nccl communicates GPU tensors only, but {what} is on the CPU; move the model to "
                         f"minift.distributed.rank_device() before training")


@torch.no_grad()
def broadcast_parameters(model: torch.nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers rank src's (as DDP does when it wraps a model)."""
    if not is_distributed():
        return
    tensors = list(model.parameters()) + list(model.buffers())
    _check_nccl_device(tensors, "broadcast_parameters", "the model")
    for t in tensors:
        dist.broadcast(t.data, src)


@torch.no_grad()
def allreduce_gradients(params: list[torch.Tensor]) -> int:
    """Average the gradients of `params` over the ranks, in one flat all-reduce; returns the
    payload in bytes (0 outside a process group). A parameter without a gradient on this step
    counts as a zero gradient, so every rank sends the same buffer. The buffer is made on the
    parameters' device (a GPU under nccl), in their dtype."""
    if not is_distributed():
        return 0
    params = [p for p in params if p.requires_grad]
    if not params:
        return 0
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])  # (N,)
    _check_nccl_device([flat], "allreduce_gradients", "the gradients")
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()                                       # g = (1/W) Σ_r g_r
    i = 0
    for p in params:
        n = p.numel()
        g = flat[i:i + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        i += n
    return flat.numel() * flat.element_size()


def sum_over_ranks(value: float) -> float:
    """The sum of a Python number over the ranks (the step's loss, its count of targets); the number
    itself outside a process group."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=rank_device())   # nccl: GPU tensors only
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())
