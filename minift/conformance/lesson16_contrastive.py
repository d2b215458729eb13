"""Lesson 16 (contrastive learning): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions, contrastive learning (minift/align/contrastive.py): plain tensors
and hyperparameters in, tensors out.

    run_info_nce(a, b, temperature, negatives, symmetric)   mean_i -log softmax_j(cos(a_i, [b; n]_j)/τ)[i]
    run_sentence_embedding(h, attention_mask, pooling)      mean of h over real tokens, or the last real one

The checks, registered into `CHECKS` with lesson="lesson16". Expected values are computed here
independently (a float64 loop over anchors), never by calling minift's reference functions.

    run_info_nce(a, b, τ, negatives, symmetric)   the textbook loss, anchor by anchor, in float64;
                                                  invariant to permuting the batch consistently;
                                                  log(N + M) for identical embeddings (symmetric:
                                                  (log(N + M) + log N) / 2); lower as
                                                  each positive turns towards its anchor
    run_sentence_embedding(h, mask, pooling)      the masked mean / the last real token, in float64;
                                                  whatever sits at padded positions never matters
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from hypothesis import assume, strategies as st

from minift.align.contrastive import info_nce, pool

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, MAX_T, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def run_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05,
                 negatives: Optional[torch.Tensor] = None, symmetric: bool = False) -> torch.Tensor:
    """InfoNCE with in-batch negatives over cosine similarities, as `minift.align.contrastive.info_nce`:

        ℓ_i = -log exp(cos(a_i, b_i)/τ) / [Σ_j exp(cos(a_i, b_j)/τ) + Σ_k exp(cos(a_i, n_k)/τ)]
        L = mean_i ℓ_i;   symmetric: (L + L_{b -> a}) / 2, the b -> a direction over the a_j only

    a, b: (N, C), row i of b the positive of row i of a; negatives: None or (M, C). Returns a
    0-dim tensor. Uninformative (all equal) embeddings give log(N + M); symmetric,
    (log(N + M) + log N) / 2 (the b -> a direction has N candidates)."""
    a, b = tensor_arg("a", a), tensor_arg("b", b)
    if negatives is not None:
        negatives = tensor_arg("negatives", negatives)
    with torch.no_grad():
        return info_nce(a, b, temperature, negatives, symmetric)


def run_sentence_embedding(h: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "last") -> torch.Tensor:
    """One vector per sequence from hidden states h (B, T, C) and attention_mask (B, T) (1 = real):
    pooling="mean": Σ_t m_t h_t / Σ_t m_t; pooling="last": h at the last position with m_t = 1.
    What sits at padded positions never matters. Returns (B, C)."""
    h, attention_mask = tensor_arg("h", h), tensor_arg("attention_mask", attention_mask)
    with torch.no_grad():
        return pool(h, attention_mask, pooling)


# ---- the checks ----------------------------------------------------------------------------------

TAUS = (0.05, 0.1, 0.5, 1.0)


def _unit64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def info_nce64(a, b, tau, neg=None, symmetric=False) -> float:
    """ℓ_i = -cos(a_i, b_i)/τ + log Σ_c exp(cos(a_i, c)/τ) over c in [b; n], one anchor at a time."""
    a, b = _unit64(a), _unit64(b)
    cands = b if neg is None or len(neg) == 0 else np.concatenate([b, _unit64(neg)])

    def one_way(x, ys):
        total = 0.0
        for i in range(len(x)):
            s = [float(x[i] @ y) / tau for y in ys]
            m = max(s)
            total += -s[i] + m + math.log(sum(math.exp(v - m) for v in s))
        return total / len(x)
    loss = one_way(a, cands)
    return 0.5 * (loss + one_way(b, a)) if symmetric else loss


@st.composite
def _batch(draw, with_negatives=True):
    """a, b (N, C), negatives (M, C) or None (rows of norm > 0.2), τ, symmetric."""
    N = draw(st.integers(1, 2 * MAX_B))
    C = draw(st.integers(2, MAX_D))
    M = draw(st.integers(0, 3)) if with_negatives else 0
    a = draw(arrays((N, C), f32(-3, 3)))
    b = draw(arrays((N, C), f32(-3, 3)))
    n = draw(arrays((M, C), f32(-3, 3))) if M else None
    for x in (a, b) + ((n,) if M else ()):
        assume(np.linalg.norm(x.astype(np.float64), axis=1).min() > 0.2)
    return dict(a=a, b=b, negatives=n, temperature=draw(st.sampled_from(TAUS)), symmetric=draw(st.booleans()))


def _call(info_nce, inp, **over):
    inp = {**inp, **over}
    n = inp["negatives"]
    what = (f"run_info_nce(a {inp['a'].shape}, b, temperature={inp['temperature']}, negatives "
            f"{None if n is None else n.shape}, symmetric={inp['symmetric']})")
    y = info_nce(tensor(inp["a"]), tensor(inp["b"]), inp["temperature"], None if n is None else tensor(n), inp["symmetric"])
    return float(output(y, (), what)), what


def _tol(tau: float) -> float:
    return 2e-5 / tau + 1e-5                    # float32 cosines (rel. 1e-7) scaled by 1/τ


@property_check("run_info_nce", lesson=16, examples=60, inp=_batch())
def info_nce_matches_formula(info_nce, inp):
    """run_info_nce(a, b, τ, negatives, symmetric) equals the textbook InfoNCE over cosine
    similarities, mean_i [-cos(a_i, b_i)/τ + log Σ_c exp(cos(a_i, c)/τ)], c over the b_j
    and the negatives (symmetric: averaged with the b -> a direction over the a_j), in float64."""
    got, what = _call(info_nce, inp)
    expected = info_nce64(inp["a"], inp["b"], inp["temperature"], inp["negatives"], inp["symmetric"])
    assert_close(np.array(got), np.array(expected), f"{what} vs the float64 formula",
                 atol=_tol(inp["temperature"]), rtol=1e-5)


@property_check("run_info_nce", lesson=16, examples=40, inp=_batch(), seed=st.integers(0, 2 ** 16))
def info_nce_permutation_invariant(info_nce, inp, seed):
    """InfoNCE is a function of the set of pairs: permuting the rows of a and b by the same permutation
    (and the negatives by any) leaves the loss unchanged."""
    rng = np.random.default_rng(seed)
    p = rng.permutation(len(inp["a"]))
    n = inp["negatives"]
    before, what = _call(info_nce, inp)
    after, _ = _call(info_nce, inp, a=inp["a"][p], b=inp["b"][p],
                     negatives=None if n is None else n[rng.permutation(len(n))])
    assert_close(np.array(after), np.array(before), f"{what} with rows permuted by {p.tolist()} vs unpermuted",
                 atol=_tol(inp["temperature"]), rtol=1e-5)


@property_check("run_info_nce", lesson=16, examples=40, v=arrays((MAX_D,), f32(0.5, 2)),
                N=st.integers(1, 2 * MAX_B), M=st.integers(0, 3), C=st.integers(1, MAX_D),
                tau=st.sampled_from(TAUS), symmetric=st.booleans(),
                scales=arrays((2 * MAX_B + 3,), f32(0.5, 4)))
def info_nce_uninformative_is_log_n(info_nce, v, N, M, C, tau, symmetric, scales):
    """uninformative embeddings (every a_i, b_j and negative the same direction, any lengths) score
    every candidate alike: the loss is log(N + M) (symmetric: (log(N + M) + log N) / 2)."""
    u = v[:C]
    rows = scales[:, None] * u[None]                                   # one direction, many lengths
    inp = dict(a=rows[:N], b=rows[N:2 * N] if 2 * N <= len(rows) else rows[:N][::-1].copy(),
               negatives=rows[-M:].copy() if M else None, temperature=tau, symmetric=symmetric)
    got, what = _call(info_nce, inp)
    expected = 0.5 * (math.log(N + M) + math.log(N)) if symmetric else math.log(N + M)
    formula = "(log(N + M) + log N) / 2" if symmetric else "log(N + M)"
    assert_close(np.array(got), np.array(expected), f"{what} on identical directions vs {formula}",
                 atol=_tol(tau), rtol=1e-5)


@property_check("run_info_nce", lesson=16, examples=30, N=st.integers(2, MAX_D // 2),
                seed=st.integers(0, 2 ** 16), tau=st.sampled_from(TAUS))
def info_nce_decreases_as_positives_align(info_nce, N, seed, tau):
    """the loss falls as positives align: with orthonormal anchors a_i and b_i(t) = (1 - t) c_i + t a_i
    (c orthonormal, orthogonal to every a), it is log N at t = 0, never rises with t, and reaches
    log(1 + (N - 1) e^{-1/τ}) at t = 1."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(2 * N, 2 * N)))
    a, c = Q[:N].astype(np.float32), Q[N:].astype(np.float32)
    losses = []
    for t in np.linspace(0.0, 1.0, 5):
        b = ((1 - t) * c + t * a).astype(np.float32)
        got, what = _call(info_nce, dict(a=a, b=b, negatives=None, temperature=tau, symmetric=False))
        losses.append(got)
    assert_close(np.array(losses[0]), np.array(math.log(N)), f"{what} at t = 0 (all cosines 0) vs log N",
                 atol=_tol(tau), rtol=1e-5)
    end = math.log1p((N - 1) * math.exp(-1 / tau))
    assert_close(np.array(losses[-1]), np.array(end), f"{what} at t = 1 (b = a) vs log(1 + (N-1) e^(-1/τ))",
                 atol=_tol(tau), rtol=1e-5)
    rises = [(i, losses[i], losses[i + 1]) for i in range(4) if losses[i + 1] > losses[i] + _tol(tau)]
    if rises:
        raise AssertionError(f"{what}: the loss rose as b turned towards a (step, before, after): {rises}; "
                             f"all: {losses}")


# ---- sentence embeddings -------------------------------------------------------------------------

@st.composite
def _hidden(draw):
    """h (B, T, C) float32 with garbage at padded positions, a mask with >= 1 real token per row,
    padded left or right or not at all, row by row."""
    B, T, C = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T)), draw(st.integers(1, MAX_D))
    h = draw(arrays((B, T, C), f32(-4, 4)))
    mask = np.zeros((B, T), np.float32)
    for i in range(B):
        n = draw(st.integers(1, T))
        left = draw(st.booleans())
        mask[i, (T - n if left else 0):(T if left else n)] = 1
    junk = draw(arrays((B, T, C), f32(-1e3, 1e3)))
    return h, mask, junk


@property_check("run_sentence_embedding", lesson=16, examples=50, data=_hidden())
def sentence_embedding_mean_over_real_tokens(emb, data):
    """pooling='mean' averages h over the real tokens only: Σ_t m_t h_t / Σ_t m_t per row, in float64
    (padding on either side)."""
    h, mask, _ = data
    what = f"run_sentence_embedding(h {h.shape}, attention_mask {mask.astype(int).tolist()}, 'mean')"
    got = output(emb(tensor(h), tensor(mask).long(), "mean"), (h.shape[0], h.shape[2]), what)
    h64 = h.astype(np.float64)
    expected = np.stack([h64[i][mask[i] == 1].sum(0) / mask[i].sum() for i in range(len(h))])
    assert_close(got, expected, f"{what} vs the mean over real tokens", atol=1e-5, rtol=1e-5)


@property_check("run_sentence_embedding", lesson=16, examples=50, data=_hidden())
def sentence_embedding_last_real_token(emb, data):
    """pooling='last' is h at each row's last real token (the largest t with m_t = 1), exactly,
    whichever side the padding is on."""
    h, mask, _ = data
    what = f"run_sentence_embedding(h {h.shape}, attention_mask {mask.astype(int).tolist()}, 'last')"
    got = output(emb(tensor(h), tensor(mask).long(), "last"), (h.shape[0], h.shape[2]), what)
    expected = np.stack([h[i, np.nonzero(mask[i])[0].max()] for i in range(len(h))])
    assert_close(got, expected, f"{what} vs h at the last real token", atol=0, rtol=0)


@property_check("run_sentence_embedding", lesson=16, examples=50, data=_hidden(),
                pooling=st.sampled_from(["mean", "last"]))
def sentence_embedding_ignores_padding(emb, data, pooling):
    """padding never changes an embedding: replacing h at every padded position (m_t = 0) by arbitrary
    values leaves both poolings' output unchanged."""
    h, mask, junk = data
    assume((mask == 0).any())
    h2 = np.where(mask[..., None] == 1, h, junk).astype(np.float32)
    what = f"run_sentence_embedding(h, attention_mask {mask.astype(int).tolist()}, {pooling!r})"
    shape = (h.shape[0], h.shape[2])
    clean = output(emb(tensor(np.where(mask[..., None] == 1, h, 0).astype(np.float32)), tensor(mask).long(), pooling),
                   shape, what)
    dirty = output(emb(tensor(h2), tensor(mask).long(), pooling), shape, what)
    assert_close(dirty, clean, f"{what}: padded positions set to junk vs to 0", atol=1e-5, rtol=1e-5)
