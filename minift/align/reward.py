"""A reward model: the language model turned into a scalar judge of (prompt, response) pairs.

RLHF's step 2 (Stiennon et al., 2020; Ouyang et al., 2022, InstructGPT): take the SFT model, drop
the vocabulary projection, and read ONE number from the final hidden state of the last real token
of [<|prompt|> x <|response|> y <|endoftext|>]:

    r_φ(x, y) = w · h_L[b, last real token] + b            h_L (B, T, C) after ln_f -> r (B,)

It is trained on human (here: TinyWorld's) comparisons (x, y_w, y_l) with the Bradley–Terry model
P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)), i.e. by minimising, per pair,

    L(φ) = −log σ(r_φ(x, y_w) − r_φ(x, y_l) − m)           m = margin >= 0 (Llama 2's variant)

Only differences of rewards are learned, so r is defined up to a constant; as in Ziegler et al.
(2019) `train_reward_model` finally shifts and scales the head so that r has mean 0 and standard
deviation 1 over the training responses (accuracy is unchanged: σ is monotone). PPO (ppo.py) then
adds r to the last response token's reward.

The last real token is found from the attention mask (`heads.last_real_index`: the largest
position whose mask is 1), never from a pad or EOS id, so left- and right-padded batches and
any batch composition give the same reward to the same sequence.

Metrics: accuracy = share of pairs with r_w > r_l; ties (r_w == r_l) are counted separately and
are not correct, so a constant reward model scores accuracy 0 and ties 1, not 0.5.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads import last_real_index
from ..model import GPT
from ..train import TrainConfig, model_device, to_device, train
from ..validate import check_bool, check_float
from .preference import PreferenceDataset, collate_preferences


class RewardModel(nn.Module):
    """A GPT body with a scalar head on the last real token: forward(ids, attention_mask) -> (B,).
    The head is drawn on the CPU from the global RNG (the same numbers whatever the device), then
    placed on the body's device, in its dtype."""

    def __init__(self, body: GPT):
        super().__init__()
        if not isinstance(body, GPT):
            raise TypeError(f"RewardModel(body) needs a minift GPT, got {type(body).__name__}")
        self.body = body
        self.config = body.config
        head = nn.Linear(body.config.n_embd, 1, device="cpu")
        nn.init.normal_(head.weight, 0.0, 0.02)
        nn.init.zeros_(head.bias)
        w = body.transformer.wte.weight
        self.head = head.to(device=w.device, dtype=w.dtype)

    def forward(self, ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.body(ids, attention_mask=attention_mask, output_hidden_states=True,
                      return_logits=False).hidden_states[-1]                    # (B, T, C), after ln_f
        B, T, _ = h.shape
        last = last_real_index(attention_mask, B, T, h.device)                  # (B,)
        return self.head(h[torch.arange(B, device=h.device), last]).squeeze(-1)  # r = w·h_last + b  (B,)


def _check_pair(r_chosen, r_rejected, who: str):
    for name, r in (("r_chosen", r_chosen), ("r_rejected", r_rejected)):
        if not isinstance(r, torch.Tensor) or not r.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(r, 'dtype', type(r).__name__)}")
    if r_chosen.dim() != 1 or r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen and r_rejected must both be (B,), got {tuple(r_chosen.shape)} and "
                         f"{tuple(r_rejected.shape)}")
    for name, r in (("r_chosen", r_chosen), ("r_rejected", r_rejected)):
        if not bool(torch.isfinite(r).all()):                               # else: NaN rows, or a NaN counted as a loss
            raise ValueError(f"{who}: {name} holds NaN or inf; a reward model's scores are finite")


def reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Bradley–Terry loss per pair: −log σ(r_w − r_l − m), (B,) and (B,) -> (B,).
    Computed as −logsigmoid(·) = softplus(−·), finite for any finite input (NaN or inf raise)."""
    _check_pair(r_chosen, r_rejected, "reward_loss")
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not margin >= 0 or not math.isfinite(margin):
        raise ValueError(f"margin={margin!r} must be a finite number >= 0")
    return -F.logsigmoid(r_chosen - r_rejected - margin)                        # (B,)


@torch.no_grad()
def reward_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict:
    """{"accuracy": share r_w > r_l, "ties": share r_w == r_l, "margin": mean r_w − r_l}."""
    _check_pair(r_chosen, r_rejected, "reward_metrics")
    d = (r_chosen - r_rejected).float()
    return {"accuracy": float((d > 0).float().mean()), "ties": float((d == 0).float().mean()),
            "margin": float(d.mean())}


def pair_rewards(rm: RewardModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of a collate_preferences batch, one forward over its 2B rows (moved to the model's
    device): (r_chosen, r_rejected), on that device."""
    ids, attn = to_device((batch["ids"], batch["attention_mask"]), model_device(rm))
    r = rm(ids, attention_mask=attn)                                            # (2B,)
    B = batch["n_pairs"]
    return r[:B], r[B:]


def reward_model_loss(rm: RewardModel, batch: dict, margin: float = 0.0):
    """The loss_fn for minift.train.train: the mean Bradley–Terry loss, with accuracy logged."""
    rc, rr = pair_rewards(rm, batch)
    m = reward_metrics(rc, rr)
    return reward_loss(rc, rr, margin).mean(), {"acc": m["accuracy"]}


@torch.no_grad()
def score(rm: RewardModel, ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Rewards of padded sequences (B, T) in eval mode, in chunks, on the model's device: (B,)."""
    was = rm.training
    rm.eval()
    ids, attention_mask = to_device((ids, attention_mask), model_device(rm))
    out = torch.cat([rm(ids[i:i + batch_size], attention_mask=attention_mask[i:i + batch_size])
                     for i in range(0, ids.shape[0], batch_size)])
    rm.train(was)
    return out


@torch.no_grad()
def normalize_reward_model(rm: RewardModel, batch: dict) -> tuple[float, float]:
    """Shift and scale the head so that r has mean 0 and std 1 on `batch` (Ziegler et al., 2019):
    w ← w / s, b ← (b − μ) / s. Returns the (μ, s) that were removed."""
    r = score(rm, batch["ids"], batch["attention_mask"])
    mu, s = float(r.mean()), float(r.std().clamp(min=1e-6))
    rm.head.weight.div_(s)
    rm.head.bias.sub_(mu).div_(s)
    return mu, s


@dataclass
class RewardConfig:
    """The reward model's objective: the Bradley–Terry margin m, and whether to standardise r after training."""
    margin: float = 0.0                  # m in −log σ(r_w − r_l − m); Llama 2 uses > 0 for clear preferences
    normalize: bool = True               # r has mean 0, std 1 over the training responses (Ziegler et al.)

    def __post_init__(self):
        check_float(self, "margin", self.margin, lo=0)
        check_bool(self, "normalize", self.normalize)


def train_reward_model(base: GPT, examples: Sequence[dict], cfg: RewardConfig, train_cfg: TrainConfig, *, tok):
    """A RewardModel on a copy of `base` (InstructGPT starts it from the SFT model), every parameter
    trained with the Bradley–Terry loss on the preference `examples` through minift.train.train
    (train_cfg.batch_size pairs a step; train_cfg.seed also draws the head's init). With
    cfg.normalize the rewards are then standardised over (up to 256 of) the training pairs, both
    sides. `base` is not modified. Returns (rm in eval mode, history)."""
    if not isinstance(base, GPT):
        raise TypeError(f"train_reward_model: base must be a minift GPT, got {type(base).__name__}")
    if not isinstance(cfg, RewardConfig) or not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_reward_model: cfg must be a RewardConfig and train_cfg a TrainConfig, got "
                        f"{type(cfg).__name__} and {type(train_cfg).__name__}")
    if not examples:
        raise ValueError("train_reward_model: no examples")
    torch.manual_seed(train_cfg.seed)                                          # the head's init
    rm = RewardModel(copy.deepcopy(base))
    for p in rm.parameters():
        p.requires_grad_(True)
    data = PreferenceDataset(tok, examples, rm.config.block_size)
    hist = train(rm, data, train_cfg, loss_fn=lambda m, b: reward_model_loss(m, b, cfg.margin),
                 collate_fn=lambda items: collate_preferences(items, tok.pad_id))
    if cfg.normalize:
        norm = collate_preferences([data[i] for i in range(min(256, len(data)))], tok.pad_id)
        normalize_reward_model(rm, norm)
    return rm.eval(), hist


__all__ = ["RewardModel", "RewardConfig", "reward_loss", "reward_metrics", "pair_rewards", "reward_model_loss", "score",
           "normalize_reward_model", "train_reward_model"]
