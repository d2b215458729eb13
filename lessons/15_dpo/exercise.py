"""Lesson 15 exercise: the DPO loss and its variants, and DPO's implicit rewards (warm-ups); then the
assignment, a DPO training step: sequence log-probabilities from a model's logits, and one step of
a tiny GPT against a frozen reference.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 15`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise". The maths, with the numbered
equations the stubs cite, is in lessons/15_dpo/README.md.

The warm-ups' inputs are sequence log-probabilities (log π(y|x) summed over the response tokens),
one number per preference pair, all of shape (B,):

    pc = log π_θ(y_w | x)     pr = log π_θ(y_l | x)      the policy being trained
    rc = log π_ref(y_w | x)   rr = log π_ref(y_l | x)    the frozen reference (π_SFT)

Rules: plain PyTorch (torch, torch.nn.functional; `@`, indexing and slicing are fine); do not call
minift. In the assignment you call the models you are given. The losses must stay differentiable
in the policy's log-probs (checks take their gradients), and finite for margins as large as
|β h| = 400 (−log σ(z) for z = −400 is 400, not inf).
"""
import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                 loss_type="sigmoid", label_smoothing=0.0):
    """The per-pair loss of DPO (Rafailov et al., 2023) and its variants. With the log-ratio margin

        h = (pc − rc) − (pr − rr)                                         (B,)

    return, per pair (B,):

        "sigmoid":  −(1 − ε) log σ(β h) − ε log σ(−β h)      ε = label_smoothing (0: the paper's DPO;
                                                              ε > 0: conservative DPO, labels flipped w.p. ε)
        "ipo":      (h − 1 / (2 β))²                          IPO (Azar et al., 2023), τ = β
        "hinge":    max(0, 1 − β h)                           SLiC-HF (Zhao et al., 2023) with a reference

    beta: float > 0. With π_θ = π_ref (h = 0) the sigmoid loss is log 2 for every ε.
    −log σ(z) = log(1 + e^{−z}) must be computed without ever taking the log of 0: PyTorch has a
    stable log-sigmoid and a softplus.
    """
    raise NotImplementedError("run_dpo_loss: not written yet; lessons/15_dpo/README.md, \"The maths\", "
                              "equation (15.3), says what it computes")


def run_dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO's implicit rewards (the paper's eq. 5 without the β log Z(x) that cancels in a pair):

        r̂_w = β (pc − rc)        r̂_l = β (pr − rr)

    Return them stacked as one (2, B) tensor: row 0 the chosen, row 1 the rejected. The reward
    accuracy of a batch is the share of pairs with r̂_w > r̂_l; its margin the mean of r̂_w − r̂_l.
    """
    raise NotImplementedError("run_dpo_rewards: not written yet; lessons/15_dpo/README.md, \"The maths\", "
                              "equation (15.8), says what it computes")


# ---- Assignment: a DPO training step ----

def run_response_logps(logits, input_ids, response_mask):
    """Part 1. log π(y|x) of each row from next-token logits: (B, T, V), (B, T), (B, T) -> (B,) float32.

        log π(y|x) = Σ_{t=1..T−1} m_t · log softmax(z_{t−1})[y_t]

    z_{t−1} (V,) is the row of logits at position t − 1: it predicts the token y_t at position t. m is
    the 0/1 response mask (0 on the prompt, on padding and at t = 0). Sum, do not average. Positions
    whose logits score no response token may hold anything, NaN included: select them out, never
    multiply them by 0. Take the log-softmax in float32 at least, whatever the logits' dtype. The
    result must stay differentiable in the logits.
    """
    raise NotImplementedError("run_response_logps: not written yet; lessons/15_dpo/README.md, \"The maths\", "
                              "equation (15.1), says what it computes")


def run_dpo_step(policy, ref, batch, beta, lr):
    """Part 2. One DPO training step of `policy` against the frozen `ref` (both minift GPTs):

        L = (1/B) Σ_i −log σ(β h_i)      over the B pairs
        h_i = (log π(y_w,i) − log π_ref(y_w,i)) − (log π(y_l,i) − log π_ref(y_l,i))
        θ ← θ − lr ∇_θ L                 every policy parameter that requires grad

    batch: {"ids", "attention_mask", "response_mask"}, (2B, T) each, rows 0 .. B − 1 the chosen
    answers and rows B .. 2B − 1 the rejected ones; "n_pairs": B. A model called on
    (ids, attention_mask=mask) returns an output whose .logits is (2B, T, V); score the
    answers with your run_response_logps. Score ref without gradient: it must not change, and no
    gradient may reach it. The policy's .grad may hold an old gradient: use this batch's only.
    Returns L before the step, a 0-dim tensor.
    """
    raise NotImplementedError("run_dpo_step: not written yet; lessons/15_dpo/README.md, "
                              "\"Assignment: a DPO training step\", equation (15.9), says what it computes")


# ---- Preference data from the policy (README, "7. Sentiment control") ----

def run_rank_pairs(prompts, responses, scores, pairs="best_worst", margin=0.0):
    """The ranking step of on-policy preference data: k answers sampled per prompt, each scored by a
    rater (here the sentiment classifier), become preference pairs.

        prompts: n strings; responses: n lists of k strings; scores: n lists of k floats s_1 .. s_k
        "best_worst": per prompt, ONE candidate pair: the first answer with the highest score (chosen)
                      and the last answer with the lowest score (rejected)
        "all":        every ordered (j, l) of the prompt's answers, j in the outer loop, l in the inner
        keep a candidate only if s_j − s_l > margin (strictly) and the two texts differ

    Return a list of {"prompt": x, "chosen": y_j, "rejected": y_l, "margin": s_j − s_l}, prompt by
    prompt. A prompt whose answers all score alike, or are all the same text, gives no pair.
    """
    raise NotImplementedError("run_rank_pairs: not written yet; lessons/15_dpo/README.md, \"7. Sentiment control: "
                              "the reward–KL frontier, and preference data from the policy (`--sentiment`)\", "
                              "equation (15.12), says what it computes")
