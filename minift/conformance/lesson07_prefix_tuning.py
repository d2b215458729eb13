"""Lesson 07 (prefix tuning): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions: plain tensors and hyperparameters in, tensors out, computed by
minift's own module (`minift/peft/prefix.py`) and the model's attention.

    run_prefix_attention(q, k, v, prefix_k, prefix_v)     causal attention where every query also
                                                          sees P prefix keys/values in front
    run_prefix_mlp(embedding, W1, b1, W2, b2, n_layer, n_head)   the reparameterisation
                                                          MLP(P') = W2 tanh(W1 P' + b1) + b2, laid out
                                                          as per-layer keys/values (L, 2, H, P, D)

The checks, registered into `CHECKS` with lesson="lesson07". Expected values are computed here
independently (float64 numpy or a textbook construction), never by calling minift's reference
functions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from minift.model import build_attention_mask, causal_attention
from minift.peft.prefix import PrefixConfig, PrefixEncoder

from .harness import assert_close, attention64, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, MAX_H, MAX_T, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def _check_qkv(fn: str, q, k, v, pk, pv):
    """The shared argument checks: q (B, H, T, D), k, v like q, prefix (B, H, P, D)."""
    q, k, v = tensor_arg("q", q), tensor_arg("k", k), tensor_arg("v", v)
    pk, pv = tensor_arg("prefix_k", pk), tensor_arg("prefix_v", pv)
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"{fn}: q, k, v must share one shape (B, H, T, D), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, T, D = q.shape
    if pk.dim() != 4 or pk.shape != pv.shape or (pk.shape[0], pk.shape[1], pk.shape[3]) != (B, H, D):
        raise ValueError(f"{fn}: prefix_k, prefix_v must both be (B, H, P, D)=({B}, {H}, P, {D}), "
                         f"got {tuple(pk.shape)} and {tuple(pv.shape)}")
    return q, k, v, pk, pv


def run_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor,
                         prefix_v: torch.Tensor) -> torch.Tensor:
    """softmax(q [prefix_k ; k]^T / sqrt(D) + M) [prefix_v ; v], M causal over the real keys and 0 on
    the P prefix keys, as one block of `GPT.forward(..., prefix_kv=...)` computes it.
    q, k, v: (B, H, T, D); prefix_k, prefix_v: (B, H, P, D), P >= 0. Returns (B, H, T, D)."""
    q, k, v, pk, pv = _check_qkv("run_prefix_attention", q, k, v, prefix_k, prefix_v)
    B, H, T, D = q.shape
    P = pk.shape[2]
    mask = build_attention_mask(torch.ones(B, T, dtype=torch.bool, device=q.device), T, P)   # (B, 1, T, P + T)
    return causal_attention(q, torch.cat([pk.to(k.dtype), k], 2), torch.cat([pv.to(v.dtype), v], 2), mask)


def run_prefix_mlp(embedding: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor,
                   b2: torch.Tensor, n_layer: int, n_head: int) -> torch.Tensor:
    """The prefix tensors of a reparameterised `PrefixEncoder`: rows = W2 tanh(W1 P' + b1) + b2 for
    each of the P rows of P' (nn.Linear layout: embedding (P, k), W1 (m, k), b1 (m,), W2 (L 2 C, m),
    b2 (L 2 C,)), each row read as [layer][key, value][head][head_dim]. Returns (L, 2, H, P, D)."""
    E, W1, b1 = tensor_arg("embedding", embedding), tensor_arg("W1", W1), tensor_arg("b1", b1)
    W2, b2 = tensor_arg("W2", W2), tensor_arg("b2", b2)
    if E.dim() != 2 or W1.dim() != 2 or W2.dim() != 2:
        raise ValueError(f"run_prefix_mlp: embedding, W1, W2 must be matrices, got {tuple(E.shape)}, "
                         f"{tuple(W1.shape)}, {tuple(W2.shape)}")
    (P, k), m, out = E.shape, W1.shape[0], W2.shape[0]
    if out % (2 * n_layer * n_head):
        raise ValueError(f"run_prefix_mlp: W2 has {out} rows, not a multiple of 2 n_layer n_head = "
                         f"{2 * n_layer * n_head}")
    C = out // (2 * n_layer)
    if tuple(W1.shape) != (m, k) or tuple(b1.shape) != (m,) or tuple(W2.shape) != (out, m) \
            or tuple(b2.shape) != (out,):
        raise ValueError(f"run_prefix_mlp: expected W1 (m, k={k}), b1 (m,), W2 (L 2 C, m), b2 (L 2 C,); got "
                         f"{tuple(W1.shape)}, {tuple(b1.shape)}, {tuple(W2.shape)}, {tuple(b2.shape)}")
    enc = PrefixEncoder(n_layer, n_head, C, PrefixConfig(n_prefix=P, embed_dim=k, hidden=m), dtype=E.dtype)
    with torch.no_grad():
        for p, t in ((enc.embedding, E), (enc.mlp[0].weight, W1), (enc.mlp[0].bias, b1), (enc.mlp[2].weight, W2),
                     (enc.mlp[2].bias, b2)):
            p.copy_(t)
        return enc.key_values().clone()                                    # (L, 2, H, P, D)


# ---- the checks ----------------------------------------------------------------------------------

def prefix_attention64(q, k, v, pk, pv) -> np.ndarray:
    """The naive loop: query t attends the P prefix keys and keys 0..t with weights
    softmax(q_t . key / sqrt(D)), and returns the weighted sum of their values."""
    B, H, T, D = q.shape
    out = np.zeros((B, H, T, D))
    for b in range(B):
        for h in range(H):
            for t in range(T):
                keys = [pk[b, h, j] for j in range(pk.shape[2])] + [k[b, h, j] for j in range(t + 1)]
                vals = [pv[b, h, j] for j in range(pv.shape[2])] + [v[b, h, j] for j in range(t + 1)]
                s = np.array([q[b, h, t] @ key for key in keys]) / math.sqrt(D)
                w = np.exp(s - s.max())
                w = w / w.sum()
                out[b, h, t] = sum(wj * vj for wj, vj in zip(w, vals))
    return out


@st.composite
def _prefix_attention_inputs(draw, min_p=0, max_p=4):
    B, H, T, D = (draw(st.integers(1, n)) for n in (MAX_B, MAX_H, MAX_T, MAX_D))
    P = draw(st.integers(min_p, max_p))
    x = {n: draw(arrays((B, H, T, D), f32(-3, 3))) for n in ("q", "k", "v")}
    x.update({n: draw(arrays((B, H, P, D), f32(-3, 3))) for n in ("prefix_k", "prefix_v")})
    return x


_ARGS = ("q", "k", "v", "prefix_k", "prefix_v")


@property_check("run_prefix_attention", lesson=7, examples=50, x=_prefix_attention_inputs())
def prefix_attention_matches_naive_loop(attention, x):
    """prefix_attention(q, k, v, prefix_k, prefix_v) equals the naive float64 loop: query t attends
    the P prefix keys (always visible) and the keys 0..t, softmax(q . key / sqrt(D)), weighted sum
    of the matching values (P = 0..4)."""
    y = output(attention(*(tensor(x[n]) for n in _ARGS)), x["q"].shape, "run_prefix_attention(q, k, v, pk, pv)")
    expected = prefix_attention64(*(x[n].astype(np.float64) for n in _ARGS))
    assert_close(y, expected, "run_prefix_attention vs naive loop over queries, prefix keys first",
                 atol=2e-5, rtol=1e-4)


@property_check("run_prefix_attention", lesson=7, examples=40, x=_prefix_attention_inputs(max_p=0))
def prefix_attention_length_0_is_causal_attention(attention, x):
    """a length-0 prefix (prefix_k, prefix_v of shape (B, H, 0, D)) gives plain causal attention:
    softmax over keys 0..t only."""
    y = output(attention(*(tensor(x[n]) for n in _ARGS)), x["q"].shape, "run_prefix_attention(q, k, v, P = 0)")
    expected = attention64(*(x[n].astype(np.float64) for n in ("q", "k", "v")))
    assert_close(y, expected, "run_prefix_attention with an empty prefix vs causal attention",
                 atol=2e-5, rtol=1e-4)


@property_check("run_prefix_attention", lesson=7, examples=40, x=_prefix_attention_inputs(min_p=1),
                data=st.data())
def prefix_attention_causal_and_prefix_visible(attention, x, data):
    """the real keys stay causal and the prefix stays visible: changing k, v at positions > t leaves
    the outputs at positions <= t unchanged; with P >= 1 and v = 0, query 0's output is the prefix
    values' softmax mix (nonzero when they are)."""
    T = x["q"].shape[2]
    t = data.draw(st.integers(0, T - 1), label="t")
    k2, v2 = x["k"].copy(), x["v"].copy()
    k2[:, :, t + 1:] = data.draw(arrays(k2[:, :, t + 1:].shape, f32(-3, 3)), label="k_future")
    v2[:, :, t + 1:] = data.draw(arrays(v2[:, :, t + 1:].shape, f32(-3, 3)), label="v_future")
    y = output(attention(*(tensor(x[n]) for n in _ARGS)), x["q"].shape, "run_prefix_attention(q, k, v, pk, pv)")
    y2 = output(attention(tensor(x["q"]), tensor(k2), tensor(v2), tensor(x["prefix_k"]), tensor(x["prefix_v"])), x["q"].shape,
                "run_prefix_attention(q, k', v', pk, pv)")
    assert_close(y2[:, :, :t + 1], y[:, :, :t + 1],
                 f"output at positions <= t={t} after changing k, v at positions > t", atol=1e-6, rtol=1e-5)
    # query 0 with v = 0: only the prefix values contribute, with weights softmax over [pk ; k_0]
    zero = np.zeros_like(x["v"])
    y0 = output(attention(tensor(x["q"]), tensor(x["k"]), tensor(zero), tensor(x["prefix_k"]), tensor(x["prefix_v"])),
                x["q"].shape, "run_prefix_attention(q, k, v=0, pk, pv)")[:, :, 0]
    expected = prefix_attention64(x["q"][:, :, :1].astype(np.float64), x["k"][:, :, :1].astype(np.float64),
                                  zero[:, :, :1], x["prefix_k"].astype(np.float64),
                                  x["prefix_v"].astype(np.float64))[:, :, 0]
    assert_close(y0, expected, "query 0's output with v = 0 (only the prefix values are nonzero)",
                 atol=2e-5, rtol=1e-4)


@st.composite
def _mlp_inputs(draw):
    L, H, D = draw(st.integers(1, 2)), draw(st.integers(1, MAX_H)), draw(st.integers(1, 4))
    P, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    out = L * 2 * H * D
    return dict(embedding=draw(arrays((P, k), f32(-2, 2))), W1=draw(arrays((m, k), f32(-1, 1))),
                b1=draw(arrays((m,), f32(-1, 1))), W2=draw(arrays((out, m), f32(-1, 1))),
                b2=draw(arrays((out,), f32(-1, 1))), n_layer=L, n_head=H, D=D)


@property_check("run_prefix_mlp", lesson=7, examples=40, x=_mlp_inputs())
def prefix_mlp_matches_formula(mlp, x):
    """prefix_mlp(embedding, W1, b1, W2, b2, n_layer, n_head) equals, for every virtual token i, layer
    l, key/value j, head h: (W2 tanh(W1 P'_i + b1) + b2)[((l 2 + j) H + h) D : ... + D], in float64,
    as a (L, 2, H, P, D) tensor."""
    E, W1, b1, W2, b2 = (x[n].astype(np.float64) for n in ("embedding", "W1", "b1", "W2", "b2"))
    L, H, D, P = x["n_layer"], x["n_head"], x["D"], E.shape[0]
    expected = np.zeros((L, 2, H, P, D))
    for i in range(P):
        row = W2 @ np.tanh(W1 @ E[i] + b1) + b2                       # (L 2 H D,)
        for layer in range(L):
            for j in range(2):
                for h in range(H):
                    start = ((layer * 2 + j) * H + h) * D
                    expected[layer, j, h, i] = row[start:start + D]
    y = output(mlp(*(tensor(x[n]) for n in ("embedding", "W1", "b1", "W2", "b2")), L, H), expected.shape,
               f"run_prefix_mlp(embedding, W1, b1, W2, b2, n_layer={L}, n_head={H})")
    assert_close(y, expected, "run_prefix_mlp vs W2 tanh(W1 P'_i + b1) + b2, row by row", atol=1e-5, rtol=1e-5)
