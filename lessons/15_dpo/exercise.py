"""Lesson 15 exercise: the DPO loss and its variants, and DPO's implicit rewards.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 15`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The inputs are sequence log-probabilities (minift/align/logps.py: log π(y|x) summed over the
response tokens), one number per preference pair, all of shape (B,):

    pc = log π_θ(y_w | x)     pr = log π_θ(y_l | x)      the policy being trained
    rc = log π_ref(y_w | x)   rr = log π_ref(y_l | x)    the frozen reference (π_SFT)

Rules: plain PyTorch tensor operations (torch.nn.functional.logsigmoid, torch.relu, ...). Do not
call minift. The loss must stay differentiable in pc and pr (one check takes its gradient), and
finite for margins as large as |β h| = 400 (−log σ(z) for z = −400 is 400, not inf).
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
    Hint: −log σ(z) = F.softplus(−z), and F.logsigmoid(z) is stable for large |z|.
    """
    raise NotImplementedError("run_dpo_loss: not written yet; its docstring and "
                              "lessons/15_dpo/README.md, \"The maths\", say what it computes")


def run_dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO's implicit rewards (the paper's eq. 5 without the β log Z(x) that cancels in a pair):

        r̂_w = β (pc − rc)        r̂_l = β (pr − rr)

    Return them stacked as one (2, B) tensor: row 0 the chosen, row 1 the rejected. The reward
    accuracy of a batch is the share of pairs with r̂_w > r̂_l; its margin the mean of r̂_w − r̂_l.
    """
    raise NotImplementedError("run_dpo_rewards: not written yet; its docstring and "
                              "lessons/15_dpo/README.md, \"The maths\", say what it computes")
