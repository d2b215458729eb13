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
    """softmax(x)_i = exp(x_i) / sum_j exp(x_j), along `dim`.

    x: any shape, float32. Returns the same shape; each slice along `dim` sums to 1.
    Must be numerically stable: exp(x) overflows float32 for x > 88.7. Use
    softmax(x) = softmax(x - max(x)) (the maths is unchanged; the largest exponent becomes 0).
    """
    raise NotImplementedError("run_softmax: not written yet; its docstring and "
                              "lessons/00_transformer/README.md, \"The maths\", say what it computes")


def run_gelu(x):
    """GELU, tanh approximation (as GPT-2):

        gelu(x) = 0.5 x (1 + tanh( sqrt(2/pi) (x + 0.044715 x^3) ))

    x: any shape. Returns the same shape. (Not the exact form x * Phi(x) with erf.)
    """
    raise NotImplementedError("run_gelu: not written yet; its docstring and "
                              "lessons/00_transformer/README.md, \"The maths\", say what it computes")


def run_layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last dimension:

        mean = (1/C) sum_i x_i                var = (1/C) sum_i (x_i - mean)^2   (biased: / C)
        y    = (x - mean) / sqrt(var + eps) * weight + bias

    x: (..., C); weight, bias: (C,). Returns (..., C).
    """
    raise NotImplementedError("run_layer_norm: not written yet; its docstring and "
                              "lessons/00_transformer/README.md, \"The maths\", say what it computes")


def run_cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy over the rows whose target is not `ignore_index`:

        loss = mean over kept rows n of  -log softmax(logits[n])[targets[n]]
             = mean over kept rows of    logsumexp(logits[n]) - logits[n, targets[n]]

    logits: (N, V) float; targets: (N,) int64, each in [0, V) or equal to ignore_index.
    Returns a scalar tensor. Must be stable for large logits: work with the shifted row
    z = logits[n] - max(logits[n]) all the way, loss_n = log(sum_j exp(z_j)) - z[target].
    (Adding the max back first, (max + log sum exp z) - logits[target], is the same maths but
    loses digits in float32 when the logits are large: near 4096 float32 numbers are 2^-11 apart.)
    """
    raise NotImplementedError("run_cross_entropy: not written yet; its docstring and "
                              "lessons/00_transformer/README.md, \"The maths\", say what it computes")


def run_causal_attention(q, k, v):
    """Scaled dot-product causal self-attention:

        scores[t, s] = q_t . k_s / sqrt(D)              (B, H, T, T)
        scores[t, s] = -inf  where s > t                 (the causal mask: no peeking ahead)
        out          = softmax(scores, dim=-1) @ v       (B, H, T, D)

    q, k, v: (B, H, T, D). Returns (B, H, T, D).
    """
    raise NotImplementedError("run_causal_attention: not written yet; its docstring and "
                              "lessons/00_transformer/README.md, \"The maths\", say what it computes")


def run_gpt_block(x, params, n_head, eps=1e-5):
    """One pre-LayerNorm GPT-2 block (eval mode, no dropout):

        h   = LN_1(x)                                          ln_1.weight, ln_1.bias
        q, k, v = split(h W_attn^T + b_attn, C)                attn.c_attn.weight (3C, C), .bias (3C,)
        q, k, v -> (B, n_head, T, C / n_head)                  heads: view (B, T, H, D), transpose(1, 2)
        a   = x + (causal_attention(q, k, v) -> (B, T, C)) W_proj^T + b_proj   attn.c_proj.*
        out = a + GELU(LN_2(a) W_fc^T + b_fc) W_mp^T + b_mp     ln_2.*, mlp.c_fc.* (4C, C), mlp.c_proj.* (C, 4C)

    x: (B, T, C). params: dict name -> tensor with exactly the keys of
    `minift.model.Block(cfg).state_dict()`; weights in nn.Linear layout (out, in), so a layer is
    `h @ W.T + b`. n_head divides C. Returns (B, T, C). Reuse your functions above.
    """
    raise NotImplementedError("run_gpt_block: not written yet; its docstring and "
                              "lessons/00_transformer/README.md, \"The maths\", say what it computes")
