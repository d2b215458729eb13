"""Reference `run_*` adapters of lesson 14, PPO-RLHF (minift/align/ppo.py): plain tensors and
hyperparameters in, tensors out. Every (B, N) input has a 0/1 `mask` of the real response tokens.

    run_gae(rewards, values, mask, gamma, lam)      (A, R): δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}
    run_ppo_loss(logp, old_logp, adv, mask, clip)   −mean_t min(ρ A, clip(ρ, 1 ± ε) A), ρ = e^{logp − old}
    run_ppo_value_loss(v, old_v, returns, mask, clip)  ½ mean_t max((v − R)², (v_old + clip(v − v_old, ±ε) − R)²)
    run_kl_penalty(logp, ref_logp)                  logp − ref_logp (the k1 estimator, per token)
    run_whiten(x, mask)                             (x − μ)/sqrt(σ² + 1e-8) over the real tokens, 0 on padding

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

import torch

from minift.align.ppo import gae, kl_penalty, ppo_policy_loss, ppo_value_loss, whiten

__all__: list[str] = ["run_gae", "run_ppo_loss", "run_ppo_value_loss", "run_kl_penalty", "run_whiten"]


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
