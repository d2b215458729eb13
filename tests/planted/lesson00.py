"""Planted bugs for lesson 00: copies of the reference run_* functions, one plausible mistake each.

tests/test_planted.py swaps each `run_<fn>__<bug>` in for the reference `run_<fn>` and expects at
least one of run_<fn>'s checks to fail. (tests/wrong_impl.py is the older whole-file version.)
"""
import math

import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


def run_softmax__no_max_shift(x, dim=-1):
    """exponentiates x without subtracting the row maximum: exp overflows to inf (NaN) past 88.7."""
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def run_softmax__last_axis_always(x, dim=-1):
    """ignores `dim` and normalises along the last axis."""
    return ref.run_softmax(x, dim=-1)


def run_softmax__global_max(x, dim=-1):
    """subtracts the maximum of the whole tensor, not of each row: a row far below it underflows to 0 / 0."""
    e = torch.exp(x - x.max())
    return e / e.sum(dim=dim, keepdim=True)


def run_gelu__exact_erf(x):
    """uses the exact GELU x Phi(x) (erf), not GPT-2's tanh approximation."""
    return F.gelu(x)


def run_gelu__sqrt_2pi(x):
    """writes sqrt(2 pi) where the formula has sqrt(2 / pi)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 * math.pi) * (x + 0.044715 * x ** 3)))


def run_layer_norm__unbiased_variance(x, weight, bias, eps=1e-5):
    """divides the variance by C - 1 (torch.var's default) instead of C."""
    mu = x.mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(x.var(dim=-1, keepdim=True) + eps) * weight + bias


def run_layer_norm__eps_outside_sqrt(x, weight, bias, eps=1e-5):
    """adds eps to the standard deviation instead of to the variance."""
    mu = x.mean(dim=-1, keepdim=True)
    sd = ((x - mu) ** 2).mean(dim=-1, keepdim=True).sqrt()
    return (x - mu) / (sd + eps) * weight + bias


def run_layer_norm__bias_before_scale(x, weight, bias, eps=1e-5):
    """adds the bias before multiplying by the gain: (x^ + beta) gamma."""
    y = ref.run_layer_norm(x, torch.ones_like(weight), torch.zeros_like(bias), eps)
    return (y + bias) * weight


def run_cross_entropy__max_added_back(logits, targets, ignore_index=-100):
    """adds the row maximum back before subtracting the target logit: (m + log sum exp u) - z_y loses
    digits in float32 for large logits."""
    keep = targets != ignore_index
    z = logits[keep]
    m = z.max(dim=-1, keepdim=True).values
    lse = (m + torch.log(torch.exp(z - m).sum(dim=-1, keepdim=True))).squeeze(-1)
    return (lse - z.gather(1, targets[keep].long()[:, None]).squeeze(1)).mean()


def run_cross_entropy__mean_over_all_rows(logits, targets, ignore_index=-100):
    """sums over the kept rows but divides by every row, ignored ones included."""
    keep = targets != ignore_index
    n_kept = int(keep.sum())
    return ref.run_cross_entropy(logits, targets, ignore_index) * n_kept / targets.shape[0]


def _attention(q, k, v, *, scale=True, diag=0):
    """softmax(q k^T / sqrt(D) + mask) v with keys u <= t + diag visible (diag = 0: the causal mask)."""
    T, D = q.shape[-2], q.shape[-1]
    s = q @ k.transpose(-2, -1) / (math.sqrt(D) if scale else 1.0)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1 + diag)
    return torch.softmax(s.masked_fill(future, float("-inf")), dim=-1) @ v


def run_causal_attention__no_mask(q, k, v):
    """forgets the causal mask: every position attends to the future too."""
    return _attention(q, k, v, diag=q.shape[-2])


def run_causal_attention__no_scaling(q, k, v):
    """forgets to divide the scores by sqrt(D)."""
    return _attention(q, k, v, scale=False)


def run_causal_attention__mask_one_late(q, k, v):
    """masks from u > t + 1: each position also sees the next one."""
    return _attention(q, k, v, diag=1)


def _block(x, p, n_head, eps=1e-5, *, heads="split", post_ln=False, mlp_residual=True):
    """A GPT-2 block from the lesson's own pieces, with one switch per mistake."""
    B, T, C = x.shape
    D = C // n_head
    ln1 = (lambda t: t) if post_ln else (lambda t: ref.run_layer_norm(t, p["ln_1.weight"], p["ln_1.bias"], eps))
    q, k, v = (ln1(x) @ p["attn.c_attn.weight"].T + p["attn.c_attn.bias"]).split(C, dim=-1)
    if heads == "split":
        q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in (q, k, v))
    else:                                                      # channel c to head c mod H: interleaved
        q, k, v = (t.view(B, T, D, n_head).permute(0, 3, 1, 2) for t in (q, k, v))
    y = ref.run_causal_attention(q, k, v)
    y = y.transpose(1, 2).reshape(B, T, C) if heads == "split" else y.permute(0, 2, 3, 1).reshape(B, T, C)
    a = x + y @ p["attn.c_proj.weight"].T + p["attn.c_proj.bias"]
    if post_ln:
        a = ref.run_layer_norm(a, p["ln_1.weight"], p["ln_1.bias"], eps)
    h = a if post_ln else ref.run_layer_norm(a, p["ln_2.weight"], p["ln_2.bias"], eps)
    m = ref.run_gelu(h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"]) @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]
    out = a + m if mlp_residual else m
    return ref.run_layer_norm(out, p["ln_2.weight"], p["ln_2.bias"], eps) if post_ln else out


def run_gpt_block__interleaved_heads(x, params, n_head, eps=1e-5):
    """splits the channels into heads along the wrong axis: channel c goes to head c mod n_head."""
    return _block(x, params, n_head, eps, heads="interleaved")


def run_gpt_block__post_layer_norm(x, params, n_head, eps=1e-5):
    """normalises after each residual addition (the original transformer's post-LN), not before each sub-layer."""
    return _block(x, params, n_head, eps, post_ln=True)


def run_gpt_block__no_mlp_residual(x, params, n_head, eps=1e-5):
    """returns the MLP's output without adding it to the residual stream a."""
    return _block(x, params, n_head, eps, mlp_residual=False)
