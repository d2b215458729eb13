"""Lesson 00 (the transformer): the reference `run_*` functions and their conformance checks.

The reference functions: plain tensors and hyperparameters in, tensors out.

Each one reaches the function minift itself uses, so the conformance checks grade minift's
own code when no `--impl` is given. A student's file or another library's wrapper provides
functions with the same names and signatures; `minift verify --impl FILE` swaps them in.

    run_softmax(x, dim=-1)                         exp(x) / sum exp(x) along dim
    run_gelu(x)                                    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    run_layer_norm(x, weight, bias, eps=1e-5)      (x - mean) / sqrt(var + eps) * weight + bias, last dim
    run_cross_entropy(logits, targets, ignore_index=-100)   mean -log softmax(logits)[target]
    run_causal_attention(q, k, v)                  softmax(q k^T / sqrt(D) + causal mask) v
    run_gpt_block(x, params, n_head, eps=1e-5)     x + Attn(LN_1 x), then + MLP(LN_2 .)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume, strategies as st

from minift.model import Block, GPTConfig, causal_attention

from .harness import (assert_close, attention64, cross_entropy64, gelu64, gpt_block64, layer_norm64, ln_atol,
                      output, property_check, softmax64, tensor, tensor_arg)
from .strategies import (MAX_B, MAX_D, MAX_H, MAX_T, MAX_V, arrays, attention_shapes, block_inputs, dyadic,
                         f32, shapes, shared)


# ---- the reference functions --------------------------------------------------------------------

def run_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax along `dim` (what attention and sampling use). Any shape -> same shape."""
    return torch.softmax(tensor_arg("x", x), dim=dim)


def run_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2's), as in `minift.model.MLP`. Any shape -> same shape."""
    return F.gelu(tensor_arg("x", x), approximate="tanh")


def run_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim (biased variance), as `nn.LayerNorm` in `minift.model.Block`.
    x: (..., C); weight, bias: (C,). Returns (..., C)."""
    x, weight, bias = tensor_arg("x", x), tensor_arg("weight", weight), tensor_arg("bias", bias)
    C = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or tuple(weight.shape) != (C,) or tuple(bias.shape) != (C,):
        raise ValueError(f"run_layer_norm: weight and bias must have shape (C,)=({C},) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)} and {tuple(bias.shape)}")
    return F.layer_norm(x, (C,), weight.to(x.dtype), bias.to(x.dtype), eps)


def run_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                      ignore_index: int = -100) -> torch.Tensor:
    """Mean over non-ignored rows of -log softmax(logits)[target], as in `GPT.forward`.
    logits: (N, V) float; targets: (N,) integer. Returns a scalar."""
    logits, targets = tensor_arg("logits", logits), tensor_arg("targets", targets)
    if logits.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"run_cross_entropy: expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    return F.cross_entropy(logits, targets.long(), ignore_index=ignore_index)


def run_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product causal attention, `minift.model.causal_attention` with no extra mask.
    q, k, v: (B, H, T, D). Returns (B, H, T, D)."""
    q, k, v = tensor_arg("q", q), tensor_arg("k", k), tensor_arg("v", v)
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"run_causal_attention: q, k, v must share one shape (B, H, T, D), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return causal_attention(q, k, v)


def run_gpt_block(x: torch.Tensor, params: dict, n_head: int, eps: float = 1e-5) -> torch.Tensor:
    """One GPT block in eval mode: a `minift.model.Block` loaded with `params`.

    x: (B, T, C). params: exactly the keys of `Block(cfg).state_dict()` (bias=True), nn.Linear
    layout, e.g. "attn.c_attn.weight" (3C, C). n_head must divide C. Returns (B, T, C).
    """
    x = tensor_arg("x", x)
    if x.dim() != 3:
        raise ValueError(f"run_gpt_block: x must have shape (B, T, C), got {tuple(x.shape)}")
    B, T, C = x.shape
    if not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"run_gpt_block: n_head={n_head!r} must be a positive integer dividing C={C}")
    cfg = GPTConfig(vocab_size=1, block_size=max(T, 1), n_layer=1, n_head=n_head, n_embd=C,
                    dropout=0.0, bias=True, layer_norm_epsilon=eps)
    block = Block(cfg).to(device=x.device, dtype=x.dtype).eval()
    block.load_state_dict(params, strict=True)   # names every missing / unexpected / misshapen key
    with torch.no_grad():
        y, _ = block(x)
    return y                                                               # (B, T, C)


# ---- the checks ----------------------------------------------------------------------------------

def _dims(shape):
    return st.integers(-len(shape), len(shape) - 1)


def _softmax_inputs(key: str, lo: float, hi: float) -> dict:
    """x of a small shape (1 to 3 dims) and a dim to normalise along (negative or not)."""
    shape = shared(shapes(1, 3), key)
    return dict(x=arrays(shape, f32(lo, hi)), dim=shared(shape.flatmap(_dims), key + "-dim"))


def _row_constants(key: str):
    """c of the shape `_softmax_inputs(key, ...)` drew, with size 1 along its dim: one constant per
    row (|c| <= 20)."""
    shape = shared(shapes(1, 3), key)
    return st.tuples(shape, shared(shape.flatmap(_dims), key + "-dim")).flatmap(
        lambda sd: arrays(tuple(1 if i == sd[1] % len(sd[0]) else n for i, n in enumerate(sd[0])), f32(-20, 20)))


@property_check("run_softmax", lesson=0, examples=50, **_softmax_inputs("sm1", -30, 30))
def softmax_sums_to_one(softmax, x, dim):
    """softmax(x, dim) is a probability distribution along dim: entries in [0, 1] that sum to 1
    (|x| <= 30)."""
    y = output(softmax(tensor(x), dim=dim), x.shape, "run_softmax(x, dim)")
    assert_close(np.clip(y, 0.0, 1.0), y, "run_softmax(x, dim) entries outside [0, 1]", atol=1e-7, rtol=0)
    assert_close(y.sum(axis=dim), np.ones(np.delete(x.shape, dim % x.ndim)),
                 "run_softmax(x, dim).sum(dim)", atol=1e-5, rtol=0)


@property_check("run_softmax", lesson=0, examples=50, **_softmax_inputs("sm2", -20, 20))
def softmax_matches_formula(softmax, x, dim):
    """softmax(x, dim) equals exp(x) / sum exp(x) along dim, computed in float64, for moderate inputs
    (|x| <= 20)."""
    x64 = x.astype(np.float64)
    e = np.exp(x64)                                        # unshifted: fine for |x| <= 20
    expected = e / e.sum(axis=dim, keepdims=True)
    y = output(softmax(tensor(x), dim=dim), x.shape, "run_softmax(x, dim)")
    assert_close(y, expected, "run_softmax(x, dim) vs exp(x)/sum(exp(x))", atol=1e-6, rtol=1e-5)


@property_check("run_softmax", lesson=0, examples=50, **_softmax_inputs("sm3", -10, 10),
                c=_row_constants("sm3"))
def softmax_shift_invariant(softmax, x, dim, c):
    """softmax(x + c, dim) equals softmax(x, dim) for c constant along dim (a different constant per
    row; |x| <= 10, |c| <= 20)."""
    y = output(softmax(tensor(x), dim=dim), x.shape, "run_softmax(x, dim)")
    y_shift = output(softmax(tensor(x + c), dim=dim), x.shape, "run_softmax(x + c, dim)")
    assert_close(y_shift, y, "run_softmax(x + c, dim) vs run_softmax(x, dim)", atol=1e-5, rtol=1e-4)


@property_check("run_softmax", lesson=0, examples=60, **_softmax_inputs("sm4", -1e4, 1e4))
def softmax_stable_large(softmax, x, dim):
    """softmax is numerically stable: for float32 inputs up to |x| = 1e4 it is finite and equals
    the shifted float64 formula exp(x - max) / sum exp(x - max)."""
    y = output(softmax(tensor(x), dim=dim), x.shape, "run_softmax(x, dim)")
    assert_close(y, softmax64(x.astype(np.float64), axis=dim),
                 "run_softmax(x, dim) vs exp(x - max)/sum(exp(x - max))", atol=1e-6, rtol=1e-4)


@property_check("run_gelu", lesson=0, examples=50, x=arrays(shapes(1, 3), f32(-12, 12)))
def gelu_matches_formula(gelu, x):
    """gelu(x) equals the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) in float64
    (not the exact erf GELU)."""
    y = output(gelu(tensor(x)), x.shape, "run_gelu(x)")
    assert_close(y, gelu64(x.astype(np.float64)), "run_gelu(x) vs tanh-approximation formula",
                 atol=1e-6, rtol=1e-5)


@property_check("run_gelu", lesson=0, examples=40, x=arrays(shapes(1, 3), f32(-12, 12)))
def gelu_odd_part_is_identity(gelu, x):
    """gelu(0) = 0 and gelu(x) - gelu(-x) = x (GELU is x times a function phi with phi(x) + phi(-x)
    = 1)."""
    zero = output(gelu(tensor(np.zeros_like(x))), x.shape, "run_gelu(0)")
    assert_close(zero, np.zeros(x.shape), "run_gelu(0)", atol=0, rtol=0)
    y = output(gelu(tensor(x)), x.shape, "run_gelu(x)")
    y_neg = output(gelu(tensor(-x)), x.shape, "run_gelu(-x)")
    assert_close(y - y_neg, x.astype(np.float64), "run_gelu(x) - run_gelu(-x) vs x", atol=1e-5, rtol=1e-5)


def _ln_inputs(key: str, min_c: int, x_elems) -> dict:
    """x (..., C) and a weight and bias (C,) of one drawn shape."""
    shape = shared(shapes(1, 3, max_last=16, min_last=min_c), key)
    wshape = shape.map(lambda s: (s[-1],))
    return dict(x=arrays(shape, x_elems), weight=arrays(wshape, f32(-3, 3)), bias=arrays(wshape, f32(-3, 3)))


@property_check("run_layer_norm", lesson=0, examples=60, **_ln_inputs("ln1", 2, f32(-10, 10)),
                eps=st.sampled_from([1e-5, 1e-2]))
def layer_norm_matches_formula(layer_norm, x, weight, bias, eps):
    """layer_norm(x, w, b, eps) equals (x - mean) / sqrt(var + eps) * w + b over the last dim, with
    the biased variance (divide by C), in float64 (C >= 2)."""
    y = output(layer_norm(tensor(x), tensor(weight), tensor(bias), eps=eps), x.shape,
               "run_layer_norm(x, weight, bias, eps)")
    x64, w64, b64 = (a.astype(np.float64) for a in (x, weight, bias))
    assert_close(y, layer_norm64(x64, w64, b64, eps), "run_layer_norm vs (x - mean)/sqrt(var + eps)*w + b",
                 atol=ln_atol(x64, w64, eps), rtol=1e-5)


def _spread(x: np.ndarray) -> np.ndarray:
    """x[..., 0] = x[..., 1] + 2, so every row has variance >= 4 / (2 C) >= 1/8: non-negligible."""
    x = x.copy()
    x[..., 0] = x[..., 1] + 2.0
    return x


@property_check("run_layer_norm", lesson=0, examples=40,
                x=arrays(shapes(1, 3, max_last=16, min_last=2), f32(-10, 10)).map(_spread))
def layer_norm_standardizes(layer_norm, x):
    """with weight 1 and bias 0 each row of layer_norm(x) has mean 0 and (biased) variance 1, up to eps
    / var (rows of C >= 2 with variance >= 1/8)."""
    C = x.shape[-1]
    y = output(layer_norm(tensor(x), torch.ones(C), torch.zeros(C), eps=1e-5), x.shape,
               "run_layer_norm(x, ones, zeros, eps=1e-5)")
    var_in = x.astype(np.float64).var(axis=-1)
    assert_close(y.mean(axis=-1), np.zeros(x.shape[:-1]), "row mean of run_layer_norm(x, 1, 0)",
                 atol=1e-5, rtol=0)
    assert_close(y.var(axis=-1), np.ones(x.shape[:-1]),
                 "row variance (divide by C) of run_layer_norm(x, 1, 0)", atol=1e-5 / var_in + 1e-4, rtol=0)


@property_check("run_layer_norm", lesson=0, examples=40, **_ln_inputs("ln3", 2, dyadic(-8, 8)),
                a=st.sampled_from([0.25, 0.5, 2.0, 4.0]),
                c=shared(shapes(1, 3, max_last=16, min_last=2), "ln3").flatmap(
                    lambda s: arrays(s[:-1] + (1,), dyadic(-8, 8, 1))), eps=st.sampled_from([1e-5, 1e-2]))
def layer_norm_affine_invariant(layer_norm, x, weight, bias, a, c, eps):
    """layer_norm(a x + c, eps = a^2 eps0) equals layer_norm(x, eps0) for a > 0 and c constant per row
    (C >= 2; on a dyadic grid, so a x + c is exact in float32)."""
    z = (a * x + c).astype(np.float32)                     # exact: powers of two and integers
    y = output(layer_norm(tensor(x), tensor(weight), tensor(bias), eps=eps), x.shape, "run_layer_norm(x, w, b, eps)")
    y_aff = output(layer_norm(tensor(z), tensor(weight), tensor(bias), eps=eps * a * a), x.shape,
                   "run_layer_norm(a x + c, w, b, a^2 eps)")
    w64 = weight.astype(np.float64)
    tol = ln_atol(x, w64, eps) + ln_atol(z, w64, eps * a * a)
    assert_close(y_aff, y, "run_layer_norm(a x + c, w, b, a^2 eps) vs run_layer_norm(x, w, b, eps)",
                 atol=tol, rtol=1e-5)


@st.composite
def _ce_targets(draw, n: int, v: int, ignore_index: int, min_ignored: int = 0):
    """(n,) int64 targets in [0, v) or ignore_index; row 0 always real (the mean is defined)."""
    t = [draw(st.integers(0, v - 1))] + [draw(st.one_of(st.integers(0, v - 1), st.just(ignore_index)))
                                         for _ in range(n - 1)]
    for i in range(1, min(min_ignored + 1, n)):
        t[i] = ignore_index
    return np.array(t, dtype=np.int64)


def _ce_inputs(key: str, lo: float, hi: float, min_ignored: int = 0, min_n: int = 1) -> dict:
    """logits (N, V), targets (N,) and the ignore_index they use, of one drawn (N, V)."""
    nv = shared(st.tuples(st.integers(min_n, MAX_T), st.integers(1, MAX_V)), key)
    ii = shared(st.sampled_from([-100, -1]), key + "-ii")
    logits = nv.flatmap(lambda s: arrays(s, f32(lo, hi)))
    targets = st.tuples(nv, ii).flatmap(lambda a: _ce_targets(a[0][0], a[0][1], a[1], min_ignored))
    return dict(logits=logits, targets=targets, ignore_index=ii)


@property_check("run_cross_entropy", lesson=0, examples=50, **_ce_inputs("ce1", -20, 20))
def cross_entropy_matches_formula(ce, logits, targets, ignore_index):
    """cross_entropy(logits, targets, ignore_index) equals the mean over non-ignored rows of -log
    softmax(logits)[target], in float64."""
    loss = output(ce(tensor(logits), torch.tensor(targets), ignore_index=ignore_index), (),
                  "run_cross_entropy(logits, targets, ignore_index)")
    assert_close(loss, cross_entropy64(logits.astype(np.float64), targets, ignore_index),
                 "run_cross_entropy vs mean(-log softmax(logits)[target])", atol=1e-5, rtol=1e-5)


@property_check("run_cross_entropy", lesson=0, examples=50,
                **_ce_inputs("ce2", -20, 20, min_ignored=1, min_n=2),
                other=shared(st.tuples(st.integers(2, MAX_T), st.integers(1, MAX_V)), "ce2").flatmap(
                    lambda s: arrays(s, f32(-1e3, 1e3))))
def cross_entropy_ignores_ignored_targets(ce, logits, targets, ignore_index, other):
    """rows whose target is ignore_index do not count: changing their logits leaves the loss unchanged,
    and it equals the loss over the kept rows alone."""
    ignored = targets == ignore_index
    changed = np.where(ignored[:, None], other, logits)    # new logits on ignored rows only
    what = "run_cross_entropy(logits, targets, ignore_index)"
    loss = output(ce(tensor(logits), torch.tensor(targets), ignore_index=ignore_index), (), what)
    loss_changed = output(ce(tensor(changed), torch.tensor(targets), ignore_index=ignore_index), (),
                          "run_cross_entropy with the ignored rows' logits changed")
    assert_close(loss_changed, loss, f"{what}, ignored rows' logits changed, vs unchanged",
                 atol=1e-6, rtol=1e-6)
    loss_kept = output(ce(tensor(logits[~ignored]), torch.tensor(targets[~ignored]), ignore_index=ignore_index),
                       (), "run_cross_entropy(logits[kept], targets[kept])")
    assert_close(loss, loss_kept, f"{what} vs the same over the non-ignored rows only",
                 atol=1e-6, rtol=1e-5)


def _near_ties(key: str):
    """Logits of the shape `_ce_inputs(key, ...)` drew: one large centre c (4096 <= |c| <= 1e4) plus
    offsets in [-8, 8], so the losses are small but not negligible next to c (where float32 numbers
    are 2^-11 apart and adding c back first loses digits)."""
    nv = shared(st.tuples(st.integers(1, MAX_T), st.integers(1, MAX_V)), key)
    return nv.flatmap(lambda s: st.tuples(f32(4096, 1e4), st.sampled_from([1.0, -1.0]), arrays(s, dyadic(-8, 8))))\
        .map(lambda t: (t[0] * t[1] + t[2]).astype(np.float32))


_CE3 = _ce_inputs("ce3", -1e4, 1e4)


@property_check("run_cross_entropy", lesson=0, examples=50, **dict(_CE3, logits=st.one_of(_CE3["logits"], _near_ties("ce3"))),
                explicit=[dict(logits=np.array([[5000.0, 4999.0, -3.0]], np.float32), targets=np.array([0]),
                               ignore_index=-100)])
def cross_entropy_stable_large(ce, logits, targets, ignore_index):
    """cross-entropy is numerically stable: logits up to |1e4| in float32 (near ties at |c| >= 4096
    too) give a finite loss equal to the float64 log-sum-exp formula."""
    loss = output(ce(tensor(logits), torch.tensor(targets), ignore_index=ignore_index), (),
                  "run_cross_entropy(logits, targets, ignore_index)")
    assert_close(loss, cross_entropy64(logits.astype(np.float64), targets, ignore_index),
                 "run_cross_entropy vs float64 log-sum-exp formula", atol=1e-4, rtol=1e-5)


def _qkv(key: str, *names: str) -> dict:
    """Arrays of one drawn (B, H, T, D) in [-3, 3], one per name (q, k, v unless named)."""
    shape = shared(attention_shapes(), key)
    return {n: arrays(shape, f32(-3, 3)) for n in names or ("q", "k", "v")}


@property_check("run_causal_attention", lesson=0, examples=50, **_qkv("at1"))
def causal_attention_matches_naive_loop(attention, q, k, v):
    """causal_attention(q, k, v) equals the naive loop over queries: out_t = softmax(q_t . k_s
    / sqrt(D), s <= t) weighted sum of v_s, in float64."""
    y = output(attention(tensor(q), tensor(k), tensor(v)), q.shape, "run_causal_attention(q, k, v)")
    expected = attention64(*(a.astype(np.float64) for a in (q, k, v)))
    assert_close(y, expected, "run_causal_attention vs naive per-query loop", atol=2e-5, rtol=1e-4)


@property_check("run_causal_attention", lesson=0, examples=50, **_qkv("at2", "q", "k", "v", "k_new", "v_new"),
                t=shared(attention_shapes(), "at2").flatmap(lambda s: st.integers(0, s[2] - 1)))
def causal_attention_is_causal(attention, q, k, v, k_new, v_new, t):
    """causality: changing k and v at positions > t leaves the output at positions <= t unchanged."""
    k2, v2 = k.copy(), v.copy()
    k2[:, :, t + 1:], v2[:, :, t + 1:] = k_new[:, :, t + 1:], v_new[:, :, t + 1:]   # the future
    y = output(attention(tensor(q), tensor(k), tensor(v)), q.shape, "run_causal_attention(q, k, v)")
    y2 = output(attention(tensor(q), tensor(k2), tensor(v2)), q.shape, "run_causal_attention(q, k', v')")
    assert_close(y2[:, :, :t + 1], y[:, :, :t + 1],
                 f"output at positions <= t={t} after changing k, v at positions > t", atol=1e-6, rtol=1e-5)


def _block_args():
    return dict(B=st.integers(1, MAX_B), T=st.integers(1, MAX_T), n_head=st.integers(1, MAX_H),
                head_dim=st.integers(1, MAX_D), seed=st.integers(0, 2 ** 32 - 1))


@property_check("run_gpt_block", lesson=0, examples=40, **_block_args(), eps=st.sampled_from([1e-5, 1e-3]))
def gpt_block_matches_formula(block, B, T, n_head, head_dim, seed, eps):
    """gpt_block(x, params, n_head, eps) equals x + c_proj(Attn(LN_1 x)), then
    + mlp.c_proj(GELU(mlp.c_fc(LN_2 .))), written out in float64 with the naive attention loop
    (inputs: strategies.block_inputs(B, T, n_head, head_dim, seed))."""
    assume(n_head * head_dim >= 2)                         # C = 1: LayerNorm is just its bias
    x, params = block_inputs(B, T, n_head, head_dim, seed)
    expected = gpt_block64(x.double().numpy(), params, n_head, eps)
    y = output(block(x.clone(), {k: v.clone() for k, v in params.items()}, n_head, eps=eps), x.shape,
               "run_gpt_block(x, params, n_head, eps)")
    assert_close(y, expected, "run_gpt_block vs explicit float64 block", atol=1e-4, rtol=1e-4)


@property_check("run_gpt_block", lesson=0, examples=40, **_block_args(), seed_new=st.integers(0, 2 ** 32 - 1),
                t=st.integers(0, MAX_T - 1))
def gpt_block_is_causal(block, B, T, n_head, head_dim, seed, seed_new, t):
    """the block is causal: changing x at positions > t leaves the output at positions <= t unchanged
    (inputs: strategies.block_inputs(..., seed), new future from seed_new)."""
    assume(n_head * head_dim >= 2)
    t = min(t, T - 1)
    x, params = block_inputs(B, T, n_head, head_dim, seed)
    x2 = x.clone()
    x2[:, t + 1:] = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed_new))[:, t + 1:]
    y = output(block(x.clone(), {k: v.clone() for k, v in params.items()}, n_head), x.shape,
               "run_gpt_block(x, params, n_head)")
    y2 = output(block(x2, {k: v.clone() for k, v in params.items()}, n_head), x.shape,
                "run_gpt_block(x', params, n_head)")
    assert_close(y2[:, :t + 1], y[:, :t + 1],
                 f"block output at positions <= t={t} after changing x at positions > t",
                 atol=1e-5, rtol=1e-5)
