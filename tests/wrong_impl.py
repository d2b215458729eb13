"""A DELIBERATELY WRONG implementation of the run_* functions, for testing the conformance harness.

Do not copy from this file. Each bug is a classic one, and the harness must catch it with a
counterexample (tests/test_harness_catches.py checks that it does, and that it blames nothing
else):

- run_softmax: exp(x) / sum exp(x) WITHOUT the max shift: exact maths, but exp overflows to inf
  in float32 for x > 88.7 (and underflows to 0 / 0 for very negative rows) -> NaN.
- run_layer_norm: divides by the UNBIASED variance (torch.var's default, / (C - 1)) instead of
  the biased one (/ C) that LayerNorm uses; NaN for C = 1.
- run_causal_attention: forgets the causal mask, so every position attends to the future.
- run_gpt_block: written correctly, but composed from the wrong layer norm and attention above,
  as a student's block would be; so it inherits both bugs.
- run_gelu, run_cross_entropy: correct.
"""
import math

import torch


def run_softmax(x, dim=-1):
    e = torch.exp(x)                                   # BUG: no x - max(x) first
    return e / e.sum(dim=dim, keepdim=True)


def run_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def run_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True)                  # BUG: unbiased (C - 1); LayerNorm uses / C
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def run_cross_entropy(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    z = logits[keep]
    logp = z - z.max(dim=-1, keepdim=True).values
    logp = logp - torch.log(torch.exp(logp).sum(dim=-1, keepdim=True))
    return -logp.gather(1, targets[keep].long()[:, None]).mean()


def run_causal_attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])   # (B, H, T, T)
    # BUG: no causal mask; scores.masked_fill(future, -inf) is missing
    return torch.softmax(scores, dim=-1) @ v


def run_gpt_block(x, params, n_head, eps=1e-5):
    B, T, C = x.shape
    D = C // n_head
    p = params
    h = run_layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], eps)
    q, k, v = (h @ p["attn.c_attn.weight"].T + p["attn.c_attn.bias"]).split(C, dim=-1)
    q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in (q, k, v))
    y = run_causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
    x = x + y @ p["attn.c_proj.weight"].T + p["attn.c_proj.bias"]
    h = run_layer_norm(x, p["ln_2.weight"], p["ln_2.bias"], eps)
    m = run_gelu(h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"])
    return x + m @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]
