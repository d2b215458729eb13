"""Lesson 17 exercise: the distillation losses, soft targets at a temperature, and Hinton's mixture;
then the assignment: a distillation step.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 17`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Logits are (N, K): N positions, K classes. The teacher's logits are given (no gradient needs to
reach them); the student's must keep their gradient (one check calls .backward() on your loss).

Rules: plain PyTorch tensor operations (torch.log_softmax, .exp, .sum, .mean, torch.logsumexp,
torch.nn.functional.cross_entropy, torch.autograd.grad). Do not call minift's functions; the
assignment hands you two minift GPTs, and calling them is the point (the README says how). Inputs
are float32; return tensors.

The "try it" exercise of the README starts from `try_student` at the bottom (it calls minift,
which is fine there): `python lessons/17_distillation/exercise.py try_student 0.1 1.0`.
"""
import math  # noqa: F401  (math.log for the mixture's weights)

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_distill_loss(student_logits, teacher_logits, mask=None, temperature=1.0, divergence="forward", beta=0.5):
    """The soft-target loss (Hinton et al., 2015; the divergences of Agarwal et al., 2024, GKD),
    equations (17.1), (17.2) and (17.4) to (17.6) of the README:

        p_i = softmax(t_i / T)      q_i = softmax(s_i / T)                  per row i, over the K classes
        forward   D_i = KL(p_i ‖ q_i) = Σ_k p_ik (log p_ik - log q_ik)
        reverse   D_i = KL(q_i ‖ p_i) = Σ_k q_ik (log q_ik - log p_ik)
        jsd       D_i = β KL(p_i ‖ m_i) + (1 - β) KL(q_i ‖ m_i),   m_i = β p_i + (1 - β) q_i
                  with β = 0 meaning forward KL and β = 1 reverse KL (the limits of D/β, D/(1-β))
        loss      = T² Σ_i mask_i D_i / Σ_i mask_i                    (mask None: the mean over rows)

    student_logits s, teacher_logits t: (N, K); mask: (N,) of 0/1 or None. Returns a scalar tensor.
    """
    raise NotImplementedError("run_distill_loss: not written yet; lessons/17_distillation/README.md, "
                              "\"The maths\", equation (17.2), says what it computes")


def run_kd_loss(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0):
    """Hinton's mixture of soft and hard targets, equation (17.3) of the README with the forward KL
    (17.4), over the rows whose label is not -100:

        L = α T² mean_i KL(softmax(t_i / T) ‖ softmax(s_i / T)) + (1 - α) mean_i CE(y_i, softmax(s_i))

    (the cross-entropy at T = 1, the temperature the student is used at). student_logits,
    teacher_logits: (N, K); labels: (N,) long, -100 = no label (the row is skipped by both terms).
    Returns a scalar tensor.
    """
    raise NotImplementedError("run_kd_loss: not written yet; lessons/17_distillation/README.md, "
                              "\"The maths\", equation (17.3), says what it computes")


# ---- Assignment: A distillation step ----
# lessons/17_distillation/README.md, "Assignment: A distillation step": one part, 4 points. You may
# call your own run_kd_loss above.

def run_distill_step(student, teacher, batch, alpha, temperature, lr):
    """One distillation step, equations (17.8) to (17.10) of the README.

    batch: {"idx": (B, T) int64, "attention_mask": (B, T), 1 = real token, 0 = pad (either side),
    "labels": (B, T) int64, a class where the position has a label, -100 where it has none}.
    s and t: the student's and the teacher's logits (B, T, K), both models run with the mask, the
    teacher without gradient. With i over the positions that have a label:

        L = α T² mean_i KL(softmax(t_i / T) ‖ softmax(s_i / T)) + (1 − α) mean_i CE(y_i, softmax(s_i))
        θ ← θ − lr ∇_θ L        every student parameter with requires_grad; the gradient of this
                                batch's L alone (whatever .grad held before); the teacher never changes

    Returns L before the step, a 0-dim tensor.
    """
    raise NotImplementedError("run_distill_step: not written yet; lessons/17_distillation/README.md, "
                              "\"Assignment: A distillation step\", equation (17.9), says what it computes")


# ---- try it ------------------------------------------------------------------------------------

def try_student(alpha=0.5, temperature=2.0, teacher="onehot", steps=80, seed=1):
    """Train lesson 17's student (2 layers of width 64, random init, 80 steps x batch 32, lr 3e-3,
    the walkthrough's seeds) on the 1,500 labelled NER sentences, and print its val and test F1 and
    its five commonest val word-tag errors.

    teacher="onehot": part 3's control, Hinton's loss (17.3) with the teacher's logits replaced by
    8 at the gold tag and 0 elsewhere, at your alpha and temperature; teacher=None: the no-teacher
    baseline (plain cross-entropy; alpha and temperature unused). About as long as one student row
    of part 3.
    Returns {"val": F1, "test": F1}."""
    from collections import Counter

    from minift import world
    from minift.align.distill import DistillConfig, collate_with_teacher, train_student
    from minift.heads import TokenClassifier, classifier_loss, ner_splits, predict_tags
    from minift.model import GPT, GPTConfig
    from minift.pretrain import load_base
    from minift.tasks import IGNORE_INDEX, collate_fn, entity_f1
    from minift.train import TrainConfig, train

    base, tok = load_base()
    col = collate_fn(tok.pad_id)
    ner, items, train_items = ner_splits(tok, 128)
    K = len(world.NER_TAGS)
    torch.manual_seed(int(seed))
    body = GPT(GPTConfig(vocab_size=base.config.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=64))
    torch.manual_seed(0)
    student = TokenClassifier(body, K)
    tc = TrainConfig(steps=int(steps), batch_size=32, lr=3e-3, warmup_steps=max(1, int(steps) // 10), seed=0,
                     progress=False)
    if teacher is None or teacher == "none":
        train(student, train_items, tc, loss_fn=classifier_loss, collate_fn=col)
        what = "no teacher (cross-entropy)"
    elif teacher == "onehot":
        data = []
        for it in train_items:                                   # 8 at the gold tag of each labelled token
            t = torch.zeros(len(it["labels"]), K)
            keep = it["labels"] != IGNORE_INDEX
            t[keep] = 8.0 * F.one_hot(it["labels"][keep], K).float()
            data.append({**it, "teacher_logits": t})
        train_student(student, data, DistillConfig(alpha=float(alpha), temperature=float(temperature)), tc,
                      collate_fn=collate_with_teacher(col))
        what = f"gold as soft targets, alpha={alpha}, T={temperature}"
    else:
        raise ValueError(f"teacher={teacher!r} must be 'onehot' or None")
    student.eval()
    f1, errors = {}, Counter()
    for split in ("val", "test"):
        pred = predict_tags(student, items[split], col, world.NER_TAGS)
        f1[split] = entity_f1(pred, [e["tags"] for e in ner[split]])["f1"]
        if split == "val":
            errors = Counter((w, g, p) for e, pp in zip(ner[split], pred)
                             for w, g, p in zip(e["tokens"], e["tags"], pp) if g != p)
    print(f"{what}: val F1 {f1['val']:.3f}, test F1 {f1['test']:.3f}; {sum(errors.values())} val word-tag errors, "
          "the commonest: " + ", ".join(f"{w}: {g} -> {p} ({n})" for (w, g, p), n in errors.most_common(5)))
    return f1


if __name__ == "__main__":         # python lessons/17_distillation/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
