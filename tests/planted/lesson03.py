"""Planted bugs for lesson 03: copies of the reference run_* functions, one plausible mistake each.

tests/test_planted.py swaps each `run_<fn>__<bug>` in for the reference `run_<fn>` and expects at
least one of run_<fn>'s checks to fail.
"""
import torch

from minift.conformance import reference as ref


def run_response_loss_mask__mask_of_ids(prompt_len, response_len, train_on_prompt=False):
    """marks the ids instead of the targets (no shift): the <|response|> marker's target is missed,
    the EOS's is counted one place late."""
    if train_on_prompt:
        return [1] * (prompt_len + response_len)
    return [0] * prompt_len + [1] * response_len


def run_response_loss_mask__no_eos(prompt_len, response_len, train_on_prompt=False):
    """forgets to train the EOS: the last target gets 0."""
    mask = ref.run_response_loss_mask(prompt_len, response_len, train_on_prompt)
    return mask[:-1] + [0] if not train_on_prompt else mask


def run_response_loss_mask__ignores_ablation(prompt_len, response_len, train_on_prompt=False):
    """ignores train_on_prompt: the prompt stays masked in the ablation too."""
    return ref.run_response_loss_mask(prompt_len, response_len, False)


def run_sft_loss__mean_of_row_means(logits, targets):
    """averages each row's mean loss (a mean of per-sequence means) instead of one mean over tokens."""
    rows = [ref.run_sft_loss(logits[b:b + 1], targets[b:b + 1]) for b in range(logits.shape[0])
            if bool((targets[b] != -100).any())]
    return torch.stack(rows).mean() if rows else logits.sum() * 0.0


def run_sft_loss__nan_when_empty(logits, targets):
    """divides by the number of kept targets even when it is 0 (NaN instead of 0)."""
    if not bool((targets != -100).any()):
        return logits.sum() * float("nan")
    return ref.run_sft_loss(logits, targets)


def run_sft_loss__no_max_shift(logits, targets):
    """takes log sum exp z without subtracting the row maximum: inf - inf for large logits."""
    keep = targets != -100
    if not bool(keep.any()):
        return logits.sum() * 0.0
    z = logits[keep]
    lse = torch.log(torch.exp(z).sum(dim=-1))
    return (lse - z.gather(1, targets[keep].long()[:, None]).squeeze(1)).mean()


def run_sft_loss__divides_by_all_positions(logits, targets):
    """sums over the kept targets but divides by every position B T (prompt and padding included)."""
    n = int((targets != -100).sum())
    return ref.run_sft_loss(logits, targets) * n / targets.numel()


def run_format_instruction__plain_keeps_now_do_the_task(example, style="full"):
    """strips the definition and the demonstrations but keeps the full prompt's whole last line."""
    if style == "plain":
        return f"Now do the task. Input: {example['input']}", example["output"]
    return ref.run_format_instruction(example, style)


def run_format_instruction__name_is_the_definition(example, style="full"):
    """writes the definition where the task's name belongs (the name run then still reads instructions)."""
    if style == "name":
        return f"Task: {example['definition']}\nInput: {example['input']}", example["output"]
    return ref.run_format_instruction(example, style)


def run_format_instruction__plain_keeps_positive_example(example, style="full"):
    """drops the definition only, so the plain prompt still shows the positive demonstration."""
    if style == "plain":
        pos = example["positive"]
        return (f"Positive example. Input: {pos['input']} Output: {pos['output']} Reason: {pos['reason']}\n"
                f"Input: {example['input']}", example["output"])
    return ref.run_format_instruction(example, style)


def run_encode_chat__no_eos_in_mask(turns, max_len=None, last_turn_only=False):
    """does not train the end-of-turn EOS: the model never learns to stop its turn."""
    ids, mask = ref.run_encode_chat(turns, max_len, last_turn_only)
    return ids, [0 if i == 0 else m for i, m in zip(ids, mask)]


def run_encode_chat__ignores_last_turn_only(turns, max_len=None, last_turn_only=False):
    """ignores last_turn_only: every turn's reply is trained in the ablation too."""
    return ref.run_encode_chat(turns, max_len, False)


def run_encode_chat__cuts_tokens_not_turns(turns, max_len=None, last_turn_only=False):
    """truncates to the newest max_len ids, cutting the oldest kept turn in the middle."""
    ids, mask = ref.run_encode_chat(turns, None, last_turn_only)
    if max_len is not None and len(ids) > max_len:
        if len(ref.run_encode_chat(turns[-1:])[0]) > max_len:
            raise ValueError(f"the last turn alone is longer than max_len={max_len}")
        ids, mask = ids[-max_len:], mask[-max_len:]
    return ids, mask
