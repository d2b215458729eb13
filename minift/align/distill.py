"""Knowledge distillation: a small student learns from a fine-tuned teacher's output distribution.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network". A teacher with
logits t and a student with logits s over the same K classes (tags, or the vocabulary) at every
position. Softened by a temperature T,

    p = softmax(t / T)        q = softmax(s / T)                            (..., K)

the student minimises a mixture of the soft-target divergence and the ordinary hard-label loss:

    L = α T² D(p, q) + (1 - α) CE(y, softmax(s))     D averaged over the mask, CE over the labelled positions

T > 1 raises the small probabilities the teacher gives to wrong classes (its "dark knowledge":
which wrong tag is *nearly* right). The T² keeps the soft term's gradient on the same scale for
every T: for the forward KL,

    ∂/∂s [T² KL(p ‖ q)] = T (q - p)        and, for large T,  ≈ ((s - s̄) - (t - t̄)) / K

so at high temperature distillation becomes matching the centred logits (Hinton et al., sec. 2.1).

The divergence D (Agarwal et al., 2024, "On-Policy Distillation of Language Models", GKD):

    forward   KL(p ‖ q) = Σ p (log p - log q)     mean-seeking: q must cover all of p
    reverse   KL(q ‖ p) = Σ q (log q - log p)     mode-seeking: q may drop p's small modes
    jsd       JSD_β(p ‖ q) = β KL(p ‖ m) + (1 - β) KL(q ‖ m),   m = β p + (1 - β) q

JSD_β → 0 at both ends of β, but JSD_β / β → KL(p ‖ q) as β → 0 and JSD_β / (1 - β) → KL(q ‖ p)
as β → 1; so, as in GKD (and TRL's GKDTrainer), β = 0 means forward KL and β = 1 reverse KL.

Masks: `mask` (...) picks the positions that count, 1 = distil here. For a tagger: the labelled
positions (each word's first sub-word token) or every real token; for an LM: the response tokens
or every real token. Padding never counts.

Sequence-level distillation (Kim & Rush, 2016) trains the student with plain cross-entropy on the
teacher's *outputs* (its greedy decode; for a per-token tagger, the argmax tag of each word)
instead of its distributions: `teacher_labels`.

Two other ways to hand the teacher's knowledge over: a *transfer set*, unlabelled text tagged by
the teacher (Hinton et al., sec. 3; `teacher_labels`, on TinyWorld text: `minift.evals.transfer_set`),
and the teacher's *weights*: a narrower student starts from the teacher's embedding tables
projected onto their top principal directions (`init_from_teacher`). The teacher is frozen, so its
logits can be computed once for the whole training set (`with_teacher_logits`, "offline"
distillation) and the soft term costs no teacher forward. Lesson 17 compares these routes on NER
with a 2 x 64 student; its README (lessons/17_distillation/README.md, "What you should see") holds
the measured F1 scores and the command that prints them.

Shapes: logits (..., K), mask and labels (...), e.g. (B, T, K) and (B, T) for tagging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..heads import predicted_classes
from ..model import IGNORE_INDEX, at_least_fp32
from ..train import TrainConfig, model_device, to_device, train
from ..validate import check_choice, check_float
from .logps import check_finite, masked_mean, zero_masked

DIVERGENCES = ("forward", "reverse", "jsd")


# ---- the pure losses ----------------------------------------------------------------------------

def _check_logits(student_logits, teacher_logits, mask, who: str = "distill_loss"):
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() < 1 or x.shape[-1] < 2:
            raise ValueError(f"{name} must have shape (..., K) with K >= 2 classes, got {tuple(x.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (..., K)")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(student_logits.shape[:-1]):
            raise ValueError(f"mask must have the logits' shape without K, {tuple(student_logits.shape[:-1])}, "
                             f"got {tuple(getattr(mask, 'shape', ()))}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 and 1 (1 = distil at this position)")
        if not bool(mask.any()):
            raise ValueError("mask has no position set to 1: nothing to distil")
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        check_finite(name, x, mask, who)                                 # only where mask is 1 (everywhere if None)


def _check_hyper(temperature: float, divergence: str, beta: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} must be one of {DIVERGENCES}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta!r} must be in [0, 1] (0: forward KL, 1: reverse KL)")


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) = Σ_k a_k (log a_k - log b_k) over the last dim, from log-probabilities; 0 log 0 = 0
    (a NaN stays NaN: `a == 0` is false for it, where `a > 0` would have turned it into a quiet 0)."""
    a = log_a.exp()
    return torch.where(a == 0, torch.zeros_like(a), a * (log_a - log_b)).sum(-1)      # (...)


def divergence_per_position(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                            divergence: str = "forward", beta: float = 0.5) -> torch.Tensor:
    """D(p, q) at every position, without T² and without a mask: (..., K) -> (...).
    p = softmax(teacher / T) (no gradient flows to the teacher), q = softmax(student / T).
    Every position must be finite (there is no mask here to say which are padding)."""
    _check_logits(student_logits, teacher_logits, None, "divergence_per_position")
    _check_hyper(temperature, divergence, beta)
    log_q = F.log_softmax(at_least_fp32(student_logits) / temperature, dim=-1)       # (..., K)
    log_p = F.log_softmax(at_least_fp32(teacher_logits).detach() / temperature, dim=-1)
    if divergence == "forward" or (divergence == "jsd" and beta == 0.0):
        return _kl(log_p, log_q)                                        # KL(p ‖ q)
    if divergence == "reverse" or (divergence == "jsd" and beta == 1.0):
        return _kl(log_q, log_p)                                        # KL(q ‖ p)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)  # m = βp + (1-β)q
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)   # JSD_β


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 temperature: float = 1.0, divergence: str = "forward", beta: float = 0.5) -> torch.Tensor:
    """The soft-target loss T² D(softmax(t / T), softmax(s / T)), averaged over the positions where
    mask == 1 (every position if mask is None). logits: (..., K); mask: (...). Returns a scalar.
    Logits must be finite where mask is 1; where it is 0 they may hold anything (padding): they are
    selected out before the softmax, so they reach neither the loss nor a gradient."""
    _check_logits(student_logits, teacher_logits, mask)
    if mask is not None:                                                 # padding -> 0 logits: D = 0 there
        student_logits, teacher_logits = zero_masked(student_logits, mask), zero_masked(teacher_logits, mask)
    d = divergence_per_position(student_logits, teacher_logits, temperature, divergence, beta)   # (...)
    return temperature ** 2 * masked_mean(d, mask)


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(y, softmax(s)) averaged over the labels that are not -100. logits (..., K), labels (...).
    Logits must be finite where there is a label; elsewhere they may hold anything (selected out)."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(f"labels must have shape {tuple(student_logits.shape[:-1])} (the logits' without K), "
                         f"got {tuple(labels.shape)}")
    K = student_logits.shape[-1]
    kept = labels[labels != IGNORE_INDEX]
    if kept.numel() == 0:
        raise ValueError("labels are all -100: no hard label to learn from")
    if kept.min() < 0 or kept.max() >= K:
        raise ValueError(f"labels must be in [0, K={K}) or -100, got {int(kept.min())} .. {int(kept.max())}")
    labelled = labels != IGNORE_INDEX                                    # (...)
    check_finite("student_logits", student_logits, labelled, "hard_loss")
    s = zero_masked(at_least_fp32(student_logits), labelled)             # unlabelled rows: no value, no gradient
    return F.cross_entropy(s.reshape(-1, K), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def kd_loss(student_logits, teacher_logits, labels, mask=None, alpha: float = 0.5, temperature: float = 2.0,
            divergence: str = "forward", beta: float = 0.5) -> torch.Tensor:
    """Hinton's mixture α T² D(p, q) + (1 - α) CE(y, q_1). α = 1: soft targets only; α = 0: labels only."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1] (the weight of the soft-target term)")
    soft = distill_loss(student_logits, teacher_logits, mask, temperature, divergence, beta) if alpha > 0 else 0.0
    hard = hard_loss(student_logits, labels) if alpha < 1 else 0.0
    return alpha * soft + (1 - alpha) * hard                             # L = α T² D + (1 - α) CE


# ---- training a student ------------------------------------------------------------------------

@dataclass
class DistillConfig:
    """alpha: weight of the soft term; temperature: T; divergence: forward | reverse | jsd; beta: JSD's
    β; mask: where the soft term counts, "labels" (positions with a hard label) or "real" (every real token)."""
    alpha: float = 0.5
    temperature: float = 2.0
    divergence: str = "forward"
    beta: float = 0.5
    mask: str = "labels"

    def __post_init__(self):
        check_float(self, "alpha", self.alpha, 0, 1, hint=" (the weight of the soft term)")
        check_float(self, "temperature", self.temperature, lo=0, lo_open=True)
        check_choice(self, "divergence", self.divergence, DIVERGENCES)
        check_float(self, "beta", self.beta, 0, 1, hint=" (0: forward KL, 1: reverse KL)")
        check_choice(self, "mask", self.mask, ("labels", "real"))


def _labels(batch: dict) -> torch.Tensor:
    return batch["labels"] if "labels" in batch else batch["targets"]


def distill_loss_fn(teacher, cfg: DistillConfig) -> Callable:
    """The loss_fn for minift.train.train: α T² D + (1 - α) CE. Batches: idx, attention_mask,
    labels (or targets) and, for offline distillation, teacher_logits (B, T, K) (see
    with_teacher_logits); without them the frozen teacher scores the batch on the fly, on its own
    device (its logits come to the student's). The batch is moved to the student's device."""
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    def loss_fn(student, batch):
        batch = to_device(batch, model_device(student))
        idx, am, y = batch["idx"], batch.get("attention_mask"), _labels(batch)
        s = student(idx, attention_mask=am).logits                       # (B, T, K)
        t = batch.get("teacher_logits")
        if t is None:
            if teacher is None:
                raise ValueError("the batch has no teacher_logits and no teacher was given")
            with torch.no_grad():
                td = model_device(teacher)                               # the teacher's own device
                t = teacher(idx.to(td), attention_mask=None if am is None else am.to(td)).logits
                t = t.to(s.device)                                       # (B, T, K)
        if cfg.mask == "labels":
            mask = y != IGNORE_INDEX                                      # (B, T) labelled positions
        else:
            mask = torch.ones(s.shape[:-1], dtype=torch.bool, device=s.device) if am is None else am.bool()
        return kd_loss(s, t, y, mask, cfg.alpha, cfg.temperature, cfg.divergence, cfg.beta), {}
    if cfg.mask == "labels":          # both terms are means over the labelled positions: a token mean, so
        loss_fn.token_mean = _labels  # train weighs accumulated micro-batches by their labels (minift/train.py)
    return loss_fn


@torch.no_grad()
def with_teacher_logits(teacher, items: Sequence[dict], collate_fn: Callable, batch_size: int = 64) -> list[dict]:
    """Offline distillation: every item with the teacher's logits at its tokens, "teacher_logits"
    (T_i, K), computed once (the teacher is deterministic in eval mode, so this equals scoring
    every batch on the fly, for a fraction of the cost), on the teacher's device, then kept with
    the items on the CPU (training moves each batch). Pad them with collate_with_teacher."""
    teacher.eval()
    dev = model_device(teacher)
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        b = to_device(collate_fn([{k: it[k] for k in ("idx", "labels", "targets") if k in it} for it in chunk]), dev)
        t = teacher(b["idx"], attention_mask=b["attention_mask"]).logits.cpu()   # (B, T, K), right-padded
        for r, it in enumerate(chunk):
            out.append({**it, "teacher_logits": t[r, :len(it["idx"])].clone()})
    return out


def collate_with_teacher(collate_fn: Callable) -> Callable:
    """Wrap a (right-padding) collate_fn so that it also pads items' teacher_logits to (B, T, K)."""
    def collate(batch):
        out = collate_fn([{k: v for k, v in it.items() if k != "teacher_logits"} for it in batch])
        if "teacher_logits" in batch[0]:
            B, T = out["idx"].shape
            t = batch[0]["teacher_logits"]
            pad = t.new_zeros(B, T, t.shape[-1])
            for r, it in enumerate(batch):
                pad[r, :it["teacher_logits"].shape[0]] = it["teacher_logits"]
            out["teacher_logits"] = pad                                   # (B, T, K); pads are masked out
        return out
    return collate


def train_student(student, data: Sequence[dict], cfg: DistillConfig, train_cfg: TrainConfig, *, teacher=None,
                  collate_fn: Callable) -> list[dict]:
    """Distil `teacher` into `student` on `data` with minift.train.train. Returns the history.
    Items that carry teacher_logits (with_teacher_logits) need no teacher (offline distillation) and
    collate_fn=collate_with_teacher(...); without them the frozen teacher scores every batch."""
    if not isinstance(cfg, DistillConfig) or not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_student: cfg must be a DistillConfig and train_cfg a TrainConfig, got "
                        f"{type(cfg).__name__} and {type(train_cfg).__name__}")
    return train(student, data, train_cfg, loss_fn=distill_loss_fn(teacher, cfg), collate_fn=collate_fn)


@torch.no_grad()
def teacher_labels(teacher, items: Sequence[dict], collate_fn: Callable, batch_size: int = 64) -> list[dict]:
    """Sequence-level distillation's data (Kim & Rush, 2016): each item with its labels replaced by
    the teacher's greedy output, the argmax class at every position that had a label."""
    out = []
    for it, pred in predicted_classes(teacher, items, collate_fn, batch_size):
        lab = torch.as_tensor(it["labels"], device="cpu")                  # data items stay on the CPU
        out.append({**it, "labels": torch.where(lab != IGNORE_INDEX, pred[:lab.shape[0]].to(lab.device), lab)})
    return out


# ---- initialising a narrower student ----------------------------------------------------------

def pca_basis(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """The top `dim` principal directions of a table (N, C): V_dim (C, dim), orthonormal columns,
    from the SVD of the centred table E - Ē = U Σ Vᵀ."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a table (N, C), got {tuple(getattr(weight, 'shape', ()))}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= min(weight.shape):
        raise ValueError(f"dim={dim!r} must be an int in [1, min(N, C)={min(weight.shape)}] for a table of "
                         f"shape {tuple(weight.shape)}")
    E = weight.detach().double()
    _, _, Vh = torch.linalg.svd(E - E.mean(0), full_matrices=False)     # Vh: (C, C)
    return Vh[:dim].T                                                    # (C, dim)


@torch.no_grad()
def init_from_teacher(student, teacher) -> float:
    """Start a narrower student GPT (width c < C) with the teacher's token geometry: both embedding
    tables mapped through ONE projection, the top-c principal directions of the token table,

        W_te' = W_te V_c        W_pe' = W_pe V_c                          (V, c), (block, c)

    (one basis for both, since the model adds them: h_0 = W_te[idx] + W_pe[pos]). The blocks keep
    their random init. Returns the share of the token table's variance the c directions keep."""
    ts, ss = teacher.transformer, student.transformer
    (V, C), (Vs, c) = ts.wte.weight.shape, ss.wte.weight.shape
    if V != Vs:
        raise ValueError(f"student vocab_size={Vs} must equal the teacher's vocab_size={V}")
    if c > C:
        raise ValueError(f"student n_embd={c} must be <= the teacher's n_embd={C}")
    P = pca_basis(ts.wte.weight, c)                                      # (C, c)
    ss.wte.weight.copy_((ts.wte.weight.double() @ P).to(ss.wte.weight.dtype))          # (V, c)
    n = min(ss.wpe.weight.shape[0], ts.wpe.weight.shape[0])
    ss.wpe.weight[:n].copy_((ts.wpe.weight[:n].double() @ P).to(ss.wpe.weight.dtype))  # (n, c)
    E = ts.wte.weight.double()
    Ec = E - E.mean(0)
    return float((Ec @ P).pow(2).sum() / Ec.pow(2).sum())


__all__ = ["DIVERGENCES", "DistillConfig", "distill_loss", "distill_loss_fn", "divergence_per_position", "hard_loss",
           "init_from_teacher", "kd_loss", "masked_mean", "pca_basis", "teacher_labels", "train_student",
           "with_teacher_logits", "collate_with_teacher"]
