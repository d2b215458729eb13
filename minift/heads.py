"""Task heads: transfer learning by putting a new, small layer on a pretrained body.

The pretrained GPT is reused as a feature extractor ("body"); a linear head maps its final
hidden states to task labels (Radford et al., 2018; Howard & Ruder, 2018):

    sequence classification   logits = W h_last + b        h_last = h_L[b, last real token]   (B, K)
    token classification      logits_t = W h_t + b         for every position t               (B, T, K)

The last *real* token is found from the attention mask (the largest position whose mask is 1),
never from a pad or EOS id, so left- and right-padded batches give the same logits. A causal
model's last token is the only one that has seen the whole input, hence it pools the sequence.

For NER, words are split into sub-word tokens; the word's tag is predicted at its first token and
the other tokens get label -100 (ignored), the usual convention (Devlin et al., 2019).

Train the head alone (transfer, "head-only": freeze the body) or everything (full fine-tuning):
that choice is made by `requires_grad`, as for every method (see `minift.peft.selective`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT, IGNORE_INDEX
from .train import model_device, to_device
from .validate import check_float


@dataclass
class ClassifierOutput:
    logits: torch.Tensor                    # (B, K) or (B, T, K)
    loss: Optional[torch.Tensor] = None


def last_real_index(attention_mask: Optional[torch.Tensor], B: int, T: int, device) -> torch.Tensor:
    """Position of each row's last real token (B,): works for left, right or no padding."""
    if attention_mask is None:
        return torch.full((B,), T - 1, dtype=torch.long, device=device)
    pos = torch.arange(T, device=device).expand(B, T)
    if bool((attention_mask.sum(1) == 0).any()):
        raise ValueError("attention_mask has a row with no real token")
    return (pos * attention_mask.to(torch.long)).argmax(dim=1)            # (B,)


class _Head(nn.Module):
    def __init__(self, body: GPT, n_classes: int, dropout: float = 0.0):
        super().__init__()
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes={n_classes!r} must be an integer >= 2")
        check_float(self, "dropout", dropout, 0, 1, hi_open=True)
        self.body, self.n_classes = body, n_classes
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(body.config.n_embd, n_classes)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def _hidden(self, idx, attention_mask):
        out = self.body(idx, attention_mask=attention_mask, output_hidden_states=True, return_logits=False)
        return out.hidden_states[-1]                                       # (B, T, C), after ln_f

    def _check_labels(self, labels, ignore_ok: bool):
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
                or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor of class ids, got "
                            f"{getattr(labels, 'dtype', type(labels).__name__)}")
        valid = labels[labels != IGNORE_INDEX] if ignore_ok else labels
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.n_classes):
            bad = int(valid.max() if valid.max() >= self.n_classes else valid.min())
            raise ValueError(f"label {bad} is outside the head's classes [0, {self.n_classes})")


class SequenceClassifier(_Head):
    """Body + linear head on the last real token's hidden state (sentiment, paraphrase)."""

    def forward(self, idx, attention_mask=None, labels=None) -> ClassifierOutput:
        h = self._hidden(idx, attention_mask)                              # (B, T, C)
        B, T, _ = h.shape
        last = last_real_index(attention_mask, B, T, h.device)            # (B,)
        pooled = h[torch.arange(B, device=h.device), last]                 # (B, C)
        logits = self.head(self.dropout(pooled))                           # (B, K)
        loss = None
        if labels is not None:
            if tuple(labels.shape) != (B,):
                raise ValueError(f"labels must have shape (batch,)=({B},), got {tuple(labels.shape)}")
            self._check_labels(labels, ignore_ok=False)
            loss = F.cross_entropy(logits, labels)
        return ClassifierOutput(logits, loss)


class TokenClassifier(_Head):
    """Body + linear head on every position's hidden state (NER); labels -100 are ignored."""

    def forward(self, idx, attention_mask=None, labels=None) -> ClassifierOutput:
        h = self._hidden(idx, attention_mask)                              # (B, T, C)
        logits = self.head(self.dropout(h))                                # (B, T, K)
        loss = None
        if labels is not None:
            if labels.shape != idx.shape:
                raise ValueError(f"labels must have the shape of idx {tuple(idx.shape)}, got {tuple(labels.shape)}")
            self._check_labels(labels, ignore_ok=True)
            if attention_mask is not None:                                 # never learn on padding
                labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
            if bool((labels != IGNORE_INDEX).any()):
                loss = F.cross_entropy(logits.reshape(-1, self.n_classes), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX)
            else:                                                          # nothing to learn: 0, whatever
                loss = logits.flatten()[:0].sum()                          # the logits hold (an empty sum)
        return ClassifierOutput(logits, loss)


def classifier_loss(model, batch):
    """The loss_fn for minift.train.train: batches with idx, attention_mask, labels."""
    out = model(batch["idx"], attention_mask=batch.get("attention_mask"), labels=batch["labels"])
    return out.loss, {}


# ---- data: text -> token ids with labels ---------------------------------------------------------

def encode_classification(tok, examples: Sequence[dict], text_keys: Sequence[str], block_size: int) -> list[dict]:
    """Items {"idx", "labels"} for sequence classification. Several text fields (a sentence pair)
    are joined with EOS between them; an EOS ends every input, so the pooled last token is the
    same kind of token for every example."""
    if not examples:
        raise ValueError("encode_classification: no examples")
    items = []
    for i, ex in enumerate(examples):
        ids = []
        for k in text_keys:
            if k not in ex:
                raise ValueError(f"example {i} has no field {k!r}; it has {sorted(ex)}")
            ids += tok.encode(ex[k]) + [tok.eos_id]
        if len(ids) > block_size:
            ids = ids[-block_size:]
        items.append({"idx": torch.tensor(ids, dtype=torch.long, device="cpu"),    # data stays on the CPU:
                      "labels": torch.tensor(int(ex["label"]), dtype=torch.long, device="cpu")})   # train moves it
    return items


def encode_words(tok, words: Sequence[str], tags: Optional[Sequence[int]] = None):
    """Token ids of a pre-split sentence and, per token, the word's tag at its first token and -100
    elsewhere. Words after the first are encoded with a leading space, as they appear in text.
    Returns (ids, labels, first) where first[w] is the token position of word w."""
    ids, labels, first = [], [], []
    for w_i, w in enumerate(words):
        piece = tok.encode(w if w_i == 0 else " " + w)
        first.append(len(ids))
        ids += piece
        labels += [tags[w_i] if tags is not None else IGNORE_INDEX] + [IGNORE_INDEX] * (len(piece) - 1)
    return ids, labels, first


def encode_ner(tok, examples: Sequence[dict], tag_names: Sequence[str], block_size: int) -> list[dict]:
    """Items {"idx", "labels", "first"} for token classification from {"tokens", "tags"} examples."""
    if not examples:
        raise ValueError("encode_ner: no examples")
    tag_id = {t: i for i, t in enumerate(tag_names)}
    items = []
    for i, ex in enumerate(examples):
        unknown = [t for t in ex["tags"] if t not in tag_id]
        if unknown:
            raise ValueError(f"example {i} has tag(s) {sorted(set(unknown))} not in {list(tag_names)}")
        ids, labels, first = encode_words(tok, ex["tokens"], [tag_id[t] for t in ex["tags"]])
        if len(ids) > block_size:
            raise ValueError(f"example {i} is {len(ids)} tokens, longer than block_size={block_size}")
        items.append({"idx": torch.tensor(ids, dtype=torch.long, device="cpu"),     # CPU data: train moves it
                      "labels": torch.tensor(labels, dtype=torch.long, device="cpu"), "first": first})
    return items


def _logits_by_batch(model: nn.Module, items: Sequence[dict], collate, batch_size: int):
    """(chunk, logits) for consecutive chunks of `batch_size` items: their {idx, labels} collated (right
    padding), moved to the model's device and run through it in eval mode."""
    model.eval()
    dev = model_device(model)
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        b = to_device(collate([{k: v for k, v in it.items() if k in ("idx", "labels")} for it in chunk]), dev)
        yield chunk, model(b["idx"], attention_mask=b["attention_mask"]).logits


@torch.no_grad()
def predict_sequence(model: SequenceClassifier, items: list[dict], collate, batch_size: int = 64) -> list[int]:
    return [p for _, logits in _logits_by_batch(model, items, collate, batch_size) for p in logits.argmax(-1).tolist()]


@torch.no_grad()
def predicted_classes(model: nn.Module, items: Sequence[dict], collate, batch_size: int = 64):
    """(item, argmax class at every position (T_item,), on the CPU) for each item, in order: the model
    (a TokenClassifier, eval mode) run on batches of `batch_size` collated {idx, labels} (right padding),
    moved to the model's device."""
    for chunk, logits in _logits_by_batch(model, items, collate, batch_size):
        pred = logits.argmax(-1).cpu()                                     # (B, T), one copy per batch
        for r, it in enumerate(chunk):
            yield it, pred[r, :len(it["idx"])]


def predict_tags(model: TokenClassifier, items: list[dict], collate, tag_names: Sequence[str],
                 batch_size: int = 64) -> list[list[str]]:
    """Word-level tags: the prediction at each word's first token (right padding assumed)."""
    return [[tag_names[int(pred[p])] for p in it["first"]]
            for it, pred in predicted_classes(model, items, collate, batch_size)]


def ner_splits(tok, block_size: int, n_eval: Optional[int] = None, dev_key: str = "val"):
    """TinyWorld NER as the lessons use it: (examples, items, train_items). `examples` maps
    "train", dev_key (the val split) and "test" to the task's examples, val and test cut to their
    first n_eval; `items` are their encodings (encode_ner); `train_items` the {idx, labels} the
    training loop takes."""
    from . import world
    cut = (lambda xs: xs[:n_eval]) if n_eval else (lambda xs: xs)
    examples = {"train": world.task("ner", "train"), dev_key: cut(world.task("ner", "val")),
                "test": cut(world.task("ner", "test"))}
    items = {s: encode_ner(tok, v, world.NER_TAGS, block_size) for s, v in examples.items()}
    return examples, items, [{"idx": it["idx"], "labels": it["labels"]} for it in items["train"]]
