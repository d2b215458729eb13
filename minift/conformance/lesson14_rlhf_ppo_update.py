"""Lesson 14's assignment (GAE, the clipped PPO loss and the KL penalty, as one PPO update): the
reference `run_*` functions and their checks.

    run_ppo_rewards(score, logp, ref_logp, mask, kl_coef)     r_t = −β (logp_t − ref_logp_t) + [t = last] score   (B, N)
    run_ppo_step(logits, tokens, old_logp, values, old_values, rewards, mask,
                 clip, clip_value, vf_coef, gamma, lam, whiten)   L_π + c_V L_V of one minibatch update      ()

They are `minift.align.ppo`'s token_rewards, and the loss `_update` descends: the response
log-probs from the logits (logps_of), advantages and returns by GAE over the ROLLOUT's values (no
gradient), optionally whitened, then ppo_policy_loss + vf_coef · ppo_value_loss.

The checks, registered into `CHECKS` with lesson="lesson14". Expected values are float64 numpy
loops (log-sum-exp, the backward GAE sum, the clipped objectives written out) or exact properties.

    run_ppo_rewards   the float64 loop, padding holding anything; with logp = ref_logp only the score
                      remains, on each row's last real token
    run_ppo_step      the float64 composition; at π = π_old with V = V_old it is −mean A + c_V ½ mean A²;
                      padding changes nothing and gets no gradient; the gradients in the logits and the
                      values are the float64 ones (0 where a clip is active)
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, strategies as st

from minift.align.ppo import gae, logps_of, ppo_policy_loss, ppo_value_loss, token_rewards, whiten as whiten_fn

from .harness import assert_close, output, property_check, tensor
from .lesson14_rlhf_ppo import _episodes, _gae64, _tensors
from .strategies import MAX_B, arrays, f32

# ---- the reference functions --------------------------------------------------------------------


def _check_bn(who: str, mask: torch.Tensor, **tensors) -> None:
    if mask.dim() != 2:
        raise ValueError(f"{who}: mask must be (B, N), got {tuple(mask.shape)}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(mask.shape):
            raise ValueError(f"{who}: {name} must have the shape of mask {tuple(mask.shape)}, got {tuple(t.shape)}")


def run_ppo_rewards(score, logp, ref_logp, mask, kl_coef: float):
    """The per-token rewards of `minift.align.ppo.token_rewards`: r_t = −β (logp_t − ref_logp_t) on every
    real response token, plus the reward model's score on each row's LAST real token; 0 on padding.
    score: (B,); logp, ref_logp, mask: (B, N), each row's real tokens a run of 1s from column 0. (B, N)."""
    score, logp, ref_logp, mask = _tensors(score=score, logp=logp, ref_logp=ref_logp, mask=mask)
    _check_bn("run_ppo_rewards", mask, logp=logp, ref_logp=ref_logp)
    if tuple(score.shape) != (mask.shape[0],):
        raise ValueError(f"run_ppo_rewards: score must be (B,) = ({mask.shape[0]},), got {tuple(score.shape)}")
    with torch.no_grad():
        rewards, _ = token_rewards({"mask": mask.long(), "logp": logp, "ref_logp": ref_logp, "score": score},
                                   float(kl_coef))
    return rewards


def run_ppo_step(logits, tokens, old_logp, values, old_values, rewards, mask, clip: float = 0.2,
                 clip_value: float = 0.2, vf_coef: float = 0.5, gamma: float = 1.0, lam: float = 0.95,
                 whiten: bool = True):
    """The loss of one PPO minibatch update, as `minift.align.ppo.train_ppo` computes it:

        logp_t = log softmax(logits_t)[tokens_t]                        the current policy's log-probs
        A, R   = GAE(rewards, old_values, mask, γ, λ)  (no gradient), A whitened if `whiten`
        L      = ppo_policy_loss(logp, old_logp, A, mask, clip)
                 + vf_coef · ppo_value_loss(values, old_values, R, mask, clip_value)

    logits: (B, N, V), the logits that predict the response tokens; tokens: (B, N) integer; old_logp,
    values (current value head), old_values (the rollout's), rewards, mask: (B, N). A scalar,
    differentiable in logits and values."""
    logits, tokens, old_logp, values, old_values, rewards, mask = _tensors(
        logits=logits, tokens=tokens, old_logp=old_logp, values=values, old_values=old_values, rewards=rewards,
        mask=mask)
    _check_bn("run_ppo_step", mask, tokens=tokens, old_logp=old_logp, values=values, old_values=old_values,
              rewards=rewards)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(mask.shape):
        raise ValueError(f"run_ppo_step: logits must be (B, N, V) with (B, N) = {tuple(mask.shape)}, got "
                         f"{tuple(logits.shape)}")
    m = mask.to(old_logp.dtype)
    logp = logps_of(logits.float(), tokens.long())                        # (B, N)
    with torch.no_grad():
        adv, returns = gae(rewards, old_values, m, float(gamma), float(lam))
        if whiten:
            adv = whiten_fn(adv, m)
    return (ppo_policy_loss(logp, old_logp, adv, m, float(clip))
            + vf_coef * ppo_value_loss(values, old_values, returns, m, float(clip_value)))


# ---- the checks: run_ppo_rewards -----------------------------------------------------------------

def _rewards64(score, lp, ref, lens, beta) -> np.ndarray:
    out = np.zeros(lp.shape)
    for b, n in enumerate(lens):
        for t in range(n):
            out[b, t] = -beta * (float(lp[b, t]) - float(ref[b, t]))
        out[b, n - 1] += float(score[b])
    return out


@property_check("run_ppo_rewards", lesson=14, examples=40, ep=_episodes(lo=-8, hi=0), data=st.data(),
                beta=st.sampled_from([0.0, 0.05, 0.2, 1.0]))
def ppo_rewards_match_loop(fn, ep, data, beta):
    """run_ppo_rewards(score, logp, ref_logp, mask, kl_coef) is −β (logp_t − ref_logp_t) on each real
    token plus the score on the row's last real token, 0 on padding (which holds anything), by a
    float64 loop; the inputs are left as they were."""
    (lp, ref), mask, lens = ep
    B, N = lp.shape
    score = data.draw(arrays((B,), f32(-3, 3)))
    junk = data.draw(arrays((2, B, N), f32(-1e3, 1e3)))
    lp, ref = np.where(mask == 1, lp, junk[0]), np.where(mask == 1, ref, junk[1])
    args = [tensor(score), tensor(lp), tensor(ref), tensor(mask)]
    copies = [a.clone() for a in args]
    what = f"run_ppo_rewards(score, logp, ref_logp, mask, kl_coef={beta})"
    y = output(fn(*args, beta), (B, N), what)
    assert_close(y, _rewards64(score, lp, ref, lens, beta), f"{what} vs −β k1 + score on the last real token",
                 atol=1e-5, rtol=1e-5)
    for name, a, c in zip(("score", "logp", "ref_logp", "mask"), args, copies):
        if not torch.equal(a, c):
            raise AssertionError(f"{what} changed its input {name} in place")


@property_check("run_ppo_rewards", lesson=14, examples=30, ep=_episodes(n_arrays=1, lo=-8, hi=0), data=st.data(),
                beta=st.sampled_from([0.1, 1.0]))
def ppo_rewards_at_reference(fn, ep, data, beta):
    """with the policy equal to the reference (logp = ref_logp) the KL penalty is 0: the rewards are
    the score on each row's last real token and exactly 0 everywhere else, so Σ_t r_t = score."""
    (lp,), mask, lens = ep
    B, N = lp.shape
    score = data.draw(arrays((B,), f32(-3, 3)))
    want = np.zeros((B, N))
    want[np.arange(B), np.array(lens) - 1] = score
    what = f"run_ppo_rewards(score, logp, logp, mask, kl_coef={beta})"
    y = output(fn(tensor(score), tensor(lp), tensor(lp), tensor(mask), beta), (B, N), what)
    assert_close(y, want, f"{what} vs the score on the last real token", atol=0, rtol=0)


# ---- the checks: run_ppo_step --------------------------------------------------------------------

@st.composite
def _ppo_batch(draw, at_old=False):
    """A PPO minibatch: logits (B, N, V), tokens, old_logp (ratios in [0.5, 1.5], or 1 when at_old),
    values, old_values (values moved by up to ±0.5, or equal when at_old), rewards, mask (a run of 1s
    from column 0), the row lengths and the float64 log-probs of the tokens under the logits."""
    B, N, V = draw(st.integers(1, MAX_B)), draw(st.integers(1, 6)), draw(st.integers(2, 6))
    z = draw(arrays((B, N, V), f32(-3, 3)))
    tokens = np.array(draw(st.lists(st.integers(0, V - 1), min_size=B * N, max_size=B * N)), np.int64).reshape(B, N)
    lens = [draw(st.integers(1, N)) for _ in range(B)]
    mask = np.array([[1.0] * n + [0.0] * (N - n) for n in lens], np.float32)
    z64 = z.astype(np.float64)
    lse = z64.max(-1) + np.log(np.exp(z64 - z64.max(-1, keepdims=True)).sum(-1))
    logp = np.take_along_axis(z64, tokens[..., None], -1)[..., 0] - lse            # (B, N) float64
    ratio = np.ones((B, N)) if at_old else draw(arrays((B, N), f32(0.5, 1.5))).astype(np.float64)
    old_logp = (logp - np.log(ratio)).astype(np.float32)
    values = draw(arrays((B, N), f32(-2, 2)))
    old_values = values if at_old else (values - draw(arrays((B, N), f32(-0.5, 0.5)))).astype(np.float32)
    rewards = draw(arrays((B, N), f32(-2, 2)))
    return dict(z=z, tokens=tokens, old_logp=old_logp, values=values, old_values=old_values.astype(np.float32),
                rewards=rewards, mask=mask, lens=lens, logp=logp)


def _adv64(x, gamma, lam, whiten):
    """GAE over the rollout's values, A and R = A + V_old (float64), A whitened (biased σ², eps 1e-8) if asked."""
    A = _gae64(x["rewards"], x["old_values"], x["lens"], gamma, lam)
    R = (A + x["old_values"].astype(np.float64)) * x["mask"]
    if whiten:
        real = x["mask"] == 1
        mu = A[real].mean()
        var = ((A[real] - mu) ** 2).mean()
        assume(var > 1e-2 or real.sum() == 1)          # near-constant A: float32 rounding over sqrt(1e-8)
        A = np.where(real, (A - mu) / np.sqrt(var + 1e-8), 0.0)
    return A, R


def _ppo_step64(x, clip, clip_value, vf_coef, gamma, lam, whiten):
    """(loss, dL/dlogits, dL/dvalues, A) of the PPO update in float64, written out."""
    A, R = _adv64(x, gamma, lam, whiten)
    m = x["mask"].astype(np.float64)
    n = m.sum()
    ratio = np.exp(x["logp"] - x["old_logp"].astype(np.float64))
    assume(np.abs(np.abs(ratio - 1) - clip).min() > 1e-3)                      # no ties at the clip boundary
    un, cl = ratio * A, np.clip(ratio, 1 - clip, 1 + clip) * A
    pl = -(np.minimum(un, cl) * m).sum() / n
    v, vo = x["values"].astype(np.float64), x["old_values"].astype(np.float64)
    vc = vo + np.clip(v - vo, -clip_value, clip_value)
    e_un, e_cl = (v - R) ** 2, (vc - R) ** 2
    vl = 0.5 * (np.maximum(e_un, e_cl) * m).sum() / n
    active = ((A > 0) & (ratio > 1 + clip)) | ((A < 0) & (ratio < 1 - clip))
    d_logp = np.where(active, 0.0, -ratio * A) * m / n                         # dL/dlogp_t
    z = x["z"].astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(z.shape[-1])[x["tokens"]]
    d_z = d_logp[..., None] * (onehot - p)                                     # dlogp/dz = onehot − softmax
    inside = np.abs(v - vo) < clip_value
    d_v = vf_coef * np.where(e_un >= e_cl, v - R, (vc - R) * inside) * m / n
    return pl + vf_coef * vl, d_z, d_v, A


def _call_step(fn, x, what, **kw):
    logits, values = tensor(x["z"]).requires_grad_(True), tensor(x["values"]).requires_grad_(True)
    out = fn(logits, torch.tensor(x["tokens"]), tensor(x["old_logp"]), values, tensor(x["old_values"]),
             tensor(x["rewards"]), tensor(x["mask"]), **kw)
    y = output(out, (), what)
    if not out.requires_grad:
        raise AssertionError(f"{what} is not differentiable (no grad_fn): the update trains through it")
    out.backward()
    if logits.grad is None or values.grad is None:
        raise AssertionError(f"{what}: no gradient reached {'logits' if logits.grad is None else 'values'}")
    return float(y), logits.grad.double().numpy(), values.grad.double().numpy()


HYPER = dict(clip=st.sampled_from([0.1, 0.2]), clip_value=st.sampled_from([0.2, 1.0]),
             vf_coef=st.sampled_from([0.5, 1.0]), gamma=st.sampled_from([1.0, 0.9]), lam=st.sampled_from([0.95, 0.5]),
             whiten=st.booleans())


def _hyper(clip, clip_value, vf_coef, gamma, lam, whiten) -> dict:
    return dict(clip=clip, clip_value=clip_value, vf_coef=vf_coef, gamma=gamma, lam=lam, whiten=whiten)


@property_check("run_ppo_step", lesson=14, examples=40, x=_ppo_batch(), **HYPER)
def ppo_step_matches_float64(fn, x, clip, clip_value, vf_coef, gamma, lam, whiten):
    """run_ppo_step(...) is the float64 composition: logp_t = z_t[y_t] − log Σ e^{z_t}, GAE over the
    rollout's values (V_old, V = 0 after the last real token), A whitened if asked, then −mean min(ρA,
    clip(ρ)A) + c_V ½ mean max((V − R)², (V_old + clip(V − V_old, ±ε_V) − R)²) over the real tokens."""
    kw = _hyper(clip, clip_value, vf_coef, gamma, lam, whiten)
    want, _, _, _ = _ppo_step64(x, **kw)
    what = f"run_ppo_step(logits, tokens, old_logp, values, old_values, rewards, mask, {kw})"
    y, _, _ = _call_step(fn, x, what, **kw)
    assert_close(y, want, f"{what} vs the float64 PPO loss", atol=1e-4, rtol=1e-4)


@property_check("run_ppo_step", lesson=14, examples=30, x=_ppo_batch(at_old=True), vf_coef=st.sampled_from([0.5, 1.0]),
                gamma=st.sampled_from([1.0, 0.9]), lam=st.sampled_from([0.95, 0.5]))
def ppo_step_at_old_policy(fn, x, vf_coef, gamma, lam):
    """at the start of an update (π = π_old: logp = old_logp, ratio 1; V = V_old), unwhitened, the loss
    is −mean_t A_t + c_V · ½ mean_t A_t² (R − V = A), with A the float64 GAE of the rewards."""
    A, _ = _adv64(x, gamma, lam, False)
    m = x["mask"].astype(np.float64)
    want = -(A * m).sum() / m.sum() + vf_coef * 0.5 * (A ** 2 * m).sum() / m.sum()
    kw = dict(clip=0.2, clip_value=0.2, vf_coef=vf_coef, gamma=gamma, lam=lam, whiten=False)
    what = f"run_ppo_step at π = π_old, V = V_old ({kw})"
    y, _, _ = _call_step(fn, x, what, **kw)
    assert_close(y, want, f"{what} vs −mean A + c_V ½ mean A²", atol=1e-4, rtol=1e-4)


@property_check("run_ppo_step", lesson=14, examples=20, x=_ppo_batch(), data=st.data(), **HYPER)
def ppo_step_ignores_padding(fn, x, data, clip, clip_value, vf_coef, gamma, lam, whiten):
    """padding changes nothing: with every padded position's logits, tokens, old log-probs, values, old
    values and rewards replaced by junk (up to ±1e3) the loss is the float64 one of the real tokens, and
    the padded logits and values get exactly zero gradient."""
    assume(min(x["lens"]) < x["mask"].shape[1])                              # some row is padded
    kw = _hyper(clip, clip_value, vf_coef, gamma, lam, whiten)
    want, _, _, _ = _ppo_step64(x, **kw)
    pad = x["mask"] == 0
    j = dict(x)
    for k in ("old_logp", "values", "old_values", "rewards"):
        j[k] = np.where(pad, data.draw(arrays(pad.shape, f32(-1e3, 1e3))), x[k]).astype(np.float32)
    j["z"] = np.where(pad[..., None], data.draw(arrays(x["z"].shape, f32(-1e3, 1e3))), x["z"]).astype(np.float32)
    j["tokens"] = np.where(pad, (x["tokens"] + 1) % x["z"].shape[-1], x["tokens"])
    what = f"run_ppo_step with junk on the padding ({kw})"
    y, gz, gv = _call_step(fn, j, what, **kw)
    assert_close(y, want, f"{what} vs the loss of the real tokens", atol=1e-4, rtol=1e-4)
    assert_close(gz * pad[..., None], np.zeros(gz.shape), f"{what}: d loss / d logits on the padding", atol=0, rtol=0)
    assert_close(gv * pad, np.zeros(gv.shape), f"{what}: d loss / d values on the padding", atol=0, rtol=0)


@property_check("run_ppo_step", lesson=14, examples=40, x=_ppo_batch(), **HYPER)
def ppo_step_gradients(fn, x, clip, clip_value, vf_coef, gamma, lam, whiten):
    """the gradients are PPO's: d/dz_t = dL/dlogp_t (onehot(y_t) − softmax(z_t)) with dL/dlogp_t = −ρ_t A_t / n,
    0 where the clip is active on the side that matters; d/dV_t = c_V (V_t − R_t)/n, or (V_clip − R_t)/n
    where the clipped error is larger (0 once V moved past ±ε_V); the advantages and returns carry none."""
    kw = _hyper(clip, clip_value, vf_coef, gamma, lam, whiten)
    _, dz, dv, _ = _ppo_step64(x, **kw)
    v, vo = x["values"].astype(np.float64), x["old_values"].astype(np.float64)
    assume(np.abs(np.abs(v - vo) - clip_value).min() > 1e-3)                  # no ties at the value clip
    _, R = _adv64(x, gamma, lam, whiten)
    e_un, e_cl = (v - R) ** 2, (vo + np.clip(v - vo, -clip_value, clip_value) - R) ** 2
    assume(((np.abs(e_un - e_cl) > 1e-4) | (v == vo) | (x["mask"] == 0)).all())   # which error is larger is clear
    what = f"run_ppo_step(logits, tokens, old_logp, values, old_values, rewards, mask, {kw})"
    _, gz, gv = _call_step(fn, x, what, **kw)
    assert_close(gz, dz, f"d {what} / d logits", atol=1e-5, rtol=1e-4)
    assert_close(gv, dv, f"d {what} / d values", atol=1e-5, rtol=1e-4)
