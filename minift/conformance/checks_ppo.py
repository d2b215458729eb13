"""Conformance checks of lesson 14, PPO-RLHF (minift/align/ppo.py), registered into `checks.CHECKS` with
lesson="lesson14". Expected values are computed here independently (float64 numpy, plain loops),
never by calling minift's reference adapters.

    run_gae              λ = 1: discounted return − V; λ = 0: the TD residual; any λ: the backward loop
    run_ppo_loss         the clipped objective in float64; at ρ = 1 it is −mean A; its gradient in logp
                         is exactly 0 where the clip is active on the side that matters, −ρA/n elsewhere
    run_ppo_value_loss   ½ mean max((v − R)², (v_old + clip(v − v_old) − R)²) in float64
    run_kl_penalty       logp − ref_logp
    run_whiten           mean 0, variance 1 over the real tokens, 0 on padding
"""
from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
from .strategies import MAX_B, MAX_T, arrays, check_settings, f32


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
    out = fn(_t(r), _t(v), _t(mask), gamma, lam)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(f"{what} must return a tuple (advantages, returns), got {type(out).__name__}")
    return _out(out[0], r.shape, what + "[0]"), _out(out[1], r.shape, what + "[1]"), what


@_register("run_gae", "GAE with λ = 1 gives advantages = discounted return Σ_k γ^k r_{t+k} − V(s_t) and returns = "
           "the discounted return (float64 loop; V = 0 after each row's last real token; 0 on padding).",
           lesson="lesson14")
def check_gae_lambda_one_is_return_minus_value(impl):
    fn = _adapter(impl, "run_gae")

    @check_settings(50)
    @given(ep=_episodes(), gamma=st.sampled_from([1.0, 0.9, 0.5]))
    def gae_lambda_one_is_return_minus_value(ep, gamma):
        (r, v), mask, lens = ep
        A, R, what = _call_gae(fn, r, v, mask, gamma, 1.0)
        G = np.zeros(r.shape)
        for b, n in enumerate(lens):
            for t in range(n):
                G[b, t] = sum(gamma ** (k - t) * float(r[b, k]) for k in range(t, n))
        _assert_close(A, (G - v) * mask, f"{what} advantages vs return − V", atol=1e-4, rtol=1e-5)
        _assert_close(R, G, f"{what} returns vs the discounted return", atol=1e-4, rtol=1e-5)
    _run(gae_lambda_one_is_return_minus_value)


@_register("run_gae", "GAE with λ = 0 gives the one-step TD residual δ_t = r_t + γ V(s_{t+1}) − V(s_t), with "
           "V = 0 after the last real token.", lesson="lesson14")
def check_gae_lambda_zero_is_td_residual(impl):
    fn = _adapter(impl, "run_gae")

    @check_settings(50)
    @given(ep=_episodes(), gamma=st.sampled_from([1.0, 0.9]))
    def gae_lambda_zero_is_td_residual(ep, gamma):
        (r, v), mask, lens = ep
        A, _, what = _call_gae(fn, r, v, mask, gamma, 0.0)
        want = np.zeros(r.shape)
        for b, n in enumerate(lens):
            for t in range(n):
                want[b, t] = float(r[b, t]) + gamma * (float(v[b, t + 1]) if t + 1 < n else 0.0) - float(v[b, t])
        _assert_close(A, want, f"{what} vs r_t + γ V_(t+1) − V_t", atol=1e-5, rtol=1e-5)
    _run(gae_lambda_zero_is_td_residual)


@_register("run_gae", "for any γ, λ in [0, 1], advantages are A_t = Σ_k (γλ)^k δ_{t+k} and returns A_t + V(s_t) "
           "(float64 loop), 0 on padding.", lesson="lesson14")
def check_gae_matches_loop(impl):
    fn = _adapter(impl, "run_gae")

    @check_settings(50)
    @given(ep=_episodes(), gamma=st.sampled_from([1.0, 0.95, 0.5]), lam=st.sampled_from([0.95, 0.5, 0.9]))
    def gae_matches_loop(ep, gamma, lam):
        (r, v), mask, lens = ep
        A, R, what = _call_gae(fn, r, v, mask, gamma, lam)
        want = _gae64(r, v, lens, gamma, lam)
        _assert_close(A, want, f"{what} advantages vs Σ (γλ)^k δ", atol=1e-4, rtol=1e-5)
        _assert_close(R, (want + v) * mask, f"{what} returns vs A + V", atol=1e-4, rtol=1e-5)
    _run(gae_matches_loop)


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


@_register("run_ppo_loss", "run_ppo_loss(logp, old_logp, adv, mask, clip) is −Σ_t m_t min(ρ A, clip(ρ, 1−ε, 1+ε) A) "
           "/ Σ_t m_t with ρ = exp(logp − old_logp), in float64 (ρ in [0.5, 1.5]).", lesson="lesson14")
def check_ppo_loss_matches_formula(impl):
    fn = _adapter(impl, "run_ppo_loss")

    @check_settings(60)
    @given(data=st.data(), clip=st.sampled_from([0.1, 0.2, 0.3]))
    def ppo_loss_matches_formula(data, clip):
        adv, old, logp, ratio, mask = _policy_inputs(data.draw, clip)
        what = f"run_ppo_loss(logp, old_logp, adv, mask, clip={clip})"
        y = _out(fn(_t(logp), _t(old), _t(adv), _t(mask), clip), (), what)
        _assert_close(y, _ppo_objective64(ratio, adv, mask, clip), f"{what} vs −mean min(ρA, clip(ρ)A)",
                      atol=1e-5, rtol=1e-5)
    _run(ppo_loss_matches_formula)


@_register("run_ppo_loss", "at ratio 1 (logp == old_logp) the clipped and unclipped objectives agree: the loss is "
           "−mean_t A_t over the real tokens, and its gradient in logp is −A_t / n.", lesson="lesson14")
def check_ppo_loss_ratio_one(impl):
    fn = _adapter(impl, "run_ppo_loss")

    @check_settings(40)
    @given(ep=_episodes(), clip=st.sampled_from([0.1, 0.2]))
    def ppo_loss_ratio_one(ep, clip):
        (adv, lp), mask, _ = ep
        logp = _t(lp).requires_grad_(True)
        what = f"run_ppo_loss(logp, logp, adv, mask, clip={clip})"
        out = fn(logp, _t(lp), _t(adv), _t(mask), clip)
        y = _out(out, (), what)
        n = float(mask.sum())
        _assert_close(y, -(adv.astype(np.float64) * mask).sum() / n, f"{what} vs −mean A", atol=1e-5, rtol=1e-5)
        if not out.requires_grad:
            raise AssertionError(f"{what} is not differentiable in logp (no grad_fn): PPO trains through it")
        out.backward()
        _assert_close(logp.grad.numpy(), -adv.astype(np.float64) * mask / n, f"d {what} / d logp vs −A/n",
                      atol=1e-5, rtol=1e-4)
    _run(ppo_loss_ratio_one)


@_register("run_ppo_loss", "the clip acts exactly outside [1−ε, 1+ε] on the side that matters: the gradient in logp "
           "is 0 where (A > 0 and ρ > 1+ε) or (A < 0 and ρ < 1−ε), and −ρ A / n everywhere else.", lesson="lesson14")
def check_ppo_loss_clip_gradient(impl):
    fn = _adapter(impl, "run_ppo_loss")

    @check_settings(60)
    @given(data=st.data(), clip=st.sampled_from([0.1, 0.2]))
    def ppo_loss_clip_gradient(data, clip):
        adv, old, logp_np, ratio, mask = _policy_inputs(data.draw, clip)
        logp = _t(logp_np).requires_grad_(True)
        what = f"run_ppo_loss(logp, old_logp, adv, mask, clip={clip})"
        out = fn(logp, _t(old), _t(adv), _t(mask), clip)
        _out(out, (), what)
        if not out.requires_grad:
            raise AssertionError(f"{what} is not differentiable in logp (no grad_fn): PPO trains through it")
        out.backward()
        a = adv.astype(np.float64)
        active = ((a > 0) & (ratio > 1 + clip)) | ((a < 0) & (ratio < 1 - clip))
        want = np.where(active, 0.0, -ratio * a) * mask / mask.sum()
        _assert_close(logp.grad.numpy(), want, f"d {what} / d logp (0 where the clip is active, −ρA/n elsewhere)",
                      atol=1e-5, rtol=1e-4)
    _run(ppo_loss_clip_gradient)


@_register("run_ppo_value_loss", "run_ppo_value_loss(v, old_v, returns, mask, clip) is ½ Σ_t m_t max((v − R)², "
           "(v_old + clip(v − v_old, −ε, ε) − R)²) / Σ_t m_t in float64.", lesson="lesson14")
def check_ppo_value_loss_matches_formula(impl):
    fn = _adapter(impl, "run_ppo_value_loss")

    @check_settings(50)
    @given(ep=_episodes(n_arrays=3), clip=st.sampled_from([0.1, 0.5]))
    def ppo_value_loss_matches_formula(ep, clip):
        (v, old, ret), mask, _ = ep
        v64, o64, r64 = (a.astype(np.float64) for a in (v, old, ret))
        vc = o64 + np.clip(v64 - o64, -clip, clip)
        want = 0.5 * (np.maximum((v64 - r64) ** 2, (vc - r64) ** 2) * mask).sum() / mask.sum()
        what = f"run_ppo_value_loss(v, old_v, returns, mask, clip={clip})"
        _assert_close(_out(fn(_t(v), _t(old), _t(ret), _t(mask), clip), (), what), want,
                      f"{what} vs ½ mean max((v − R)², (v_clipped − R)²)", atol=1e-5, rtol=1e-5)
    _run(ppo_value_loss_matches_formula)


@_register("run_kl_penalty", "run_kl_penalty(logp, ref_logp) is the per-token k1 estimator logp − ref_logp "
           "(0 where the policy equals the reference).", lesson="lesson14")
def check_kl_penalty_is_log_ratio(impl):
    fn = _adapter(impl, "run_kl_penalty")

    @check_settings(40)
    @given(ep=_episodes(lo=-10, hi=0))
    def kl_penalty_is_log_ratio(ep):
        (lp, ref), _, _ = ep
        what = "run_kl_penalty(logp, ref_logp)"
        _assert_close(_out(fn(_t(lp), _t(ref)), lp.shape, what), lp.astype(np.float64) - ref.astype(np.float64),
                      f"{what} vs logp − ref_logp", atol=1e-5, rtol=1e-6)
        _assert_close(_out(fn(_t(lp), _t(lp)), lp.shape, what), np.zeros(lp.shape), "run_kl_penalty(logp, logp)",
                      atol=0, rtol=0)
    _run(kl_penalty_is_log_ratio)


@_register("run_whiten", "run_whiten(x, mask) is (x − μ) / sqrt(σ² + 1e-8) with μ and the biased σ² over the real "
           "tokens (mask 1), and 0 on padding (float64).", lesson="lesson14")
def check_whiten_over_real_tokens(impl):
    fn = _adapter(impl, "run_whiten")

    @check_settings(50)
    @given(ep=_episodes(n_arrays=1, lo=-5, hi=5))
    def whiten_over_real_tokens(ep):
        (x,), mask, _ = ep
        real = mask.astype(bool)
        x64 = x.astype(np.float64)
        mu = x64[real].mean()
        var = ((x64[real] - mu) ** 2).mean()
        assume(var > 1e-3)                          # near-constant x: float32 rounding of x − μ over sqrt(eps)
        want = np.where(real, (x64 - mu) / np.sqrt(var + 1e-8), 0.0)
        what = "run_whiten(x, mask)"
        _assert_close(_out(fn(_t(x), _t(mask)), x.shape, what), want, f"{what} vs (x − μ)/sqrt(σ² + 1e-8) on real "
                      f"tokens", atol=1e-4 + 1e-5 * np.abs(want), rtol=1e-4)
    _run(whiten_over_real_tokens)

