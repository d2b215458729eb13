"""Lesson 17's assignment (a distillation step): the reference `run_*` function and its checks.

    run_distill_step(student, teacher, batch, alpha, temperature, lr)   one SGD step of Hinton's loss; returns it

The reference scores the batch with both models (the teacher under no_grad), takes Hinton's mixture
`minift.align.distill.kd_loss` (forward KL at temperature T, soft and hard terms both over the
positions with a label) and moves the student's parameters by one plain gradient-descent step
θ ← θ − lr ∇_θ L. The teacher never changes.

The checks, registered into `CHECKS` with lesson="lesson17". The models' forwards are the given:
the checks read both models' logits and compute the loss from them in float64 numpy (lesson 17's
`kl64` and `log_softmax64`), and the step's gradient by autograd on a float64 copy of the student
with the loss written out here (not minift's).

    run_distill_step   the loss is the float64 α T² KL + (1 − α) CE of the logits (α = 0, ½, 1;
                       left or right padding); the student becomes θ − lr ∇L whatever stale .grad
                       it held; the teacher is untouched and gets no gradient; a small step lowers
                       the loss
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from hypothesis import strategies as st

from minift.align.distill import kd_loss
from minift.model import GPT, GPTConfig, IGNORE_INDEX

from .harness import assert_close, assert_only_trained_moved, property_check, scalar, sgd_step
from .lesson17_distillation import kl64, log_softmax64

# ---- the reference function ------------------------------------------------------------------------


def run_distill_step(student: torch.nn.Module, teacher: torch.nn.Module, batch: dict, alpha: float,
                     temperature: float, lr: float) -> torch.Tensor:
    """One distillation step on a batch {"idx" (B, T), "attention_mask" (B, T), "labels" (B, T), -100
    where a position has no label}: s, t = the student's and the teacher's logits (B, T, K), the
    teacher scored without gradient, then

        L = α T² mean_i KL(softmax(t_i / T) ‖ softmax(s_i / T)) + (1 − α) mean_i CE(y_i, softmax(s_i))
        θ ← θ − lr ∇_θ L       for every student parameter that requires grad

    both means over the positions i with a label. Returns L before the step (a 0-dim tensor)."""
    if not isinstance(batch, dict) or not {"idx", "attention_mask", "labels"} <= set(batch):
        raise TypeError("run_distill_step: batch must be a dict with idx, attention_mask and labels")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"run_distill_step: lr={lr!r} must be a number > 0")
    idx, am, y = batch["idx"], batch["attention_mask"], batch["labels"]
    s = student(idx, attention_mask=am).logits                                   # (B, T, K)
    with torch.no_grad():
        t = teacher(idx, attention_mask=am).logits                               # (B, T, K)
    loss = kd_loss(s, t, y, y != IGNORE_INDEX, float(alpha), float(temperature), "forward")
    return sgd_step(loss, student, lr)                                  # θ ← θ − lr ∇L


# ---- inputs ----------------------------------------------------------------------------------------

V_TINY, T_TINY = 9, 6
SEEDS = st.integers(0, 2 ** 16)
ALPHAS = st.sampled_from([0.0, 0.5, 1.0])
TEMPS = st.sampled_from([1.0, 2.0, 4.0])


def tiny_gpt(seed: int, n_embd: int) -> GPT:
    """A 1-layer GPT (vocab 9: its logits are the K = 9 classes) with every weight random from `seed`."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V_TINY, block_size=T_TINY, n_layer=1, n_head=2, n_embd=n_embd, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g) if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                    else 0.5 * torch.randn(p.shape, generator=g))
    return model


def distill_inputs(seed: int, B: int, left: bool):
    """(student width 8, teacher width 16, batch): B sentences of 2 .. 6 tokens padded on one side,
    each real position labelled with probability 1/2 (at least one label per batch), -100 elsewhere."""
    student, teacher = tiny_gpt(seed, 8), tiny_gpt(seed + 1, 16)
    g = torch.Generator().manual_seed(seed + 2)
    lengths = [int(torch.randint(2, T_TINY + 1, (1,), generator=g)) for _ in range(B)]
    T = max(lengths)
    idx = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, n in enumerate(lengths):
        sl = slice(T - n, T) if left else slice(0, n)
        idx[b, sl] = torch.randint(1, V_TINY, (n,), generator=g)
        mask[b, sl] = 1
        keep = torch.rand(n, generator=g) < 0.5
        labels[b, sl] = torch.where(keep, torch.randint(0, V_TINY, (n,), generator=g), IGNORE_INDEX)
    if not bool((labels != IGNORE_INDEX).any()):
        labels[0, (T - 1) if left else 0] = 1
    return student, teacher, {"idx": idx, "attention_mask": mask, "labels": labels}


def _logits64(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model(batch["idx"], attention_mask=batch["attention_mask"]).logits.double().numpy()


def _loss64(student, teacher, batch, alpha, T) -> float:
    """α T² mean KL(p ‖ q) + (1 − α) mean CE over the labelled positions, in float64 numpy."""
    keep = (batch["labels"] != IGNORE_INDEX).numpy()
    s, t, y = _logits64(student, batch)[keep], _logits64(teacher, batch)[keep], batch["labels"].numpy()[keep]
    soft = T ** 2 * kl64(log_softmax64(t / T), log_softmax64(s / T)).mean()
    hard = -log_softmax64(s)[np.arange(len(y)), y].mean()
    return float(alpha * soft + (1 - alpha) * hard)


def _loss_torch64(student64, teacher, batch, alpha, T) -> torch.Tensor:
    """The same loss in float64 torch, differentiable in the student's float64 copy."""
    keep = batch["labels"] != IGNORE_INDEX
    s = student64(batch["idx"], attention_mask=batch["attention_mask"]).logits.double()[keep]     # (n, K)
    t = torch.tensor(_logits64(teacher, batch))[keep]
    log_p, log_q = torch.log_softmax(t / T, -1), torch.log_softmax(s / T, -1)
    soft = T ** 2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    y = batch["labels"][keep]
    hard = -torch.log_softmax(s, -1)[torch.arange(len(y)), y].mean()
    return alpha * soft + (1 - alpha) * hard


def _copy(batch: dict) -> dict:
    return {k: v.clone() for k, v in batch.items()}


def _what(batch, alpha, T, lr) -> str:
    return (f"run_distill_step(student, teacher, batch idx {batch['idx'].tolist()}, labels {batch['labels'].tolist()}, "
            f"alpha={alpha}, temperature={T}, lr={lr})")


# ---- the checks ------------------------------------------------------------------------------------

# Two left-padded rows of different lengths (seed 4: row 0 is a pad then 2 tokens, row 1 is 3 tokens), both terms
# weighed: row 0's labelled positions must not attend to its pad (the loss is 3.589; seeing the pad gives 4.530).
# Padding only shows on the left with rows of different lengths, which 10 random examples do not always draw.
_LEFT_PADDED = dict(seed=4, B=2, left=True, alpha=0.5, T=2.0)


@property_check("run_distill_step", lesson=17, examples=10, explicit=[_LEFT_PADDED], seed=SEEDS, B=st.integers(1, 3),
                left=st.booleans(), alpha=ALPHAS, T=TEMPS)
def distill_step_loss_matches_float64(fn, seed, B, left, alpha, T):
    """the loss run_distill_step(student, teacher, batch, α, T, lr) returns is the float64 α T² KL(p ‖ q)
    + (1 − α) CE of the two models' logits before the step (p = softmax(t/T), q = softmax(s/T), CE at
    T = 1), both means over the positions with a label; α = 0, ½, 1; left or right padding."""
    student, teacher, batch = distill_inputs(seed, B, left)
    want = _loss64(student, teacher, batch, alpha, T)
    what = _what(batch, alpha, T, 0.1)
    assert_close(scalar(fn(student, teacher, _copy(batch), alpha, T, 0.1), what), want,
                 f"{what} vs α T² KL + (1 − α) CE of the logits, in float64", atol=1e-5 * T ** 2, rtol=1e-5)


@property_check("run_distill_step", lesson=17, examples=10, seed=SEEDS, B=st.integers(1, 3), alpha=ALPHAS, T=TEMPS,
                lr=st.sampled_from([0.05, 0.3]))
def distill_step_is_one_sgd_step(fn, seed, B, alpha, T, lr):
    """the step is plain gradient descent on this batch's loss: every student parameter becomes θ − lr ∇_θ L,
    ∇L the gradient of the float64 loss (autograd on a float64 copy of the student), whatever stale
    gradient the student's .grad held before (set here to 1 on every parameter)."""
    student, teacher, batch = distill_inputs(seed, B, left=bool(seed % 2))
    s64 = copy.deepcopy(student).double()
    _loss_torch64(s64, teacher, batch, alpha, T).backward()
    want = {k: (p.detach() - lr * p.grad).numpy() for k, p in s64.named_parameters()}
    for p in student.parameters():
        p.grad = torch.ones_like(p)                                    # a stale gradient from "before"
    what = _what(batch, alpha, T, lr)
    fn(student, teacher, _copy(batch), alpha, T, lr)
    for k, p in student.named_parameters():
        assert_close(p.detach().double().numpy(), want[k], f"{what}: the student's {k} after the step vs θ − lr ∇L",
                     atol=1e-6 + 1e-4 * lr * T, rtol=1e-5)


@property_check("run_distill_step", lesson=17, examples=10, seed=SEEDS, B=st.integers(1, 3), alpha=ALPHAS, T=TEMPS)
def distill_step_teacher_is_frozen(fn, seed, B, alpha, T):
    """the teacher only scores: after the step its weights are the same bit for bit and none of its
    parameters holds a gradient (score it under torch.no_grad()); the student did move."""
    student, teacher, batch = distill_inputs(seed, B, left=bool(seed % 2))
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    what = _what(batch, alpha, T, 0.1)
    fn(student, teacher, _copy(batch), alpha, T, 0.1)
    assert_only_trained_moved(what, teacher, t_before, "teacher", student, s_before, "student")


@property_check("run_distill_step", lesson=17, examples=10, seed=SEEDS, B=st.integers(1, 3), alpha=ALPHAS, T=TEMPS)
def distill_step_lowers_the_loss(fn, seed, B, alpha, T):
    """one small step (lr = 0.005 / max(1, T)) lowers the float64 loss of the batch: the step goes
    down the gradient, not up it."""
    student, teacher, batch = distill_inputs(seed, B, left=bool(seed % 2))
    before = _loss64(student, teacher, batch, alpha, T)
    lr = 0.005 / max(1.0, T)
    what = _what(batch, alpha, T, lr)
    fn(student, teacher, _copy(batch), alpha, T, lr)
    after = _loss64(student, teacher, batch, alpha, T)
    if not after < before:
        raise AssertionError(f"{what}: the loss went from {before!r} to {after!r} after the step; it must fall")
