"""Planted bugs for lesson 14 (reward models and PPO): buggy copies of the reference `run_*` functions,
one plausible learner mistake each, named run_<fn>__<bug>. tests/test_planted.py swaps each into the
reference and asserts that the checks of run_<fn> catch it."""
import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


# ---- run_reward_loss -----------------------------------------------------------------------------

def run_reward_loss__naive_log_sigmoid(r_chosen, r_rejected, margin=0.0):
    """writes −log σ(d) as −log(sigmoid(d)): inf once σ(d) underflows to 0."""
    return -torch.log(torch.sigmoid(r_chosen - r_rejected - margin))


def run_reward_loss__margin_sign(r_chosen, r_rejected, margin=0.0):
    """adds the margin instead of subtracting it."""
    return ref.run_reward_loss(r_chosen, r_rejected, -margin)


def run_reward_loss__swapped(r_chosen, r_rejected, margin=0.0):
    """puts the rejected reward first: −log σ(r_l − r_w − m)."""
    return ref.run_reward_loss(r_rejected, r_chosen, margin)


# ---- run_reward_at_last_token --------------------------------------------------------------------

def run_reward_at_last_token__sum_minus_one(hidden, attention_mask, w, b):
    """reads at position Σ mask − 1, right only for right padding."""
    last = attention_mask.long().sum(1) - 1
    return hidden[torch.arange(hidden.shape[0]), last] @ w + b.reshape(())


def run_reward_at_last_token__final_position(hidden, attention_mask, w, b):
    """reads at the last column T − 1 whatever the padding."""
    return hidden[:, -1] @ w + b.reshape(())


# ---- run_gae -------------------------------------------------------------------------------------

def run_gae__value_after_end(rewards, values, mask, gamma=1.0, lam=0.95):
    """bootstraps from V_{t+1} even after the row's last real token (the padding's value leaks in)."""
    B, N = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(B)
    for t in reversed(range(N)):
        v_next = values[:, t + 1] if t + 1 < N else torch.zeros(B)
        delta = rewards[:, t] + gamma * v_next - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def run_gae__no_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    """forgets λ in the recursion: A_t = δ_t + γ A_{t+1} (always λ = 1)."""
    return ref.run_gae(rewards, values, mask, gamma, 1.0)


def run_gae__returns_without_value(rewards, values, mask, gamma=1.0, lam=0.95):
    """returns R = A instead of A + V."""
    adv, _ = ref.run_gae(rewards, values, mask, gamma, lam)
    return adv, adv.clone()


# ---- run_ppo_loss --------------------------------------------------------------------------------

def run_ppo_loss__max_not_min(logp, old_logp, adv, mask, clip=0.2):
    """takes the max of the clipped and unclipped objectives (the optimistic bound)."""
    ratio = torch.exp(logp - old_logp)
    obj = torch.max(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    return -(obj * mask).sum() / mask.sum()


def run_ppo_loss__ratio_not_exp(logp, old_logp, adv, mask, clip=0.2):
    """uses the log-ratio logp − old_logp as the ratio (forgets exp)."""
    ratio = 1 + (logp - old_logp)
    obj = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    return -(obj * mask).sum() / mask.sum()


def run_ppo_loss__mean_over_all(logp, old_logp, adv, mask, clip=0.2):
    """averages over every position, padding included."""
    return ref.run_ppo_loss(logp, old_logp, adv, mask, clip) * mask.sum() / mask.numel()


# ---- run_ppo_value_loss --------------------------------------------------------------------------

def run_ppo_value_loss__min_not_max(v, old_v, returns, mask, clip=0.2):
    """takes the min of the two squared errors."""
    vc = old_v + torch.clamp(v - old_v, -clip, clip)
    return 0.5 * (torch.min((v - returns) ** 2, (vc - returns) ** 2) * mask).sum() / mask.sum()


def run_ppo_value_loss__no_half(v, old_v, returns, mask, clip=0.2):
    """forgets the ½."""
    return 2 * ref.run_ppo_value_loss(v, old_v, returns, mask, clip)


# ---- run_kl_penalty ------------------------------------------------------------------------------

def run_kl_penalty__swapped(logp, ref_logp):
    """ref_logp − logp (the reverse sign)."""
    return ref.run_kl_penalty(ref_logp, logp)


def run_kl_penalty__squared(logp, ref_logp):
    """½ (logp − ref_logp)², the k2 estimator instead of k1."""
    return 0.5 * (logp - ref_logp) ** 2


# ---- run_whiten ----------------------------------------------------------------------------------

def run_whiten__padding_in_stats(x, mask):
    """takes μ and σ² over every position, padding included."""
    mu, var = x.mean(), x.var(unbiased=False)
    return (x - mu) / torch.sqrt(var + 1e-8) * mask


def run_whiten__unbiased(x, mask):
    """uses the unbiased variance (divides by n − 1)."""
    m = mask.bool()
    xs = x[m]
    return torch.where(m, (x - xs.mean()) / torch.sqrt(xs.var(unbiased=True) + 1e-8), 0.0) if xs.numel() > 1 \
        else ref.run_whiten(x, mask)


# ---- run_ppo_rewards -----------------------------------------------------------------------------

def run_ppo_rewards__score_on_last_column(score, logp, ref_logp, mask, kl_coef):
    """adds the score on column N − 1, not on each row's last real token."""
    r = -kl_coef * (logp - ref_logp) * mask
    r[:, -1] += score
    return r


def run_ppo_rewards__kl_sign(score, logp, ref_logp, mask, kl_coef):
    """adds +β k1 instead of −β k1."""
    return ref.run_ppo_rewards(score, logp, ref_logp, mask, -kl_coef)


def run_ppo_rewards__padding_leaks(score, logp, ref_logp, mask, kl_coef):
    """forgets the mask: the padding's log-ratios enter the rewards."""
    r = -kl_coef * (logp - ref_logp)
    r[torch.arange(len(score)), mask.long().sum(1) - 1] += score
    return r


def run_ppo_rewards__in_place(score, logp, ref_logp, mask, kl_coef):
    """builds the rewards in logp's own storage (logp.sub_), changing the caller's log-probs."""
    k1 = logp.sub_(ref_logp)
    r = torch.where(mask.bool(), -kl_coef * k1, 0.0)
    r[torch.arange(len(score)), mask.long().sum(1) - 1] += score
    return r


# ---- run_ppo_step --------------------------------------------------------------------------------

def _logp(logits, tokens):
    return F.log_softmax(logits.float(), -1).gather(-1, tokens.long()[..., None])[..., 0]


def _step(logits, tokens, old_logp, values, old_values, rewards, mask, clip, clip_value, vf_coef, gamma, lam, whiten,
          gae_values=None, value_loss_ref=None):
    adv, returns = ref.run_gae(rewards, old_values if gae_values is None else gae_values, mask, gamma, lam)
    if whiten:
        adv = ref.run_whiten(adv, mask)
    return (ref.run_ppo_loss(_logp(logits, tokens), old_logp, adv, mask, clip)
            + vf_coef * ref.run_ppo_value_loss(values, old_values if value_loss_ref is None else value_loss_ref,
                                               returns, mask, clip_value))


def run_ppo_step__gae_on_current_values(logits, tokens, old_logp, values, old_values, rewards, mask, clip=0.2,
                                        clip_value=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten=True):
    """runs GAE on the value head's current predictions instead of the rollout's."""
    return _step(logits, tokens, old_logp, values, old_values, rewards, mask, clip, clip_value, vf_coef, gamma, lam,
                 whiten, gae_values=values.detach())


def run_ppo_step__returns_with_gradient(logits, tokens, old_logp, values, old_values, rewards, mask, clip=0.2,
                                        clip_value=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten=True):
    """lets the returns carry the value head's gradient: R = A + V_old + (V − V.detach()), right numbers."""
    adv, returns = ref.run_gae(rewards, old_values, mask, gamma, lam)
    returns = returns + (values - values.detach()) * mask
    if whiten:
        adv = ref.run_whiten(adv, mask)
    return (ref.run_ppo_loss(_logp(logits, tokens), old_logp, adv, mask, clip)
            + vf_coef * ref.run_ppo_value_loss(values, old_values, returns, mask, clip_value))


def run_ppo_step__logits_not_log_softmax(logits, tokens, old_logp, values, old_values, rewards, mask, clip=0.2,
                                         clip_value=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten=True):
    """takes the raw logit of the token as its log-prob (no log-softmax)."""
    adv, returns = ref.run_gae(rewards, old_values, mask, gamma, lam)
    if whiten:
        adv = ref.run_whiten(adv, mask)
    logp = logits.gather(-1, tokens.long()[..., None])[..., 0]
    return (ref.run_ppo_loss(logp, old_logp, adv, mask, clip)
            + vf_coef * ref.run_ppo_value_loss(values, old_values, returns, mask, clip_value))


def run_ppo_step__no_vf_coef(logits, tokens, old_logp, values, old_values, rewards, mask, clip=0.2,
                             clip_value=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten=True):
    """adds the value loss without its coefficient c_V."""
    return _step(logits, tokens, old_logp, values, old_values, rewards, mask, clip, clip_value, 1.0, gamma, lam, whiten)


def run_ppo_step__clip_for_value(logits, tokens, old_logp, values, old_values, rewards, mask, clip=0.2,
                                 clip_value=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten=True):
    """clips the value update with the policy's ε instead of ε_V."""
    return _step(logits, tokens, old_logp, values, old_values, rewards, mask, clip, clip, vf_coef, gamma, lam, whiten)


def run_ppo_step__padding_in_logits(logits, tokens, old_logp, values, old_values, rewards, mask, clip=0.2,
                                    clip_value=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten=True):
    """normalises the log-softmax over the whole batch's padded logits too (a wrong axis)."""
    adv, returns = ref.run_gae(rewards, old_values, mask, gamma, lam)
    if whiten:
        adv = ref.run_whiten(adv, mask)
    lp = F.log_softmax(logits.float(), 1).gather(-1, tokens.long()[..., None])[..., 0]
    return (ref.run_ppo_loss(lp, old_logp, adv, mask, clip)
            + vf_coef * ref.run_ppo_value_loss(values, old_values, returns, mask, clip_value))


# ---- run_lora_kl (part 6: PPO with a LoRA policy, π_ref = the adapters disabled) --------------------

def _lora_logps(hidden, weight, lora_A, lora_B, scaling, tokens, adapter=True, normalise=True):
    z = hidden @ weight.T + (scaling * (hidden @ lora_A.T) @ lora_B.T if adapter else 0.0)   # (B, N, V)
    z = F.log_softmax(z, -1) if normalise else z
    return z.gather(-1, tokens.long()[..., None])[..., 0]


def run_lora_kl__adapter_left_on(hidden, weight, lora_A, lora_B, scaling, tokens, mask):
    """scores the reference with the adapter still on (forgets to disable it): k1 is always 0."""
    lp = _lora_logps(hidden, weight, lora_A, lora_B, scaling, tokens)
    return torch.where(mask.bool(), lp - _lora_logps(hidden, weight, lora_A, lora_B, scaling, tokens), 0.0)


def run_lora_kl__no_scaling(hidden, weight, lora_A, lora_B, scaling, tokens, mask):
    """adds B A without its scale s = alpha / r."""
    return ref.run_lora_kl(hidden, weight, lora_A, lora_B, 1.0, tokens, mask)


def run_lora_kl__padding_kept(hidden, weight, lora_A, lora_B, scaling, tokens, mask):
    """returns k1 on every position, padding included (forgets the mask)."""
    return (_lora_logps(hidden, weight, lora_A, lora_B, scaling, tokens)
            - _lora_logps(hidden, weight, lora_A, lora_B, scaling, tokens, adapter=False))


def run_lora_kl__logits_not_logps(hidden, weight, lora_A, lora_B, scaling, tokens, mask):
    """subtracts the raw logits of the token (no log-softmax): z[y] − z_ref[y]."""
    k = (_lora_logps(hidden, weight, lora_A, lora_B, scaling, tokens, normalise=False)
         - _lora_logps(hidden, weight, lora_A, lora_B, scaling, tokens, adapter=False, normalise=False))
    return torch.where(mask.bool(), k, 0.0)


def run_lora_kl__reversed(hidden, weight, lora_A, lora_B, scaling, tokens, mask):
    """log π_ref − log π (the sign of the log-ratio reversed)."""
    return -ref.run_lora_kl(hidden, weight, lora_A, lora_B, scaling, tokens, mask)
