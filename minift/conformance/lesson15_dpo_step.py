"""Lesson 15's assignment (a DPO training step): the reference `run_*` functions and their checks.

    run_response_logps(logits, input_ids, response_mask)   Σ_t m_t log softmax(z_{t−1})[y_t] per row   (B,)
    run_dpo_step(policy, ref, batch, beta, lr)             one SGD step of the DPO loss; returns the loss

`run_response_logps` is `minift.align.logps` (token_logps, then masked_sum over the response):
the logits at t − 1 predict the token at t (the shift), only response tokens count (the prompt and
the padding have mask 0), and the log-probs are SUMMED, as DPO (sigmoid) and PPO score a response.
`run_dpo_step` is `minift.align.dpo.dpo_step` (the sigmoid loss, summed log-probs, the reference
scored under no_grad) followed by one plain gradient-descent step θ ← θ − lr ∇_θ L.

The checks, registered into `CHECKS` with lesson="lesson15". Expected values are float64 numpy
loops over the logits (log-sum-exp written out), or exact properties; the one SGD step is compared
with the gradient of the check's own float64 loss (torch autograd on a float64 copy of the policy,
log-probs and loss written here, not minift's).

    run_response_logps   the float64 loop (float32 and bfloat16 logits); what is not scored (prompt,
                         padding, the last position's logits; NaN or ±1e4 there) changes nothing; the
                         gradient in the logits is m_t (onehot(y_t) − softmax(z_{t−1}))
    run_dpo_step         log 2 at π = π_ref, the reference untouched and without gradients; the loss
                         equals the float64 DPO loss of the logits; the step raises the mean margin h;
                         the new parameters are θ − lr ∇L, whatever stale .grad the policy held
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from hypothesis import strategies as st

from minift.align.dpo import DPOConfig, dpo_step
from minift.align.logps import check_01, masked_sum, token_logps
from minift.model import GPT, GPTConfig

from .harness import assert_close, assert_only_trained_moved, output, property_check, scalar, sgd_step, tensor, tensor_arg
from .strategies import MAX_B

# ---- the reference functions --------------------------------------------------------------------


def run_response_logps(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log π(y | x) of each row, as `minift.align.logps.sequence_logps` computes it from the logits:

        Σ_{t >= 1} m_t · log softmax(z_{t−1})[y_t]      (the logits at t − 1 predict the token at t)

    logits: (B, T, V) (any float dtype; the log-softmax is taken in float32 at least); input_ids:
    (B, T) integer; response_mask: (B, T) of 0/1, 1 on the scored response tokens, 0 at t = 0, on the
    prompt and on padding; every row scores at least one token. Returns (B,) float32, differentiable in
    logits. Positions that are not scored may hold anything (NaN included): they are selected out."""
    logits, input_ids, response_mask = (tensor_arg(n, t) for n, t in (("logits", logits), ("input_ids", input_ids),
                                                                     ("response_mask", response_mask)))
    if logits.dim() != 3 or tuple(input_ids.shape) != tuple(logits.shape[:2]) or response_mask.shape != input_ids.shape:
        raise ValueError(f"run_response_logps: expected logits (B, T, V), input_ids and response_mask (B, T); got "
                         f"{tuple(logits.shape)}, {tuple(input_ids.shape)}, {tuple(response_mask.shape)}")
    check_01(response_mask, "response_mask")
    if bool(response_mask[:, 0].bool().any()):
        raise ValueError("run_response_logps: response_mask[:, 0] must be 0 (the first token has no prediction)")
    return masked_sum(token_logps(logits, input_ids.long()), response_mask[:, 1:])   # (B,)


def run_dpo_step(policy: torch.nn.Module, ref: torch.nn.Module, batch: dict, beta: float, lr: float) -> torch.Tensor:
    """One DPO training step on a `collate_preferences` batch, as `minift.align.dpo.dpo_step` computes
    the loss, then plain gradient descent:

        L = mean over the B pairs of −log σ(β h),  h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
        θ ← θ − lr ∇_θ L       for every policy parameter that requires grad

    batch: {"ids", "attention_mask", "response_mask"}: (2B, T) each, rows [:B] the chosen answers and
    rows [B:] the rejected ones, and "n_pairs": B. Log-probs are summed over the response tokens.
    ref is scored without gradient and never changes. Returns L before the step (a 0-dim tensor)."""
    if not isinstance(batch, dict) or not {"ids", "attention_mask", "response_mask", "n_pairs"} <= set(batch):
        raise TypeError("run_dpo_step: batch must be a dict with ids, attention_mask, response_mask and n_pairs")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"run_dpo_step: lr={lr!r} must be a number > 0")
    loss, _ = dpo_step(policy, ref, batch, DPOConfig(beta=beta, precompute_ref=False))
    return sgd_step(loss, policy, lr)                                  # θ ← θ − lr ∇L


# ---- the checks: run_response_logps --------------------------------------------------------------

def _logsumexp64(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def _response_logps64(z: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Σ_{t >= 1, m_t = 1} (z[t−1, y_t] − log Σ_v e^{z[t−1, v]}) per row, a plain float64 loop."""
    out = np.zeros(z.shape[0])
    for b in range(z.shape[0]):
        for t in range(1, z.shape[1]):
            if mask[b, t]:
                row = z[b, t - 1].astype(np.float64)
                out[b] += row[ids[b, t]] - _logsumexp64(row)
    return out


@st.composite
def _scored_rows(draw, max_t=8, max_v=8):
    """(logits (B, T, V) float32, ids (B, T) int64, response_mask (B, T)): each row is [left padding ;
    prompt (>= 1 token) ; response (>= 1 token) ; right padding], the mask 1 on the response only."""
    B, T, V = draw(st.integers(1, MAX_B)), draw(st.integers(2, max_t)), draw(st.integers(2, max_v))
    mask = np.zeros((B, T), np.int64)
    for b in range(B):
        start = draw(st.integers(1, T - 1))                       # first response token (a prompt before it)
        end = draw(st.integers(start + 1, T))                     # one past the last
        mask[b, start:end] = 1
    ids = np.array(draw(st.lists(st.integers(0, V - 1), min_size=B * T, max_size=B * T)), np.int64).reshape(B, T)
    z = np.array(draw(st.lists(st.floats(-4, 4, width=32), min_size=B * T * V, max_size=B * T * V)),
                 np.float32).reshape(B, T, V)
    return z, ids, mask


def _logits_arg(z: np.ndarray, dtype: str) -> torch.Tensor:
    return tensor(z).to(getattr(torch, dtype))


@property_check("run_response_logps", lesson=15, examples=40, x=_scored_rows(),
                dtype=st.sampled_from(["float32", "bfloat16"]))
def response_logps_match_loop(fn, x, dtype):
    """run_response_logps(logits, input_ids, response_mask) is Σ_t m_t log softmax(z_{t−1})[y_t] per row
    (the logits at t − 1 score the token at t; summed, not averaged; prompt and padding excluded), a
    float64 loop; bfloat16 logits give the float64 value of those bfloat16 numbers to float32 precision."""
    z, ids, mask = x
    logits = _logits_arg(z, dtype)
    want = _response_logps64(logits.float().numpy(), ids, mask)
    what = f"run_response_logps(logits {tuple(z.shape)} {dtype}, input_ids, response_mask)"
    y = output(fn(logits, torch.tensor(ids), torch.tensor(mask)), (z.shape[0],), what)
    assert_close(y, want, f"{what} vs Σ_t m_t log softmax(z_(t−1))[y_t]", atol=2e-5 * z.shape[1], rtol=1e-5)


def _prompt_then_response() -> tuple:
    """One row [prompt, prompt, response, padding]: logits at positions 0 and 3 score nothing, and
    position 0 is one of the T − 1 that predict a token (a NaN there reaches a sum that multiplies)."""
    z = np.linspace(-2, 2, 4 * 3, dtype=np.float32).reshape(1, 4, 3)
    return z, np.array([[2, 0, 1, 2]], np.int64), np.array([[0, 0, 1, 0]], np.int64)


@property_check("run_response_logps", lesson=15, examples=40, x=_scored_rows(),
                fill=st.sampled_from([float("nan"), 1e4, -1e4]), seed=st.integers(0, 2 ** 16),
                explicit=[dict(x=_prompt_then_response(), fill=float("nan"), seed=0)])
def response_logps_ignore_unscored(fn, x, fill, seed):
    """what is not scored changes nothing: the logits at every position t − 1 whose token t is not in
    the response (prompt, padding, the last position) set to NaN or ±1e4, and the ids of the prompt and
    the padding redrawn, give the same finite log-probs (select them out; 0 · NaN is NaN)."""
    z, ids, mask = x
    want = _response_logps64(z, ids, mask)
    used = np.zeros(mask.shape, bool)
    used[:, :-1] = mask[:, 1:] == 1                               # logits at t − 1 score token t
    z2 = np.where(used[..., None], z, np.float32(fill)).astype(np.float32)
    rng = np.random.default_rng(seed)
    ids2 = np.where(mask == 1, ids, rng.integers(0, z.shape[2], ids.shape))
    what = f"run_response_logps with the unscored logits = {fill} and the prompt/padding ids redrawn"
    y = output(fn(tensor(z2), torch.tensor(ids2), torch.tensor(mask)), (z.shape[0],), what)
    assert_close(y, want, f"{what} vs the log-probs of the response tokens alone", atol=2e-5 * z.shape[1], rtol=1e-5)


@property_check("run_response_logps", lesson=15, examples=30, x=_scored_rows())
def response_logps_gradient(fn, x):
    """run_response_logps is differentiable in the logits, and d Σ_b out_b / d z[b, t−1, v] = m_t
    (1[v = y_t] − softmax(z_{t−1})_v): nonzero only at the positions that score a response token."""
    z, ids, mask = x
    logits = tensor(z).requires_grad_(True)
    out = fn(logits, torch.tensor(ids), torch.tensor(mask))
    what = "run_response_logps(logits, input_ids, response_mask)"
    output(out, (z.shape[0],), what)
    if not out.requires_grad:
        raise AssertionError(f"{what} is not differentiable in logits (no grad_fn): DPO and PPO train through it")
    out.sum().backward()
    z64 = z.astype(np.float64)
    p = np.exp(z64 - _logsumexp64(z64)[..., None])               # softmax (B, T, V)
    want = np.zeros_like(z64)
    B, T, V = z.shape
    for b in range(B):
        for t in range(1, T):
            if mask[b, t]:
                want[b, t - 1] = np.eye(V)[ids[b, t]] - p[b, t - 1]
    assert_close(output(logits.grad, z.shape, "d Σ out / d logits"), want,
                 f"d Σ {what} / d logits vs m_t (onehot(y_t) − softmax(z_(t−1)))", atol=1e-6, rtol=1e-5)


# ---- the checks: run_dpo_step --------------------------------------------------------------------

V_TINY, T_TINY = 11, 8


def dpo_step_inputs(seed: int, n_pairs: int, same: bool):
    """(policy, ref, batch) for the run_dpo_step checks, all random from `seed`: a 1-layer GPT (n_embd 8,
    vocab 11, every weight random so the logits are not flat), its copy as the reference (`same`: the
    policy IS that copy; else every policy weight is moved by N(0, 0.1²)), and n_pairs preference pairs
    over one shared prompt each, right- or left-padded to T = 8; the two answers of a pair differ."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = GPT(GPTConfig(vocab_size=V_TINY, block_size=T_TINY, n_layer=1, n_head=2, n_embd=8, dropout=0.0))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g) if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                    else 0.4 * torch.randn(p.shape, generator=g))
    policy = copy.deepcopy(ref)
    if not same:
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    rows, masks = [], []
    pairs = []
    for _ in range(n_pairs):
        P = int(torch.randint(1, 4, (1,), generator=g))
        prompt = torch.randint(0, V_TINY, (P,), generator=g).tolist()
        answers = []
        for _side in range(2):
            n = int(torch.randint(1, T_TINY - P + 1, (1,), generator=g))
            answers.append(torch.randint(0, V_TINY, (n,), generator=g).tolist())
        if answers[0] == answers[1]:
            answers[1] = [(answers[1][0] + 1) % V_TINY] + answers[1][1:]
        pairs.append((prompt, answers))
    left = bool(torch.randint(0, 2, (1,), generator=g))
    for side in range(2):                                          # chosen rows first, then rejected
        for prompt, answers in pairs:
            rows.append(prompt + answers[side])
            masks.append([0] * len(prompt) + [1] * len(answers[side]))
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    attn, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (r, m) in enumerate(zip(rows, masks)):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, sl], attn[i, sl], resp[i, sl] = torch.tensor(r), 1, torch.tensor(m)
    return policy, ref, {"ids": ids, "attention_mask": attn, "response_mask": resp, "n_pairs": n_pairs}


def _dpo_loss64(pol_logits, ref_logits, batch, beta) -> float:
    """mean over pairs of log(1 + e^{−β h}), h from the float64 response log-probs of both models' logits."""
    ids, mask, B = batch["ids"].numpy(), batch["response_mask"].numpy(), batch["n_pairs"]
    lp = _response_logps64(pol_logits.detach().double().numpy(), ids, mask)
    lr = _response_logps64(ref_logits.detach().double().numpy(), ids, mask)
    h = (lp[:B] - lr[:B]) - (lp[B:] - lr[B:])
    return float(np.mean(np.logaddexp(0.0, -beta * h)))


def _margin64(policy, ref, batch) -> float:
    """mean over pairs of h, in float64 from the two models' logits."""
    with torch.no_grad():
        zs = [m(batch["ids"], attention_mask=batch["attention_mask"]).logits.double().numpy() for m in (policy, ref)]
    ids, mask, B = batch["ids"].numpy(), batch["response_mask"].numpy(), batch["n_pairs"]
    lp, lr = (_response_logps64(z, ids, mask) for z in zs)
    return float(np.mean((lp[:B] - lr[:B]) - (lp[B:] - lr[B:])))


def _logits(model, batch):
    with torch.no_grad():
        return model(batch["ids"], attention_mask=batch["attention_mask"]).logits


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


PAIRS = st.integers(1, 2)
SEEDS = st.integers(0, 2 ** 16)


@property_check("run_dpo_step", lesson=15, examples=10, seed=SEEDS, n_pairs=PAIRS, beta=st.sampled_from([0.1, 0.5, 2.0]))
def dpo_step_at_reference(fn, seed, n_pairs, beta):
    """with the policy equal to the reference (step 0), run_dpo_step(policy, ref, batch, beta, lr) returns
    the loss log 2 (h = 0 for every pair), moves the policy, and leaves the reference untouched: the
    same weights bit for bit and no .grad on any of them (it is scored without gradient)."""
    policy, ref, batch = dpo_step_inputs(seed, n_pairs, same=True)
    before_pol, before_ref = _state(policy), _state(ref)
    what = f"run_dpo_step(policy = ref, ref, batch of {n_pairs} pairs, beta={beta}, lr=0.1)"
    loss = scalar(fn(policy, ref, batch, beta, 0.1), what)
    assert_close(loss, math.log(2), f"{what}: the loss at π = π_ref vs log 2", atol=1e-6, rtol=0)
    assert_only_trained_moved(what, ref, before_ref, "reference", policy, before_pol, "policy")


@property_check("run_dpo_step", lesson=15, examples=10, seed=SEEDS, n_pairs=PAIRS, beta=st.sampled_from([0.1, 0.5, 2.0]))
def dpo_step_loss_matches_float64(fn, seed, n_pairs, beta):
    """the loss run_dpo_step returns is the float64 DPO loss of the logits before the step: mean over pairs
    of log(1 + e^{−β h}), h from Σ_t m_t log softmax(z_{t−1})[y_t] of the policy's and the reference's logits
    (chosen rows first; prompt and padding not scored; a policy different from the reference)."""
    policy, ref, batch = dpo_step_inputs(seed, n_pairs, same=False)
    want = _dpo_loss64(_logits(policy, batch), _logits(ref, batch), batch, beta)
    what = f"run_dpo_step(policy, ref, batch of {n_pairs} pairs, beta={beta}, lr=0.1)"
    assert_close(scalar(fn(policy, ref, batch, beta, 0.1), what), want, f"{what} vs the float64 DPO loss of the logits",
                 atol=1e-5, rtol=1e-5)


@property_check("run_dpo_step", lesson=15, examples=10, seed=SEEDS, n_pairs=PAIRS, beta=st.sampled_from([0.5, 2.0]))
def dpo_step_raises_the_margin(fn, seed, n_pairs, beta):
    """one step with a small lr (0.02) from π = π_ref raises the mean log-ratio margin h above 0 (the
    chosen answers gain on the rejected ones, relative to the reference) and lowers the loss below log 2."""
    policy, ref, batch = dpo_step_inputs(seed, n_pairs, same=True)
    what = f"run_dpo_step(policy = ref, ref, batch of {n_pairs} pairs, beta={beta}, lr=0.02)"
    fn(policy, ref, batch, beta, 0.02)
    h = _margin64(policy, ref, batch)
    if not h > 0:
        raise AssertionError(f"{what}: the mean margin h after the step is {h!r}, expected > 0")
    after = _dpo_loss64(_logits(policy, batch), _logits(ref, batch), batch, beta)
    if not after < math.log(2):
        raise AssertionError(f"{what}: the loss after the step is {after!r}, expected < log 2 = {math.log(2)!r}")


@property_check("run_dpo_step", lesson=15, examples=10, seed=SEEDS, n_pairs=PAIRS, beta=st.sampled_from([0.1, 1.0]),
                lr=st.sampled_from([0.05, 0.3]))
def dpo_step_is_one_sgd_step(fn, seed, n_pairs, beta, lr):
    """the step is plain gradient descent on this batch's loss: every policy parameter becomes θ − lr ∇_θ L,
    with ∇L the gradient of the float64 DPO loss (autograd on a float64 copy of the policy), whatever
    stale gradient the policy's .grad held before (set here to 1 on every parameter)."""
    policy, ref, batch = dpo_step_inputs(seed, n_pairs, same=False)
    p64 = copy.deepcopy(policy).double()
    ref64 = copy.deepcopy(ref).double()
    lp = _logps_torch64(p64, batch)
    with torch.no_grad():
        lr_ref = _logps_torch64(ref64, batch)
    B = n_pairs
    h = (lp[:B] - lr_ref[:B]) - (lp[B:] - lr_ref[B:])
    torch.nn.functional.softplus(-beta * h).mean().backward()            # log(1 + e^{−βh})
    want = {k: (p.detach() - lr * p.grad).numpy() for k, p in p64.named_parameters()}
    for p in policy.parameters():
        p.grad = torch.ones_like(p)                                       # a stale gradient from "before"
    what = f"run_dpo_step(policy, ref, batch of {n_pairs} pairs, beta={beta}, lr={lr})"
    fn(policy, ref, batch, beta, lr)
    for k, p in policy.named_parameters():
        assert_close(p.detach().double().numpy(), want[k], f"{what}: {k} after the step vs θ − lr ∇L",
                     atol=1e-6 + 1e-4 * lr, rtol=1e-5)


def _logps_torch64(model, batch) -> torch.Tensor:
    """Σ_t m_t (z[t−1, y_t] − logsumexp z[t−1]) per row, in float64 torch (differentiable)."""
    z = model(batch["ids"], attention_mask=batch["attention_mask"]).logits.double()    # (2B, T, V)
    ids, m = batch["ids"], batch["response_mask"].double()
    picked = z[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] - torch.logsumexp(z[:, :-1], -1)   # (2B, T − 1)
    return (picked * m[:, 1:]).sum(-1)
