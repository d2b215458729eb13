"""Lesson 07's assignment (prefix attention with padding and a KV cache): the reference `run_*`
functions of its three parts and their conformance checks.

    run_prefix_attention_padded(q, k, v, prefix_k, prefix_v, attention_mask)
        part 1: one block's prefix attention for a padded batch (padding keys hidden, a padding query
        sees itself so its row is finite)
    run_prefix_decode_step(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask)
        part 2: one generation step: the cache grows by the new token, the prefix is supplied again
    run_prefix_attention_layer(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v,
                               cache_k, cache_v, attention_mask)
        part 3: the whole attention layer of a block with its cache: projections, heads, parts 1-2

computed by minift's own model code (`build_attention_mask`, `causal_attention`,
`CausalSelfAttention`). The checks, registered into `CHECKS` with lesson="lesson07", compare
against float64 loops written out here, never against minift's reference functions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import assume, strategies as st

from minift.model import CausalSelfAttention, GPTConfig, build_attention_mask, causal_attention

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .lesson07_prefix_tuning import _check_qkv, _prefix_attention_inputs
from .strategies import MAX_B, MAX_D, MAX_H, arrays, f32

_ARGS = ("q", "k", "v", "prefix_k", "prefix_v")


# ---- the assignment: prefix attention with padding and a KV cache -------------------------------

def _key_mask(fn: str, attention_mask, B: int, S: int) -> torch.Tensor:
    m = tensor_arg("attention_mask", attention_mask)
    if tuple(m.shape) != (B, S):
        raise ValueError(f"{fn}: attention_mask must be (B, S)=({B}, {S}), got {tuple(m.shape)}")
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError(f"{fn}: attention_mask must hold only 0 (padding) and 1 (real token)")
    return m


def run_prefix_attention_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor,
                                prefix_v: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One block's attention over [prefix ; tokens] for a padded batch, as `GPT.forward(...,
    attention_mask=..., prefix_kv=...)` computes it: query t sees the P prefix keys, and key s of
    the tokens when s <= t and token s is real (or s = t: a padding query sees itself, so its row
    is finite). q, k, v: (B, H, T, D); prefix_k, prefix_v: (B, H, P, D); attention_mask (B, T) of
    0/1, padding on any side. Returns (B, H, T, D)."""
    q, k, v, pk, pv = _check_qkv("run_prefix_attention_padded", q, k, v, prefix_k, prefix_v)
    B, H, T, D = q.shape
    m = _key_mask("run_prefix_attention_padded", attention_mask, B, T)
    mask = build_attention_mask(m, T, pk.shape[2])                        # (B, 1, T, P + T)
    return causal_attention(q, torch.cat([pk.to(k.dtype), k], 2), torch.cat([pv.to(v.dtype), v], 2), mask)


def run_prefix_decode_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache_k: torch.Tensor,
                           cache_v: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                           attention_mask: torch.Tensor):
    """One generation step with a KV cache, as `CausalSelfAttention.forward(x, mask, past, prefix)`
    takes it: the new token's q, k, v (B, H, 1, D); the cache of the L tokens before it (B, H, L, D),
    L >= 0; the prefix (B, H, P, D); attention_mask (B, L + 1) over cache + new token. The new cache
    is [cache ; k], [cache ; v] (the tokens only, never the prefix); the output is the new
    token's attention over [prefix ; new cache]. Returns (out (B, H, 1, D), cache_k', cache_v')."""
    q, k, v, pk, pv = _check_qkv("run_prefix_decode_step", q, k, v, prefix_k, prefix_v)
    B, H, T, D = q.shape
    if T != 1:
        raise ValueError(f"run_prefix_decode_step: q, k, v hold one new token, (B, H, 1, D); got T={T}")
    ck, cv = tensor_arg("cache_k", cache_k), tensor_arg("cache_v", cache_v)
    if ck.dim() != 4 or ck.shape != cv.shape or (ck.shape[0], ck.shape[1], ck.shape[3]) != (B, H, D):
        raise ValueError(f"run_prefix_decode_step: cache_k, cache_v must both be (B, H, L, D)=({B}, {H}, L, {D}), "
                         f"got {tuple(ck.shape)} and {tuple(cv.shape)}")
    m = _key_mask("run_prefix_decode_step", attention_mask, B, ck.shape[2] + 1)
    k_all, v_all = torch.cat([ck, k], 2), torch.cat([cv, v], 2)            # the cache, grown by one
    mask = build_attention_mask(m, 1, pk.shape[2])                         # (B, 1, 1, P + L + 1)
    out = causal_attention(q, torch.cat([pk.to(k.dtype), k_all], 2), torch.cat([pv.to(v.dtype), v_all], 2), mask)
    return out, k_all, v_all


def run_prefix_attention_layer(x: torch.Tensor, W_attn: torch.Tensor, b_attn: torch.Tensor, W_proj: torch.Tensor,
                               b_proj: torch.Tensor, n_head: int, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                               cache_k: torch.Tensor, cache_v: torch.Tensor, attention_mask: torch.Tensor):
    """A block's whole attention layer with its cache and a prefix, as `CausalSelfAttention.forward(x,
    mask, past, prefix)` runs it: [q | k | v] = x W_attn^T + b_attn (B, T, 3C), each split into
    n_head heads of D = C / n_head; the new keys/values appended to the cache of L tokens; every
    new token (absolute position L + i) attends as in part 1; heads merged back; y = out W_proj^T +
    b_proj. x (B, T, C); prefix (B, H, P, D); cache (B, H, L, D), L >= 0; attention_mask (B, L + T).
    Returns (y (B, T, C), cache_k' (B, H, L + T, D), cache_v')."""
    x, Wa, ba = tensor_arg("x", x), tensor_arg("W_attn", W_attn), tensor_arg("b_attn", b_attn)
    Wp, bp = tensor_arg("W_proj", W_proj), tensor_arg("b_proj", b_proj)
    if x.dim() != 3:
        raise ValueError(f"run_prefix_attention_layer: x must be (B, T, C), got {tuple(x.shape)}")
    B, T, C = x.shape
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"run_prefix_attention_layer: n_head={n_head!r} must be a positive int dividing C={C}")
    if (tuple(Wa.shape), tuple(ba.shape), tuple(Wp.shape), tuple(bp.shape)) != ((3 * C, C), (3 * C,), (C, C), (C,)):
        raise ValueError(f"run_prefix_attention_layer: expected W_attn (3C, C), b_attn (3C,), W_proj (C, C), b_proj "
                         f"(C,) with C={C}; got {tuple(Wa.shape)}, {tuple(ba.shape)}, {tuple(Wp.shape)}, {tuple(bp.shape)}")
    H, D = n_head, C // n_head
    shape = (B, H, 1, D)
    _check_qkv("run_prefix_attention_layer", x.new_zeros(shape), x.new_zeros(shape), x.new_zeros(shape),
               prefix_k, prefix_v)
    ck, cv = tensor_arg("cache_k", cache_k), tensor_arg("cache_v", cache_v)
    if ck.dim() != 4 or ck.shape != cv.shape or (ck.shape[0], ck.shape[1], ck.shape[3]) != (B, H, D):
        raise ValueError(f"run_prefix_attention_layer: cache_k, cache_v must both be (B, H, L, D)=({B}, {H}, L, {D}), "
                         f"got {tuple(ck.shape)} and {tuple(cv.shape)}")
    m = _key_mask("run_prefix_attention_layer", attention_mask, B, ck.shape[2] + T)
    attn = CausalSelfAttention(GPTConfig(n_embd=C, n_head=H, bias=True)).to(x.dtype).eval()
    with torch.no_grad():
        for p, t in ((attn.c_attn.weight, Wa), (attn.c_attn.bias, ba), (attn.c_proj.weight, Wp), (attn.c_proj.bias, bp)):
            p.copy_(t)
        y, (k_all, v_all) = attn(x, build_attention_mask(m, T, prefix_k.shape[2]), (ck, cv), (prefix_k, prefix_v))
    return y, k_all, v_all


# ---- the assignment's checks: padding and the KV cache -------------------------------------------

def padded_prefix_attention64(q, k, v, pk, pv, mask) -> np.ndarray:
    """The naive loop with padding: a real query t attends the P prefix keys and the REAL keys 0..t,
    softmax(q_t . key / sqrt(D)); a padding query's row is left NaN (no check reads it)."""
    B, H, T, D = q.shape
    out = np.full((B, H, T, D), np.nan)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                if not mask[b, t]:
                    continue
                seen = [s for s in range(t + 1) if mask[b, s]]
                keys = [pk[b, h, j] for j in range(pk.shape[2])] + [k[b, h, s] for s in seen]
                vals = [pv[b, h, j] for j in range(pv.shape[2])] + [v[b, h, s] for s in seen]
                s = np.array([q[b, h, t] @ key for key in keys]) / math.sqrt(D)
                w = np.exp(s - s.max())
                out[b, h, t] = sum(wj * vj for wj, vj in zip(w / w.sum(), vals))
    return out


def _pad_mask(draw, B: int, T: int, pad=None) -> np.ndarray:
    """(B, T) of 0/1, one row at a time: left padding, right padding, or any pattern."""
    rows = []
    for _ in range(B):
        side = pad or draw(st.sampled_from(["left", "right", "any"]))
        if side == "any":
            rows.append(draw(st.lists(st.integers(0, 1), min_size=T, max_size=T)))
        else:
            n = draw(st.integers(0, T))                                    # real tokens in this row
            rows.append([0] * (T - n) + [1] * n if side == "left" else [1] * n + [0] * (T - n))
    return np.array(rows, np.int64)


@st.composite
def _padded_inputs(draw, max_p=4, pad=None):
    """q, k, v (B, H, T, D), a prefix of P = 0..max_p, and mask (B, T) (padding on `pad`'s side)."""
    x = draw(_prefix_attention_inputs(max_p=max_p))
    B, H, T, D = x["q"].shape
    x["mask"] = _pad_mask(draw, B, T, pad)
    return x


def _rows(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The real queries' outputs, (number of real tokens, H, D)."""
    b, t = np.nonzero(mask)
    return y[b, :, t]


def _padded(fn, x, k=None, v=None, what="run_prefix_attention_padded(q, k, v, pk, pv, attention_mask)"):
    args = [tensor(x["q"]), tensor(x["k"] if k is None else k), tensor(x["v"] if v is None else v),
            tensor(x["prefix_k"]), tensor(x["prefix_v"]), torch.tensor(x["mask"])]
    return output(fn(*args), x["q"].shape, what)


@property_check("run_prefix_attention_padded", lesson=7, examples=40, x=_padded_inputs())
def prefix_attention_padded_matches_naive_loop(attention, x):
    """prefix_attention_padded(q, k, v, pk, pv, mask) equals, at every real query t, the float64
    loop over the P prefix keys and the real keys 0..t (padding left, right or anywhere; P = 0..4)."""
    assume(x["mask"].any())
    y = _padded(attention, x)
    expected = padded_prefix_attention64(*(x[n].astype(np.float64) for n in _ARGS), x["mask"])
    assert_close(_rows(y, x["mask"]), _rows(expected, x["mask"]),
                 f"run_prefix_attention_padded at the real queries (mask {x['mask'].tolist()}) vs the naive loop "
                 f"over prefix keys and real keys <= t", atol=2e-5, rtol=1e-4)


@property_check("run_prefix_attention_padded", lesson=7, examples=30, x=_padded_inputs(max_p=1, pad="left"),
                explicit=[dict(x=dict(q=np.ones((1, 1, 2, 1), np.float32), k=np.ones((1, 1, 2, 1), np.float32),
                                      v=np.ones((1, 1, 2, 1), np.float32), prefix_k=np.zeros((1, 1, 0, 1), np.float32),
                                      prefix_v=np.zeros((1, 1, 0, 1), np.float32), mask=np.array([[0, 1]])))])
def prefix_attention_padded_is_finite(attention, x):
    """every output is finite, padding queries included: with P = 0 and left padding, the first
    query sees no real key, and its row must still not be NaN (its value is not graded)."""
    y = _padded(attention, x)
    bad = ~np.isfinite(y)
    if bad.any():
        b, h, t, _ = (int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"run_prefix_attention_padded(..., attention_mask={x['mask'].tolist()}) with P="
                             f"{x['prefix_k'].shape[2]}: output[{b}, {h}, {t}] is {y[b, h, t].tolist()}, not finite "
                             f"(a padding query whose every key is masked must still give finite numbers)")


@property_check("run_prefix_attention_padded", lesson=7, examples=30, x=_padded_inputs(), seed=st.integers(0, 2 ** 16))
def prefix_attention_padded_keys_do_not_leak(attention, x, seed):
    """a padding key never receives weight: putting huge values (+-3e4, signs drawn from `seed` with
    numpy's default_rng) into k and v at every padding position leaves the real queries' outputs
    unchanged."""
    mask = x["mask"]
    assume(mask.any() and not mask.all())
    pad = (mask == 0)[:, None, :, None]                                    # (B, 1, T, 1)
    rng = np.random.default_rng(seed)                                      # the signs of the huge values
    k2, v2 = (np.where(pad, 3e4 * rng.choice([-1.0, 1.0], size=a.shape), a).astype(np.float32)
              for a in (x["k"], x["v"]))
    y = _padded(attention, x)
    y2 = _padded(attention, x, k2, v2, "run_prefix_attention_padded(q, k', v', pk, pv, attention_mask)")
    assert_close(_rows(y2, mask), _rows(y, mask),
                 f"real queries' outputs after filling k, v at the padding positions (mask {mask.tolist()}) with "
                 f"+-3e4", atol=1e-5, rtol=1e-5)


@property_check("run_prefix_attention_padded", lesson=7, examples=30, x=_padded_inputs(pad="right"))
def prefix_attention_padded_side_does_not_matter(attention, x):
    """padding on the left or on the right gives the real tokens the same outputs: each row's real
    tokens moved from the front (right padding) to the back (left padding), with their q, k, v."""
    mask = x["mask"]
    n = mask.sum(1)                                                        # real tokens per row
    T = mask.shape[1]
    left = {name: np.stack([np.roll(a[b], T - n[b], axis=1) for b in range(a.shape[0])])
            for name, a in x.items() if name in ("q", "k", "v")}
    left.update(prefix_k=x["prefix_k"], prefix_v=x["prefix_v"],
                mask=np.stack([np.roll(mask[b], T - n[b]) for b in range(mask.shape[0])]))
    y_right, y_left = _padded(attention, x), _padded(attention, left)
    assert_close(_rows(y_left, left["mask"]), _rows(y_right, mask),
                 f"real tokens' outputs, left padding (mask {left['mask'].tolist()}) vs right padding "
                 f"(mask {mask.tolist()})", atol=1e-5, rtol=1e-5)


@st.composite
def _decode_inputs(draw):
    """The new token's q, k, v (B, H, 1, D), a cache of L = 0..6 tokens, a prefix of P = 0..3, and
    attention_mask (B, L + 1): padding in the cache (left or anywhere), the new token real."""
    B, H, D = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_H)), draw(st.integers(1, MAX_D))
    L, P = draw(st.integers(0, 6)), draw(st.integers(0, 3))
    x = {n: draw(arrays((B, H, 1, D), f32(-3, 3))) for n in ("q", "k", "v")}
    x.update({n: draw(arrays((B, H, L, D), f32(-3, 3))) for n in ("cache_k", "cache_v")})
    x.update({n: draw(arrays((B, H, P, D), f32(-3, 3))) for n in ("prefix_k", "prefix_v")})
    x["mask"] = np.concatenate([_pad_mask(draw, B, L, draw(st.sampled_from(["left", "any"]))),
                                np.ones((B, 1), np.int64)], axis=1)
    return x


_DECODE_ARGS = ("q", "k", "v", "cache_k", "cache_v", "prefix_k", "prefix_v")


def _triple(y, what: str):
    if not isinstance(y, (tuple, list)) or len(y) != 3:
        raise AssertionError(f"{what} must return (out, cache_k, cache_v), got {type(y).__name__}")
    return y


def _decode(step, x, what="run_prefix_decode_step(q, k, v, cache_k, cache_v, pk, pv, attention_mask)"):
    args = [tensor(x[n]) for n in _DECODE_ARGS] + [torch.tensor(x["mask"])]
    out, ck, cv = _triple(step(*args), what)
    B, H, L, D = x["cache_k"].shape
    return (output(out, (B, H, 1, D), what + "[0]"), output(ck, (B, H, L + 1, D), what + "[1]"),
            output(cv, (B, H, L + 1, D), what + "[2]"), args)


@property_check("run_prefix_decode_step", lesson=7, examples=40, x=_decode_inputs())
def prefix_decode_step_matches_naive(step, x):
    """prefix_decode_step's output is the new token's attention in float64 over the P prefix keys,
    the real cached keys and its own key: softmax(q . key / sqrt(D)) times the matching values."""
    q, k, v, ck, cv, pk, pv = (x[n].astype(np.float64) for n in _DECODE_ARGS)
    full = [np.concatenate([c, a], 2) for c, a in ((ck, q), (ck, k), (cv, v))]   # q padded in front
    expected = padded_prefix_attention64(*full, pk, pv, x["mask"])[:, :, -1:]
    out, _, _, _ = _decode(step, x)
    assert_close(out, expected, f"run_prefix_decode_step output (mask {x['mask'].tolist()}, P="
                 f"{pk.shape[2]}) vs softmax over prefix keys, real cached keys and the new key",
                 atol=2e-5, rtol=1e-4)


@property_check("run_prefix_decode_step", lesson=7, examples=30, x=_decode_inputs())
def prefix_decode_step_cache_grows_by_one(step, x):
    """the returned cache is [cache ; k] and [cache ; v] exactly, (B, H, L + 1, D): the new token
    appended once, the prefix never stored in it, and no input changed in place."""
    _, ck, cv, args = _decode(step, x)
    for got, c, a, name in ((ck, x["cache_k"], x["k"], "cache_k"), (cv, x["cache_v"], x["v"], "cache_v")):
        assert_close(got, np.concatenate([c, a], 2), f"returned {name} vs [{name} ; new] along time "
                     f"(L={c.shape[2]} -> L + 1)", atol=0, rtol=0)
    for t, name in zip(args, _DECODE_ARGS + ("mask",)):
        assert_close(t.numpy(), x[name], f"run_prefix_decode_step changed its input {name} in place", atol=0, rtol=0)


@property_check("run_prefix_decode_step", lesson=7, examples=25, x=_padded_inputs(max_p=3, pad="left"))
def prefix_decode_steps_equal_full_attention(step, x):
    """decoding token by token from an empty cache (each step's cache fed to the next) gives, at
    every real position, the full padded prefix attention (float64 loop), and ends with the cache
    [k_0 .. k_T-1], [v_0 .. v_T-1]."""
    B, H, T, D = x["q"].shape
    ck, cv = np.zeros((B, H, 0, D), np.float32), np.zeros((B, H, 0, D), np.float32)
    outs = []
    for t in range(T):
        s = dict(q=x["q"][:, :, t:t + 1], k=x["k"][:, :, t:t + 1], v=x["v"][:, :, t:t + 1], cache_k=ck,
                 cache_v=cv, prefix_k=x["prefix_k"], prefix_v=x["prefix_v"], mask=x["mask"][:, :t + 1])
        out, ck, cv, _ = _decode(step, s, f"step {t}: run_prefix_decode_step(..., cache of {t} tokens, ...)")
        ck, cv = ck.astype(np.float32), cv.astype(np.float32)
        outs.append(out)
    y = np.concatenate(outs, 2)
    expected = padded_prefix_attention64(*(x[n].astype(np.float64) for n in _ARGS), x["mask"])
    assert_close(_rows(y, x["mask"]), _rows(expected, x["mask"]), f"token-by-token decoding (mask "
                 f"{x['mask'].tolist()}) vs full padded prefix attention at the real positions", atol=2e-5, rtol=1e-4)
    assert_close(ck, x["k"], "the cache after T steps vs k of all T tokens", atol=0, rtol=0)


# ---- part 3: the attention layer with its cache --------------------------------------------------

def attention_layer64(x, Wa, ba, Wp, bp, H, pk, pv, ck, cv, mask):
    """The layer in float64: [q | k | v] = x Wa^T + ba, H heads of D, keys/values appended to the cache,
    the padded prefix attention of part 1 for the queries at L .. L+T-1, heads merged, then Wp, bp.
    Returns (y (B, T, C), K (B, H, L + T, D), V); y is NaN at padding tokens (not graded)."""
    B, T, C = x.shape
    D, L = C // H, ck.shape[2]
    qkv = np.einsum("btc,oc->bto", x, Wa) + ba                             # (B, T, 3C)
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(3))
    K, V = np.concatenate([ck, k], 2), np.concatenate([cv, v], 2)          # (B, H, L + T, D)
    Q = np.concatenate([np.zeros_like(ck), q], 2)                          # queries at L .. L+T-1
    out = padded_prefix_attention64(Q, K, V, pk, pv, mask)[:, :, L:]       # (B, H, T, D)
    y = np.einsum("btc,oc->bto", out.transpose(0, 2, 1, 3).reshape(B, T, C), Wp) + bp
    return y, K, V


@st.composite
def _layer_inputs(draw, min_t=1):
    """x (B, T, C) and the layer's weights (scaled by 1/sqrt(C)), H heads, a prefix of P = 0..3, a
    cache of L = 0..4 tokens, attention_mask (B, L + T) with padding; all from a drawn seed."""
    B, H, D = draw(st.integers(1, 2)), draw(st.integers(1, MAX_H)), draw(st.integers(1, 4))
    T, L, P = draw(st.integers(min_t, 5)), draw(st.integers(0, 4)), draw(st.integers(0, 3))
    C = H * D
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    f = lambda *shape, s=1.0: (s * rng.uniform(-1, 1, shape)).astype(np.float32)   # noqa: E731
    x = dict(x=f(B, T, C, s=2.0), W_attn=f(3 * C, C, s=C ** -0.5), b_attn=f(3 * C, s=0.5), W_proj=f(C, C, s=C ** -0.5),
             b_proj=f(C, s=0.5), n_head=H, prefix_k=f(B, H, P, D, s=2.0), prefix_v=f(B, H, P, D, s=2.0),
             cache_k=f(B, H, L, D, s=2.0), cache_v=f(B, H, L, D, s=2.0))
    x["mask"] = _pad_mask(draw, B, L + T)
    return x


_LAYER_ARGS = ("x", "W_attn", "b_attn", "W_proj", "b_proj", "n_head", "prefix_k", "prefix_v", "cache_k", "cache_v",
               "mask")


def _layer(fn, x, what="run_prefix_attention_layer(x, W_attn, b_attn, W_proj, b_proj, n_head, pk, pv, cache_k, "
                       "cache_v, attention_mask)"):
    args = [x[n] if n == "n_head" else torch.tensor(x[n]) if n == "mask" else tensor(x[n]) for n in _LAYER_ARGS]
    y, ck, cv = _triple(fn(*args), what)
    B, T, C = x["x"].shape
    _, H, L, D = x["cache_k"].shape
    return (output(y, (B, T, C), what + "[0]"), output(ck, (B, H, L + T, D), what + "[1]"),
            output(cv, (B, H, L + T, D), what + "[2]"))


def _real_rows(y, mask, L):
    """y (B, T, C) at the new tokens that are real: (n, C)."""
    b, t = np.nonzero(mask[:, L:])
    return y[b, t]


@property_check("run_prefix_attention_layer", lesson=7, examples=30, x=_layer_inputs())
def prefix_attention_layer_matches_formula(layer, x):
    """prefix_attention_layer equals the float64 layer: [q | k | v] = x W_attn^T + b_attn, n_head
    heads of D, the cache grown by the new keys/values, part 1's attention for the queries at L ..
    L+T-1, heads merged, W_proj, b_proj (y at the real new tokens; the returned cache everywhere)."""
    y, ck, cv = _layer(layer, x)
    L = x["cache_k"].shape[2]
    y64, K, V = attention_layer64(*(x[n] if n in ("n_head", "mask") else x[n].astype(np.float64) for n in _LAYER_ARGS))
    what = f"run_prefix_attention_layer (n_head={x['n_head']}, L={L}, mask {x['mask'].tolist()})"
    assert_close(_real_rows(y, x["mask"], L), _real_rows(y64, x["mask"], L), f"{what}: y at the real new tokens vs "
                 f"the float64 layer", atol=5e-5, rtol=1e-4)
    assert_close(ck, K, f"{what}: the returned cache_k vs [cache_k ; the new tokens' keys]", atol=2e-5, rtol=1e-5)
    assert_close(cv, V, f"{what}: the returned cache_v vs [cache_v ; the new tokens' values]", atol=2e-5, rtol=1e-5)


@property_check("run_prefix_attention_layer", lesson=7, examples=30, x=_layer_inputs(min_t=2), data=st.data())
def prefix_attention_layer_in_two_calls(layer, x, data):
    """the cache works at the layer's level: the new tokens in two calls (the first j, then the rest
    with the cache the first call returned) give the same y and the same final cache as one call."""
    T, L = x["x"].shape[1], x["cache_k"].shape[2]
    j = data.draw(st.integers(1, T - 1), label="j")
    y, ck, cv = _layer(layer, x)
    first = dict(x, x=x["x"][:, :j], mask=x["mask"][:, :L + j])
    y1, ck1, cv1 = _layer(layer, first, "first call: run_prefix_attention_layer(x[:, :j], ...)")
    rest = dict(x, x=x["x"][:, j:], cache_k=ck1.astype(np.float32), cache_v=cv1.astype(np.float32))
    y2, ck2, cv2 = _layer(layer, rest, "second call: run_prefix_attention_layer(x[:, j:], ..., its cache, ...)")
    what = f"two calls split at j={j} (L={L}, mask {x['mask'].tolist()}) vs one call"
    assert_close(_real_rows(np.concatenate([y1, y2], 1), x["mask"], L), _real_rows(y, x["mask"], L),
                 f"{what}: y at the real new tokens", atol=2e-5, rtol=1e-4)
    assert_close(ck2, ck, f"{what}: the final cache_k", atol=1e-6, rtol=1e-6)
    assert_close(cv2, cv, f"{what}: the final cache_v", atol=1e-6, rtol=1e-6)


@property_check("run_prefix_attention_layer", lesson=7, examples=30, x=_layer_inputs(), seed=st.integers(0, 2 ** 16))
def prefix_attention_layer_padding_does_not_leak(layer, x, seed):
    """a padding token changes no real token's output: replacing x at the new padding tokens and the
    cache at the cached padding tokens by huge values (+-1e3, signs from `seed`) leaves y at the
    real new tokens unchanged."""
    mask, L = x["mask"], x["cache_k"].shape[2]
    assume(mask[:, L:].any() and not mask.all())
    rng = np.random.default_rng(seed)
    big = lambda a, pad: np.where(pad, 1e3 * rng.choice([-1.0, 1.0], size=a.shape), a).astype(np.float32)   # noqa: E731
    x2 = dict(x, x=big(x["x"], (mask[:, L:] == 0)[:, :, None]),
              cache_k=big(x["cache_k"], (mask[:, :L] == 0)[:, None, :, None]),
              cache_v=big(x["cache_v"], (mask[:, :L] == 0)[:, None, :, None]))
    y = _layer(layer, x)[0]
    y2 = _layer(layer, x2, "run_prefix_attention_layer with huge values at the padding tokens")[0]
    assert_close(_real_rows(y2, mask, L), _real_rows(y, mask, L), f"y at the real new tokens after filling the "
                 f"padding tokens (mask {mask.tolist()}, L={L}) with +-1e3", atol=1e-5, rtol=1e-5)
