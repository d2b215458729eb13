"""Preference pairs in token space, and the SFT policy that preference methods start from.

A preference example is (x, y_w, y_l): a prompt, the chosen (preferred, "winning") response and
the rejected ("losing") one. TinyWorld's `preference` task (world.py) has three kinds whose
preference is learnable from the world: a true fact beats a wrong one; a response that follows a
format instruction ("one word only", "a full sentence") beats one that ignores it; doing a text
task beats copying its input.

In token space each side is the SFT sequence [<|prompt|> x <|response|> y <|endoftext|>] with
response_mask = tokenizer.encode_pair's loss mask (1 on y and its EOS), so log π(y | x) is
`logps.sequence_logps(model, ids, attention_mask, response_mask)`.

`collate_preferences` stacks the chosen rows then the rejected rows into ONE padded batch of
2B rows (B, T) -> (2B, T), so a reward model or a policy scores both sides in a single forward:
rows [:B] are chosen, rows [B:] rejected.

`train_sft_policy` is the common starting point of lessons 14 and 15: the base model fine-tuned
on the preference prompts so it answers in their format (RLHF's step 1; the DPO paper's π_SFT).
The same arguments and seed give the same policy in both lessons. Measured (300 steps, batch 16,
lr 1e-3): trained on the chosen responses only, π_SFT already ranks chosen above rejected on 97.5%
of the val pairs by raw log π(y|x) (the base: 56%), so `responses="both"` is offered for a starting
point where preference learning has work to do.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..tasks import IGNORE_INDEX, SFTDataset, collate_fn, truncate_prompt
from ..train import TrainConfig, train
from ..world import task as world_task


def encode_side(tok, prompt: str, response: str, block_size: int) -> tuple[list, list]:
    """(ids, response_mask) of one side, at most block_size tokens (the oldest prompt tokens go first)."""
    ids, mask = tok.encode_pair(prompt, response)
    return truncate_prompt(ids, mask, block_size)


class PreferenceDataset(torch.utils.data.Dataset):
    """Items {"chosen", "chosen_mask", "rejected", "rejected_mask"} (lists of ids / 0-1 masks)
    from examples {"prompt", "chosen", "rejected"} (TinyWorld's `preference` task)."""

    def __init__(self, tok, examples: Sequence[dict], block_size: int):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 4:
            raise ValueError(f"block_size={block_size!r} must be an int >= 4")
        self.items = []
        for k, ex in enumerate(examples):
            if not isinstance(ex, dict) or not all(isinstance(ex.get(f), str) for f in ("prompt", "chosen", "rejected")):
                raise TypeError(f"example {k} must be a dict with str 'prompt', 'chosen' and 'rejected'; got {ex!r:.80}")
            item = {}
            for side in ("chosen", "rejected"):
                try:
                    item[side], item[side + "_mask"] = encode_side(tok, ex["prompt"], ex[side], block_size)
                except ValueError as e:
                    raise ValueError(f"example {k} ({side}): {e}") from None
            self.items.append(item)
        if not self.items:
            raise ValueError("PreferenceDataset: no examples")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate_preferences(batch: Sequence[dict], pad_id: int, side: str = "right") -> dict:
    """Pad B preference items into one batch of 2B rows, chosen first:
    {"ids", "attention_mask", "response_mask"}: (2B, T) each, and "n_pairs": B."""
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r} must be 'left' or 'right'")
    if not batch:
        raise ValueError("collate_preferences: the batch is empty")
    rows = [(b["chosen"], b["chosen_mask"]) for b in batch] + [(b["rejected"], b["rejected_mask"]) for b in batch]
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    resp = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (r, m) in enumerate(rows):
        if len(r) != len(m):
            raise ValueError(f"collate_preferences: row {i} has {len(r)} ids but a mask of {len(m)}")
        cols = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[i, cols] = torch.as_tensor(r, dtype=torch.long)
        attn[i, cols] = 1
        resp[i, cols] = torch.as_tensor(m, dtype=torch.long)
    return {"ids": ids, "attention_mask": attn, "response_mask": resp, "n_pairs": len(batch)}


def preference_examples(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """The first n examples of TinyWorld's `preference` task (all of the split if n is None)."""
    ex = world_task("preference", split, seed)
    return ex if n is None else ex[:n]


def train_sft_policy(base, tok, steps: int = 300, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                     n_examples: int | None = None, responses: str = "chosen", progress: bool = True):
    """π_SFT: a copy of `base` fully fine-tuned on the preference train split, the loss on the
    response only. responses="chosen": on (prompt, chosen), the usual demonstrations;
    responses="both": on (prompt, chosen) and (prompt, rejected), a model that imitates a mixed
    population of good and bad answers, so that preferences, not imitation, must separate them.
    Returns (policy, history); `base` is not modified."""
    import copy
    if responses not in ("chosen", "both"):
        raise ValueError(f"responses={responses!r} must be 'chosen' or 'both'")
    policy = copy.deepcopy(base)
    for p in policy.parameters():
        p.requires_grad_(True)
    sides = ("chosen",) if responses == "chosen" else ("chosen", "rejected")
    pairs = [(ex["prompt"], ex[s]) for ex in preference_examples("train", n_examples) for s in sides]
    data = SFTDataset(tok, pairs, policy.config.block_size)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, desc="sft", progress=progress)
    hist = train(policy, data, cfg, collate_fn=collate_fn(tok.pad_id))
    return policy.eval(), hist


__all__ = ["IGNORE_INDEX", "PreferenceDataset", "collate_preferences", "encode_side", "preference_examples",
           "train_sft_policy"]
