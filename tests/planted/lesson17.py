"""Planted bugs for lesson 17 (distillation): copies of the reference `run_*` functions, each with
one plausible learner mistake. tests/test_planted.py checks that lesson 17's checks catch every
one. Do not copy from this file."""
import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


def run_distill_loss__no_t_squared(student_logits, teacher_logits, mask=None, temperature=1.0,
                                   divergence="forward", beta=0.5):
    """forgets the T² factor"""
    return ref.run_distill_loss(student_logits, teacher_logits, mask, temperature, divergence, beta) / temperature ** 2


def run_distill_loss__kl_directions_swapped(student_logits, teacher_logits, mask=None, temperature=1.0,
                                            divergence="forward", beta=0.5):
    """forward and reverse KL swapped: KL(q ‖ p) for "forward", KL(p ‖ q) for "reverse\""""
    swap = {"forward": "reverse", "reverse": "forward"}.get(divergence, divergence)
    return ref.run_distill_loss(student_logits, teacher_logits, mask, temperature, swap, beta)


def run_distill_loss__mask_ignored(student_logits, teacher_logits, mask=None, temperature=1.0,
                                   divergence="forward", beta=0.5):
    """averages over every row, the masked-out ones too"""
    return ref.run_distill_loss(student_logits, teacher_logits, None, temperature, divergence, beta)


def run_distill_loss__jsd_beta_swapped(student_logits, teacher_logits, mask=None, temperature=1.0,
                                       divergence="forward", beta=0.5):
    """JSD with β and 1 − β swapped (m = (1 − β) p + β q, β KL(q ‖ m) + (1 − β) KL(p ‖ m))"""
    if divergence == "jsd":
        beta = 1.0 - beta
    return ref.run_distill_loss(student_logits, teacher_logits, mask, temperature, divergence, beta)


def run_distill_loss__teacher_not_softened(student_logits, teacher_logits, mask=None, temperature=1.0,
                                           divergence="forward", beta=0.5):
    """divides the student's logits by T but not the teacher's"""
    return ref.run_distill_loss(student_logits, teacher_logits * temperature, mask, temperature, divergence, beta)


def run_distill_loss__masked_sum_over_all_rows(student_logits, teacher_logits, mask=None, temperature=1.0,
                                               divergence="forward", beta=0.5):
    """sums the masked rows but divides by every row, N, instead of by Σ_i m_i"""
    n = student_logits.shape[0]
    if mask is None:
        return ref.run_distill_loss(student_logits, teacher_logits, None, temperature, divergence, beta)
    return ref.run_distill_loss(student_logits, teacher_logits, mask, temperature, divergence, beta) * mask.sum() / n


def run_kd_loss__ce_at_temperature(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0):
    """takes the hard cross-entropy at temperature T instead of at 1"""
    keep = labels != -100
    soft = ref.run_distill_loss(student_logits[keep], teacher_logits[keep], None, temperature, "forward")
    hard = F.cross_entropy(student_logits[keep] / temperature, labels[keep])
    return alpha * soft + (1 - alpha) * hard


def run_kd_loss__alpha_swapped(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0):
    """weighs the soft term by 1 − α and the hard one by α"""
    return ref.run_kd_loss(student_logits, teacher_logits, labels, 1.0 - alpha, temperature)


def run_kd_loss__soft_over_unlabelled_rows(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0):
    """the soft term averages over every row, the unlabelled (-100) ones too"""
    keep = labels != -100
    soft = ref.run_distill_loss(student_logits, teacher_logits, None, temperature, "forward")
    hard = F.cross_entropy(student_logits[keep], labels[keep])
    return alpha * soft + (1 - alpha) * hard


def run_kd_loss__no_t_squared(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0):
    """forgets the T² on the soft term"""
    keep = labels != -100
    soft = ref.run_distill_loss(student_logits[keep], teacher_logits[keep], None, temperature, "forward")
    hard = F.cross_entropy(student_logits[keep], labels[keep])
    return alpha * soft / temperature ** 2 + (1 - alpha) * hard


# ---- the assignment: a distillation step ------------------------------------------------------------

def _logits(student, teacher, batch, teacher_grad=False, mask=True):
    am = batch["attention_mask"] if mask else None
    s = student(batch["idx"], attention_mask=am).logits
    if teacher_grad:
        t = teacher(batch["idx"], attention_mask=am).logits
    else:
        with torch.no_grad():
            t = teacher(batch["idx"], attention_mask=am).logits
    return s, t


def _kd(s, t, labels, alpha, T, ce_temperature=1.0, t_squared=True, soft_rows="labelled"):
    keep = labels != -100
    rows = keep if soft_rows == "labelled" else torch.ones_like(keep)
    log_p, log_q = torch.log_softmax(t[rows] / T, -1), torch.log_softmax(s[rows] / T, -1)
    soft = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * (T ** 2 if t_squared else 1.0)
    hard = F.cross_entropy(s[keep] / ce_temperature, labels[keep])
    return alpha * soft + (1 - alpha) * hard


def _sgd(params, loss, lr, accumulate=False):
    params = [p for p in params if p.requires_grad]
    if accumulate:
        loss.backward()
        grads = [p.grad for p in params]
    else:
        grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)


def run_distill_step__no_t_squared(student, teacher, batch, alpha, temperature, lr):
    """forgets the T² on the soft term"""
    s, t = _logits(student, teacher, batch)
    loss = _kd(s, t, batch["labels"], alpha, temperature, t_squared=False)
    _sgd(student.parameters(), loss, lr)
    return loss.detach()


def run_distill_step__ce_at_temperature(student, teacher, batch, alpha, temperature, lr):
    """takes the hard cross-entropy at temperature T instead of at 1"""
    s, t = _logits(student, teacher, batch)
    loss = _kd(s, t, batch["labels"], alpha, temperature, ce_temperature=temperature)
    _sgd(student.parameters(), loss, lr)
    return loss.detach()


def run_distill_step__soft_over_padding(student, teacher, batch, alpha, temperature, lr):
    """the soft term averages over every position, the pads and the unlabelled ones too"""
    s, t = _logits(student, teacher, batch)
    loss = _kd(s, t, batch["labels"], alpha, temperature, soft_rows="all")
    _sgd(student.parameters(), loss, lr)
    return loss.detach()


def run_distill_step__teacher_gets_gradients(student, teacher, batch, alpha, temperature, lr):
    """scores the teacher with gradients and calls loss.backward(), so the teacher's .grad fills up"""
    for p in student.parameters():
        p.grad = None
    s, t = _logits(student, teacher, batch, teacher_grad=True)
    loss = _kd(s, t, batch["labels"], alpha, temperature)
    _sgd(student.parameters(), loss, lr, accumulate=True)
    return loss.detach()


def run_distill_step__teacher_trained_too(student, teacher, batch, alpha, temperature, lr):
    """steps every parameter it was handed, the teacher's included"""
    s, t = _logits(student, teacher, batch, teacher_grad=True)
    loss = _kd(s, t, batch["labels"], alpha, temperature)
    _sgd(list(student.parameters()) + list(teacher.parameters()), loss, lr)
    return loss.detach()


def run_distill_step__stale_grad(student, teacher, batch, alpha, temperature, lr):
    """calls loss.backward() without zeroing .grad first, so a stale gradient is added to this batch's"""
    s, t = _logits(student, teacher, batch)
    loss = _kd(s, t, batch["labels"], alpha, temperature)
    _sgd(student.parameters(), loss, lr, accumulate=True)
    return loss.detach()


def run_distill_step__loss_after_step(student, teacher, batch, alpha, temperature, lr):
    """returns the loss after the step instead of before it"""
    ref.run_distill_step(student, teacher, batch, alpha, temperature, lr)
    with torch.no_grad():
        s, t = _logits(student, teacher, batch)
        return _kd(s, t, batch["labels"], alpha, temperature)


def run_distill_step__no_attention_mask(student, teacher, batch, alpha, temperature, lr):
    """runs both models without the attention mask (left-padded rows see their pads)"""
    s, t = _logits(student, teacher, batch, mask=False)
    loss = _kd(s, t, batch["labels"], alpha, temperature)
    _sgd(student.parameters(), loss, lr)
    return loss.detach()


def run_distill_step__alpha_swapped(student, teacher, batch, alpha, temperature, lr):
    """weighs the soft term by 1 − α and the hard one by α"""
    return ref.run_distill_step(student, teacher, batch, 1.0 - alpha, temperature, lr)
