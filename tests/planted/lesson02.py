"""Planted bugs for lesson 02: copies of the reference run_* functions, one plausible mistake each.

tests/test_planted.py swaps each `run_<fn>__<bug>` in for the reference `run_<fn>` and expects at
least one of run_<fn>'s checks to fail.
"""
import torch

from minift.conformance import reference as ref


def run_last_token_pool__count_minus_one(hidden, attention_mask):
    """takes position (number of real tokens) - 1: right only for right padding without holes."""
    last = attention_mask.long().sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0]), last]


def run_last_token_pool__first_real_token(hidden, attention_mask):
    """takes the FIRST real token (argmax of the mask finds the first 1)."""
    first = attention_mask.long().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0]), first]


def run_last_token_pool__last_slot(hidden, attention_mask):
    """takes the last slot T - 1 whatever the mask says (wrong with right padding)."""
    return hidden[:, -1]


def run_first_subtoken_labels__last_subtoken(word_lengths, tags):
    """puts the word's tag on its LAST token and -100 on the ones before."""
    return [t for n, tag in zip(word_lengths, tags) for t in [-100] * (n - 1) + [int(tag)]]


def run_first_subtoken_labels__tag_every_subtoken(word_lengths, tags):
    """repeats the word's tag on every one of its tokens."""
    return [int(tag) for n, tag in zip(word_lengths, tags) for _ in range(n)]


def _spans(tags):
    """(type, start, end) spans of one BIO sentence."""
    spans, cur = [], None
    for i, t in enumerate(list(tags) + ["O"]):
        if cur and not (t.startswith("I-") and t[2:] == cur[0]):
            spans.append((cur[0], cur[1], i))
            cur = None
        if t.startswith("B-") or (t.startswith("I-") and cur is None):
            cur = (t[2:], i)
    return spans


def _f1(pred_tags, gold_tags, key=lambda s, span: (s, *span)):
    pred = {key(s, sp) for s, tags in enumerate(pred_tags) for sp in _spans(tags)}
    gold = {key(s, sp) for s, tags in enumerate(gold_tags) for sp in _spans(tags)}
    tp = len(pred & gold)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gold) if gold else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def run_entity_f1__ignores_type(pred_tags, gold_tags):
    """matches spans on start and end only: a span of the wrong type counts as found."""
    return _f1(pred_tags, gold_tags, key=lambda s, span: (s, span[1], span[2]))


def run_entity_f1__start_only(pred_tags, gold_tags):
    """matches spans on type and start only: a wrong end still counts."""
    return _f1(pred_tags, gold_tags, key=lambda s, span: (s, span[0], span[1]))


def run_entity_f1__mean_over_sentences(pred_tags, gold_tags):
    """averages per-sentence F1 scores (macro) instead of pooling the counts (micro)."""
    return sum(ref.run_entity_f1([p], [g]) for p, g in zip(pred_tags, gold_tags)) / len(gold_tags)
