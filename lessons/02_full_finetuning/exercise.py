"""Lesson 02 exercise: the three small pieces that turn a language model into a classifier.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 02`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain Python and PyTorch tensor operations. Do not call minift itself (minift.heads,
minift.tasks): writing these is the point.
"""
import torch  # noqa: F401


def run_last_token_pool(hidden, attention_mask):
    """Sequence pooling for a causal model: each row's hidden state at its LAST REAL token.

        last[b]   = max { t : attention_mask[b, t] == 1 }
        pooled[b] = hidden[b, last[b]]

    In a causal model only the last token has attended to the whole input, so it summarises
    the sequence. Find it from the mask, not from the row length: with left padding
    (mask [0, 0, 1, 1]) the last real token is at T - 1, not at sum(mask) - 1. Any 0/1 mask with
    at least one 1 per row must work (holes too).

    hidden: (B, T, C) float; attention_mask: (B, T) int64 of 0/1. Returns (B, C).
    Hint: positions t * mask, then argmax over t; then index hidden[arange(B), last].
    """
    raise NotImplementedError("run_last_token_pool: not written yet; its docstring and "
                              "lessons/02_full_finetuning/README.md, \"The maths\", say what it computes")


def run_first_subtoken_labels(word_lengths, tags):
    """Token labels for NER when words split into several sub-word tokens.

        word w is tokens  s_w .. s_w + word_lengths[w] - 1,   s_w = sum(word_lengths[:w])
        labels[s_w]       = tags[w]                          the word's tag on its FIRST token
        labels[s_w + j]   = -100   for 0 < j < word_lengths[w]   ignored by the loss

    word_lengths: list of ints >= 1 (how many tokens each word became); tags: list of ints,
    one per word. Returns a list of sum(word_lengths) ints.
    Example: word_lengths [1, 3, 2], tags [0, 5, 6] -> [0, 5, -100, -100, 6, -100].
    """
    raise NotImplementedError("run_first_subtoken_labels: not written yet; its docstring and "
                              "lessons/02_full_finetuning/README.md, \"The maths\", say what it computes")


def run_entity_f1(pred_tags, gold_tags):
    """Span-level (entity) micro F1 over BIO-tagged sentences, as conlleval / seqeval compute it.

    An entity span is (type, start, end): it starts at a "B-X" tag and continues over the
    following "I-X" tags; "O", a "B-", or an "I-" of another type ends it. Collect the spans of
    every sentence (remember which sentence each came from), then

        tp = number of predicted spans equal to a gold span (same sentence, type, start AND end)
        P  = tp / #predicted spans        (0 if there are none)
        R  = tp / #gold spans             (0 if there are none)
        F1 = 2 P R / (P + R)              (0 if P + R = 0)

    A span with the right type but a wrong end is a miss (and a false positive).
    pred_tags, gold_tags: lists of sentences, each a list of tag strings ("O", "B-PER", "I-PER",
    ...), pred_tags[i] as long as gold_tags[i]. Returns a float.
    """
    raise NotImplementedError("run_entity_f1: not written yet; its docstring and "
                              "lessons/02_full_finetuning/README.md, \"The maths\", say what it computes")
