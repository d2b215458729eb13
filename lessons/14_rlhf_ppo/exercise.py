"""Lesson 14 exercise: the pieces of RLHF — the reward model's loss and where it reads its score,
and PPO's advantage estimate, clipped losses, KL penalty and whitening (warm-ups); then the
assignment, one PPO update: the per-token rewards and the loss a minibatch step descends.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 14`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise". The maths, with the numbered
equations the stubs cite, is in lessons/14_rlhf_ppo/README.md.

Conventions: (B, N) tensors hold one row per sampled response and one column per response token;
`mask` (B, N) is 1 on a row's real tokens (a run of 1s from column 0: the response through its
EOS) and 0 on padding. "mean over real tokens" is Σ m x / Σ m over the whole batch.

Rules: the run_* functions are plain PyTorch (torch, torch.nn.functional; `@`, indexing and
slicing are fine); do not call minift. The try_* starters at the bottom call the library: they
run small experiments for the README's "try it" exercises. Run them from your copy
(`python exercises/14_rlhf_ppo.py try_reward_pairs`, after `minift exercise 14`): try_reward_pairs
reads the EXTRA_PAIRS of the file it is in.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

README = "lessons/14_rlhf_ppo/README.md"


def run_reward_loss(r_chosen, r_rejected, margin=0.0):
    """The Bradley–Terry loss of a reward model, per pair: r_chosen and r_rejected are (B,); returns (B,),

        L_i = −log σ(r_w,i − r_l,i − m)          m = margin

    It must stay finite and exact for reward differences of thousands, where σ underflows to 0 in
    float32: write −log σ(d) in a form that never takes the log of 0 (log(1 + e^{−d}) computed
    stably; PyTorch has a log-sigmoid and a softplus that do).
    """
    raise NotImplementedError("run_reward_loss: not written yet; lessons/14_rlhf_ppo/README.md, \"The maths\", "
                              "equation (14.2), says what it computes")


def run_reward_at_last_token(hidden, attention_mask, w, b):
    """The reward head: each row's final hidden state at its LAST REAL token, projected to a number.

        r_i = w · h_{i, t_i} + b,      t_i = the largest t with attention_mask_{i, t} = 1

    hidden: (B, T, C); attention_mask: (B, T) of 0/1 (left-, right- or un-padded); w: (C,); b: (1,).
    Returns (B,). Find t_i from the mask, never from a token id; the count of real tokens minus one
    is t_i only when the padding is on the right.
    """
    raise NotImplementedError("run_reward_at_last_token: not written yet; lessons/14_rlhf_ppo/README.md, "
                              "\"The maths\", equation (14.1), says what it computes")


def run_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al., 2016) over each row's real tokens:

        δ_t = r_t + γ V_{t+1} − V_t          (V_{t+1} = 0 after the row's last real token)
        A_t = δ_t + γ λ A_{t+1}              (computed backwards, A = 0 after the last token)
        R_t = A_t + V_t

    rewards, values, mask: (B, N). Returns the tuple (A, R), both (B, N) and 0 on padding.
    λ = 1 gives A_t = Σ_k γ^k r_{t+k} − V_t; λ = 0 gives A_t = δ_t.
    """
    raise NotImplementedError("run_gae: not written yet; lessons/14_rlhf_ppo/README.md, \"The maths\", "
                              "equation (14.5), says what it computes")


def run_ppo_loss(logp, old_logp, adv, mask, clip=0.2):
    """PPO's clipped surrogate (Schulman et al., 2017), to MINIMISE, a scalar:

        ρ_t = exp(logp_t − old_logp_t)
        L   = −(1/M) Σ_t m_t min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)       M = Σ_t m_t, ε = clip

    logp (with gradients), old_logp, adv, mask: (B, N). It must stay differentiable in logp: the
    gradient is what trains the policy, and it is 0 exactly where the clip is active.
    """
    raise NotImplementedError("run_ppo_loss: not written yet; lessons/14_rlhf_ppo/README.md, \"The maths\", "
                              "equation (14.7), says what it computes")


def run_ppo_value_loss(v, old_v, returns, mask, clip=0.2):
    """PPO's clipped value loss, a scalar:

        v_clip = old_v + clip(v − old_v, −ε_V, ε_V)                            ε_V = clip
        L_V    = ½ (1/M) Σ_t m_t max((v_t − R_t)², (v_clip,t − R_t)²)       M = Σ_t m_t

    v, old_v, returns, mask: (B, N).
    """
    raise NotImplementedError("run_ppo_value_loss: not written yet; lessons/14_rlhf_ppo/README.md, "
                              "\"The maths\", equation (14.8), says what it computes")


def run_kl_penalty(logp, ref_logp):
    """The per-token KL estimate whose −β multiple enters PPO's reward: k1_t = log π(y_t) − log π_ref(y_t)
    for the sampled tokens. (B, N) -> (B, N). Its mean over samples from π estimates KL(π ‖ π_ref)."""
    raise NotImplementedError("run_kl_penalty: not written yet; lessons/14_rlhf_ppo/README.md, \"The maths\", "
                              "equation (14.3), says what it computes")


def run_whiten(x, mask):
    """Advantage whitening over the real tokens: (B, N) -> (B, N),

        μ = mean of x over real tokens,  σ² = mean of (x − μ)² over real tokens (biased)
        out = (x − μ) / sqrt(σ² + 10⁻⁸)  on real tokens, 0 on padding
    """
    raise NotImplementedError("run_whiten: not written yet; lessons/14_rlhf_ppo/README.md, \"The maths\", "
                              "equation (14.6), says what it computes")


# ---- Assignment: one PPO update ----

def run_ppo_rewards(score, logp, ref_logp, mask, kl_coef):
    """Part 1. The reward of every response token: the KL penalty on each one, the reward model's score
    on the last real one.

        r_t = −β k1_t + [t = n_i − 1] s_i       k1_t = logp_t − ref_logp_t,  β = kl_coef,  n_i = Σ_t m_{i,t}

    score s: (B,); logp, ref_logp, mask: (B, N). Returns (B, N), 0 on padding. The padding of logp and
    ref_logp may hold anything; do not change your inputs in place.
    """
    raise NotImplementedError("run_ppo_rewards: not written yet; lessons/14_rlhf_ppo/README.md, \"The maths\", "
                              "equation (14.4), says what it computes")


def run_ppo_step(logits, tokens, old_logp, values, old_values, rewards, mask, clip=0.2, clip_value=0.2,
                 vf_coef=0.5, gamma=1.0, lam=0.95, whiten=True):
    """Part 2. The loss one PPO minibatch update descends, from the current policy's logits and value
    predictions and what the rollout recorded:

        logp_t = log softmax(z_t)[y_t]                       z_t = logits (B, N, V) at response token t
        A, R   = GAE(rewards, V_old)  with no gradient; A whitened when `whiten`
        L      = L_π(logp, old_logp, A) + c_V · L_V(V, V_old, R)        ε = clip, ε_V = clip_value, c_V = vf_coef

    tokens y: (B, N) integers; old_logp, values V (with gradients), old_values V_old, rewards, mask:
    (B, N). Returns a scalar, differentiable in logits and values. Your warm-ups are the pieces.
    Padding (mask 0) may hold anything in every input and must get no gradient.
    """
    raise NotImplementedError("run_ppo_step: not written yet; lessons/14_rlhf_ppo/README.md, "
                              "\"Assignment: one PPO update\", equation (14.10), says what it computes")


def run_lora_kl(hidden, weight, lora_A, lora_B, scaling, tokens, mask):
    """Part 6's key step: the KL penalty of a LoRA policy whose reference is the SAME layer with the
    adapter switched off, so PPO needs no frozen copy of the model. One output layer stands in for the
    policy: W0 = weight (V, C) frozen, lora_A (r, C), lora_B (V, r), s = scaling, over final hidden
    states hidden (B, N, C):

        π_θ(· | s_t)   = softmax(h_t (W0 + s B A)ᵀ)       the adapter on
        π_ref(· | s_t) = softmax(h_t W0ᵀ)                 the adapter off
        k1_t           = log π_θ(y_t | s_t) − log π_ref(y_t | s_t)

    tokens (B, N) holds the sampled ids y_t (any id in [0, V) on padding); mask (B, N) is 1 on the real
    tokens. Return k1 (B, N), exactly 0 on padding, whatever the padding's hidden states hold. With
    B = 0 (LoRA's initialisation) every k1 is 0. README: "Part 6: PPO with LoRA on the policy".
    """
    raise NotImplementedError("run_lora_kl: not written yet; lessons/14_rlhf_ppo/README.md, \"Part 6: PPO with "
                              "LoRA on the policy (`--lora`)\", equation (14.11), says what it computes")


# ---- starters for the README's "try it" exercises (they call the library) ----

# exercise 5: your {"prompt", "chosen", "rejected"} pairs, added to the reward model's training data. Fill them in
# your copy and run that file (python exercises/14_rlhf_ppo.py try_reward_pairs): it reads this list.
EXTRA_PAIRS = []


def _sft_and_reward_model(sft_steps, rm_steps, extra_pairs=(), seed=0):
    """π_SFT (the base fine-tuned on the chosen answers) and a reward model trained from it on the train
    pairs plus `extra_pairs`: the walkthrough's parts 1 and 2 with sft_steps and rm_steps steps (the
    walkthrough uses 50 and 45)."""
    from minift.align.reward import RewardConfig, train_reward_model
    from minift.evals import preference_examples, train_sft_policy
    from minift.pretrain import load_base
    from minift.train import TrainConfig

    torch.set_num_threads(1)
    base, tok = load_base()
    train_ex = preference_examples("train") + list(extra_pairs)
    sft, _ = train_sft_policy(base, tok, steps=sft_steps, batch_size=16, lr=1e-3, seed=seed, progress=False)
    rm, hist = train_reward_model(sft, train_ex, RewardConfig(), TrainConfig(steps=rm_steps, batch_size=16, lr=3e-4,
                                  seed=seed, desc="reward model", progress=False), tok=tok)
    return base, tok, sft, rm, hist


def try_reward_pairs(sft_steps=60, rm_steps=60, seed=0):
    """Exercise 5: train the reward model with EXTRA_PAIRS added (empty: the baseline) and print its
    held-out accuracy and the spurious-feature line: does it still prefer a fact answer without its
    final '.'? π_SFT and the reward model train 60 steps each by default, longer than the walkthrough's
    50 and 45, so the baseline's numbers are not part 4's. Run it once with the list empty, then with
    your pairs, from your copy (python exercises/14_rlhf_ppo.py try_reward_pairs): it reads the
    EXTRA_PAIRS of the file it is in."""
    from minift.evals import evaluate_reward_model, preference_examples

    _, tok, _, rm, hist = _sft_and_reward_model(sft_steps, rm_steps, EXTRA_PAIRS, seed)
    facts = [e for e in preference_examples("val") if not e["prompt"].startswith(("Answer with", "Write the words",
                                                                                    "Rewrite", "How many"))]
    acc = evaluate_reward_model(rm, tok, preference_examples("val"))
    dot = evaluate_reward_model(rm, tok, [dict(e, rejected=e["chosen"].rstrip(".")) for e in facts])
    wrong = evaluate_reward_model(rm, tok, [dict(e, rejected=e["rejected"].rstrip(".")) for e in facts])
    print(f"{len(EXTRA_PAIRS)} extra pairs; reward model loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}; "
          f"held-out accuracy {acc['accuracy']:.1%}")
    print(f"on {len(facts)} val fact pairs: true answer WITH '.' beats the same without it on {dot['accuracy']:.0%} "
          f"(mean r difference {dot['margin']:+.2f}); beats the WRONG answer without '.' on {wrong['accuracy']:.0%}")
    return rm


def try_ppo(beta=0.2, iterations=6, batch_size=16, sft_steps=60, rm_steps=40, seed=0):
    """Exercise 6: one PPO run at KL coefficient `beta` (lesson 14's recipe otherwise). Prints per
    iteration the mean RM score of that iteration's training samples, their KL to π_SFT (nats per
    response) and score − β KL, the objective the run maximises; then the same three on held-out
    prompts, measured as in part 4 (the first 32 val prompts, one temperature-1 sample each, seed 1),
    for π_SFT and for the trained policy. About as long as the walkthrough's parts 1 and 2 plus one
    PPO run at these defaults; the walkthrough runs 10 iterations of 16 from a π_SFT of 50 steps and a
    reward model of 45, so these numbers are not part 4's."""
    import copy

    from minift.align.ppo import PPOConfig, frozen_copy, train_ppo
    from minift.evals import evaluate_policy, preference_examples

    _, tok, sft, rm, _ = _sft_and_reward_model(sft_steps, rm_steps, (), seed)
    policy = copy.deepcopy(sft)                                    # trained in place; sft stays the reference
    for p in policy.parameters():
        p.requires_grad_(True)
    cfg = PPOConfig(steps=iterations, batch_size=batch_size, minibatch_size=min(16, batch_size), ppo_epochs=4, lr=1e-4,
                    kl_coef=beta, max_new_tokens=20, seed=seed)
    ref = frozen_copy(sft)
    hist = train_ppo(policy, [e["prompt"] for e in preference_examples("train")], cfg, ref=ref,
                     reward_model=rm, tok=tok, progress=False)
    print(f"{'iteration':>15}  {'RM score':>8}  {'KL':>6}  {'score − β KL':>12}")
    for h in hist:
        print(f"{h['iter']:>15}  {h['score']:>+8.2f}  {h['kl']:>6.2f}  {h['score'] - beta * h['kl']:>+12.2f}")
    held_out = preference_examples("val")[:32]                     # part 4's prompts: people PPO never saw
    for name, pol in (("held-out π_SFT", sft), ("held-out PPO", policy)):
        e = evaluate_policy(pol, ref, rm, tok, held_out, cfg.max_new_tokens, greedy=False, seed=1)
        print(f"{name:>15}  {e['score']:>+8.2f}  {e['kl']:>6.2f}  {e['score'] - beta * e['kl']:>+12.2f}")
    return hist


def try_lora_ppo(r=8, lr=1e-3, targets="all", beta=0.2, iterations=10, batch_size=16, sft_steps=60, rm_steps=40, seed=0):
    """Exercise 8: PPO that trains LoRA adapters only, with π_ref = the same policy with its adapters
    disabled (train_ppo(ref=None): no frozen copy). `targets`: "qv" (W_q, W_v) or "all" (every linear
    layer of every block). Prints per iteration the mean RM score of the samples, the KL to π_SFT and
    score − β KL, then how many numbers were trained. Compare with part 6's table in the README, whose
    π_SFT and reward model train 50 and 45 steps (these defaults: 60 and 40), so the numbers differ.
    Each iteration's KL is a k1 estimate from that iteration's samples: near π_SFT it can come out below 0."""
    import copy

    from minift.align.ppo import PPOConfig, train_ppo
    from minift.evals import preference_examples
    from minift.peft.lora import LoRAConfig, apply_lora

    if targets not in ("qv", "all"):
        raise ValueError(f"targets={targets!r} must be 'qv' or 'all'")
    _, tok, sft, rm, _ = _sft_and_reward_model(sft_steps, rm_steps, (), seed)
    policy = copy.deepcopy(sft)
    lcfg = LoRAConfig(r=r, include_head=False) if targets == "qv" else \
        LoRAConfig(r=r, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), qkv=None, include_head=False)
    apply_lora(policy, lcfg)                                       # every weight frozen but A and B
    cfg = PPOConfig(steps=iterations, batch_size=batch_size, minibatch_size=min(16, batch_size), ppo_epochs=4, lr=lr,
                    kl_coef=beta, max_new_tokens=20, seed=seed)
    hist = train_ppo(policy, [e["prompt"] for e in preference_examples("train")], cfg, ref=None,
                     reward_model=rm, tok=tok, progress=False)
    print(f"{'iteration':>9}  {'RM score':>8}  {'KL':>6}  {'score − β KL':>12}")
    for h in hist:
        print(f"{h['iter']:>9}  {h['score']:>+8.2f}  {h['kl']:>6.2f}  {h['score'] - beta * h['kl']:>+12.2f}")
    n = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    print(f"trained: {n:,} LoRA numbers (+ the value head's {sft.config.n_embd + 1}) of the policy's "
          f"{sum(p.numel() for p in sft.parameters()):,}")
    return hist


if __name__ == "__main__":         # python lessons/14_rlhf_ppo/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
