"""Lesson 01 exercise: the three formulas every pretraining run rests on.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 01`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch tensor operations and `math`. Do not call F.cross_entropy,
F.log_softmax, torch.logsumexp or minift itself: writing them is the point (your lesson 00
cross-entropy is fair game if you copy it in). Inputs are float32 / int64 tensors.
"""
import math  # noqa: F401  (math.cos, math.pi, math.exp)

import torch  # noqa: F401


def run_next_token_loss(logits, tokens, loss_mask=None):
    """The language-modelling loss: the logits at position t predict the token at t + 1.

        L = -(1/N) sum over (b, t), t < T - 1, with loss_mask[b, t + 1] = 1 of
                log softmax(logits[b, t])[tokens[b, t + 1]]
          =  (1/N) sum  ( logsumexp(logits[b, t]) - logits[b, t, tokens[b, t + 1]] )

    N is the number of counted (b, t). The mask marks which *target* tokens count, so it is
    read shifted: position t is scored when loss_mask[b, t + 1] is 1 (loss_mask[:, 0] never
    matters: the first token is never a target). The last position T - 1 has no next token
    and is never scored.

    logits: (B, T, V) float; tokens: (B, T) int64 in [0, V); loss_mask: (B, T) of 0/1, or None
    (every target counts). Returns a scalar tensor; 0.0 (not NaN) when no target counts.
    Must be stable for large logits (shift by the row max before exp).
    """
    raise NotImplementedError("run_next_token_loss: not written yet; its docstring and "
                              "lessons/01_pretraining/README.md, \"The maths\", say what it computes")


def run_lr_schedule(step, steps, warmup_steps, lr, min_lr_ratio):
    """The learning rate at optimizer step `step` (0-based): linear warmup, then cosine decay.

        lr_min = lr * min_lr_ratio
        step <  warmup_steps:  lr * (step + 1) / warmup_steps        (step warmup_steps - 1 gets lr)
        step >= warmup_steps:  p  = min(1, (step - warmup_steps) / (steps - warmup_steps))
                               lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2

    So the cosine starts at lr (p = 0), passes (lr + lr_min) / 2 half-way (p = 1/2), reaches
    lr_min at step == steps (p = 1) and stays there. warmup_steps may be 0 (no warmup);
    0 <= warmup_steps < steps. Returns a Python float.
    """
    raise NotImplementedError("run_lr_schedule: not written yet; its docstring and "
                              "lessons/01_pretraining/README.md, \"The maths\", say what it computes")


def run_perplexity(nll_sums, n_tokens):
    """Perplexity of a corpus that was scored batch by batch:

        ppl = exp( sum_i nll_sums[i] / sum_i n_tokens[i] )

    nll_sums: (N,) float, the summed negative log-likelihood (nats) of the target tokens of
    batch i; n_tokens: (N,) int64, how many target tokens batch i had. The mean NLL is weighted
    by tokens: it is NOT the mean of the per-batch means, nor the mean of per-batch
    perplexities. A uniform model over V tokens pays log V per token, so its perplexity is V.
    Returns a Python float.
    """
    raise NotImplementedError("run_perplexity: not written yet; its docstring and "
                              "lessons/01_pretraining/README.md, \"The maths\", say what it computes")
