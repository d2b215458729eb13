"""Lesson 01 (pretraining): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_next_token_loss(logits, tokens, loss_mask=None)   mean -log p(tokens[:, t+1] | logits[:, t])
    run_lr_schedule(step, steps, warmup_steps, lr, min_lr_ratio)   minift.train.lr_at
    run_perplexity(nll_sums, n_tokens)                    exp(sum nll / sum tokens)
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.model import IGNORE_INDEX, at_least_fp32
from minift.tasks import perplexity
from minift.train import TrainConfig, lr_at

from .harness import assert_close, output, property_check, scalar, tensor, tensor_arg
from .strategies import MAX_B, MAX_T, MAX_V, arrays, f32, shared


# ---- the reference functions --------------------------------------------------------------------

def run_next_token_loss(logits: torch.Tensor, tokens: torch.Tensor,
                        loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy with minift's conventions (`SFTDataset` targets, `GPT.forward` loss):

        targets = tokens[:, 1:], -100 where loss_mask[:, 1:] == 0     the mask marks *targets*
        loss    = mean over kept (b, t) of -log softmax(logits[b, t])[targets[b, t]],  t < T - 1

    logits: (B, T, V) float; tokens: (B, T) integer; loss_mask: (B, T) of 0/1 or None (all count).
    Returns a scalar; 0 (not NaN) when no target counts, as `GPT.forward` does."""
    logits, tokens = tensor_arg("logits", logits), tensor_arg("tokens", tokens)
    if logits.dim() != 3 or tokens.dim() != 2 or tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"run_next_token_loss: expected logits (B, T, V) and tokens (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(tokens.shape)}")
    if loss_mask is not None and tuple(tensor_arg("loss_mask", loss_mask).shape) != tuple(tokens.shape):
        raise ValueError(f"run_next_token_loss: loss_mask must have tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(loss_mask.shape)}")
    targets = tokens[:, 1:].long().clone()                                 # (B, T-1)
    if loss_mask is not None:
        targets[loss_mask[:, 1:] == 0] = IGNORE_INDEX
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0                                          # nothing to predict
    V = logits.shape[-1]
    return F.cross_entropy(at_least_fp32(logits[:, :-1].reshape(-1, V)), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def run_lr_schedule(step: int, steps: int, warmup_steps: int, lr: float, min_lr_ratio: float) -> float:
    """The learning rate at optimizer step `step` (0-based): `minift.train.lr_at`.

        step <  warmup:  lr (step + 1) / warmup
        step >= warmup:  lr_min + (lr - lr_min) (1 + cos(pi p)) / 2,  p = min(1, (step - warmup) / (steps - warmup))
    with lr_min = lr * min_lr_ratio. Returns a float."""
    cfg = TrainConfig(steps=steps, warmup_steps=warmup_steps, lr=lr, min_lr_ratio=min_lr_ratio,
                      progress=False)
    return float(lr_at(int(step), cfg))


def run_perplexity(nll_sums: torch.Tensor, n_tokens: torch.Tensor) -> float:
    """Perplexity of a corpus scored in batches, as `minift.train.evaluate_nll` + `minift.tasks.perplexity`:

        ppl = exp( sum_i nll_sums[i] / sum_i n_tokens[i] )      (token-weighted mean NLL, in nats)

    nll_sums: (N,) summed NLL of each batch; n_tokens: (N,) target tokens in each batch. Returns a float."""
    nll_sums, n_tokens = tensor_arg("nll_sums", nll_sums), tensor_arg("n_tokens", n_tokens)
    if nll_sums.shape != n_tokens.shape or nll_sums.dim() != 1:
        raise ValueError(f"run_perplexity: nll_sums and n_tokens must both have shape (N,), got "
                         f"{tuple(nll_sums.shape)} and {tuple(n_tokens.shape)}")
    count = float(n_tokens.double().sum())
    if count <= 0:
        raise ValueError("run_perplexity: n_tokens sums to 0; perplexity needs at least one token")
    return perplexity(float(nll_sums.double().sum()) / count)


# ---- the checks ----------------------------------------------------------------------------------

def next_token_loss64(logits: np.ndarray, tokens: np.ndarray, mask: Optional[np.ndarray]) -> float:
    """The naive loop: position t of row b predicts tokens[b, t + 1]; it counts when
    mask[b, t + 1] is 1 (the mask marks targets). Mean of logsumexp(z) - z[target]; 0 if none."""
    B, T, V = logits.shape
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            if mask is not None and not mask[b, t + 1]:
                continue
            z = logits[b, t]
            m = z.max()
            total += m + math.log(np.exp(z - m).sum()) - z[tokens[b, t + 1]]
            n += 1
    return total / n if n else 0.0


def _ntl_inputs(key: str, lo: float, hi: float, other: bool = False) -> dict:
    """logits (B, T, V) float32, tokens (B, T) int64 in [0, V), loss_mask (B, T) int64 of 0/1
    with mask[0, 1] = 1 (at least one target counts); T >= 2, V >= 2. With `other`, also
    other_logits (in [-1e3, 1e3]) and other_tokens of the same shapes, to change them with."""
    shape = shared(st.tuples(st.integers(1, MAX_B), st.integers(2, MAX_T), st.integers(2, MAX_V)), key)
    logits = shape.flatmap(lambda s: arrays(s, f32(lo, hi)))
    tokens = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.integers(0, s[2] - 1)))

    def one_target(m):
        m = m.copy()
        m[0, 1] = 1
        return m
    mask = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.integers(0, 1))).map(one_target)
    drawn = dict(logits=logits, tokens=tokens, loss_mask=mask)
    if other:
        drawn["other_logits"] = shape.flatmap(lambda s: arrays(s, f32(-1e3, 1e3)))
        drawn["other_tokens"] = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.integers(0, s[2] - 1)))
    return drawn


def _unequal_rows() -> dict:
    """Two rows with 1 and 3 counted targets and unequal losses (about 0 and log 3 each): the mean
    over tokens (3 log 3 / 4) is not the mean of the two rows' means (log 3 / 2)."""
    logits = np.zeros((2, 4, 3), np.float32)                          # row 1: uniform, log 3 per target
    logits[0, 0, 2] = 20.0                                            # row 0: its one target, nearly certain
    return dict(logits=logits, tokens=np.array([[0, 2, 0, 0], [0, 1, 2, 0]]),
                loss_mask=np.array([[0, 1, 0, 0], [0, 1, 1, 1]]), use_mask=True)


@property_check("run_next_token_loss", lesson=1, examples=50, explicit=[_unequal_rows()],
                **_ntl_inputs("ntl1", -20, 20), use_mask=st.booleans())
def next_token_loss_matches_formula(ntl, logits, tokens, loss_mask, use_mask):
    """next_token_loss(logits, tokens, loss_mask) equals the mean over (b, t) with loss_mask[b, t+1]
    = 1 of -log softmax(logits[b, t])[tokens[b, t+1]] (logits at t predict the token at t+1; mask None
    = every target counts), in float64."""
    mask = loss_mask if use_mask else None
    what = f"run_next_token_loss(logits, tokens, {'loss_mask' if use_mask else 'None'})"
    loss = output(ntl(tensor(logits), torch.tensor(tokens), None if mask is None else torch.tensor(mask)),
                  (), what)
    assert_close(loss, next_token_loss64(logits.astype(np.float64), tokens, mask),
                 f"{what} vs mean over counted targets of -log softmax(logits[t])[tokens[t+1]]",
                 atol=1e-5, rtol=1e-5)


@property_check("run_next_token_loss", lesson=1, examples=50, **_ntl_inputs("ntl2", -20, 20, other=True))
def next_token_loss_counts_only_targets(ntl, logits, tokens, loss_mask, other_logits, other_tokens):
    """only counted targets matter: new logits at the last position and at positions whose target is
    masked, and new tokens where loss_mask is 0 or t = 0, leave the loss unchanged; loss_mask=None
    equals an all-ones mask; no counted target gives 0."""
    B, T, V = logits.shape
    mt = torch.tensor                                                 # int64 arrays -> long tensors
    loss = output(ntl(tensor(logits), mt(tokens), mt(loss_mask)), (), "run_next_token_loss(logits, tokens, loss_mask)")
    # logits at t are scored against tokens[t+1]: position T-1 and masked targets never count
    unused = np.zeros((B, T), dtype=bool)
    unused[:, -1] = True
    unused[:, :-1] = loss_mask[:, 1:] == 0
    logits2 = np.where(unused[..., None], other_logits, logits)
    not_target = loss_mask == 0                                       # a token is a target only if counted
    not_target[:, 0] = True                                           # tokens[:, 0] is never a target
    tokens2 = np.where(not_target, other_tokens, tokens)
    loss2 = output(ntl(tensor(logits2), mt(tokens2), mt(loss_mask)), (),
                   "run_next_token_loss with logits and tokens changed where they do not count")
    assert_close(loss2, loss, "loss after changing logits/tokens that are not scored vs before",
                 atol=1e-5, rtol=1e-5)
    ones = np.ones((B, T), dtype=np.int64)
    loss_none = output(ntl(tensor(logits), mt(tokens), None), (), "run_next_token_loss(logits, tokens, None)")
    loss_ones = output(ntl(tensor(logits), mt(tokens), mt(ones)), (), "run_next_token_loss(logits, tokens, ones)")
    assert_close(loss_none, loss_ones, "loss_mask=None vs an all-ones loss_mask", atol=1e-6, rtol=1e-6)
    none_counted = loss_mask.copy()
    none_counted[:, 1:] = 0                                           # mask[:, 0] is never a target
    loss0 = output(ntl(tensor(logits), mt(tokens), mt(none_counted)), (),
                   "run_next_token_loss with loss_mask[:, 1:] = 0 (no target counts)")
    assert_close(loss0, np.zeros(()), "loss with no counted target (0, not NaN)", atol=0, rtol=0)


def lr_schedule64(step: int, steps: int, warmup: int, lr: float, ratio: float) -> float:
    """Linear warmup to lr over `warmup` steps (step 0 gets lr / warmup), then half a cosine from lr
    down to lr_min = lr * ratio at step `steps`, flat afterwards."""
    if step < warmup:
        return lr * (step + 1) / warmup
    lo = lr * ratio
    p = min(1.0, (step - warmup) / (steps - warmup))
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


def _schedules(min_span: int = 1):
    """(steps, warmup_steps) with 0 <= warmup < steps, steps - warmup >= min_span."""
    return st.tuples(st.integers(0, 40), st.integers(min_span, 120)).map(lambda t: (t[0] + t[1], t[0]))


_LRS = st.floats(1e-5, 1.0, allow_nan=False, allow_infinity=False)
_RATIOS = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, allow_nan=False))


@property_check("run_lr_schedule", lesson=1, examples=80, sw=_schedules(), lr=_LRS, min_lr_ratio=_RATIOS,
                frac=st.floats(0.0, 1.5))
def lr_schedule_matches_formula(sched, sw, lr, min_lr_ratio, frac):
    """lr_schedule(step, steps, warmup, lr, ratio) equals lr (step + 1) / warmup for step < warmup,
    then lr_min + (lr - lr_min) (1 + cos(pi p)) / 2 with p = min(1, (step - warmup) / (steps
    - warmup)) and lr_min = lr ratio, in float64."""
    steps, warmup = sw
    step = int(frac * steps)
    y = scalar(sched(step, steps, warmup, lr, min_lr_ratio),
               f"run_lr_schedule({step}, {steps}, {warmup}, {lr!r}, {min_lr_ratio!r})")
    assert_close(y, lr_schedule64(step, steps, warmup, lr, min_lr_ratio),
                 f"run_lr_schedule(step={step}, steps={steps}, warmup_steps={warmup}, lr={lr!r}, "
                 f"min_lr_ratio={min_lr_ratio!r}) vs warmup + cosine formula", atol=1e-12, rtol=1e-6)


@property_check("run_lr_schedule", lesson=1, examples=40, warmup=st.integers(1, 60), extra=st.integers(1, 100),
                lr=_LRS, min_lr_ratio=_RATIOS)
def lr_warmup_is_linear(sched, warmup, extra, lr, min_lr_ratio):
    """warmup is linear and reaches lr: for step < warmup the rate is lr (step + 1) / warmup (equal
    increments of lr / warmup), and step warmup - 1 gets lr."""
    steps = warmup + extra
    ys = np.array([scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
                   for s in range(warmup)])
    assert_close(ys, lr * np.arange(1, warmup + 1) / warmup,
                 f"warmup rates lr (step + 1) / warmup for steps 0..{warmup - 1} (steps={steps}, lr={lr!r})",
                 atol=1e-12, rtol=1e-6)
    assert_close(ys[-1], lr, f"rate at the last warmup step {warmup - 1} vs lr", atol=1e-12, rtol=1e-6)


@property_check("run_lr_schedule", lesson=1, examples=40, sw=_schedules(), lr=_LRS, min_lr_ratio=_RATIOS)
def lr_schedule_bounded(sched, sw, lr, min_lr_ratio):
    """the rate stays in range: 0 < rate <= lr during warmup, lr_min <= rate <= lr after it, and rate
    = lr_min from step `steps` on (lr_min = lr min_lr_ratio)."""
    steps, warmup = sw
    lo, tol = lr * min_lr_ratio, 1e-6 * lr
    for s in range(steps + 10):
        y = scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
        where = (f"run_lr_schedule(step={s}, steps={steps}, warmup_steps={warmup}, lr={lr!r}, "
                 f"min_lr_ratio={min_lr_ratio!r}) = {y!r}")
        if not (y <= lr + tol and (y > 0 or s >= warmup)):
            raise AssertionError(f"{where} is outside {'(0, lr]' if s < warmup else '[lr_min, lr]'}")
        if s >= warmup and y < lo - tol:
            raise AssertionError(f"{where} is below lr_min = {lo!r} after warmup")
        if s >= steps and abs(y - lo) > tol:
            raise AssertionError(f"{where} but from step `steps` on the rate must be lr_min = {lo!r}")


@property_check("run_lr_schedule", lesson=1, examples=40, warmup=st.integers(0, 40), half=st.integers(1, 60),
                lr=_LRS, min_lr_ratio=_RATIOS)
def lr_cosine_midpoint(sched, warmup, half, lr, min_lr_ratio):
    """the cosine starts at lr (step = warmup), passes (lr + lr_min) / 2 half-way (step = warmup
    + (steps - warmup) / 2) and ends at lr_min (step = steps)."""
    steps = warmup + 2 * half
    lo = lr * min_lr_ratio
    for s, want, name in ((warmup, lr, "lr at the end of warmup"),
                          (warmup + half, (lr + lo) / 2, "(lr + lr_min) / 2 half-way through the cosine"),
                          (steps, lo, "lr_min at step `steps`")):
        y = scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
        assert_close(y, want, f"run_lr_schedule(step={s}, steps={steps}, warmup_steps={warmup}, "
                               f"lr={lr!r}, min_lr_ratio={min_lr_ratio!r}) vs {name}", atol=1e-12, rtol=1e-6)


@property_check("run_lr_schedule", lesson=1, examples=40, sw=_schedules(), lr=_LRS,
                min_lr_ratio=st.floats(0.0, 0.9))
def lr_monotone_after_warmup(sched, sw, lr, min_lr_ratio):
    """the rate rises during warmup and never rises after it: rate(s + 1) <= rate(s) for every s
    >= warmup - 1, past `steps` too."""
    steps, warmup = sw
    ys = [scalar(sched(s, steps, warmup, lr, min_lr_ratio), f"run_lr_schedule({s}, ...)")
          for s in range(steps + 10)]
    for s in range(steps + 9):
        rising = ys[s + 1] > ys[s] + 1e-9 * lr
        if (s < warmup - 1 and not ys[s + 1] > ys[s]) or (s >= warmup - 1 and rising):
            raise AssertionError(
                f"run_lr_schedule(steps={steps}, warmup_steps={warmup}, lr={lr!r}, min_lr_ratio="
                f"{min_lr_ratio!r}): rate {ys[s]!r} at step {s}, {ys[s + 1]!r} at step {s + 1}; it must "
                f"{'rise during warmup' if s < warmup - 1 else 'not rise after warmup'}")


def _ppl_inputs(key: str, max_nll: float = 10.0) -> dict:
    """(N,) per-batch summed NLL (float32) and (N,) token counts (int64, 1..500), N in 1..8."""
    n = shared(st.integers(1, 8), key)
    counts = n.flatmap(lambda k: hnp.arrays(np.int64, (k,), elements=st.integers(1, 500)))
    means = n.flatmap(lambda k: arrays((k,), f32(0.0, max_nll)))          # mean NLL of each batch
    return dict(n_tokens=counts, batch_mean_nll=means)


@property_check("run_perplexity", lesson=1, examples=50, **_ppl_inputs("ppl1"))
def perplexity_matches_formula(ppl, n_tokens, batch_mean_nll):
    """perplexity(nll_sums, n_tokens) equals exp(sum nll_sums / sum n_tokens) (the token-weighted mean
    NLL, not the mean of per-batch means), in float64."""
    sums = (batch_mean_nll.astype(np.float64) * n_tokens).astype(np.float32)   # (N,) summed NLL
    y = scalar(ppl(tensor(sums), torch.tensor(n_tokens)), "run_perplexity(nll_sums, n_tokens)")
    want = math.exp(sums.astype(np.float64).sum() / n_tokens.sum())
    assert_close(y, want, "run_perplexity vs exp(sum nll_sums / sum n_tokens)", atol=0, rtol=1e-5)


@property_check("run_perplexity", lesson=1, examples=40, n_tokens=_ppl_inputs("ppl2")["n_tokens"],
                V=st.integers(1, 50_000))
def perplexity_uniform_is_vocab_size(ppl, n_tokens, V):
    """a uniform model over V tokens has perplexity V: every token costs log V nats, so nll_sums
    = n_tokens log V gives V (V up to 50000)."""
    # uniform logits: -log softmax = logsumexp(0, ..., 0) - 0 = log V for every target
    sums = (n_tokens * math.log(V)).astype(np.float32)
    y = scalar(ppl(tensor(sums), torch.tensor(n_tokens)), "run_perplexity(n_tokens log V, n_tokens)")
    assert_close(y, float(V), f"perplexity of a uniform model over V={V} tokens vs V", atol=0, rtol=1e-5)


@property_check("run_perplexity", lesson=1, examples=40, **_ppl_inputs("ppl3"))
def perplexity_is_token_weighted(ppl, n_tokens, batch_mean_nll):
    """how the corpus is cut into batches does not matter: the per-batch (nll_sums, n_tokens) give
    the same perplexity as their totals in one batch."""
    sums = (batch_mean_nll.astype(np.float64) * n_tokens).astype(np.float32)
    y = scalar(ppl(tensor(sums), torch.tensor(n_tokens)), "run_perplexity(nll_sums, n_tokens)")
    merged = scalar(ppl(tensor(np.array([sums.astype(np.float64).sum()])), torch.tensor([int(n_tokens.sum())])),
                    "run_perplexity([sum nll_sums], [sum n_tokens])")
    assert_close(y, merged, "perplexity over the batches vs over one merged batch", atol=0, rtol=1e-5)
