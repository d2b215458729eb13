"""Chat fine-tuning: a conversation of turns, the loss on the assistant's turns only, and generation
that stops at the end of the assistant's turn (the chat format of InstructGPT-style assistants;
Ouyang et al., 2022; the multi-turn data of Vicuna/ShareGPT and Llama 2-Chat, Touvron et al., 2023).

**The format.** No new tokens: the base's four special tokens already mark who speaks. A dialogue
of n turns (u_1, a_1), ..., (u_n, a_n) is one sequence, the concatenation of every turn's SFT pair:

    [<|prompt|>] u_1 [<|response|>] a_1 [<|endoftext|>] [<|prompt|>] u_2 [<|response|>] a_2 [<|endoftext|>] ...
    mask:   0 ... 0        0        1 .. 1      1            0 ... 0        0        1 .. 1      1

so a turn's <|endoftext|> is the end of the assistant's turn, not of the document. The loss is the
language-modelling loss on every assistant token and its end-of-turn token, over all turns:

    L = -(1 / |A|) Σ_{t ∈ A} log p_θ(x_t | x_<t)          A = the assistant turns' tokens + their EOS

The user's turns are context, as the prompt is in SFT (align/sft.py): the model learns to answer,
not to imitate the user. `last_turn_only=True` is the ablation that trains on the final answer alone
(what single-turn SFT on the flattened history would do), with the same context.

**Generation.** The reply to a new user turn is conditioned on the whole history:
x = encode(history) ⊕ [<|prompt|>] u_new [<|response|>], greedy until <|endoftext|>, which ends the
turn; the reply then joins the history for the next turn. A history longer than the block drops its
oldest whole turns first (`encode_chat`'s truncation), never part of the newest question.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..tasks import collate_fn, masked_lm_item
from ..train import TrainConfig, model_device, to_device, train
from ..validate import check_bool


def _check_turns(turns, what: str = "dialogue") -> list:
    if not isinstance(turns, (list, tuple)) or not turns:
        raise ValueError(f"{what} must be a non-empty list of turns {{'user': str, 'assistant': str}}, got {turns!r:.80}")
    for k, t in enumerate(turns):
        if not (isinstance(t, dict) and isinstance(t.get("user"), str) and isinstance(t.get("assistant"), str)):
            raise TypeError(f"{what}: turn {k} must be a dict with str 'user' and 'assistant', got {t!r:.80}")
    return list(turns)


def encode_chat(tok, turns: Sequence[dict], max_len: Optional[int] = None,
                last_turn_only: bool = False) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a dialogue: tok.encode_pair(u_t, a_t) of every turn, concatenated; mask 1 on
    the assistant tokens and end-of-turn EOS of every turn (of the last turn only with last_turn_only).
    max_len: drop the oldest whole turns until the sequence fits; the last turn must fit alone."""
    turns = _check_turns(turns)
    parts = [tok.encode_pair(t["user"], t["assistant"]) for t in turns]              # [(ids, mask)] per turn
    if last_turn_only:
        parts = [(ids, [0] * len(ids)) for ids, _ in parts[:-1]] + parts[-1:]
    if max_len is not None:
        if len(parts[-1][0]) > max_len:
            raise ValueError(f"the last turn alone is {len(parts[-1][0])} tokens > max_len={max_len}")
        while sum(len(ids) for ids, _ in parts) > max_len:
            parts = parts[1:]                                                       # the oldest turn goes
    ids = [i for p, _ in parts for i in p]
    mask = [m for _, ms in parts for m in ms]
    return ids, mask


def chat_prompt(tok, history: Sequence[dict], user: str, max_len: Optional[int] = None) -> list[int]:
    """The ids a reply to `user` is generated from: the history's turns, then [<|prompt|>] user
    [<|response|>]. max_len: drop the oldest history turns until it fits (the question is never cut)."""
    q = tok.encode_prompt(user)
    hist = [] if not history else _check_turns(history, "history")
    if max_len is not None and len(q) > max_len:
        raise ValueError(f"the question alone is {len(q)} tokens > max_len={max_len}")
    parts = [tok.encode_pair(t["user"], t["assistant"])[0] for t in hist]      # each turn encoded once
    budget = None if max_len is None else max_len - len(q)
    while parts and budget is not None and sum(map(len, parts)) > budget:
        parts = parts[1:]                                                       # the oldest turn goes
    return [i for p in parts for i in p] + q


class ChatDataset(torch.utils.data.Dataset):
    """Training items {"idx", "targets"} (targets -100 off the assistant turns) from dialogues, each a
    list of turns or a dict with "turns" (TinyWorld's `dialogue` task)."""

    def __init__(self, tok, dialogues: Sequence, block_size: int, last_turn_only: bool = False):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be an int >= 1")
        check_bool("ChatDataset", "last_turn_only", last_turn_only)
        self.items = []
        for k, d in enumerate(dialogues):
            turns = d["turns"] if isinstance(d, dict) and "turns" in d else d
            try:
                ids, mask = encode_chat(tok, turns, block_size + 1, last_turn_only)
            except (ValueError, TypeError) as e:
                raise type(e)(f"dialogue {k}: {e}") from None
            self.items.append(masked_lm_item(ids, mask))                          # targets -100 off A
        if not self.items:
            raise ValueError("ChatDataset: no dialogues")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def train_chat(model, dialogues: Sequence, train_cfg: TrainConfig, *, tok, last_turn_only: bool = False,
               eval_fn=None) -> list[dict]:
    """Fine-tune `model` (whatever requires_grad says) on dialogues with L above, through
    minift.train.train. Returns the history."""
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_chat: train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    data = ChatDataset(tok, dialogues, model.config.block_size, last_turn_only)
    return train(model, data, train_cfg, collate_fn=collate_fn(tok.pad_id), eval_fn=eval_fn)


@torch.no_grad()
def reply(model, tok, history: Sequence[dict], user: str, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to `user` after `history`, up to its end-of-turn token."""
    model.eval()
    ids = chat_prompt(tok, history, user, model.config.block_size - max_new_tokens)
    x = to_device(torch.tensor([ids], dtype=torch.long, device="cpu"), model_device(model))   # (1, T)
    new = model.generate(x, max_new_tokens, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)[0].tolist()
    new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new                  # the turn ends at EOS
    return tok.decode(new).strip()


def last_turn_accuracy(model, tok, dialogues: Sequence[dict], with_history: bool = True,
                       max_new_tokens: int = 24) -> float:
    """The share of dialogues whose last answer, generated after the gold earlier turns (or with no
    history at all: with_history=False, the ablation), contains the asked-for fact d["answer"]."""
    hits = 0
    for d in dialogues:
        turns = d["turns"]
        got = reply(model, tok, turns[:-1] if with_history else [], turns[-1]["user"], max_new_tokens)
        hits += d["answer"].lower() in got.lower()
    return hits / max(1, len(dialogues))


__all__ = ["ChatDataset", "chat_prompt", "encode_chat", "last_turn_accuracy", "reply", "train_chat"]
