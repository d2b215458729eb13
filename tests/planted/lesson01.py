"""Planted bugs for lesson 01: copies of the reference run_* functions, one plausible mistake each.

tests/test_planted.py swaps each `run_<fn>__<bug>` in for the reference `run_<fn>` and expects at
least one of run_<fn>'s checks to fail. The loop's bugs share `_loop`, the reference loop with
one switch per mistake.
"""
import math

import torch
import torch.nn.functional as F

from minift.conformance import reference as ref
from minift.train import TrainConfig, lr_at


# ---- the warm-ups ----------------------------------------------------------------------------------

def run_next_token_loss__unshifted_mask(logits, tokens, loss_mask=None):
    """reads the mask at the position (loss_mask[:, t]) instead of at the target (loss_mask[:, t + 1])."""
    if loss_mask is None:
        return ref.run_next_token_loss(logits, tokens)
    shifted = torch.cat([loss_mask[:, :1], loss_mask[:, :-1]], dim=1)       # mask[t + 1] := mask[t]
    return ref.run_next_token_loss(logits, tokens, shifted)


def run_next_token_loss__unshifted_logits(logits, tokens, loss_mask=None):
    """scores the logits at t against the token at t (no shift), over positions 1..T-1."""
    rolled = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)              # logits[t + 1] := logits[t]
    return ref.run_next_token_loss(rolled, tokens, loss_mask)


def run_next_token_loss__nan_when_empty(logits, tokens, loss_mask=None):
    """divides by the number of counted targets even when it is 0 (NaN instead of 0)."""
    if loss_mask is not None and not bool((loss_mask[:, 1:] != 0).any()):
        return logits.sum() * float("nan")
    return ref.run_next_token_loss(logits, tokens, loss_mask)


def run_next_token_loss__mean_per_row(logits, tokens, loss_mask=None):
    """averages each row's mean loss (a mean of per-sequence means) instead of one mean over tokens."""
    rows = []
    for b in range(logits.shape[0]):
        m = None if loss_mask is None else loss_mask[b:b + 1]
        if m is None or bool((m[:, 1:] != 0).any()):
            rows.append(ref.run_next_token_loss(logits[b:b + 1], tokens[b:b + 1], m))
    return torch.stack(rows).mean() if rows else logits.sum() * 0.0


def run_lr_schedule__warmup_from_zero(step, steps, warmup_steps, lr, min_lr_ratio):
    """warms up as lr step / warmup (step 0 gets 0; lr only at step warmup)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    return ref.run_lr_schedule(step, steps, warmup_steps, lr, min_lr_ratio)


def run_lr_schedule__cosine_to_zero(step, steps, warmup_steps, lr, min_lr_ratio):
    """decays to 0 instead of to lr_min = lr min_lr_ratio."""
    return ref.run_lr_schedule(step, steps, warmup_steps, lr, 0.0)


def run_lr_schedule__unclamped_cosine(step, steps, warmup_steps, lr, min_lr_ratio):
    """forgets min(1, .) on the progress p, so the cosine rises again after `steps`."""
    if step < warmup_steps:
        return ref.run_lr_schedule(step, steps, warmup_steps, lr, min_lr_ratio)
    lo, p = lr * min_lr_ratio, (step - warmup_steps) / (steps - warmup_steps)
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


def run_lr_schedule__cosine_over_all_steps(step, steps, warmup_steps, lr, min_lr_ratio):
    """measures the cosine's progress from step 0 (p = step / steps) instead of from the end of warmup."""
    if step < warmup_steps:
        return ref.run_lr_schedule(step, steps, warmup_steps, lr, min_lr_ratio)
    lo, p = lr * min_lr_ratio, min(1.0, step / steps)
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


def run_perplexity__mean_of_batch_means(nll_sums, n_tokens):
    """averages the per-batch mean NLLs (each batch weighs the same) instead of weighting by tokens."""
    return math.exp(float((nll_sums.double() / n_tokens.double()).mean()))


def run_perplexity__mean_of_perplexities(nll_sums, n_tokens):
    """averages the per-batch perplexities."""
    return float(torch.exp(nll_sums.double() / n_tokens.double()).mean())


def run_perplexity__log2(nll_sums, n_tokens):
    """takes 2 to the mean NLL, as if it were in bits (it is in nats)."""
    return 2.0 ** (float(nll_sums.double().sum()) / float(n_tokens.double().sum()))


# ---- the assignment: AdamW, clipping, the loop -------------------------------------------------

def _adamw(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, *, correct=True,
           decoupled=True, eps_inside=False, decay_after=False):
    """AdamW in float32 with one switch per mistake (all off: the textbook step)."""
    b1, b2 = betas
    g = grad + weight_decay * param if not decoupled else grad
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** step) if correct else m
    v_hat = v / (1 - b2 ** step) if correct else v
    u = m_hat / (torch.sqrt(v_hat + eps) if eps_inside else torch.sqrt(v_hat) + eps)
    if not decoupled:
        return param - lr * u, m, v
    if decay_after:
        return (param - lr * u) * (1 - lr * weight_decay), m, v
    return param - lr * (u + weight_decay * param), m, v


def run_adamw_step__no_bias_correction(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """forgets the bias correction m / (1 - b1^t), v / (1 - b2^t)."""
    return _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay, correct=False)


def run_adamw_step__l2_in_gradient(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """adds weight_decay param to the gradient (Adam + L2), so the decay goes through m and v."""
    return _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay, decoupled=False)


def run_adamw_step__eps_inside_sqrt(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """divides by sqrt(v^ + eps) instead of sqrt(v^) + eps."""
    return _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay, eps_inside=True)


def run_adamw_step__decay_after_update(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """decays the already updated parameter instead of the old one."""
    return _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay, decay_after=True)


def run_adamw_step__step_off_by_one(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """bias-corrects with t + 1 (counts the step before incrementing it twice)."""
    return _adamw(param, grad, m, v, step + 1, lr, betas, eps, weight_decay)


def run_adamw_step__in_place(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """updates param, m and v in place (the caller's tensors change)."""
    p, m2, v2 = ref.run_adamw_step(param, grad, m, v, step, lr, betas, eps, weight_decay)
    param.copy_(p), m.copy_(m2), v.copy_(v2)
    return param, m, v


def run_clip_grad_norm__per_tensor(grads, max_norm):
    """clips each tensor to max_norm on its own instead of by the global norm."""
    out = [ref.run_clip_grad_norm([g], max_norm)[0][0] for g in grads]
    return out, ref.run_clip_grad_norm(grads, max_norm)[1]


def run_clip_grad_norm__always_rescales(grads, max_norm):
    """scales to norm max_norm even when the norm is already below it (scales small gradients up)."""
    _, n = ref.run_clip_grad_norm(grads, max_norm)
    return [g * (max_norm / (n + 1e-6)) for g in grads], n


def run_clip_grad_norm__sum_of_norms(grads, max_norm):
    """takes the sum of the tensors' norms as the total instead of the root of the summed squares."""
    n = sum(float(g.double().norm()) for g in grads)
    c = min(1.0, max_norm / (n + 1e-6))
    return [g * c for g in grads], n


def _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, weight_decay=0.0, betas=(0.9, 0.95),
          eps=1e-8, min_lr_ratio=0.1, *, weigh="tokens", divide=True, zero_grad=True, lr_shift=0,
          clip_micro=False, decay_vectors=False, correct=True, report_after=False):
    """The reference loop (the learner's own AdamW and clipping) with one switch per mistake."""
    cfg = TrainConfig(steps=steps, lr=lr, min_lr_ratio=min_lr_ratio, warmup_steps=warmup_steps, progress=False)
    params = [p for p in model.parameters() if p.requires_grad]
    state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for p in params}
    history = []
    model.train()
    for s in range(steps):
        lr_s = lr_at(min(s + lr_shift, steps), cfg)
        micro = batches[s * accumulate:(s + 1) * accumulate]
        counts = [int((b["targets"] != -100).sum()) for b in micro]
        total = 0.0
        for b, c in zip(micro, counts):
            logits = model(b["idx"]).logits
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), b["targets"].reshape(-1),
                                  ignore_index=-100, reduction="sum")
            denom = sum(counts) if weigh == "tokens" else max(c, 1) * (accumulate if divide else 1)
            (nll / denom).backward()
            total += nll.item() / denom
            if clip_micro and max_norm > 0:                     # clips what has accumulated so far
                have = [p for p in params if p.grad is not None]
                for p, g in zip(have, ref.run_clip_grad_norm([p.grad for p in have], max_norm)[0]):
                    p.grad.copy_(g)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        clipped, n = ref.run_clip_grad_norm(grads, max_norm if max_norm > 0 and not clip_micro else float("inf"))
        with torch.no_grad():
            for p, g in zip(params, clipped):
                m, v = state[id(p)]
                wd = weight_decay if (p.dim() >= 2 or decay_vectors) else 0.0
                new, m, v = _adamw(p.detach().clone(), g, m, v, s + 1, lr_s, betas, eps, wd, correct=correct)
                p.copy_(new)
                state[id(p)] = (m, v)
                if zero_grad:
                    p.grad = None
        if report_after:
            with torch.no_grad():
                total = 0.0
                for b in micro:
                    z = model(b["idx"]).logits
                    total += F.cross_entropy(z.reshape(-1, z.size(-1)), b["targets"].reshape(-1),
                                             ignore_index=-100, reduction="sum").item() / sum(counts)
        history.append({"lr": lr_s, "loss": total, "grad_norm": n})
    model.eval()
    return history


def run_train__mean_of_micro_means(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """averages the micro-batches' mean losses (each micro-batch weighs the same) instead of the step's tokens."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, weigh="micro")


def run_train__no_accumulation_division(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """adds up the micro-batches' mean losses without dividing by accumulate (k times the gradient)."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, weigh="micro", divide=False)


def run_train__no_zero_grad(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """never zeroes the gradients, so each step's gradient adds onto all the earlier ones."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, zero_grad=False)


def run_train__schedule_one_based(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """asks the schedule for step s + 1 (1-based) at step s."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, lr_shift=1)


def run_train__clip_each_micro_batch(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """clips after every micro-batch's backward instead of once on the accumulated gradient."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, clip_micro=True)


def run_train__decay_everything(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """applies the weight decay to vectors (biases, LayerNorm gains) too, not to matrices only."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, decay_vectors=True)


def run_train__no_bias_correction(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """steps with an AdamW that forgets the bias correction."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, correct=False)


def run_train__loss_after_update(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw):
    """reports each step's loss measured after its update instead of the loss it stepped on."""
    return _loop(model, batches, steps, accumulate, lr, warmup_steps, max_norm, **kw, report_after=True)
