"""Lesson 16 exercise: the two functions a contrastive sentence encoder is made of, the pooling
that turns a GPT's hidden states into one vector per sentence, and the InfoNCE loss.

Fill in the two functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 16`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional); do not call minift.
"""
import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_info_nce(a, b, temperature=0.05, negatives=None, symmetric=False):
    """InfoNCE with in-batch negatives over cosine similarities (SimCSE's loss):

        ℓ_i = -log  exp(cos(a_i, b_i)/τ) / [Σ_j exp(cos(a_i, b_j)/τ) + Σ_k exp(cos(a_i, n_k)/τ)]
        L   = (1/N) Σ_i ℓ_i
        symmetric=True:  (L + L_{b -> a}) / 2, where L_{b -> a} lets each b_i pick its a_i among
                         the a_j only (the negatives are candidates for the anchors alone)

    a, b: (N, C) float tensors, row i of b the positive of row i of a (every other row of b is a
    negative for a_i); negatives: None or (M, C); temperature τ > 0. Returns a 0-dim tensor.
    Hint: normalise the rows, build the (N, N + M) matrix of similarities / τ, and it is a
    cross-entropy whose right answer for row i is column i. All-equal embeddings give log(N + M).
    """
    raise NotImplementedError("run_info_nce: not written yet; its docstring and "
                              "lessons/16_contrastive/README.md, \"The maths\", say what it computes")


def run_sentence_embedding(h, attention_mask, pooling="last"):
    """One vector per sequence from hidden states h (B, T, C) and attention_mask (B, T), 1 = real
    token, 0 = padding (on either side):

        pooling="mean":  e_b = Σ_t m_bt h_bt / Σ_t m_bt        the mean over real tokens
        pooling="last":  e_b = h_b,t*   with t* the largest t where m_bt = 1

    Returns (B, C). Whatever h holds at padded positions must not change the result.
    """
    raise NotImplementedError("run_sentence_embedding: not written yet; its docstring and "
                              "lessons/16_contrastive/README.md, \"The maths\", say what it computes")
