"""Where a walkthrough's work runs and how long it takes: the device of its --device flag, and the
course's stopwatch.

`course.start` sets the device (`set_device`); every helper here takes its `dev` argument or, without
one, that device (`device()`; cpu before `start`). On the CPU the stopwatch reads this process's CPU
seconds (one torch thread: CPU time is the work, and other jobs on a shared machine do not inflate
it); on a GPU it reads wall seconds after `torch.cuda.synchronize()`, since the CPU only queues the
work there. `course` re-exports all of it: a walkthrough writes `course.clock()`."""
from __future__ import annotations

import time

import torch

from .report import kib
from .train import model_device, to_device

_device = torch.device("cpu")   # --device, set by course.start (`device()`)


def device() -> torch.device:
    """The walkthrough's device (--device; cpu before `course.start`)."""
    return _device


def set_device(dev: torch.device) -> None:
    """Make `dev` the default of every helper here (`course.start` calls it with --device's device)."""
    global _device
    _device = torch.device(dev)


def sync(dev=None) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU): a CUDA call returns before it is done,
    so a clock read after it without this times the launch, not the work."""
    dev = torch.device(dev) if dev is not None else _device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def clock(dev=None) -> float:
    """The course's stopwatch: this process's CPU seconds on the CPU (time.process_time: one torch
    thread, so CPU time is the work, and other jobs on a shared machine do not inflate it), wall
    seconds after a synchronize on a GPU (the CPU only queues the work there)."""
    dev = torch.device(dev) if dev is not None else _device
    if dev.type == "cuda":
        sync(dev)
        return time.perf_counter()
    return time.process_time()


def clock_name(dev=None) -> str:
    """What `clock` measures on `dev`: "CPU" or "GPU wall" (for the label of a printed time)."""
    dev = torch.device(dev) if dev is not None else _device
    return "GPU wall" if dev.type == "cuda" else "CPU"


def memory_note(dev=None) -> str:
    """On a GPU, the peak memory torch allocated on it so far (torch.cuda.max_memory_allocated),
    as ", peak GPU memory X"; on the CPU an empty string."""
    dev = torch.device(dev) if dev is not None else _device
    return f", peak GPU memory {kib(torch.cuda.max_memory_allocated(dev))}" if dev.type == "cuda" else ""


def forward_cpu_seconds(models: dict, batch: dict, rounds: int) -> dict:
    """The fastest forward time of each model on `batch` (eval mode, no grad), in seconds.

    One warm-up pass each, then `rounds` rounds interleaved over the models, so that a change of
    load hits all of them alike. Measured by `clock` on the models' device: on the CPU this
    process's CPU time (one torch thread, so CPU time is the work), which other jobs on a shared
    machine do not inflate as they do wall time; on a GPU wall time with a synchronize before each
    reading (`clock_name` says which). The batch is moved to each model's device. Leaves every
    model in eval mode."""
    best = {k: float("inf") for k in models}
    with torch.no_grad():
        on = {}
        for k, m in models.items():
            dev = model_device(m)
            on[k] = dev, to_device(batch, dev)
            m.eval()(on[k][1]["idx"], attention_mask=on[k][1]["attention_mask"])          # warm up
        for _ in range(rounds):
            for k, m in models.items():
                dev, b = on[k]
                t0 = clock(dev)
                m(b["idx"], attention_mask=b["attention_mask"])
                best[k] = min(best[k], clock(dev) - t0)
    return best
