"""DPO: Direct Preference Optimization (Rafailov et al., 2023, "Direct Preference Optimization:
Your Language Model is Secretly a Reward Model"), with conservative DPO, IPO and hinge (SLiC).

RLHF maximises a learned reward under a KL leash to a reference policy π_ref (the SFT model):

    max_π  E_x E_{y~π} [ r(x, y) ]  −  β KL( π(·|x) || π_ref(·|x) )

Its optimum is π*(y|x) ∝ π_ref(y|x) exp(r(x, y) / β), so every reward has an *implicit* form
r(x, y) = β log(π(y|x) / π_ref(y|x)) + β log Z(x). Put it in the Bradley–Terry likelihood of a
preference y_w ≻ y_l and log Z(x) cancels: no reward model, no sampling, one classification loss
on preference pairs. With the log-ratio margin (summed response log-probs, logps.py)

    h = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]      (B,)

the variants are, per pair:

    sigmoid  L = −log σ(β h)                                  DPO, the paper's eq. 7
    cDPO     L = −(1 − ε) log σ(β h) − ε log σ(−β h)          labels flipped with prob. ε (Mitchell, 2023)
    IPO      L = (h − 1/(2β))²                                Azar et al., 2023, eq. 17 with τ = β
    hinge    L = max(0, 1 − β h)                              SLiC-HF (Zhao et al., 2023), with π_ref

and the implicit rewards r̂_w = β (log π_θ(y_w|x) − log π_ref(y_w|x)), r̂_l likewise (B,), are the
metrics: reward accuracy = share of pairs with r̂_w > r̂_l (ties counted apart), margin = r̂_w − r̂_l.

DPO's gradient is −β σ(−β h) (∇ log π(y_w|x) − ∇ log π(y_l|x)): it raises the chosen and lowers the
rejected log-prob, weighted by how wrong the implicit reward still is. It saturates (σ(−βh) → 0)
but never stops: h can grow without bound. IPO regresses h onto the fixed target 1/(2β) instead,
so it stops at a finite margin: Azar et al.'s remedy when preferences are deterministic, as here.

IPO's normalisation: the paper writes h with whole-sequence log-likelihoods; `train_dpo` follows
TRL and feeds IPO *length-averaged* log-probs by default (`DPOConfig.average_logps=None`), so
1/(2β) is a margin per token and a one-word answer is held to the same target as a sentence.

DPO lowers log π(y_l) faster than it raises log π(y_w); often both fall, and probability moves to
answers that are neither. `DPOConfig.nll_weight` = α adds α · NLL(y_w) per token to the loss, which
holds the chosen answers up (RPO: Pang et al., 2024, "Iterative Reasoning Preference Optimization").

The reference: a frozen copy scored under no_grad in eval mode (dropout off), or, for a PEFT policy,
the same model with its adapters disabled (`ref=None`, minift.peft.common.disable_adapters): the
two are the same function. As it never changes, its log-probs are computed once before training
(`precompute_ref`, TRL's precompute_ref_log_probs), which saves one forward per step.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..peft.common import adapter_layers, disable_adapters
from ..train import TrainConfig, model_device, to_device, train
from ..validate import check_bool, check_choice, check_float
from .logps import sequence_logps
from .preference import PreferenceDataset, collate_preferences

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _check_logps(**logps) -> None:
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in logps.items()}
    bad = [k for k, v in logps.items() if not isinstance(v, torch.Tensor) or not v.is_floating_point()]
    if bad:
        raise TypeError(f"dpo_loss: {bad[0]} must be a floating-point torch.Tensor of shape (B,), "
                        f"got {type(logps[bad[0]]).__name__}")
    first = next(iter(shapes.values()))
    if len(first) != 1 or first[0] == 0 or any(s != first for s in shapes.values()):
        raise ValueError(f"dpo_loss: the four log-prob tensors must share one shape (B,) with B >= 1, got {shapes}")
    for k, v in logps.items():
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"dpo_loss: {k} holds NaN or inf; log-probs of real responses are finite")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """Per-pair losses (B,) and the implicit rewards β (log π − log π_ref) for chosen and rejected
    (B,) each, detached (metrics). See the module docstring for the four losses."""
    _check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"dpo_loss: beta={beta!r} must be a finite number > 0 (the paper uses 0.1 to 0.5)")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo_loss: loss_type={loss_type!r} must be one of {LOSS_TYPES}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing={label_smoothing!r} must be in [0, 0.5): ε = 0.5 "
                         f"would say a label is a coin flip")
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(f"dpo_loss: label_smoothing={label_smoothing} is conservative DPO, defined for "
                         f"loss_type='sigmoid' only, not {loss_type!r}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps                 # log π/π_ref (y_w)  (B,)
    rejected_ratio = policy_rejected_logps - ref_rejected_logps           # log π/π_ref (y_l)  (B,)
    h = chosen_ratio - rejected_ratio                                     # the log-ratio margin (B,)
    if loss_type == "sigmoid":                                            # −(1−ε) log σ(βh) − ε log σ(−βh)
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2                                # (h − 1/(2β))²
    else:
        losses = torch.relu(1 - beta * h)                                 # max(0, 1 − βh)
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    """accuracy: share of pairs with chosen > rejected; ties: share with chosen == rejected (neither
    right nor wrong; every pair ties at step 0, when π = π_ref); margin: mean(chosen − rejected)."""
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1 or chosen_rewards.numel() == 0:
        raise ValueError(f"preference_metrics: chosen and rejected rewards must share one shape (B,), B >= 1, got "
                         f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}")
    for name, r in (("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards)):
        if not bool(torch.isfinite(r).all()):                             # NaN > 0 is False: a quiet "wrong"
            raise ValueError(f"preference_metrics: {name} holds NaN or inf")
    d = (chosen_rewards - rejected_rewards).double()
    return {"accuracy": float((d > 0).double().mean()), "ties": float((d == 0).double().mean()),
            "margin": float(d.mean())}


# ---- the reference ---------------------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(model):
    """Dropout off inside the block; the model's train/eval mode is restored after it."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@torch.no_grad()
def reference_logps(ref, batch: dict, average: bool = False, policy=None) -> torch.Tensor:
    """log π_ref(y|x) of every row of a collate_preferences batch (2B,), no gradient, dropout off.
    ref: the frozen reference model, or None to use `policy` with its adapters disabled."""
    if ref is None:
        if policy is None:
            raise ValueError("reference_logps: give ref (a frozen model), or ref=None and the PEFT policy")
        with _eval_mode(policy), disable_adapters(policy):
            return sequence_logps(policy, batch["ids"], batch["attention_mask"], batch["response_mask"], average)
    with _eval_mode(ref):
        return sequence_logps(ref, batch["ids"], batch["attention_mask"], batch["response_mask"], average)


def _collate(pad_id: int):
    def collate(items):
        batch = collate_preferences(items, pad_id)
        if "ref_chosen" in items[0]:                                      # precomputed log π_ref: 0-d tensors
            batch["ref_logps"] = torch.stack([it["ref_chosen"] for it in items] +
                                             [it["ref_rejected"] for it in items])      # (2B,)
        return batch
    return collate


# ---- training --------------------------------------------------------------------------------

@dataclass
class DPOConfig:
    """The DPO objective. average_logps=None: averaged log-probs for IPO, summed for the rest. The run
    itself (steps, pairs per step, lr, seed) is train_dpo's TrainConfig."""

    beta: float = 0.1
    loss_type: str = "sigmoid"           # sigmoid | ipo | hinge
    label_smoothing: float = 0.0         # ε of conservative DPO (sigmoid only)
    nll_weight: float = 0.0              # α: + α NLL(y_w) per token (RPO, Pang et al., 2024)
    average_logps: Optional[bool] = None
    precompute_ref: bool = True          # log π_ref of the training pairs once, before the first step

    def __post_init__(self):
        check_float(self, "beta", self.beta, lo=0, lo_open=True, hint=" (the paper uses 0.1 to 0.5)")
        check_choice(self, "loss_type", self.loss_type, LOSS_TYPES)
        check_float(self, "label_smoothing", self.label_smoothing, 0, 0.5, hi_open=True, hint=": ε = 0.5 would "
                    "say a label is a coin flip")
        if self.label_smoothing > 0 and self.loss_type != "sigmoid":
            raise ValueError(f"DPOConfig.label_smoothing={self.label_smoothing} is conservative DPO, defined for "
                             f"loss_type='sigmoid' only, not {self.loss_type!r}")
        check_float(self, "nll_weight", self.nll_weight, lo=0)
        if check_bool(self, "average_logps", self.average_logps, optional=True) is None:
            self.average_logps = self.loss_type == "ipo"
        check_bool(self, "precompute_ref", self.precompute_ref)


def dpo_step(policy, ref, batch: dict, cfg: DPOConfig):
    """The loss_fn of minift.train.train: (mean loss, metrics) on a collate_preferences batch, which
    is moved to the policy's device (log π_ref too, wherever it was computed, in the policy's dtype)."""
    B = batch["n_pairs"]
    batch = to_device(batch, model_device(policy))
    logps = sequence_logps(policy, batch["ids"], batch["attention_mask"], batch["response_mask"],
                           cfg.average_logps)                             # (2B,): chosen rows, then rejected
    ref_lp = batch["ref_logps"] if "ref_logps" in batch else reference_logps(ref, batch, cfg.average_logps, policy)
    ref_lp = ref_lp.to(device=logps.device, dtype=logps.dtype)            # (2B,)
    losses, rw, rl = dpo_loss(logps[:B], logps[B:], ref_lp[:B], ref_lp[B:], cfg.beta, cfg.loss_type,
                              cfg.label_smoothing)
    m = preference_metrics(rw, rl)
    loss, extra = losses.mean(), {}
    if cfg.nll_weight > 0:          # + α NLL: per chosen token (summed log-probs), or a mean of per-answer means
        n = batch["response_mask"][:B, 1:].sum()
        nll = -logps[:B].mean() if cfg.average_logps else -logps[:B].sum() / n
        loss, extra = loss + cfg.nll_weight * nll, {"nll": float(nll.detach())}
    return loss, {"reward_acc": m["accuracy"], "reward_margin": m["margin"], "chosen_reward": float(rw.mean()),
                  "rejected_reward": float(rl.mean()), **extra}


@torch.no_grad()
def score_pairs(model, tok, examples: Sequence[dict], average: bool = False, batch_size: int = 64,
                adapters: bool = True) -> torch.Tensor:
    """log π(y_w|x) and log π(y_l|x) of every example, in eval mode, no gradient: (2, N), on the
    model's device. adapters=False scores a PEFT model with its adapters disabled (its reference)."""
    data = PreferenceDataset(tok, examples, model.config.block_size)
    out = []
    with _eval_mode(model), (contextlib.nullcontext() if adapters else disable_adapters(model)):
        for i in range(0, len(data), batch_size):
            b = collate_preferences([data[j] for j in range(i, min(i + batch_size, len(data)))], tok.pad_id)
            lp = sequence_logps(model, b["ids"], b["attention_mask"], b["response_mask"], average)
            out.append(lp.view(2, -1))                                    # (2, B): chosen, rejected
    return torch.cat(out, 1)                                              # (2, N)


def train_dpo(policy, examples: Sequence[dict], cfg: DPOConfig, train_cfg: TrainConfig, *, ref, tok,
              ref_logps: Optional[torch.Tensor] = None, eval_fn=None) -> list[dict]:
    """Train `policy` in place with the DPO loss of `cfg` on preference examples {"prompt", "chosen",
    "rejected"}, through minift.train.train (train_cfg.batch_size pairs a step). What trains is what
    requires grad (all of a full model; only the adapters of a PEFT one). ref: a frozen model (never
    modified), or None for the PEFT policy with its adapters disabled. ref_logps: score_pairs(ref,
    tok, examples, cfg.average_logps), (2, N), to share one precomputation between runs. eval_fn(policy)
    -> dict of metrics, called every train_cfg.eval_every steps and at the end (e.g. held-out pairs
    through minift.evals.evaluate_preferences). Returns the history."""
    if not isinstance(cfg, DPOConfig) or not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_dpo: cfg must be a DPOConfig and train_cfg a TrainConfig, got "
                        f"{type(cfg).__name__} and {type(train_cfg).__name__}")
    if ref is policy:
        raise ValueError("train_dpo: ref is the policy itself; pass a frozen copy, or ref=None for a PEFT "
                         "policy whose adapters are then disabled to score the reference")
    if ref is None and not any(True for _ in adapter_layers(policy)):
        raise ValueError("train_dpo: ref=None needs a PEFT policy (e.g. apply_lora) whose disabled adapters "
                         "give the reference; this policy has no adapter layer")
    data = PreferenceDataset(tok, examples, policy.config.block_size)
    if cfg.precompute_ref or ref_logps is not None:                       # log π_ref once, not every step
        if ref_logps is None:
            ref_logps = score_pairs(policy if ref is None else ref, tok, examples, cfg.average_logps,
                                    adapters=ref is not None)
        if tuple(ref_logps.shape) != (2, len(data)):
            raise ValueError(f"train_dpo: ref_logps must be (2, N)=(2, {len(data)}) (score_pairs of the examples), "
                             f"got {tuple(ref_logps.shape)}")
        data = [dict(it, ref_chosen=c, ref_rejected=r) for it, c, r in zip(data, *ref_logps.detach())]
    return train(policy, data, train_cfg, loss_fn=lambda m, b: dpo_step(m, ref, b, cfg), collate_fn=_collate(tok.pad_id),
                 eval_fn=eval_fn)


__all__ = ["DPOConfig", "LOSS_TYPES", "dpo_loss", "dpo_step", "preference_metrics", "reference_logps", "score_pairs",
           "train_dpo"]
