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

        last_b   = max { t : m_{b,t} = 1 }          m = attention_mask
        pooled_b = H_{b, last_b}                     H = hidden: the C-vector at row b, position last_b

    In a causal model only the last token has attended to the whole input, so it summarises
    the sequence. Find it from the mask, not from the row length: with left padding
    (m_b = 0 0 1 1) the last real token is at T - 1, not at (number of ones) - 1. Any 0/1 mask
    with at least one 1 per row must work (holes too).

    hidden: (B, T, C) float; attention_mask: (B, T) int64 of 0/1. Returns (B, C).
    """
    raise NotImplementedError("run_last_token_pool: not written yet; lessons/02_full_finetuning/README.md, "
                              "\"The maths\", equation (2.1), says what it computes")


def run_first_subtoken_labels(word_lengths, tags):
    """Token labels for NER when words split into several sub-word tokens.

        word w (counting from 0) is n_w = word_lengths_w tokens, starting at s_w = n_0 + ... + n_{w-1}
        label at s_w           = tags_w             the word's tag on its FIRST token
        label at s_w + j       = -100  (0 < j < n_w)   the word's other tokens: ignored by the loss

    word_lengths: list of ints >= 1 (how many tokens each word became); tags: list of ints,
    one per word. Returns a list of n_0 + n_1 + ... ints.
    Example: word_lengths (1, 3, 2) and tags (0, 5, 6) give 0, 5, -100, -100, 6, -100.
    """
    raise NotImplementedError("run_first_subtoken_labels: not written yet; lessons/02_full_finetuning/README.md, "
                              "\"The maths\", equation (2.6), says what it computes")


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
    ...), sentence i of pred_tags as long as sentence i of gold_tags. Returns a float.
    """
    raise NotImplementedError("run_entity_f1: not written yet; lessons/02_full_finetuning/README.md, "
                              "\"The maths\", equation (2.7), says what it computes")
