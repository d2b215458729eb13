"""Preference pairs in token space: what reward models, DPO and PPO read their comparisons from.

A preference example is (x, y_w, y_l): a prompt, the chosen (preferred, "winning") response and
the rejected ("losing") one. TinyWorld's `preference` task (minift/world/task_sets.py) has three kinds whose
preference is learnable from the world: a true fact beats a wrong one; a response that follows a
format instruction ("one word only", "a full sentence") beats one that ignores it; doing a text
task beats copying its input.

In token space each side is the SFT sequence [<|prompt|> x <|response|> y <|endoftext|>] with
response_mask = tokenizer.encode_pair's loss mask (1 on y and its EOS), so log π(y | x) is
`logps.sequence_logps(model, ids, attention_mask, response_mask)`.

`collate_preferences` stacks the chosen rows then the rejected rows into ONE padded batch of
2B rows (B, T) -> (2B, T), so a reward model or a policy scores both sides in a single forward:
rows [:B] are chosen, rows [B:] rejected.

The TinyWorld side (the examples themselves, and π_SFT, the policy lessons 14 and 15 start from)
is in minift/evals.py: `preference_examples`, `train_sft_policy`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..tasks import IGNORE_INDEX, collate, truncate_prompt


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
    for i, (r, m) in enumerate(rows):
        if len(r) != len(m):
            raise ValueError(f"collate_preferences: row {i} has {len(r)} ids but a mask of {len(m)}")
    b = collate([{"idx": r, "targets": m} for r, m in rows], pad_id, side)   # the mask rides as targets
    resp = b["targets"].clamp(min=0)                                        # (2B, T): padding (-100) -> 0
    return {"ids": b["idx"], "attention_mask": b["attention_mask"], "response_mask": resp, "n_pairs": len(batch)}


__all__ = ["IGNORE_INDEX", "PreferenceDataset", "collate_preferences", "encode_side"]
