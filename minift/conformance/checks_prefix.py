"""Conformance checks of lesson 07 (prefix tuning), registered into `checks.CHECKS` with
lesson="lesson07". Expected values are computed here independently (float64 numpy or a
textbook construction), never by calling minift's reference adapters.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t, attention64
from .strategies import MAX_B, MAX_D, MAX_H, MAX_T, arrays, check_settings, f32


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


@_register("run_prefix_attention", "prefix_attention(q, k, v, prefix_k, prefix_v) equals the naive float64 loop: "
           "query t attends the P prefix keys (always visible) and the keys 0..t, softmax(q . key / sqrt(D)), "
           "weighted sum of the matching values (P = 0..4).", lesson="lesson07")
def check_prefix_attention_matches_naive_loop(impl):
    attention = _adapter(impl, "run_prefix_attention")

    @check_settings(50)
    @given(x=_prefix_attention_inputs())
    def prefix_attention_matches_naive_loop(x):
        y = _out(attention(*(_t(x[n]) for n in _ARGS)), x["q"].shape, "run_prefix_attention(q, k, v, pk, pv)")
        expected = prefix_attention64(*(x[n].astype(np.float64) for n in _ARGS))
        _assert_close(y, expected, "run_prefix_attention vs naive loop over queries, prefix keys first",
                      atol=2e-5, rtol=1e-4)
    _run(prefix_attention_matches_naive_loop)


@_register("run_prefix_attention", "a length-0 prefix (prefix_k, prefix_v of shape (B, H, 0, D)) gives plain "
           "causal attention: softmax over keys 0..t only.", lesson="lesson07")
def check_prefix_attention_length_0_is_causal_attention(impl):
    attention = _adapter(impl, "run_prefix_attention")

    @check_settings(40)
    @given(x=_prefix_attention_inputs(max_p=0))
    def prefix_attention_length_0_is_causal_attention(x):
        y = _out(attention(*(_t(x[n]) for n in _ARGS)), x["q"].shape, "run_prefix_attention(q, k, v, P = 0)")
        expected = attention64(*(x[n].astype(np.float64) for n in ("q", "k", "v")))
        _assert_close(y, expected, "run_prefix_attention with an empty prefix vs causal attention",
                      atol=2e-5, rtol=1e-4)
    _run(prefix_attention_length_0_is_causal_attention)


@_register("run_prefix_attention", "the real keys stay causal and the prefix stays visible: changing k, v at "
           "positions > t leaves the outputs at positions <= t unchanged; with P >= 1 and v = 0, query 0's "
           "output is the prefix values' softmax mix (nonzero when they are).", lesson="lesson07")
def check_prefix_attention_causal_and_prefix_visible(impl):
    attention = _adapter(impl, "run_prefix_attention")

    @check_settings(40)
    @given(x=_prefix_attention_inputs(min_p=1), data=st.data())
    def prefix_attention_causal_and_prefix_visible(x, data):
        T = x["q"].shape[2]
        t = data.draw(st.integers(0, T - 1), label="t")
        k2, v2 = x["k"].copy(), x["v"].copy()
        k2[:, :, t + 1:] = data.draw(arrays(k2[:, :, t + 1:].shape, f32(-3, 3)), label="k_future")
        v2[:, :, t + 1:] = data.draw(arrays(v2[:, :, t + 1:].shape, f32(-3, 3)), label="v_future")
        y = _out(attention(*(_t(x[n]) for n in _ARGS)), x["q"].shape, "run_prefix_attention(q, k, v, pk, pv)")
        y2 = _out(attention(_t(x["q"]), _t(k2), _t(v2), _t(x["prefix_k"]), _t(x["prefix_v"])), x["q"].shape,
                  "run_prefix_attention(q, k', v', pk, pv)")
        _assert_close(y2[:, :, :t + 1], y[:, :, :t + 1],
                      f"output at positions <= t={t} after changing k, v at positions > t", atol=1e-6, rtol=1e-5)
        # query 0 with v = 0: only the prefix values contribute, with weights softmax over [pk ; k_0]
        zero = np.zeros_like(x["v"])
        y0 = _out(attention(_t(x["q"]), _t(x["k"]), _t(zero), _t(x["prefix_k"]), _t(x["prefix_v"])),
                  x["q"].shape, "run_prefix_attention(q, k, v=0, pk, pv)")[:, :, 0]
        expected = prefix_attention64(x["q"][:, :, :1].astype(np.float64), x["k"][:, :, :1].astype(np.float64),
                                      zero[:, :, :1], x["prefix_k"].astype(np.float64),
                                      x["prefix_v"].astype(np.float64))[:, :, 0]
        _assert_close(y0, expected, "query 0's output with v = 0 (only the prefix values are nonzero)",
                      atol=2e-5, rtol=1e-4)
    _run(prefix_attention_causal_and_prefix_visible)


@st.composite
def _mlp_inputs(draw):
    L, H, D = draw(st.integers(1, 2)), draw(st.integers(1, MAX_H)), draw(st.integers(1, 4))
    P, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    out = L * 2 * H * D
    return dict(embedding=draw(arrays((P, k), f32(-2, 2))), W1=draw(arrays((m, k), f32(-1, 1))),
                b1=draw(arrays((m,), f32(-1, 1))), W2=draw(arrays((out, m), f32(-1, 1))),
                b2=draw(arrays((out,), f32(-1, 1))), n_layer=L, n_head=H, D=D)


@_register("run_prefix_mlp", "prefix_mlp(embedding, W1, b1, W2, b2, n_layer, n_head) equals, for every virtual "
           "token i, layer l, key/value j, head h: (W2 tanh(W1 P'_i + b1) + b2)[((l 2 + j) H + h) D : ... + D], in "
           "float64, as a (L, 2, H, P, D) tensor.", lesson="lesson07")
def check_prefix_mlp_matches_formula(impl):
    mlp = _adapter(impl, "run_prefix_mlp")

    @check_settings(40)
    @given(x=_mlp_inputs())
    def prefix_mlp_matches_formula(x):
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
        y = _out(mlp(*(_t(x[n]) for n in ("embedding", "W1", "b1", "W2", "b2")), L, H), expected.shape,
                 f"run_prefix_mlp(embedding, W1, b1, W2, b2, n_layer={L}, n_head={H})")
        _assert_close(y, expected, "run_prefix_mlp vs W2 tanh(W1 P'_i + b1) + b2, row by row", atol=1e-5, rtol=1e-5)
    _run(prefix_mlp_matches_formula)
