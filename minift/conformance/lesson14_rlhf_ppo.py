"""Lesson 14 (RLHF: reward models and PPO): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions, reward models (minift/align/reward.py): plain tensors and
hyperparameters in, tensors out.

    run_reward_loss(r_chosen, r_rejected, margin=0.0)     −log σ(r_w − r_l − m) per pair        (B,)
    run_reward_at_last_token(hidden, attention_mask, w, b)  w · h[b, last real token] + b       (B,)

The reference `run_*` functions, PPO-RLHF (minift/align/ppo.py): plain tensors and hyperparameters
in, tensors out. Every (B, N) input has a 0/1 `mask` of the real response tokens.

    run_gae(rewards, values, mask, gamma, lam)      (A, R): δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}
    run_ppo_loss(logp, old_logp, adv, mask, clip)   −mean_t min(ρ A, clip(ρ, 1 ± ε) A), ρ = e^{logp − old}
    run_ppo_value_loss(v, old_v, returns, mask, clip)  ½ mean_t max((v − R)², (v_old + clip(v − v_old, ±ε) − R)²)
    run_kl_penalty(logp, ref_logp)                  logp − ref_logp (the k1 estimator, per token)
    run_whiten(x, mask)                             (x − μ)/sqrt(σ² + 1e-8) over the real tokens, 0 on padding

The checks, registered into `CHECKS` with lesson="lesson14". Expected values are computed here
independently (float64 numpy, plain loops), never by calling minift's reference functions.

    run_reward_loss            log(1 + exp(−(r_w − r_l − m))) in float64; log 2 at r_w = r_l; the mirror
                               identity L(d) − L(−d) = −d; finite and exact for |d| up to 1e4
    run_reward_at_last_token   w · h[i, last t with mask 1] + b by a plain loop, whatever the padding
    run_gae                    λ = 1: discounted return − V; λ = 0: the TD residual; any λ: the backward loop
    run_ppo_loss               the clipped objective in float64; at ρ = 1 it is −mean A; its gradient in logp
                               is exactly 0 where the clip is active on the side that matters, −ρA/n elsewhere
    run_ppo_value_loss         ½ mean max((v − R)², (v_old + clip(v − v_old) − R)²) in float64
    run_kl_penalty             logp − ref_logp
    run_whiten                 mean 0, variance 1 over the real tokens, 0 on padding

The assignment's functions (run_ppo_rewards, run_ppo_step) and checks are in lesson14_rlhf_ppo_update.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import assume, strategies as st

from minift.align.ppo import gae, kl_penalty, ppo_policy_loss, ppo_value_loss, whiten
from minift.align.reward import reward_loss
from minift.heads import last_real_index

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, MAX_T, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def run_reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The Bradley–Terry loss of `minift.align.reward.reward_loss`, per pair:
    −log σ(r_chosen − r_rejected − margin). r_chosen, r_rejected: (B,). Returns (B,)."""
    return reward_loss(tensor_arg("r_chosen", r_chosen), tensor_arg("r_rejected", r_rejected), float(margin))


def run_reward_at_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor, w: torch.Tensor,
                             b: torch.Tensor) -> torch.Tensor:
    """The scalar head of `RewardModel.forward` on given final hidden states: w · h[i, t_i] + b, with
    t_i the LAST position whose attention_mask is 1 (left, right or no padding).
    hidden: (B, T, C); attention_mask: (B, T) of 0/1, every row with a 1; w: (C,); b: () or (1,). Returns (B,)."""
    hidden, attention_mask, w, b = (tensor_arg(n, t) for n, t in (("hidden", hidden), ("attention_mask", attention_mask),
                                                               ("w", w), ("b", b)))
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]) or tuple(w.shape) != hidden.shape[2:]:
        raise ValueError(f"run_reward_at_last_token: expected hidden (B, T, C), attention_mask (B, T), w (C,); got "
                         f"{tuple(hidden.shape)}, {tuple(attention_mask.shape)}, {tuple(w.shape)}")
    B, T, _ = hidden.shape
    last = last_real_index(attention_mask, B, T, hidden.device)                    # (B,)
    return hidden[torch.arange(B), last] @ w + b.reshape(())


def _tensors(**kw) -> list[torch.Tensor]:
    for name, t in kw.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return list(kw.values())


def run_gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """GAE of `minift.align.ppo.gae`: rewards, values, mask (B, N), each row's real tokens a run of 1s.
    Returns (advantages, returns), both (B, N), 0 on padding; V = 0 after a row's last real token."""
    rewards, values, mask = _tensors(rewards=rewards, values=values, mask=mask)
    with torch.no_grad():
        return gae(rewards, values, mask.to(rewards.dtype), float(gamma), float(lam))


def run_ppo_loss(logp, old_logp, adv, mask, clip: float = 0.2):
    """PPO's clipped policy loss of `minift.align.ppo.ppo_policy_loss` (differentiable in logp): a scalar,
    the mean over the real tokens of −min(ρ A, clip(ρ, 1 − clip, 1 + clip) A), ρ = exp(logp − old_logp)."""
    logp, old_logp, adv, mask = _tensors(logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    return ppo_policy_loss(logp, old_logp, adv, mask.to(logp.dtype), float(clip))


def run_ppo_value_loss(v, old_v, returns, mask, clip: float = 0.2):
    """The clipped value loss of `minift.align.ppo.ppo_value_loss`: a scalar,
    ½ mean over real tokens of max((v − R)², (old_v + clip(v − old_v, −clip, clip) − R)²)."""
    v, old_v, returns, mask = _tensors(v=v, old_v=old_v, returns=returns, mask=mask)
    return ppo_value_loss(v, old_v, returns, mask.to(v.dtype), float(clip))


def run_kl_penalty(logp, ref_logp):
    """`minift.align.ppo.kl_penalty`: log π(y_t) − log π_ref(y_t) per sampled token. (B, N) -> (B, N)."""
    logp, ref_logp = _tensors(logp=logp, ref_logp=ref_logp)
    return kl_penalty(logp, ref_logp)


def run_whiten(x, mask):
    """`minift.align.ppo.whiten`: (x − μ) / sqrt(σ² + 1e-8), μ and the biased σ² over the entries with
    mask 1; 0 where mask is 0. (B, N) -> (B, N)."""
    x, mask = _tensors(x=x, mask=mask)
    with torch.no_grad():
        return whiten(x, mask.to(x.dtype))


# ---- the checks ----------------------------------------------------------------------------------

def _softplus64(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) without overflow: max(x, 0) + log1p(e^{−|x|})."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


@st.composite
def _pairs(draw, lo=-20.0, hi=20.0):
    B = draw(st.integers(1, 2 * MAX_B))
    return draw(arrays((B,), f32(lo, hi))), draw(arrays((B,), f32(lo, hi)))


@property_check("run_reward_loss", lesson=14, examples=60, p=_pairs(), margin=st.sampled_from([0.0, 0.5, 2.0]))
def reward_loss_matches_formula(loss, p, margin):
    """run_reward_loss(r_chosen, r_rejected, margin) is the Bradley–Terry loss per pair, −log σ(r_w
    − r_l − m) = log(1 + exp(−(r_w − r_l − m))), in float64 (|r| <= 20, 0 <= m <= 2)."""
    rc, rr = p
    d = rc.astype(np.float64) - rr.astype(np.float64) - margin
    what = f"run_reward_loss(r_chosen, r_rejected, margin={margin})"
    y = output(loss(tensor(rc), tensor(rr), margin=margin), rc.shape, what)
    assert_close(y, _softplus64(-d), f"{what} vs log(1 + exp(−(r_w − r_l − m)))", atol=1e-5, rtol=1e-5)


@property_check("run_reward_loss", lesson=14, examples=40, p=_pairs())
def reward_loss_log2_and_mirror(loss, p):
    """with equal rewards the loss is log 2 (P = ½), and swapping the sides mirrors it: L(r_w, r_l)
    − L(r_l, r_w) = −(r_w − r_l) (margin 0)."""
    rc, rr = p
    tie = output(loss(tensor(rc), tensor(rc), margin=0.0), rc.shape, "run_reward_loss(r, r)")
    assert_close(tie, np.full(rc.shape, math.log(2)), "run_reward_loss(r, r) vs log 2", atol=1e-6, rtol=0)
    a = output(loss(tensor(rc), tensor(rr), margin=0.0), rc.shape, "run_reward_loss(r_w, r_l)")
    b = output(loss(tensor(rr), tensor(rc), margin=0.0), rc.shape, "run_reward_loss(r_l, r_w)")
    d = rc.astype(np.float64) - rr.astype(np.float64)
    assert_close(a - b, -d, "run_reward_loss(r_w, r_l) − run_reward_loss(r_l, r_w) vs −(r_w − r_l)",
                 atol=1e-4, rtol=1e-5)


@property_check("run_reward_loss", lesson=14, examples=40, p=_pairs(-5e3, 5e3))
def reward_loss_stable(loss, p):
    """the loss is numerically stable: for reward differences up to 1e4 it is finite and equals max(−d,
    0) + log1p(e^{−|d|}) (a naive log(sigmoid) gives inf or 0 there)."""
    rc, rr = p
    d = rc.astype(np.float64) - rr.astype(np.float64)
    y = output(loss(tensor(rc), tensor(rr), margin=0.0), rc.shape, "run_reward_loss(r_chosen, r_rejected)")
    assert_close(y, _softplus64(-d), "run_reward_loss at large |r_w − r_l| vs the stable softplus",
                 atol=1e-5, rtol=1e-5)


@st.composite
def _padded_hidden(draw):
    """hidden (B, T, C), a mask whose rows are one run of real tokens anywhere (left, right or both
    sides padded), w (C,), b (1,)."""
    B, T, C = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T)), draw(st.integers(1, MAX_D))
    mask = np.zeros((B, T), np.float32)
    for i in range(B):
        start = draw(st.integers(0, T - 1))
        mask[i, start:draw(st.integers(start + 1, T))] = 1
    return (draw(arrays((B, T, C), f32(-3, 3))), mask, draw(arrays((C,), f32(-2, 2))), draw(arrays((1,), f32(-2, 2))))


@property_check("run_reward_at_last_token", lesson=14, examples=60, inp=_padded_hidden())
def reward_at_last_real_token(read, inp):
    """run_reward_at_last_token(hidden, attention_mask, w, b) reads each row at its LAST real token
    (the largest t with mask 1, for any padding side) and returns w · h + b."""
    h, mask, w, b = inp
    expected = np.array([h[i, max(t for t in range(h.shape[1]) if mask[i, t] == 1)].astype(np.float64)
                         @ w.astype(np.float64) + float(b[0]) for i in range(h.shape[0])])
    what = f"run_reward_at_last_token(hidden {h.shape}, attention_mask, w, b)"
    y = output(read(tensor(h), tensor(mask).long(), tensor(w), tensor(b)), (h.shape[0],), what)
    assert_close(y, expected, f"{what} vs w · h[last real token] + b", atol=1e-5, rtol=1e-5)


@st.composite
def _episodes(draw, n_arrays=2, lo=-3.0, hi=3.0):
    """n_arrays float32 (B, N) arrays and a mask whose rows are a run of 1s from column 0 (length >= 1)."""
    B, N = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T))
    xs = [draw(arrays((B, N), f32(lo, hi))) for _ in range(n_arrays)]
    lens = [draw(st.integers(1, N)) for _ in range(B)]
    mask = np.array([[1.0] * n + [0.0] * (N - n) for n in lens], np.float32)
    return xs, mask, lens


def _gae64(r, v, lens, gamma, lam):
    """A_t = Σ_{k >= t} (γλ)^{k−t} δ_k, δ_k = r_k + γ V_{k+1} − V_k, V = 0 after the row's last token."""
    r, v = r.astype(np.float64), v.astype(np.float64)
    A = np.zeros_like(r)
    for b, n in enumerate(lens):
        delta = [r[b, k] + gamma * (v[b, k + 1] if k + 1 < n else 0.0) - v[b, k] for k in range(n)]
        for t in range(n):
            A[b, t] = sum((gamma * lam) ** (k - t) * delta[k] for k in range(t, n))
    return A


def _call_gae(fn, r, v, mask, gamma, lam):
    what = f"run_gae(rewards, values, mask, gamma={gamma}, lam={lam})"
    out = fn(tensor(r), tensor(v), tensor(mask), gamma, lam)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(f"{what} must return a tuple (advantages, returns), got {type(out).__name__}")
    return output(out[0], r.shape, what + "[0]"), output(out[1], r.shape, what + "[1]"), what


@property_check("run_gae", lesson=14, examples=50, ep=_episodes(), gamma=st.sampled_from([1.0, 0.9, 0.5]))
def gae_lambda_one_is_return_minus_value(fn, ep, gamma):
    """GAE with λ = 1 gives advantages = discounted return Σ_k γ^k r_{t+k} − V(s_t) and returns
    = the discounted return (float64 loop; V = 0 after each row's last real token; 0 on padding)."""
    (r, v), mask, lens = ep
    A, R, what = _call_gae(fn, r, v, mask, gamma, 1.0)
    G = np.zeros(r.shape)
    for b, n in enumerate(lens):
        for t in range(n):
            G[b, t] = sum(gamma ** (k - t) * float(r[b, k]) for k in range(t, n))
    assert_close(A, (G - v) * mask, f"{what} advantages vs return − V", atol=1e-4, rtol=1e-5)
    assert_close(R, G, f"{what} returns vs the discounted return", atol=1e-4, rtol=1e-5)


@property_check("run_gae", lesson=14, examples=50, ep=_episodes(), gamma=st.sampled_from([1.0, 0.9]))
def gae_lambda_zero_is_td_residual(fn, ep, gamma):
    """GAE with λ = 0 gives the one-step TD residual δ_t = r_t + γ V(s_{t+1}) − V(s_t), with V = 0
    after the last real token."""
    (r, v), mask, lens = ep
    A, _, what = _call_gae(fn, r, v, mask, gamma, 0.0)
    want = np.zeros(r.shape)
    for b, n in enumerate(lens):
        for t in range(n):
            want[b, t] = float(r[b, t]) + gamma * (float(v[b, t + 1]) if t + 1 < n else 0.0) - float(v[b, t])
    assert_close(A, want, f"{what} vs r_t + γ V_(t+1) − V_t", atol=1e-5, rtol=1e-5)


@property_check("run_gae", lesson=14, examples=50, ep=_episodes(), gamma=st.sampled_from([1.0, 0.95, 0.5]),
                lam=st.sampled_from([0.95, 0.5, 0.9]))
def gae_matches_loop(fn, ep, gamma, lam):
    """for any γ, λ in [0, 1], advantages are A_t = Σ_k (γλ)^k δ_{t+k} and returns A_t + V(s_t)
    (float64 loop), 0 on padding."""
    (r, v), mask, lens = ep
    A, R, what = _call_gae(fn, r, v, mask, gamma, lam)
    want = _gae64(r, v, lens, gamma, lam)
    assert_close(A, want, f"{what} advantages vs Σ (γλ)^k δ", atol=1e-4, rtol=1e-5)
    assert_close(R, (want + v) * mask, f"{what} returns vs A + V", atol=1e-4, rtol=1e-5)


def _policy_inputs(draw, clip):
    (adv, old), mask, _ = draw(_episodes())
    ratio = draw(arrays(adv.shape, f32(0.5, 1.5))).astype(np.float64)
    assume(np.abs(np.abs(ratio - 1) - clip).min() > 1e-3)                   # no ties at the clip boundary
    adv = np.where(np.abs(adv) < 1e-2, 1.0, adv).astype(np.float32)          # every token has a sign
    logp = (old.astype(np.float64) + np.log(ratio)).astype(np.float32)
    ratio = np.exp(logp.astype(np.float64) - old.astype(np.float64))         # the ratio float32 inputs give
    return adv, old, logp, ratio, mask


def _ppo_objective64(ratio, adv, mask, clip):
    adv = adv.astype(np.float64)
    obj = np.minimum(ratio * adv, np.clip(ratio, 1 - clip, 1 + clip) * adv)
    return -(obj * mask).sum() / mask.sum()


@property_check("run_ppo_loss", lesson=14, examples=60, data=st.data(), clip=st.sampled_from([0.1, 0.2, 0.3]))
def ppo_loss_matches_formula(fn, data, clip):
    """run_ppo_loss(logp, old_logp, adv, mask, clip) is −Σ_t m_t min(ρ A, clip(ρ, 1−ε, 1+ε) A) / Σ_t
    m_t with ρ = exp(logp − old_logp), in float64 (ρ in [0.5, 1.5])."""
    adv, old, logp, ratio, mask = _policy_inputs(data.draw, clip)
    what = f"run_ppo_loss(logp, old_logp, adv, mask, clip={clip})"
    y = output(fn(tensor(logp), tensor(old), tensor(adv), tensor(mask), clip), (), what)
    assert_close(y, _ppo_objective64(ratio, adv, mask, clip), f"{what} vs −mean min(ρA, clip(ρ)A)",
                 atol=1e-5, rtol=1e-5)


@property_check("run_ppo_loss", lesson=14, examples=40, ep=_episodes(), clip=st.sampled_from([0.1, 0.2]))
def ppo_loss_ratio_one(fn, ep, clip):
    """at ratio 1 (logp == old_logp) the clipped and unclipped objectives agree: the loss is −mean_t
    A_t over the real tokens, and its gradient in logp is −A_t / n."""
    (adv, lp), mask, _ = ep
    logp = tensor(lp).requires_grad_(True)
    what = f"run_ppo_loss(logp, logp, adv, mask, clip={clip})"
    out = fn(logp, tensor(lp), tensor(adv), tensor(mask), clip)
    y = output(out, (), what)
    n = float(mask.sum())
    assert_close(y, -(adv.astype(np.float64) * mask).sum() / n, f"{what} vs −mean A", atol=1e-5, rtol=1e-5)
    if not out.requires_grad:
        raise AssertionError(f"{what} is not differentiable in logp (no grad_fn): PPO trains through it")
    out.backward()
    assert_close(logp.grad.numpy(), -adv.astype(np.float64) * mask / n, f"d {what} / d logp vs −A/n",
                 atol=1e-5, rtol=1e-4)


@property_check("run_ppo_loss", lesson=14, examples=60, data=st.data(), clip=st.sampled_from([0.1, 0.2]))
def ppo_loss_clip_gradient(fn, data, clip):
    """the clip acts exactly outside [1−ε, 1+ε] on the side that matters: the gradient in logp is 0
    where (A > 0 and ρ > 1+ε) or (A < 0 and ρ < 1−ε), and −ρ A / n everywhere else."""
    adv, old, logp_np, ratio, mask = _policy_inputs(data.draw, clip)
    logp = tensor(logp_np).requires_grad_(True)
    what = f"run_ppo_loss(logp, old_logp, adv, mask, clip={clip})"
    out = fn(logp, tensor(old), tensor(adv), tensor(mask), clip)
    output(out, (), what)
    if not out.requires_grad:
        raise AssertionError(f"{what} is not differentiable in logp (no grad_fn): PPO trains through it")
    out.backward()
    a = adv.astype(np.float64)
    active = ((a > 0) & (ratio > 1 + clip)) | ((a < 0) & (ratio < 1 - clip))
    want = np.where(active, 0.0, -ratio * a) * mask / mask.sum()
    assert_close(logp.grad.numpy(), want, f"d {what} / d logp (0 where the clip is active, −ρA/n elsewhere)",
                 atol=1e-5, rtol=1e-4)


@property_check("run_ppo_value_loss", lesson=14, examples=50, ep=_episodes(n_arrays=3),
                clip=st.sampled_from([0.1, 0.5]))
def ppo_value_loss_matches_formula(fn, ep, clip):
    """run_ppo_value_loss(v, old_v, returns, mask, clip) is ½ Σ_t m_t max((v − R)², (v_old + clip(v
    − v_old, −ε, ε) − R)²) / Σ_t m_t in float64."""
    (v, old, ret), mask, _ = ep
    v64, o64, r64 = (a.astype(np.float64) for a in (v, old, ret))
    vc = o64 + np.clip(v64 - o64, -clip, clip)
    want = 0.5 * (np.maximum((v64 - r64) ** 2, (vc - r64) ** 2) * mask).sum() / mask.sum()
    what = f"run_ppo_value_loss(v, old_v, returns, mask, clip={clip})"
    assert_close(output(fn(tensor(v), tensor(old), tensor(ret), tensor(mask), clip), (), what), want,
                 f"{what} vs ½ mean max((v − R)², (v_clipped − R)²)", atol=1e-5, rtol=1e-5)


@property_check("run_kl_penalty", lesson=14, examples=40, ep=_episodes(lo=-10, hi=0))
def kl_penalty_is_log_ratio(fn, ep):
    """run_kl_penalty(logp, ref_logp) is the per-token k1 estimator logp − ref_logp (0 where the policy
    equals the reference)."""
    (lp, ref), _, _ = ep
    what = "run_kl_penalty(logp, ref_logp)"
    assert_close(output(fn(tensor(lp), tensor(ref)), lp.shape, what), lp.astype(np.float64) - ref.astype(np.float64),
                 f"{what} vs logp − ref_logp", atol=1e-5, rtol=1e-6)
    assert_close(output(fn(tensor(lp), tensor(lp)), lp.shape, what), np.zeros(lp.shape), "run_kl_penalty(logp, logp)",
                 atol=0, rtol=0)


@property_check("run_whiten", lesson=14, examples=50, ep=_episodes(n_arrays=1, lo=-5, hi=5))
def whiten_over_real_tokens(fn, ep):
    """run_whiten(x, mask) is (x − μ) / sqrt(σ² + 1e-8) with μ and the biased σ² over the real tokens
    (mask 1), and 0 on padding (float64)."""
    (x,), mask, _ = ep
    real = mask.astype(bool)
    x64 = x.astype(np.float64)
    mu = x64[real].mean()
    var = ((x64[real] - mu) ** 2).mean()
    assume(var > 1e-3)                          # near-constant x: float32 rounding of x − μ over sqrt(eps)
    want = np.where(real, (x64 - mu) / np.sqrt(var + 1e-8), 0.0)
    what = "run_whiten(x, mask)"
    assert_close(output(fn(tensor(x), tensor(mask)), x.shape, what), want, f"{what} vs (x − μ)/sqrt(σ² + 1e-8) on real "
                 f"tokens", atol=1e-4 + 1e-5 * np.abs(want), rtol=1e-4)
