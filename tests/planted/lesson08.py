"""Planted bugs for lesson 08 (prompt tuning): buggy copies of the reference `run_*` functions, one
plausible learner mistake each. tests/test_planted.py swaps each into the reference and asserts that
the checks of its run_* function catch it. Do not copy from this file.
"""
import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


def run_soft_prompt__appends(embeds, prompt, attention_mask):
    """appends P after the tokens instead of prepending it."""
    B, n = embeds.shape[0], prompt.shape[0]
    x = torch.cat([embeds, prompt[None].expand(B, -1, -1)], 1)
    return x, torch.cat([attention_mask, attention_mask.new_ones(B, n)], 1)


def run_soft_prompt__prompt_masked(embeds, prompt, attention_mask):
    """gives the n virtual tokens mask 0, as if they were padding."""
    x, mask = ref.run_soft_prompt(embeds, prompt, attention_mask)
    mask = mask.clone()
    mask[:, :prompt.shape[0]] = 0
    return x, mask


def run_prompt_init_from_text__repeats_last(token_embeds, n):
    """pads a short text with copies of its last token instead of repeating the whole text."""
    if token_embeds.shape[0] == 0 or n < 1:
        raise ValueError("empty text or n < 1")
    m = token_embeds.shape[0]
    return token_embeds[torch.tensor([min(i, m - 1) for i in range(n)])].clone()


def run_prompt_init_from_text__no_error(token_embeds, n):
    """returns an empty or zero prompt instead of raising ValueError on an empty text or n < 1."""
    if token_embeds.shape[0] == 0 or n < 1:
        return torch.zeros(max(n, 0), token_embeds.shape[1])
    return ref.run_prompt_init_from_text(token_embeds, n)


def run_prompt_positions__not_shifted(attention_mask, n):
    """counts the real tokens from 0, not from n: the prompt and the tokens overlap."""
    pos = ref.run_prompt_positions(attention_mask, n).clone()
    pos[:, n:] -= n
    return pos


def run_prompt_positions__counts_padding(attention_mask, n):
    """gives token t position n + t, counting the padding before it."""
    B, T = attention_mask.shape
    return torch.arange(n + T).expand(B, n + T).clone()


def run_prompt_loss__shifted(logits, targets, n):
    """pairs targets[b, t] with the logits at n + t - 1 (a shift by one, as in next-token loss)."""
    t = torch.cat([targets.new_full((targets.shape[0], n - 1 if n else 0), -100), targets.long(),
                   targets.new_full((targets.shape[0], 1 if n else 0), -100)], 1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-100)


def run_prompt_loss__ignored_in_mean(logits, targets, n):
    """averages over every target, the ignored (-100) ones counted as zero loss."""
    t = torch.cat([targets.new_full((targets.shape[0], n), -100), targets.long()], 1)
    per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-100, reduction="none")
    return per.sum() / targets.numel()
