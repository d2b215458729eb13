"""Lesson 00 exercise: write the six pieces of a GPT block yourself.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 00`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch tensor operations (torch.exp, torch.tanh, @, .mean, .sum, .max, ...).
Do not call torch.softmax, F.gelu, F.layer_norm, F.cross_entropy or
F.scaled_dot_product_attention: writing them is the point. Inputs are float32; return tensors.
"""
import math  # noqa: F401  (you will want math.sqrt and math.pi)

import torch  # noqa: F401


def run_softmax(x, dim=-1):
    """softmax(x)_i = exp(x_i) / sum_j exp(x_j), along the dimension `dim`.

    x: any shape, float32. Returns the same shape; each slice along `dim` sums to 1.
    Must be numerically stable: exp(x) overflows float32 for x > 88.7. The maths is unchanged
    when the same constant is subtracted from every x_j of a slice; the largest x_j is a good one.
    """
    raise NotImplementedError("run_softmax: not written yet; lessons/00_transformer/README.md, "
                              "\"The maths\", equation (0.8), says what it computes")


def run_gelu(x):
    """GELU, tanh approximation (as GPT-2), elementwise:

        gelu(x) = 0.5 x (1 + tanh( sqrt(2/pi) (x + 0.044715 x^3) ))

    x: any shape. Returns the same shape. (Not the exact form x Phi(x) with the normal CDF Phi.)
    """
    raise NotImplementedError("run_gelu: not written yet; lessons/00_transformer/README.md, "
                              "\"The maths\", equation (0.10), says what it computes")


def run_layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last dimension (C channels), for every row x = (x_1 .. x_C):

        mean = (1/C) sum_c x_c           var = (1/C) sum_c (x_c - mean)^2     (biased: divide by C)
        y_c  = (x_c - mean) / sqrt(var + eps) gamma_c + beta_c          gamma = weight, beta = bias

    x: (..., C); weight, bias: (C,). Returns (..., C).
    """
    raise NotImplementedError("run_layer_norm: not written yet; lessons/00_transformer/README.md, "
                              "\"The maths\", equation (0.4), says what it computes")


def run_cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy over the rows n whose target y_n is not `ignore_index`:

        loss = (1/N) sum over kept rows n of ( log sum_v exp z_{n,v}  -  z_{n, y_n} ),   z = logits

    N is the number of kept rows. logits: (N_rows, V) float; targets: (N_rows,) int64, each in
    [0, V) or equal to ignore_index. Returns a scalar tensor. Must be stable for large logits:
    with m_n = max_v z_{n,v}, work with the shifted row u_{n,v} = z_{n,v} - m_n all the way,
    loss_n = log sum_v exp u_{n,v} - u_{n, y_n}. (Adding m_n back first, (m_n + log sum exp u)
    minus z_{n, y_n}, is the same maths but loses digits in float32 when the logits are large:
    near 4096 float32 numbers are 2^-11 apart.)
    """
    raise NotImplementedError("run_cross_entropy: not written yet; lessons/00_transformer/README.md, "
                              "\"The maths\", equation (0.12), says what it computes")


def run_causal_attention(q, k, v):
    """Scaled dot-product causal self-attention, for every batch b and head h:

        s_{t,u} = (q_t . k_u) / sqrt(D)          for u <= t;   s_{t,u} = -inf for u > t (no peeking ahead)
        a_{t,u} = softmax over u of s_{t,u}       (row t sums to 1 over u = 0 .. t)
        out_t   = sum_u a_{t,u} v_u               a weighted average of the values at u <= t

    q, k, v: (B, H, T, D). Returns (B, H, T, D).
    """
    raise NotImplementedError("run_causal_attention: not written yet; lessons/00_transformer/README.md, "
                              "\"The maths\", equation (0.6), says what it computes")


def run_gpt_block(x, params, n_head, eps=1e-5):
    """One pre-LayerNorm GPT-2 block (eval mode, no dropout), as equations (0.2) to (0.10):

        h      = LN_1(x)                                    ln_1.weight, ln_1.bias
        q, k, v = the three C-wide parts of  h W_attn^T + b_attn      attn.c_attn.weight (3C, C), .bias (3C,)
        each of q, k, v split into n_head heads of D = C / n_head channels: (B, n_head, T, D)
        a      = x + (attention of the heads, joined back to (B, T, C)) W_proj^T + b_proj     attn.c_proj.*
        out    = a + GELU(LN_2(a) W_fc^T + b_fc) W_mp^T + b_mp     ln_2.*, mlp.c_fc.* (4C, C), mlp.c_proj.* (C, 4C)

    x: (B, T, C). params: dict name -> tensor with exactly the keys of
    `minift.model.Block(cfg).state_dict()`; weights in nn.Linear's layout (out, in), so a layer
    maps h to h W^T + b. Head j owns channels j D .. j D + D - 1 of q (and of k and v).
    n_head divides C. Returns (B, T, C). Reuse your functions above.
    """
    raise NotImplementedError("run_gpt_block: not written yet; lessons/00_transformer/README.md, "
                              "\"The maths\", equation (0.2), says what it computes")
