"""Lesson 17 exercise: the distillation losses, soft targets at a temperature, and Hinton's mixture.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 17`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Logits are (N, K): N positions, K classes. The teacher's logits are given (no gradient needs to
reach them); the student's must keep their gradient (one check calls .backward() on your loss).

Rules: plain PyTorch tensor operations (torch.log_softmax, .exp, .sum, .mean, torch.logsumexp,
torch.nn.functional.cross_entropy). Do not call minift. Inputs are float32; return tensors.
"""
import math  # noqa: F401  (math.log for the mixture's weights)

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_distill_loss(student_logits, teacher_logits, mask=None, temperature=1.0, divergence="forward", beta=0.5):
    """The soft-target loss (Hinton et al., 2015; the divergences of Agarwal et al., 2024, GKD):

        p = softmax(t / T)      q = softmax(s / T)                       per row, (N, K)
        forward   D = KL(p ‖ q) = Σ_k p_k (log p_k - log q_k)
        reverse   D = KL(q ‖ p) = Σ_k q_k (log q_k - log p_k)
        jsd       D = β KL(p ‖ m) + (1 - β) KL(q ‖ m),   m = β p + (1 - β) q
                  with β = 0 meaning forward KL and β = 1 reverse KL (the limits of D/β, D/(1-β))
        loss      = T² Σ_i mask_i D_i / Σ_i mask_i                        (mask None: the mean over rows)

    student_logits s, teacher_logits t: (N, K); mask: (N,) of 0/1 or None. Returns a scalar tensor.
    """
    raise NotImplementedError("run_distill_loss: not written yet; its docstring and "
                              "lessons/17_distillation/README.md, \"The maths\", say what it computes")


def run_kd_loss(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0):
    """Hinton's mixture of soft and hard targets, over the rows whose label is not -100:

        L = α T² mean_i KL(softmax(t_i / T) ‖ softmax(s_i / T)) + (1 - α) mean_i CE(y_i, softmax(s_i))

    (the cross-entropy at T = 1, the temperature the student is used at). student_logits,
    teacher_logits: (N, K); labels: (N,) long, -100 = no label (the row is skipped by both terms).
    Returns a scalar tensor.
    """
    raise NotImplementedError("run_kd_loss: not written yet; its docstring and "
                              "lessons/17_distillation/README.md, \"The maths\", say what it computes")
