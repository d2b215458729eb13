"""Lesson 07 exercise: the two functions prefix tuning is made of, attention that also sees a
prefix, and the reparameterisation that produces the prefix.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 07`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional); do not call minift.
"""
import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_prefix_attention(q, k, v, prefix_k, prefix_v):
    """Causal self-attention in which every query also sees P prefix keys and values
    (Li & Liang, 2021), for one block:

        K' = [prefix_k ; k]      V' = [prefix_v ; v]          along the time axis: (B, H, P + T, D)
        scores[t, j] = q_t . K'_j / sqrt(D)                   (B, H, T, P + T)
        query t may see: every prefix column j < P, and the real keys 0..t (column P + s, s <= t)
        out_t = sum_j softmax_j(scores[t, j] over what it may see) V'_j     (B, H, T, D)

    q, k, v: (B, H, T, D) float tensors; prefix_k, prefix_v: (B, H, P, D), where P may be 0 (then
    this is plain causal attention). Returns (B, H, T, D).

    Hint: build a boolean (T, P + T) mask of what each query may see and give it to
    F.scaled_dot_product_attention(q, K', V', attn_mask=mask), or mask the scores with -inf.
    """
    raise NotImplementedError("run_prefix_attention: not written yet; its docstring and "
                              "lessons/07_prefix_tuning/README.md, \"The maths\", say what it computes")


def run_prefix_mlp(embedding, W1, b1, W2, b2, n_layer, n_head):
    """The paper's reparameterisation of the prefix, and how its output is cut into the keys and
    values of every block:

        rows = tanh(embedding W1^T + b1) W2^T + b2            (P, L 2 C): one row per virtual token
        row i = [ block 0: keys (C) | values (C) | block 1: keys | values | ... ],  C = H D,
                each C-long piece split into H heads of D numbers
        out[l, j, h, i, :] = rows[i, ((l 2 + j) H + h) D : ((l 2 + j) H + h) D + D]   j = 0 keys, 1 values

    embedding: (P, k) (P'_theta), W1: (m, k), b1: (m,), W2: (L 2 C, m), b2: (L 2 C,), all in
    nn.Linear layout. n_layer L and n_head H are ints; C = W2.shape[0] // (2 L), D = C // H.
    Returns out: (L, 2, H, P, D), the layout GPT.forward's prefix_kv reads (out[l, 0][None] is
    block l's keys, (1, H, P, D)).

    Hint: one view and one permute of `rows`.
    """
    raise NotImplementedError("run_prefix_mlp: not written yet; its docstring and "
                              "lessons/07_prefix_tuning/README.md, \"The maths\", say what it computes")
