"""Preference data from the policy itself: sample k answers per prompt, rank them, keep pairs.

In RLHF as published (InstructGPT, Ouyang et al., 2022, section 3.5; Llama 2's rejection-sampling
rounds) the comparisons are not a fixed dataset: the model being tuned answers each prompt K times,
people rank the K answers, and every ranked pair is one comparison. The pairs then lie where the
policy's own probability mass is, which a fixed set of pairs written by someone else does not
guarantee. Here a scorer stands in for the people (a rule that knows TinyWorld's truth, or a trained
reward model):

    y_1 .. y_k ~ π(· | x)                               k samples per prompt x
    s_j = score(x, y_j)                                 the rater's number for each
    best_worst:  (x, y_argmax s, y_argmin s)            one pair per prompt (the widest gap)
    all:         (x, y_j, y_l) for every s_j - s_l > m  up to k(k-1)/2 pairs per prompt

A prompt whose samples all score within the margin m of each other carries no preference and gives
no pair; two identical answers never form a pair (whatever their scores), since a pair of equal
texts teaches nothing. `rank_pairs` is the pure ranking step (a learner's exercise, checked in
minift/conformance); `on_policy_pairs` samples, scores and ranks. The pairs have the fixed
dataset's format ({"prompt", "chosen", "rejected"}), so DPO (dpo.py) and the reward model
(reward.py) take either.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..validate import check_choice, check_int
from .ppo import decode_responses, encode_prompts, sample

PAIRINGS = ("best_worst", "all")


def rank_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
               pairs: str = "best_worst", margin: float = 0.0) -> list[dict]:
    """Preference pairs from k scored answers per prompt (see the module doc).

    prompts: n strings; responses, scores: n lists of k answers and their k finite scores.
    best_worst: per prompt, the first highest-scoring answer over the last lowest-scoring one (so a
    tie inside the top or the bottom is broken by sample order), kept if the gap exceeds margin.
    all: every two answers j, l with s_j - s_l > margin, j chosen (each unordered pair at most once).
    Pairs whose two answers are the same text are dropped. Returns [{"prompt", "chosen", "rejected",
    "margin"}] in prompt order (for "all": by j, then l)."""
    check_choice("rank_pairs", "pairs", pairs, PAIRINGS)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0 or math.isinf(margin):
        raise ValueError(f"rank_pairs: margin={margin!r} must be a finite number >= 0")
    if not (len(prompts) == len(responses) == len(scores)):
        raise ValueError(f"rank_pairs: {len(prompts)} prompts, {len(responses)} response lists and "
                         f"{len(scores)} score lists: one of each per prompt")
    out = []
    for i, (x, ys, ss) in enumerate(zip(prompts, responses, scores)):
        if len(ys) != len(ss) or len(ys) < 2:
            raise ValueError(f"rank_pairs: prompt {i} has {len(ys)} responses and {len(ss)} scores; "
                             f"it needs the same number of each, at least 2")
        ss = [float(s) for s in ss]
        if not all(math.isfinite(s) for s in ss):
            raise ValueError(f"rank_pairs: prompt {i} has a score that is NaN or inf: {ss}")
        if pairs == "best_worst":
            j = max(range(len(ss)), key=lambda t: (ss[t], -t))              # first of the highest
            l = min(range(len(ss)), key=lambda t: (ss[t], -t))              # last of the lowest
            cand = [(j, l)]
        else:
            cand = [(j, l) for j in range(len(ss)) for l in range(len(ss)) if j != l]
        for j, l in cand:
            if ss[j] - ss[l] > margin and ys[j] != ys[l]:
                out.append({"prompt": x, "chosen": ys[j], "rejected": ys[l], "margin": ss[j] - ss[l]})
    return out


@torch.no_grad()
def sample_responses(policy, tok, prompts: Sequence[str], k: int, max_new_tokens: int = 24, seed: int = 0,
                     batch_size: int = 64) -> list[list[str]]:
    """k answers per prompt sampled from π (temperature 1, the KV cache), decoded without EOS:
    n lists of k strings. The draws come from one CPU generator seeded with `seed`, so the same
    arguments (batch_size too: it sets the order of the draws) give the same answers on every device."""
    check_int("sample_responses", "k", k, lo=1)
    check_int("sample_responses", "max_new_tokens", max_new_tokens, lo=1)
    gen = torch.Generator().manual_seed(seed)
    flat = [x for x in prompts for _ in range(k)]                          # each prompt k times, together
    texts = []
    policy.eval()
    for a in range(0, len(flat), batch_size):
        p = encode_prompts(tok, flat[a:a + batch_size], policy.config.block_size, max_new_tokens)
        tokens, mask, _ = sample(policy, p["ids"], p["attention_mask"], max_new_tokens, tok.eos_id, tok.pad_id, gen)
        texts += decode_responses(tok, {"tokens": tokens, "mask": mask})
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


def on_policy_pairs(policy, tok, prompts: Sequence[str], k: int, score: Callable[[str, str], float], *,
                    pairs: str = "best_worst", margin: float = 0.0, max_new_tokens: int = 24,
                    seed: int = 0) -> tuple[list[dict], dict]:
    """Sample k answers per prompt from `policy`, score each with score(prompt, answer) (the rater),
    and rank them into pairs (rank_pairs). Returns (pairs, stats): stats counts the prompts, the pairs,
    the prompts that gave none (every answer within the margin of the others, or all the same text),
    the distinct answers per prompt and the mean score of all samples."""
    responses = sample_responses(policy, tok, prompts, k, max_new_tokens, seed)
    scores = [[float(score(x, y)) for y in ys] for x, ys in zip(prompts, responses)]
    out = rank_pairs(prompts, responses, scores, pairs, margin)
    with_pair = len({p["prompt"] for p in out}) if len(set(prompts)) == len(prompts) else None
    stats = {"prompts": len(prompts), "pairs": len(out),
             "no_pair": None if with_pair is None else len(prompts) - with_pair,
             "distinct": sum(len(set(ys)) for ys in responses) / max(1, len(prompts)),
             "mean_score": sum(map(sum, scores)) / max(1, k * len(prompts))}
    return out, stats


__all__ = ["PAIRINGS", "on_policy_pairs", "rank_pairs", "sample_responses"]
