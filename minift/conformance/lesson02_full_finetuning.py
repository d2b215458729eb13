"""Lesson 02 (full fine-tuning: task heads): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_last_token_pool(hidden, attention_mask)     hidden[b, max{t : mask[b, t] = 1}]      (B, C)
    run_first_subtoken_labels(word_lengths, tags)   each word's tag on its first token, -100 elsewhere
    run_entity_f1(pred_tags, gold_tags)             span-level micro F1 over BIO tag sequences
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.heads import encode_words, last_real_index
from minift.tasks import entity_f1

from .harness import assert_close, output, property_check, scalar, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, MAX_T, arrays, f32, shared


# ---- the reference functions --------------------------------------------------------------------

def run_last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The pooling of `minift.heads.SequenceClassifier`: each row's hidden state at its last real
    token, found with `minift.heads.last_real_index` (left, right or no padding alike).

    hidden: (B, T, C) float; attention_mask: (B, T) of 0/1, at least one 1 per row. Returns (B, C)."""
    hidden, attention_mask = tensor_arg("hidden", hidden), tensor_arg("attention_mask", attention_mask)
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"run_last_token_pool: expected hidden (B, T, C) and attention_mask (B, T), got "
                         f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    B, T, _ = hidden.shape
    last = last_real_index(attention_mask, B, T, hidden.device)                 # (B,)
    return hidden[torch.arange(B, device=hidden.device), last]                   # (B, C)


class _LengthTokenizer:
    """A stand-in tokenizer for `encode_words`: a word of n letters is n tokens. (encode_words puts
    a space before every word but the first; the space is not a token here.)"""

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.strip())))


def run_first_subtoken_labels(word_lengths: list, tags: list) -> list[int]:
    """Token labels of a pre-split sentence, as `minift.heads.encode_words` builds them for NER:
    word w is word_lengths[w] tokens; its first token gets tags[w], its other tokens -100.

    word_lengths: list of ints >= 1; tags: list of ints, as long. Returns a list of
    sum(word_lengths) ints."""
    word_lengths, tags = list(word_lengths), list(tags)
    if len(word_lengths) != len(tags):
        raise ValueError(f"run_first_subtoken_labels: {len(word_lengths)} word lengths but {len(tags)} tags")
    bad = [n for n in word_lengths if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad:
        raise ValueError(f"run_first_subtoken_labels: word lengths must be ints >= 1, got {bad[0]!r}")
    _, labels, _ = encode_words(_LengthTokenizer(), ["x" * n for n in word_lengths], [int(t) for t in tags])
    return labels


def run_entity_f1(pred_tags: list, gold_tags: list) -> float:
    """Span-level micro F1 of `minift.tasks.entity_f1` over BIO sequences (a list of tag lists):
    a predicted span counts when its type, start and end all match a gold span;
    F1 = 2 P R / (P + R), P = tp / #pred spans, R = tp / #gold spans, 0 when undefined."""
    return float(entity_f1(pred_tags, gold_tags)["f1"])


# ---- the checks ----------------------------------------------------------------------------------

def _pool_masks(B: int, T: int):
    """(B, T) int64 masks of 0/1 with at least one 1 per row: any padding side, holes allowed."""
    def one_real(m):
        m = m.copy()
        for b in range(m.shape[0]):
            if not m[b].any():
                m[b, -1] = 1
        return m
    return hnp.arrays(np.int64, (B, T), elements=st.integers(0, 1)).map(one_real)


_POOL_SHAPE = shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_D)), "ltp1")


@property_check("run_last_token_pool", lesson=2, examples=50,
                hidden=_POOL_SHAPE.flatmap(lambda s: arrays(s, f32(-10, 10))),
                mask=_POOL_SHAPE.flatmap(lambda s: _pool_masks(s[0], s[1])))
def last_token_pool_matches_loop(pool, hidden, mask):
    """last_token_pool(hidden, mask)[b] equals hidden[b, t] at the largest t with mask[b, t] = 1 (the
    naive loop), for any 0/1 mask with a 1 in each row: left, right or no padding, holes too."""
    B, T, C = hidden.shape
    expected = np.zeros((B, C))
    for b in range(B):
        last = max(t for t in range(T) if mask[b, t] == 1)
        expected[b] = hidden[b, last]
    y = output(pool(tensor(hidden), torch.tensor(mask)), (B, C), "run_last_token_pool(hidden, attention_mask)")
    assert_close(y, expected, f"run_last_token_pool with attention_mask={mask.tolist()} vs hidden at "
                               f"each row's last 1", atol=0, rtol=0)


_PAD_DIMS = shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_D)), "ltp2")


@property_check("run_last_token_pool", lesson=2, examples=40, dims=_PAD_DIMS,
                real=_PAD_DIMS.flatmap(lambda s: arrays(s, f32(-10, 10))),
                junk=_PAD_DIMS.flatmap(lambda s: arrays(s, f32(-10, 10))),
                lengths=_PAD_DIMS.flatmap(lambda s: st.lists(st.integers(1, s[1]), min_size=s[0], max_size=s[0])))
def last_token_pool_padding_side(pool, dims, real, junk, lengths):
    """padding side does not matter: the same sequences padded on the right and on the left (different
    junk in the pads) pool to the same vectors, each row's last real token."""
    B, T, C = dims
    right, left = junk.copy(), junk[:, ::-1].copy()
    m_right, m_left = np.zeros((B, T), np.int64), np.zeros((B, T), np.int64)
    expected = np.zeros((B, C))
    for b, n in enumerate(lengths):                       # row b: real tokens real[b, :n]
        right[b, :n], m_right[b, :n] = real[b, :n], 1
        left[b, T - n:], m_left[b, T - n:] = real[b, :n], 1
        expected[b] = real[b, n - 1]
    y_r = output(pool(tensor(right), torch.tensor(m_right)), (B, C), "run_last_token_pool(right-padded)")
    y_l = output(pool(tensor(left), torch.tensor(m_left)), (B, C), "run_last_token_pool(left-padded)")
    assert_close(y_r, expected, f"right-padded batch, lengths {lengths}: pooled vs last real token",
                 atol=0, rtol=0)
    assert_close(y_l, expected, f"left-padded batch, lengths {lengths}: pooled vs last real token",
                 atol=0, rtol=0)


def _int_list(y, what: str) -> list[int]:
    """The impl's output as a list of Python ints (a list, tuple or 1-D integer tensor)."""
    if isinstance(y, torch.Tensor):
        if y.dim() != 1 or y.is_floating_point():
            raise AssertionError(f"{what} must return a list of ints, got a tensor {tuple(y.shape)} {y.dtype}")
        y = y.tolist()
    if not isinstance(y, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in y):
        raise AssertionError(f"{what} must return a list of ints, got {y!r:.120}")
    return [int(v) for v in y]


_N_WORDS = shared(st.integers(1, MAX_T), "fsl")


@property_check("run_first_subtoken_labels", lesson=2, examples=60,
                word_lengths=_N_WORDS.flatmap(lambda n: st.lists(st.integers(1, 4), min_size=n, max_size=n)),
                tags=_N_WORDS.flatmap(lambda n: st.lists(st.integers(0, 8), min_size=n, max_size=n)))
def first_subtoken_labels_matches_loop(labels_of, word_lengths, tags):
    """first_subtoken_labels(word_lengths, tags) has one label per token (sum of word_lengths): word
    w's tag on its first token, -100 on its other tokens (the naive loop)."""
    expected = []
    for n, tag in zip(word_lengths, tags):
        expected.append(tag)
        for _ in range(n - 1):
            expected.append(-100)
    what = f"run_first_subtoken_labels({word_lengths}, {tags})"
    got = _int_list(labels_of(list(word_lengths), list(tags)), what)
    if got != expected:
        raise AssertionError(f"{what} = {got}, expected {expected}")


_ENTITY_TYPES = ("PER", "LOC", "ANIMAL", "FOOD")


def _bio(spans, n: int) -> list[str]:
    """Strict BIO tags of n tokens from non-overlapping spans (type, start, end), end exclusive."""
    tags = ["O"] * n
    for typ, a, b in spans:
        tags[a] = "B-" + typ
        for i in range(a + 1, b):
            tags[i] = "I-" + typ
    return tags


@st.composite
def _tagged_sentences(draw):
    """(pred_tags, gold_tags, pred_spans, gold_spans): 1-3 sentences of 1-10 tokens. Gold spans are
    drawn first; predicted spans copy, drop, retype or move the end of each, plus spurious one-token
    spans. Both are written in strict BIO, so the spans are known without reading the tags back."""
    preds, golds, pred_spans, gold_spans = [], [], set(), set()
    for s in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 10))
        gold, t = [], 0
        while t < n:
            if draw(st.booleans()):
                length = draw(st.integers(1, min(3, n - t)))
                gold.append((draw(st.sampled_from(_ENTITY_TYPES)), t, t + length))
                t += length
            else:
                t += 1
        pred = []
        for k, (typ, a, b) in enumerate(gold):
            nxt = gold[k + 1][1] if k + 1 < len(gold) else n
            op = draw(st.sampled_from(("keep", "keep", "drop", "type", "end")))
            if op == "keep" or (op == "end" and nxt == a + 1 == b):
                pred.append((typ, a, b))
            elif op == "type":
                pred.append((draw(st.sampled_from([x for x in _ENTITY_TYPES if x != typ])), a, b))
            elif op == "end":
                pred.append((typ, a, draw(st.sampled_from([e for e in range(a + 1, nxt + 1) if e != b]))))
        taken = {i for _, a, b in pred for i in range(a, b)}
        for i in range(n):
            if i not in taken and draw(st.integers(0, 4)) == 0:
                pred.append((draw(st.sampled_from(_ENTITY_TYPES)), i, i + 1))
        golds.append(_bio(gold, n))
        preds.append(_bio(pred, n))
        gold_spans |= {(s, *g) for g in gold}
        pred_spans |= {(s, *p) for p in pred}
    return preds, golds, pred_spans, gold_spans


@property_check("run_entity_f1", lesson=2, examples=80, data=_tagged_sentences())
def entity_f1_matches_span_sets(f1_of, data):
    """entity_f1(pred_tags, gold_tags) is the span-level micro F1 = 2 P R / (P + R) with P = tp
    / #predicted spans, R = tp / #gold spans, a span counting only when type, start and end all match,
    summed over sentences; a ratio with denominator 0 is 0 (strict BIO inputs)."""
    preds, golds, pred_spans, gold_spans = data
    tp = len(pred_spans & gold_spans)
    p = tp / len(pred_spans) if pred_spans else 0.0
    r = tp / len(gold_spans) if gold_spans else 0.0
    expected = 2 * p * r / (p + r) if p + r else 0.0
    what = f"run_entity_f1(pred_tags={preds}, gold_tags={golds})"
    got = scalar(f1_of([list(x) for x in preds], [list(x) for x in golds]), what)
    assert_close(got, expected, f"{what} vs F1 of {len(pred_spans)} predicted and {len(gold_spans)} gold "
                                 f"spans with {tp} exact matches", atol=1e-12, rtol=1e-9)
