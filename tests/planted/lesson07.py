"""Planted bugs for lesson 07 (prefix tuning): buggy copies of the reference `run_*` functions, one
plausible learner mistake each. tests/test_planted.py swaps each into the reference and asserts that
the checks of its run_* function catch it. Do not copy from this file.
"""
import math

import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


def _scores_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(D)) v with -inf where `allowed` (broadcast to the scores) is False."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v


def run_prefix_attention__top_left_causal(q, k, v, prefix_k, prefix_v):
    """is_causal=True on the (T, P + T) scores: the triangle starts at the top left and hides the prefix."""
    return F.scaled_dot_product_attention(q, torch.cat([prefix_k, k], 2), torch.cat([prefix_v, v], 2), is_causal=True)


def run_prefix_attention__causal_prefix(q, k, v, prefix_k, prefix_v):
    """query t sees prefix key j only when j <= t, as if the prefix were causal too."""
    P, T = prefix_k.shape[2], q.shape[2]
    t = torch.arange(T)[:, None]
    allowed = torch.cat([torch.arange(P)[None, :] <= t, torch.arange(T)[None, :] <= t], 1)
    return _scores_attention(q, torch.cat([prefix_k, k], 2), torch.cat([prefix_v, v], 2), allowed)


def run_prefix_attention__no_scale(q, k, v, prefix_k, prefix_v):
    """forgets the 1 / sqrt(D) scale of the scores."""
    return ref.run_prefix_attention(q * math.sqrt(q.shape[-1]), k, v, prefix_k, prefix_v)


def run_prefix_mlp__no_tanh(embedding, W1, b1, W2, b2, n_layer, n_head):
    """leaves out the tanh between the two linears."""
    rows = (embedding @ W1.T + b1) @ W2.T + b2
    P, D = rows.shape[0], W2.shape[0] // (2 * n_layer * n_head)
    return rows.view(P, n_layer, 2, n_head, D).permute(1, 2, 3, 0, 4)


def run_prefix_mlp__kv_outer(embedding, W1, b1, W2, b2, n_layer, n_head):
    """reads each row as [key/value][layer] instead of [layer][key/value]."""
    rows = torch.tanh(embedding @ W1.T + b1) @ W2.T + b2
    P, D = rows.shape[0], W2.shape[0] // (2 * n_layer * n_head)
    return rows.view(P, 2, n_layer, n_head, D).permute(2, 1, 3, 0, 4)


def run_prefix_attention_padded__padding_leaks(q, k, v, prefix_k, prefix_v, attention_mask):
    """ignores attention_mask: padding keys stay visible."""
    return ref.run_prefix_attention(q, k, v, prefix_k, prefix_v)


def run_prefix_attention_padded__nan_padding_query(q, k, v, prefix_k, prefix_v, attention_mask):
    """masks padding keys with -inf for every query, so a query with no visible key gets NaN."""
    P, T = prefix_k.shape[2], q.shape[2]
    causal = torch.arange(T)[None, :] <= torch.arange(T)[:, None]                    # (T, T)
    real = causal[None] & attention_mask.bool()[:, None, :]                           # (B, T, T)
    allowed = torch.cat([real.new_ones(real.shape[0], T, P), real], 2)[:, None]
    return _scores_attention(q, torch.cat([prefix_k, k], 2), torch.cat([prefix_v, v], 2), allowed)


def run_prefix_attention_padded__mask_on_prefix_columns(q, k, v, prefix_k, prefix_v, attention_mask):
    """lays the key mask over the first T columns ([mask ; ones]): it hides prefix keys, not padding."""
    P, T = prefix_k.shape[2], q.shape[2]
    causal = torch.cat([torch.ones(T, P, dtype=torch.bool), torch.arange(T)[None, :] <= torch.arange(T)[:, None]], 1)
    km = torch.cat([attention_mask.bool(), attention_mask.new_ones(q.shape[0], P).bool()], 1)   # misaligned
    allowed = (causal[None] & km[:, None, :]) | torch.cat([torch.zeros(T, P, dtype=torch.bool), torch.eye(T, dtype=torch.bool)], 1)
    return _scores_attention(q, torch.cat([prefix_k, k], 2), torch.cat([prefix_v, v], 2), allowed[:, None])


def run_prefix_attention_padded__additive_mask(q, k, v, prefix_k, prefix_v, attention_mask):
    """masks padding keys by adding -1e4 to their scores, which a large key outweighs."""
    P, T = prefix_k.shape[2], q.shape[2]
    causal = torch.arange(T)[None, :] <= torch.arange(T)[:, None]
    s = q @ torch.cat([prefix_k, k], 2).transpose(-2, -1) / math.sqrt(q.shape[-1])
    bias = torch.cat([s.new_zeros(q.shape[0], P), -1e4 * (1 - attention_mask.to(s.dtype))], 1)[:, None, None]
    s = s + bias
    s[..., P:] = s[..., P:].masked_fill(~causal, float("-inf"))
    return torch.softmax(s, -1) @ torch.cat([prefix_v, v], 2)


def run_prefix_decode_step__prefix_in_cache(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask):
    """stores the prefix in the cache, so it comes back in every later step's cache."""
    out, ck, cv = ref.run_prefix_decode_step(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask)
    return out, torch.cat([prefix_k, ck], 2), torch.cat([prefix_v, cv], 2)


def run_prefix_decode_step__forgets_own_key(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask):
    """the new token attends the prefix and the cached keys but not its own key and value."""
    P, L = prefix_k.shape[2], cache_k.shape[2]
    allowed = torch.cat([attention_mask.new_ones(q.shape[0], P).bool(), attention_mask[:, :L].bool()], 1)
    out = _scores_attention(q, torch.cat([prefix_k, cache_k], 2), torch.cat([prefix_v, cache_v], 2), allowed[:, None, None])
    return out, torch.cat([cache_k, k], 2), torch.cat([cache_v, v], 2)


def run_prefix_decode_step__ignores_mask(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask):
    """attends every cached key, padding included."""
    return ref.run_prefix_decode_step(q, k, v, cache_k, cache_v, prefix_k, prefix_v, torch.ones_like(attention_mask))


def run_prefix_decode_step__new_token_first(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask):
    """puts the new token in front of the cache: [k ; cache] instead of [cache ; k]."""
    out, _, _ = ref.run_prefix_decode_step(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask)
    return out, torch.cat([k, cache_k], 2), torch.cat([v, cache_v], 2)


def _layer_parts(x, W_attn, b_attn, n_head, order=(0, 1, 2), interleaved=False):
    """q, k, v (B, H, T, D) of the new tokens: thirds of x W_attn^T + b_attn in `order`, heads split."""
    B, T, C = x.shape
    H, D = n_head, C // n_head
    thirds = (x @ W_attn.T + b_attn).split(C, dim=2)
    if interleaved:                                                       # D groups of H instead of H of D
        return [thirds[i].view(B, T, D, H).permute(0, 3, 1, 2) for i in order]
    return [thirds[i].view(B, T, H, D).transpose(1, 2) for i in order]


def _layer_with(q, k, v, W_proj, b_proj, prefix_k, prefix_v, cache_k, cache_v, attention_mask, offset=True):
    """parts 1-2 for T new tokens after the cache, heads merged, then the output projection."""
    B, H, T, D = q.shape
    P, L = prefix_k.shape[2], cache_k.shape[2]
    K, V = torch.cat([cache_k, k], 2), torch.cat([cache_v, v], 2)
    qpos = torch.arange(L, L + T)[:, None] if offset else torch.arange(T)[:, None]
    kpos = torch.arange(L + T)[None, :]
    real = ((kpos <= qpos)[None] & attention_mask.bool()[:, None, :]) | (kpos == torch.arange(L, L + T)[:, None])[None]
    allowed = torch.cat([real.new_ones(B, T, P), real], 2)[:, None]
    out = _scores_attention(q, torch.cat([prefix_k, K], 2), torch.cat([prefix_v, V], 2), allowed)
    y = out.transpose(1, 2).reshape(B, T, H * D) @ W_proj.T + b_proj
    return y, K, V


def run_prefix_attention_layer__heads_interleaved(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                                  cache_k, cache_v, attention_mask):
    """splits C into D groups of H (a wrong view order) instead of H heads of D."""
    q, k, v = _layer_parts(x, W_attn, b_attn, n_head, interleaved=True)
    return _layer_with(q, k, v, W_proj, b_proj, prefix_k, prefix_v, cache_k, cache_v, attention_mask)


def run_prefix_attention_layer__k_and_q_swapped(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                                cache_k, cache_v, attention_mask):
    """reads the fused projection as [k | q | v] instead of [q | k | v]."""
    k, q, v = _layer_parts(x, W_attn, b_attn, n_head)
    return _layer_with(q, k, v, W_proj, b_proj, prefix_k, prefix_v, cache_k, cache_v, attention_mask)


def run_prefix_attention_layer__causal_without_offset(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                                      cache_k, cache_v, attention_mask):
    """places new token i at position i instead of L + i, so with a cache it misses keys it should see."""
    q, k, v = _layer_parts(x, W_attn, b_attn, n_head)
    return _layer_with(q, k, v, W_proj, b_proj, prefix_k, prefix_v, cache_k, cache_v, attention_mask, offset=False)


def run_prefix_attention_layer__prefix_cached(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                              cache_k, cache_v, attention_mask):
    """returns the cache with the prefix stored in front of the tokens."""
    y, ck, cv = ref.run_prefix_attention_layer(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                               cache_k, cache_v, attention_mask)
    return y, torch.cat([prefix_k, ck], 2), torch.cat([prefix_v, cv], 2)


def run_prefix_attention_layer__no_output_bias(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                               cache_k, cache_v, attention_mask):
    """forgets the output projection's bias b_proj."""
    return ref.run_prefix_attention_layer(x, W_attn, b_attn, W_proj, torch.zeros_like(b_proj), n_head, prefix_k,
                                          prefix_v, cache_k, cache_v, attention_mask)


def run_prefix_attention_layer__padding_leaks(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                              cache_k, cache_v, attention_mask):
    """ignores attention_mask: padding tokens, cached or new, stay visible."""
    return ref.run_prefix_attention_layer(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                                          cache_k, cache_v, torch.ones_like(attention_mask))


def run_linearize_table__sorted(fields):
    """sorts the fields by attribute, losing the record's order."""
    items = list(fields.items()) if isinstance(fields, dict) else list(fields)
    return " | ".join(f"{a.strip()} : {v.strip()}" for a, v in sorted(items))


def run_linearize_table__not_stripped(fields):
    """keeps the spaces around attributes and values."""
    items = list(fields.items()) if isinstance(fields, dict) else list(fields)
    return " | ".join(f"{a} : {v}" for a, v in items)


def run_linearize_table__tight_separators(fields):
    """writes the separators without their spaces, "a:v|b:w"."""
    items = list(fields.items()) if isinstance(fields, dict) else list(fields)
    return "|".join(f"{a.strip()}:{v.strip()}" for a, v in items)
