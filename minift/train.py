"""One small training loop for every lesson: AdamW, linear warmup + cosine decay, gradient
clipping and accumulation, an eval hook, a tqdm bar, and a history of dicts.

    lr(s) = lr_max * s / warmup                                  s <  warmup
    lr(s) = lr_min + (lr_max - lr_min) * (1 + cos(pi p)) / 2     p = (s - warmup) / (steps - warmup)

What is trained is whatever `requires_grad` says: a fine-tuning method freezes the rest before
calling `train`. The loss is pluggable: `loss_fn(model, batch) -> (loss, {name: float})`, so the
same loop trains a language model, a classifier, a reward model or DPO. Loss masks travel in the
batch (targets = -100 where no loss is taken).

Gradient accumulation. A step of k = grad_accum micro-batches (times W ranks) trains on one loss

    L = sum_j w_j L_j,    sum_j w_j = 1 over every micro-batch of the step, on every rank

A loss that is a mean over the batch's counted targets says so (`loss_fn.token_mean = True`, as
`lm_loss` does, or a function giving the batch's target tensor where the targets are not
batch["targets"], as distillation's with mask="labels"); then w_j = n_j / N, with n_j the counted
targets (!= -100) of micro-batch j and N those of the whole step: one mean over the step's
tokens, exactly the loss of one batch holding all its rows, however the masks and padding split
the tokens (lesson 01's (1.8)). Any other loss is a mean over its batch's examples and
w_j = 1 / (k W): the mean of the micro-batches' means.

Runs are deterministic for a given seed: batches are drawn with a private torch.Generator, and
dropout uses the global RNG seeded at the start. Under torchrun (after distributed.init_from_env())
the same loop runs data-parallel: rank r of W takes micro-batches r, r + W, ... and the trainable
gradients are averaged across ranks before each step (minift/distributed.py).

Devices. The loop trains the model where it is: each batch (tensors in a dict, list or tuple, nested
or not) is moved to the device of the model's parameters by `to_device` before `loss_fn` sees it, so
a dataset of CPU tensors trains a model on `cuda` unchanged. Batches are drawn on the CPU with the
private generator, so the same seed picks the same examples on every device.

Mixed precision. `TrainConfig(autocast="bf16")` runs the forward and the loss under
`torch.autocast(device_type, torch.bfloat16)`: matrix multiplications in bfloat16, the ops torch's
autocast keeps in float32 (log-softmax, cross-entropy among them) in float32, while the parameters,
their gradients and AdamW's state stay in the parameters' dtype (float32). bfloat16 has float32's exponent range, so gradients need no scaling; it works on
the CPU and on CUDA. `autocast="fp16"` (CUDA only) uses float16, whose smallest normal number is
6.1e-5: small gradients would flush to zero, so the loss is multiplied by a scale S before backward
and the gradients divided by S before clipping and the step (torch.amp.GradScaler, which also skips
a step whose gradients overflowed and lowers S). fp16 is for CUDA only (the CPU's float16 kernels are
few and slow): on the CPU it is refused, use bf16 there.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .distributed import (allreduce_gradients, broadcast_parameters, rank_and_world, rank_micro_batches,
                          sum_over_ranks)
from .model import IGNORE_INDEX, at_least_fp32, check_target_ids
from .validate import FieldTypeError, check_bool, check_choice, check_float, check_int, check_str


AUTOCAST = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}   # TrainConfig.autocast -> dtype


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1        # lr_min = lr * min_lr_ratio
    warmup_steps: Optional[int] = None   # None: steps // 10
    weight_decay: float = 0.0        # applied to matrices only (never biases, norms)
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0           # max global grad norm; 0 disables
    grad_accum: int = 1              # micro-batches per optimizer step
    length_buckets: int = 0          # k > 0: group k batches' worth of examples by length (less padding)
    eval_every: int = 0              # 0: evaluate only at the end (if eval_fn is given)
    log_every: int = 1
    seed: int = 0
    progress: bool = True
    desc: str = "train"
    autocast: Optional[str] = None   # None: the parameters' dtype; "bf16" (cpu, cuda) or "fp16" (cuda)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            check_int(self, name, getattr(self, name), lo=1)
        check_int(self, "length_buckets", self.length_buckets, lo=0, hint=" (0: off)")
        check_int(self, "eval_every", self.eval_every, lo=0, hint=" (0: only at the end)")
        check_int(self, "seed", self.seed, lo=0)
        check_float(self, "lr", self.lr, lo=0, lo_open=True)
        check_float(self, "min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_float(self, "weight_decay", self.weight_decay, lo=0)
        check_float(self, "grad_clip", self.grad_clip, lo=0, hint=" (0: no clipping)")
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2):
            raise FieldTypeError(f"TrainConfig.betas={self.betas!r} must be a pair (beta1, beta2), e.g. (0.9, 0.95)")
        self.betas = tuple(check_float(self, f"betas[{i}]", b, 0, 1, hi_open=True) for i, b in enumerate(self.betas))
        check_bool(self, "progress", self.progress)
        check_str(self, "desc", self.desc)
        if self.autocast is not None:
            check_choice(self, "autocast", self.autocast, ("bf16", "fp16"),
                         hint=" or None (no mixed precision): 'bf16' on CPU or CUDA, 'fp16' on CUDA only")
        if not isinstance(self.extra, dict):
            raise FieldTypeError(f"TrainConfig.extra={self.extra!r} must be a dict")
        if self.warmup_steps is None:
            self.warmup_steps = self.steps // 10
        check_int(self, "warmup_steps", self.warmup_steps, lo=0, hint=" (None: steps // 10)")
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}]: "
                             f"a warmup longer than the run never reaches the peak lr")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps                    # linear warmup
    span = max(1, cfg.steps - cfg.warmup_steps)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + (cfg.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))    # cosine to lr_min


def to_device(batch, device):
    """`batch` with every tensor in it moved to `device`: dicts, lists and tuples are walked (nested),
    anything that is not a tensor (a string, an int, None) comes back untouched. The one helper the
    loops (train, evaluate_nll, evals, align) use before calling a loss on a model's device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)   # namedtuple too
    return batch


def model_device(model) -> torch.device:
    """Where a model's parameters live (its first parameter's device; cpu for a parameterless model)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def lm_loss(model, batch):
    """Next-token cross-entropy, the mean over the positions whose target is not -100."""
    out = model(batch["idx"], batch["targets"], attention_mask=batch.get("attention_mask"))
    return out.loss, {}


lm_loss.token_mean = True      # a mean over counted targets: train weighs micro-batches by their counts


def counted_targets(batch, targets_of=None) -> int:
    """The number of targets of a batch that a token-mean loss counts (!= -100): of batch["targets"], or
    of targets_of(batch) when given (a loss_fn's token_mean that is a function)."""
    if not callable(targets_of) and not (isinstance(batch, dict) and "targets" in batch):
        raise ValueError("train: a token-mean loss_fn (loss_fn.token_mean = True) needs batches with 'targets'; "
                         f"this batch has {sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
    y = targets_of(batch) if callable(targets_of) else batch["targets"]
    return int((y != IGNORE_INDEX).sum())


def micro_batch_weights(batches: list, token_mean, grad_accum: int, world: int) -> list[float]:
    """w_j for this rank's micro-batches of one step (see the module doc), summing to 1 over every rank:
    w_j = n_j / N for a token-mean loss (N summed over the ranks), else 1 / (grad_accum * world).
    token_mean: the loss_fn's attribute (False, True, or a function giving a batch's targets)."""
    if not token_mean:
        return [1.0 / (grad_accum * world)] * len(batches)
    counts = [counted_targets(b, token_mean) for b in batches]   # n_j
    total = round(sum_over_ranks(sum(counts)))               # N: the step's counted targets, all ranks
    if total == 0:                                           # nothing to predict in the whole step: every
        return [1.0 / (grad_accum * world)] * len(batches)   # L_j is 0 (GPT.forward), the gradient zero
    return [n / total for n in counts]


def stack_collate(items: list[dict]) -> dict:
    """Stack equal-length items (dicts of tensors) into a batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters (everything is frozen)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


class BatchSampler:
    """Endless shuffled epochs of indices drawn with a private generator (deterministic)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("train: the dataset is empty")
        self.n, self.bs = n, batch_size
        self.g = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.g, device="cpu"), 0   # indices: CPU, .tolist()

    def next(self) -> list[int]:
        out = []
        while len(out) < self.bs:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.g, device="cpu"), 0
            take = min(self.bs - len(out), self.n - self.pos)
            out += self.perm[self.pos:self.pos + take].tolist()
            self.pos += take
        return out


class BucketSampler(BatchSampler):
    """Length bucketing: take the next k batches' worth of indices from BatchSampler's shuffled stream,
    sort them by length, cut them into k batches and hand those out in a random order. Every
    example is still seen once per epoch; a batch then holds examples of similar length, so
    padding (compute spent on nothing) shrinks. The price: batches are no longer i.i.d. draws.
    Where length tells tasks apart, a batch holds one task: lesson 03's instruction mixture
    (batch 4) trained that way ended with sentiment accuracy 0.01 instead of 0.5+, so use it on
    one task's data (lesson 02's sentiment), not on mixtures."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, k: int):
        super().__init__(len(lengths), batch_size, seed)
        self.lengths, self.k, self.ready = lengths, k, []
        self.order_g = torch.Generator().manual_seed(seed + 1)   # own generator: the stream stays BatchSampler's

    def next(self) -> list[int]:
        if not self.ready:
            pool = [BatchSampler.next(self) for _ in range(self.k)]
            flat = sorted((i for b in pool for i in b), key=lambda i: self.lengths[i])   # stable
            batches = [flat[j * self.bs:(j + 1) * self.bs] for j in range(self.k)]
            order = torch.randperm(self.k, generator=self.order_g, device="cpu").tolist()
            self.ready = [batches[j] for j in order]
        return self.ready.pop()


def item_length(item) -> int:
    """Tokens in a dataset item: len(item["idx"])."""
    if not isinstance(item, dict) or "idx" not in item:
        raise ValueError("TrainConfig.length_buckets needs dataset items that are dicts with an 'idx' sequence")
    return len(item["idx"])


def autocast_context(cfg: TrainConfig, device: torch.device):
    """(the context the forward and loss run in, a GradScaler or None) for cfg.autocast on `device`."""
    dtype = AUTOCAST[cfg.autocast]
    if dtype is None:
        return nullcontext(), None
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"TrainConfig.autocast='fp16' needs the model on a CUDA device (it is on {device}); "
                         f"use autocast='bf16' here (float32's range, no loss scaling needed)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"TrainConfig.autocast={cfg.autocast!r}: mixed precision runs on cpu or cuda, the model "
                         f"is on {device}")
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None   # bf16: float32's range, no scaling
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


def train(model, dataset, cfg: TrainConfig, *, loss_fn: Callable = lm_loss,
          collate_fn: Callable = stack_collate, eval_fn: Optional[Callable] = None,
          optimizer: Optional[torch.optim.Optimizer] = None) -> list[dict]:
    """Train `model` on `dataset` (a sequence of items) for cfg.steps optimizer steps.

    Returns the history: one dict per logged step {step, lr, loss, grad_norm, tokens, time, ...}
    (time: seconds spent training so far, eval_fn's time excluded)
    plus, every eval_every steps and at the end, the dict eval_fn(model) returned (prefixed "eval_").
    """
    torch.manual_seed(cfg.seed)
    device = model_device(model)                  # batches go where the parameters are
    amp, scaler = autocast_context(cfg, device)   # mixed precision (cfg.autocast), see the module doc
    rank, world = rank_and_world()                # data-parallel under torchrun (minift/distributed.py)
    broadcast_parameters(model)                   # every rank starts from rank 0's weights
    opt = optimizer or make_optimizer(model, cfg)
    token_mean = getattr(loss_fn, "token_mean", False)   # micro-batches weighed by counted targets
    sampler = (BucketSampler([item_length(dataset[i]) for i in range(len(dataset))], cfg.batch_size, cfg.seed,
                             cfg.length_buckets) if cfg.length_buckets else BatchSampler(len(dataset), cfg.batch_size, cfg.seed))
    history: list[dict] = []
    model.train()
    t0, t_eval, tokens = time.perf_counter(), 0.0, 0          # "time" counts training, not eval_fn
    bar = tqdm(range(cfg.steps), desc=cfg.desc, disable=not cfg.progress or rank != 0, leave=False, dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        total, metrics = 0.0, {}
        mine = set(rank_micro_batches(cfg.grad_accum * world, world, rank))
        micro = []
        for j in range(cfg.grad_accum * world):   # the same stream on every rank; rank r takes r, r + W, ...
            take = sampler.next()
            if j in mine:
                micro.append(collate_fn([dataset[i] for i in take]))
        weights = micro_batch_weights(micro, token_mean, cfg.grad_accum, world)   # w_j, Σ_j w_j = 1 (all ranks)
        mine_w = sum(weights) or 1.0              # this rank's share: its metrics are its own weighted mean
        for batch, w in zip(micro, weights):
            if "targets" in batch:
                tokens += counted_targets(batch)
            if w == 0:                            # no counted target here (n_j = 0): nothing to learn from
                continue
            batch = to_device(batch, device)
            with amp:                             # forward + loss (autocast: in bf16 / fp16)
                loss, m = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise ValueError(f"train: loss became {loss.item()} at step {step}; lower the lr "
                                 f"(now {lr:.2e}) or check the inputs")
            scaled = loss * (w * world)           # the all-reduce divides by W: Σ_r W Σ_j w_j ∇L_j / W = ∇L
            (scaled if scaler is None else scaler.scale(scaled)).backward()   # fp16: d(S L)/dθ
            total += w * loss.item()
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * w / mine_w
        params = [p for g in opt.param_groups for p in g["params"]]
        comm = allreduce_gradients(params)        # g = (1/W) Σ_r g_r over the trainable parameters only
        total = sum_over_ranks(total)             # L = Σ over all ranks' micro-batches of w_j L_j
        if scaler is not None:
            scaler.unscale_(opt)                  # g / S: clipping sees the true gradient
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)                      # skipped if g / S holds inf or NaN
            scaler.update()                       # then S shrinks; after a run of good steps it grows
        opt.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "lr": lr, "loss": total, "grad_norm": float(gn), "tokens": tokens,
               "time": time.perf_counter() - t0 - t_eval, **metrics}
        if world > 1:
            rec["comm_bytes"] = comm
        last = step + 1 == cfg.steps
        if eval_fn is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            te = time.perf_counter()
            model.eval()
            with torch.no_grad():
                rec.update({f"eval_{k}": v for k, v in eval_fn(model).items()})
            model.train()
            t_eval += time.perf_counter() - te
        if (step + 1) % cfg.log_every == 0 or last or any(k.startswith("eval_") for k in rec):
            history.append(rec)
        bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.1e}")
    bar.close()
    model.eval()
    return history


@torch.no_grad()
def evaluate_nll(model, dataset, *, batch_size: int = 16, collate_fn: Callable = stack_collate,
                 max_batches: Optional[int] = None) -> float:
    """Mean negative log-likelihood (nats per predicted token) over the dataset's targets.
    Token-weighted, so batches with more real targets count more. exp() of it is perplexity."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    for b, start in enumerate(range(0, len(dataset), batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        batch = to_device(collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]), device)
        logits = model(batch["idx"], attention_mask=batch.get("attention_mask")).logits
        t = batch["targets"]
        check_target_ids(t, logits.size(-1))
        nll = torch.nn.functional.cross_entropy(at_least_fp32(logits.reshape(-1, logits.size(-1))), t.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="sum")
        total += nll.item()
        count += int((t != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_nll: the dataset has no target tokens")
    return total / count
