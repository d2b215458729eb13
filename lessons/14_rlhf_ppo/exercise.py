"""Lesson 14 exercise: the pieces of RLHF — the reward model's loss and where it reads its score,
and PPO's advantage estimate, clipped losses, KL penalty and whitening.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 14`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Conventions: (B, N) tensors hold one row per sampled response and one column per response token;
`mask` (B, N) is 1 on a row's real tokens (a run of 1s from column 0: the response through its
EOS) and 0 on padding. "mean over real tokens" is Σ m x / Σ m over the whole batch.

Rules: plain PyTorch; do not call minift.
"""
import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_reward_loss(r_chosen, r_rejected, margin=0.0):
    """The Bradley–Terry loss of a reward model, per pair (B,) and (B,) -> (B,):

        L = −log σ(r_chosen − r_rejected − margin)

    It must stay finite and exact for reward differences of thousands: −log σ(d) = log(1 + e^{−d})
    overflows if you write it that way. Look for a stable log-sigmoid or softplus.
    """
    raise NotImplementedError("run_reward_loss: not written yet; its docstring and "
                              "lessons/14_rlhf_ppo/README.md, \"The maths\", say what it computes")


def run_reward_at_last_token(hidden, attention_mask, w, b):
    """The reward head: read each row's final hidden state at its LAST REAL token and project it.

        r_i = w · hidden[i, t_i] + b,      t_i = max{t : attention_mask[i, t] = 1}

    hidden: (B, T, C); attention_mask: (B, T) of 0/1 (left-, right- or un-padded); w: (C,); b: (1,).
    Returns (B,). Find t_i from the mask, never from a token id, and not as sum(mask) − 1 (that is
    only right for right padding).
    """
    raise NotImplementedError("run_reward_at_last_token: not written yet; its docstring and "
                              "lessons/14_rlhf_ppo/README.md, \"The maths\", say what it computes")


def run_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al., 2016) over each row's real tokens:

        δ_t = r_t + γ V_{t+1} − V_t          (V_{t+1} = 0 after the row's last real token)
        A_t = δ_t + γ λ A_{t+1}              (computed backwards, A = 0 after the last token)
        R_t = A_t + V_t

    rewards, values, mask: (B, N). Returns the tuple (A, R), both (B, N) and 0 on padding.
    λ = 1 gives A_t = Σ_k γ^k r_{t+k} − V_t; λ = 0 gives A_t = δ_t.
    """
    raise NotImplementedError("run_gae: not written yet; its docstring and "
                              "lessons/14_rlhf_ppo/README.md, \"The maths\", say what it computes")


def run_ppo_loss(logp, old_logp, adv, mask, clip=0.2):
    """PPO's clipped surrogate (Schulman et al., 2017), to MINIMISE, a scalar:

        ρ_t = exp(logp_t − old_logp_t)
        L   = −mean over real tokens of min(ρ_t A_t, clip(ρ_t, 1 − clip, 1 + clip) A_t)

    logp (with gradients), old_logp, adv, mask: (B, N). It must stay differentiable in logp: the
    gradient is what trains the policy, and it is 0 exactly where the clip is active.
    """
    raise NotImplementedError("run_ppo_loss: not written yet; its docstring and "
                              "lessons/14_rlhf_ppo/README.md, \"The maths\", say what it computes")


def run_ppo_value_loss(v, old_v, returns, mask, clip=0.2):
    """PPO's clipped value loss, a scalar:

        v_clip = old_v + clip(v − old_v, −clip, clip)
        L_V    = ½ mean over real tokens of max((v − R)², (v_clip − R)²)

    v, old_v, returns, mask: (B, N).
    """
    raise NotImplementedError("run_ppo_value_loss: not written yet; its docstring and "
                              "lessons/14_rlhf_ppo/README.md, \"The maths\", say what it computes")


def run_kl_penalty(logp, ref_logp):
    """The per-token KL estimate added (times −β) to PPO's reward: k1 = log π(y_t) − log π_ref(y_t)
    for the sampled tokens. (B, N) -> (B, N). Its mean over samples from π estimates KL(π ‖ π_ref)."""
    raise NotImplementedError("run_kl_penalty: not written yet; its docstring and "
                              "lessons/14_rlhf_ppo/README.md, \"The maths\", say what it computes")


def run_whiten(x, mask):
    """Advantage whitening over the real tokens: (B, N) -> (B, N),

        μ = mean of x over real tokens,  σ² = mean of (x − μ)² over real tokens (biased)
        out = (x − μ) / sqrt(σ² + 1e-8)  on real tokens, 0 on padding
    """
    raise NotImplementedError("run_whiten: not written yet; its docstring and "
                              "lessons/14_rlhf_ppo/README.md, \"The maths\", say what it computes")
