"""Contrastive learning of sentence embeddings: InfoNCE with in-batch negatives (van den Oord et
al., 2018, "Representation Learning with Contrastive Predictive Coding"; Chen et al., 2020,
SimCLR), unsupervised and supervised SimCSE (Gao, Yao & Chen, 2021, "SimCSE: Simple Contrastive
Learning of Sentence Embeddings").

A sentence x becomes one vector by running the GPT and pooling its last hidden states h (after
ln_f) over the *real* tokens only (m_t = attention_mask, 1 = real):

    e(x) = h_{last real t}                  pooling="last" (the default)                 (B, C)
    e(x) = Σ_t m_t h_t / Σ_t m_t            pooling="mean"

Every sentence ends with EOS, so "last" is always the EOS state. The default is "last" because
the GPT is causal: h_t has only seen tokens 1..t, so a mean is dominated by prefixes that two
different sentences share ("Bruman treasures a" fiddle / flute), while the last token is the
only one that has attended to all of it, and word order too (the choice of decoder embedders
such as E5-Mistral; BERT-style encoders, where every token sees everything, usually mean-pool).
Lesson 16 measures both: a tie untrained, last ahead after training (0.890 vs 0.830).
Padding never changes e(x): positions are counted over real tokens and pads are never attended.

A batch holds N pairs (a_i, b_i) that mean the same thing; every other b_j of the batch is a
negative for a_i ("in-batch negatives"), optionally with M extra hard negatives n_k (sentences
that look like a_i but mean something else). With cosine similarity sim(u, v) = u·v / ‖u‖‖v‖
and a temperature τ:

    ℓ_i = -log  exp(sim(a_i, b_i)/τ) / [Σ_j exp(sim(a_i, b_j)/τ) + Σ_k exp(sim(a_i, n_k)/τ)]
    L   = (1/N) Σ_i ℓ_i                                                   one-directional (a -> b)
    L_sym = (L + L_{b -> a}) / 2                  symmetric=True: also b_i picks a_i among the a_j

It is cross-entropy over the N (+ M) candidates with the right one at index i. Uninformative
embeddings (all equal) give every candidate the same score: L = log(N + M). The default is
one-directional, as SimCSE's (its hard negatives are only candidates for the anchors).

Where the pairs come from:
- unsupervised SimCSE: a_i = b_i = the same sentence, encoded twice with dropout on; the two
  dropout masks are the only "augmentation". The shipped base has dropout 0.0, so training turns
  dropout on for its duration (`dropout_enabled`): the model's config is not changed. The masks
  are drawn on the model's device, so a GPU run draws other masks than a CPU run of the same seed;
- supervised: TinyWorld `pairs` (two phrasings of one fact) and `paraphrase` label-1 pairs, with
  `paraphrase` label-0 sentences (one value changed, roles swapped) as hard negatives. SimCSE
  keeps dropout 0.1 here too; on this base (pretrained without dropout) lesson 16 measures 0 better.

Both sets of items, and the evaluation (paraphrase identification with a threshold tuned on val,
retrieval accuracy@1), are TinyWorld's: they live in minift/evals.py (`supervised_pairs`,
`unsupervised_sentences`, `evaluate_embeddings`). This file is the method: pooling, the loss,
the dropout switch and the trainer.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads import last_real_index
from ..tasks import collate
from ..train import TrainConfig, model_device, to_device, train
from ..validate import check_bool, check_choice, check_float
from .logps import check_01, check_finite, zero_masked

POOLINGS = ("mean", "last")


@dataclass
class ContrastiveConfig:
    """How embeddings are made and compared while training."""
    temperature: float = 0.05        # τ; SimCSE's value
    pooling: str = "last"            # the "last" real token (EOS), or the "mean" over real tokens
    symmetric: bool = False          # also the b -> a direction (hard negatives stay a -> b only)
    dropout: float = 0.1             # on while training: SimCSE's augmentation (supervised: try 0)

    def __post_init__(self):
        check_float(self, "temperature", self.temperature, lo=0, lo_open=True, hint=" (SimCSE uses 0.05)")
        check_choice(self, "pooling", self.pooling, POOLINGS)
        check_bool(self, "symmetric", self.symmetric)
        check_float(self, "dropout", self.dropout, 0, 1, hi_open=True)


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0 (SimCSE uses 0.05)")
    return float(temperature)


def check_pooling(pooling) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}")
    return pooling


# ---- sentence embeddings -----------------------------------------------------------------------

def pool(h: torch.Tensor, attention_mask: Optional[torch.Tensor], pooling: str = "last") -> torch.Tensor:
    """Hidden states (B, T, C) -> one vector per row (B, C), over the real tokens only."""
    check_pooling(pooling)
    if not isinstance(h, torch.Tensor) or h.dim() != 3:
        raise ValueError(f"h must be a (batch, time, channels) tensor, got {getattr(h, 'shape', type(h).__name__)}")
    B, T, _ = h.shape
    m = torch.ones(B, T, device=h.device) if attention_mask is None else attention_mask
    if tuple(m.shape) != (B, T):
        raise ValueError(f"attention_mask must have shape (batch, time)=({B}, {T}), got {tuple(m.shape)}")
    check_01(m, "attention_mask")
    m = m.to(h.dtype)
    if bool((m.sum(1) == 0).any()):
        raise ValueError("attention_mask has a row with no real token: it has no embedding")
    if pooling == "mean":                                                   # a select, not h · m: padding
        return zero_masked(h, m).sum(1) / m.sum(1, keepdim=True)            # Σ m_t h_t / Σ m_t  (B, C)
    last = last_real_index(m.long(), B, T, h.device)                         # last real position (B,)
    return h[torch.arange(B, device=h.device), last]                        # (B, C)


def embed(model, idx: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
          pooling: str = "last") -> torch.Tensor:
    """e(x) for a batch of token ids (B, T): the GPT's last hidden states (after ln_f), pooled, on
    the model's device (the batch is moved there). Differentiable (training calls it);
    `embed_sentences` is the no-grad version for text."""
    idx, attention_mask = to_device((idx, attention_mask), model_device(model))
    out = model(idx, attention_mask=attention_mask, output_hidden_states=True, return_logits=False)
    return pool(out.hidden_states[-1], attention_mask, pooling)            # (B, C)


def encode_sentences(tok, sentences: Sequence[str], block_size: int) -> list[torch.Tensor]:
    """Token ids of each sentence followed by EOS (so the last token is the same kind for all)."""
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences must be a non-empty list of strings")
    out = []
    for i, s in enumerate(sentences):
        ids = tok.encode(s) + [tok.eos_id]
        if len(ids) > block_size:
            raise ValueError(f"sentence {i} is {len(ids)} tokens, longer than block_size={block_size}")
        out.append(torch.tensor(ids, dtype=torch.long, device="cpu"))      # data: batches move to the model
    return out


@torch.no_grad()
def embed_sentences(model, tok, sentences: Sequence[str], pooling: str = "last", batch_size: int = 128,
                    side: str = "right") -> torch.Tensor:
    """Embeddings (N, C) of a list of sentences, in eval mode (no dropout), batched and padded; float32
    (float64 for a float64 model), on the model's device."""
    was_training = model.training
    model.eval()
    ids = encode_sentences(tok, sentences, model.config.block_size)
    out = []
    for i in range(0, len(ids), batch_size):
        b = collate([{"idx": x} for x in ids[i:i + batch_size]], tok.pad_id, side=side)
        out.append(embed(model, b["idx"], b["attention_mask"], pooling))
    model.train(was_training)
    return torch.cat(out).to(torch.promote_types(out[0].dtype, torch.float32))


# ---- the loss ----------------------------------------------------------------------------------

def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05,
             negatives: Optional[torch.Tensor] = None, symmetric: bool = False) -> torch.Tensor:
    """InfoNCE over cosine similarities: a (N, C) anchors, b (N, C) their positives (row i of b
    is row i's positive, every other row a negative), negatives (M, C) extra candidates for every
    anchor. Returns the mean loss (a scalar)."""
    tau = check_temperature(temperature)
    if not all(isinstance(t, torch.Tensor) for t in (a, b) + (() if negatives is None else (negatives,))):
        raise TypeError(f"a, b (and negatives) must be tensors, got {type(a).__name__}, {type(b).__name__}, "
                        f"{type(negatives).__name__}")
    if a.dim() != 2 or a.shape != b.shape or a.shape[0] < 1:
        raise ValueError(f"a and b must both be (N, C) with N >= 1, got {tuple(a.shape)} and {tuple(b.shape)}")
    if negatives is not None and (negatives.dim() != 2 or negatives.shape[1] != a.shape[1]):
        raise ValueError(f"negatives must be (M, C={a.shape[1]}), got {tuple(negatives.shape)}")
    for name, t in (("a", a), ("b", b), ("negatives", negatives)):
        if t is not None:
            check_finite(name, t, None, "info_nce")
    dt = torch.promote_types(a.dtype, torch.float32)                       # half precision -> float32
    a, b = F.normalize(a.to(dt), dim=-1), F.normalize(b.to(dt), dim=-1)     # unit rows: a·b = cos
    cands = b if negatives is None else torch.cat([b, F.normalize(negatives.to(dt), dim=-1)])
    logits = a @ cands.T / tau                                              # sim(a_i, ·)/τ  (N, N + M)
    target = torch.arange(a.shape[0], device=a.device)                      # the positive of a_i is b_i
    loss = F.cross_entropy(logits, target)                                  # mean_i ℓ_i
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits[:, :a.shape[0]].T, target))   # b_i picks a_i
    return loss


@contextmanager
def dropout_enabled(model: nn.Module, p: float):
    """Dropout probability p in every nn.Dropout and attention of `model` inside the block (the
    model must be in train mode for it to act); the old values come back after. The config (and
    so a saved checkpoint) keeps its dropout: this is a training-time switch only."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p={p!r} must be in [0, 1)")
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    attns = [m for m in model.modules() if hasattr(m, "attn_dropout")]
    before = [m.p for m in drops], [m.attn_dropout for m in attns]
    try:
        for m in drops:
            m.p = p
        for m in attns:
            m.attn_dropout = p
        yield model
    finally:
        for m, v in zip(drops, before[0]):
            m.p = v
        for m, v in zip(attns, before[1]):
            m.attn_dropout = v


# ---- training ---------------------------------------------------------------------------------

def encode_items(tok, items: Sequence[dict], block_size: int) -> list[dict]:
    """Text items -> token-id items (same keys), the dataset `train_contrastive` takes."""
    return [{k: encode_sentences(tok, [v], block_size)[0] for k, v in ex.items()} for ex in items]


def pair_collate(pad_id: int):
    """Items {"anchor"[, "positive"][, "negative"]} -> one padded batch of every sentence, in the
    order anchors (N), positives (N), negatives (M). An item without "positive" is its own positive
    (unsupervised SimCSE: the two copies get different dropout masks)."""
    def fn(items):
        a = [it["anchor"] for it in items]
        b = [it.get("positive", it["anchor"]) for it in items]
        n = [it["negative"] for it in items if "negative" in it]
        batch = collate([{"idx": x} for x in a + b + n], pad_id)
        batch["n_pairs"] = len(a)
        return batch
    return fn


def contrastive_loss(cfg: ContrastiveConfig):
    """The loss_fn for minift.train.train: one forward over the whole batch, then InfoNCE."""
    def fn(model, batch):
        N = batch["n_pairs"]
        e = embed(model, batch["idx"], batch["attention_mask"], cfg.pooling)    # (2N + M, C)
        a, b, n = e[:N], e[N:2 * N], e[2 * N:]
        loss = info_nce(a, b, cfg.temperature, n if len(n) else None, cfg.symmetric)
        with torch.no_grad():
            nearest = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).argmax(1)   # (N,)
            hit = nearest == torch.arange(N, device=a.device)
        return loss, {"batch_acc": float(hit.float().mean())}
    return fn


def train_contrastive(model, items: Sequence[dict], cfg: ContrastiveConfig, train_cfg: TrainConfig, *, tok,
                      eval_fn=None) -> list[dict]:
    """Train `model` (a GPT, with or without LoRA: whatever requires_grad says) on text items
    {"anchor"[, "positive"][, "negative"]} with InfoNCE through minift.train.train, dropout
    p = cfg.dropout on while it trains; eval_fn(model) -> dict as in train. Returns the history."""
    if not isinstance(cfg, ContrastiveConfig) or not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_contrastive: cfg must be a ContrastiveConfig and train_cfg a TrainConfig, got "
                        f"{type(cfg).__name__} and {type(train_cfg).__name__}")
    if not items:
        raise ValueError("train_contrastive: no items")
    data = encode_items(tok, items, model.config.block_size)
    with dropout_enabled(model, cfg.dropout):
        return train(model, data, train_cfg, loss_fn=contrastive_loss(cfg), collate_fn=pair_collate(tok.pad_id),
                     eval_fn=eval_fn)

