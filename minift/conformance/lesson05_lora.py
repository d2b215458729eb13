"""Lesson 05 (LoRA, rsLoRA, DoRA): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_lora_linear(x, W0, b, A, B, alpha, r, rslora=False)  x W0^T + b + s (x A^T) B^T, s = alpha/r (rsLoRA: alpha/sqrt(r))
    run_lora_merge(W0, A, B, scaling)                        W0 + scaling B A in float32, cast back to W0's dtype
    run_dora_linear(x, W0, b, A, B, m, alpha, r)             x W'^T + b, W' = m ⊙ (W0 + s B A) / ‖row of W0 + s B A‖
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from hypothesis import assume, strategies as st

from minift.peft.lora import LoRALinear

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def _lora_shapes(fn: str, x, W0, b, A, B, r=None):
    """Check the LoRA argument shapes in the user's terms; returns (in, out, r)."""
    if W0.dim() != 2:
        raise ValueError(f"{fn}: W0 must be (out, in) (nn.Linear layout), got {tuple(W0.shape)}")
    out_f, in_f = W0.shape
    r = A.shape[0] if r is None else r
    if tuple(A.shape) != (r, in_f) or tuple(B.shape) != (out_f, r):
        raise ValueError(f"{fn}: expected A (r, in)=({r}, {in_f}) and B (out, r)=({out_f}, {r}) for W0 "
                         f"{tuple(W0.shape)}, got A {tuple(A.shape)} and B {tuple(B.shape)}")
    if x is not None and x.shape[-1:] != (in_f,):
        raise ValueError(f"{fn}: x must be (..., in={in_f}), got {tuple(x.shape)}")
    if b is not None and tuple(b.shape) != (out_f,):
        raise ValueError(f"{fn}: b must be (out,)=({out_f},) or None, got {tuple(b.shape)}")
    return in_f, out_f, r


def _lora_layer(W0, b, A, B, alpha, r, rslora=False, m=None) -> LoRALinear:
    out_f, in_f = W0.shape
    lin = nn.Linear(in_f, out_f, bias=b is not None, device=W0.device, dtype=W0.dtype)
    with torch.no_grad():
        lin.weight.copy_(W0)
        if b is not None:
            lin.bias.copy_(b)
    layer = LoRALinear(lin, int(r), float(alpha), use_rslora=bool(rslora), use_dora=m is not None)
    with torch.no_grad():
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
        if m is not None:
            layer.lora_magnitude.copy_(m)
    return layer.eval()


def run_lora_linear(x: torch.Tensor, W0: torch.Tensor, b, A: torch.Tensor, B: torch.Tensor,
                    alpha: float, r: int, rslora: bool = False) -> torch.Tensor:
    """The LoRA layer's forward, `minift.peft.lora.LoRALinear` (no dropout, unmerged):

        h = x W0^T + b + s (x A^T) B^T,    s = alpha / r,   or alpha / sqrt(r) when rslora

    x: (N, in); W0: (out, in) frozen weight (nn.Linear layout); b: (out,) or None; A: (r, in);
    B: (out, r); 1 <= r <= min(in, out). Returns (N, out) in x's dtype."""
    x, W0, A, B = tensor_arg("x", x), tensor_arg("W0", W0), tensor_arg("A", A), tensor_arg("B", B)
    _lora_shapes("run_lora_linear", x, W0, b, A, B, r)
    with torch.no_grad():
        return _lora_layer(W0, b, A, B, alpha, r, rslora)(x)


def run_lora_merge(W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The merged weight of `LoRALinear.merge`: W = W0 + scaling B A, computed in float32 and cast
    back to W0's dtype (so a bfloat16 W0 gives a bfloat16 W, rounded once).

    W0: (out, in); A: (r, in); B: (out, r). Returns (out, in), W0's dtype; W0 is not modified."""
    W0, A, B = tensor_arg("W0", W0), tensor_arg("A", A), tensor_arg("B", B)
    _, _, r = _lora_shapes("run_lora_merge", None, W0, None, A, B)
    layer = _lora_layer(W0.clone(), None, A, B, alpha=1.0, r=r)
    layer.scaling = float(scaling)                                         # s given directly
    layer.merge()
    return layer.weight.detach().clone()


def run_dora_linear(x: torch.Tensor, W0: torch.Tensor, b, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor,
                    alpha: float, r: int) -> torch.Tensor:
    """DoRA's forward, `LoRALinear(use_dora=True)` (no dropout, unmerged):

        V  = W0 + s B A,  s = alpha / r                            (out, in)
        W' = m ⊙ V / ‖V‖   with ‖V‖ the L2 norm of each row of V     (one scale per output)
        h  = x W'^T + b

    x: (N, in); W0: (out, in); b: (out,) or None; A: (r, in); B: (out, r); m: (out,) magnitudes.
    Returns (N, out). (m = ‖W0‖ row-wise and B = 0 give the base layer back.)"""
    x, W0, A, B, m = tensor_arg("x", x), tensor_arg("W0", W0), tensor_arg("A", A), tensor_arg("B", B), tensor_arg("m", m)
    _, out_f, _ = _lora_shapes("run_dora_linear", x, W0, b, A, B, r)
    if tuple(m.shape) != (out_f,):
        raise ValueError(f"run_dora_linear: m must be (out,)=({out_f},), got {tuple(m.shape)}")
    with torch.no_grad():
        return _lora_layer(W0, b, A, B, alpha, r, m=m)(x)


# ---- the checks ----------------------------------------------------------------------------------

def lora64(x, W0, b, A, B, s):
    """x W0^T + b + s (x A^T) B^T in float64 (None bias = 0)."""
    return x @ W0.T + (0.0 if b is None else b) + s * ((x @ A.T) @ B.T)


def _lora_bound(x, W0, b, A, B, s):
    """The same sum with every term in absolute value: the scale float32 rounding is relative to."""
    ax = np.abs(x)
    return ax @ np.abs(W0).T + (0.0 if b is None else np.abs(b)) + abs(s) * ((ax @ np.abs(A).T) @ np.abs(B).T) + 1e-6


@st.composite
def _lora_inputs(draw, bias=None):
    """x (N, in), W0 (out, in), b (out,) or None, A (r, in), B (out, r), alpha; 1 <= r <= min(in, out)."""
    n, fin, fout = draw(st.integers(1, 2 * MAX_B)), draw(st.integers(1, MAX_D)), draw(st.integers(1, MAX_D))
    r = draw(st.integers(1, min(fin, fout)))
    x = draw(arrays((n, fin), f32(-2, 2)))
    W0 = draw(arrays((fout, fin), f32(-1, 1)))
    has_bias = draw(st.booleans()) if bias is None else bias
    b = draw(arrays((fout,), f32(-1, 1))) if has_bias else None
    A = draw(arrays((r, fin), f32(-1, 1)))
    B = draw(arrays((fout, r), f32(-1, 1)))
    alpha = draw(st.one_of(st.sampled_from([1.0, 2.0, 8.0, 16.0]), f32(0.125, 32)))
    return dict(x=x, W0=W0, b=b, A=A, B=B, alpha=float(alpha), r=r)


def _opt(a):
    return None if a is None else tensor(a)


@property_check("run_lora_linear", lesson=5, examples=60, inp=_lora_inputs(), rslora=st.booleans())
def lora_linear_matches_formula(lora, inp, rslora):
    """lora_linear(x, W0, b, A, B, alpha, r, rslora) equals x W0^T + b + s (x A^T) B^T with s = alpha
    / r, or alpha / sqrt(r) when rslora, in float64 (b may be None)."""
    x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
    s = alpha / math.sqrt(r) if rslora else alpha / r
    what = f"run_lora_linear(x, W0, b, A, B, alpha={alpha!r}, r={r}, rslora={rslora})"
    y = output(lora(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(B), alpha, r, rslora=rslora), (x.shape[0], W0.shape[0]), what)
    f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B)]
    assert_close(y, lora64(*f64, s), f"{what} vs x W0^T + b + s (x A^T) B^T with s = {s!r}",
                 atol=1e-5 * _lora_bound(*f64, s), rtol=0)


@property_check("run_lora_linear", lesson=5, examples=40, inp=_lora_inputs(), A2=st.data(),
                alpha2=f32(0.125, 32), rslora=st.booleans())
def lora_zero_B_is_base(lora, inp, A2, alpha2, rslora):
    """with B = 0 LoRA is an exact no-op: the output is bit-for-bit the same for any A, alpha
    and rslora, and equals x W0^T + b."""
    x, W0, b, A, r = (inp[k] for k in ("x", "W0", "b", "A", "r"))
    other_A = A2.draw(arrays(A.shape, f32(-1, 1)), label="other_A")
    Z = np.zeros((W0.shape[0], r), np.float32)
    shape_out = (x.shape[0], W0.shape[0])
    y1 = output(lora(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(Z), inp["alpha"], r), shape_out,
                "run_lora_linear(x, W0, b, A, B=0, alpha, r)")
    y2 = output(lora(tensor(x), tensor(W0), _opt(b), tensor(other_A), tensor(Z), float(alpha2), r, rslora=rslora), shape_out,
                "run_lora_linear(x, W0, b, other A, B=0, other alpha, r, rslora)")
    assert_close(y2, y1, "with B = 0, changing A, alpha and rslora must not change a single bit", atol=0, rtol=0)
    f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b)]
    base = f64[0] @ f64[1].T + (0.0 if b is None else f64[2])
    assert_close(y1, base, "run_lora_linear with B = 0 vs the base layer x W0^T + b",
                 atol=1e-5 * _lora_bound(*f64, np.zeros_like(A, np.float64), np.zeros(Z.shape), 0.0), rtol=0)


@property_check("run_lora_linear", lesson=5, examples=40, inp=_lora_inputs())
def rslora_is_rescaled_alpha(lora, inp):
    """rsLoRA only changes the scaling: lora_linear(..., alpha, r, rslora=True) equals lora_linear(...,
    alpha sqrt(r), r, rslora=False) (alpha / sqrt(r) = alpha sqrt(r) / r)."""
    x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
    shape_out = (x.shape[0], W0.shape[0])
    y_rs = output(lora(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(B), alpha, r, rslora=True), shape_out,
                  f"run_lora_linear(..., alpha={alpha!r}, r={r}, rslora=True)")
    y_plain = output(lora(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(B), alpha * math.sqrt(r), r, rslora=False), shape_out,
                     f"run_lora_linear(..., alpha={alpha * math.sqrt(r)!r}, r={r}, rslora=False)")
    f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B)]
    assert_close(y_rs, y_plain, f"rsLoRA with alpha={alpha!r} vs plain LoRA with alpha sqrt(r) (r={r})",
                 atol=2e-5 * _lora_bound(*f64, alpha / math.sqrt(r)), rtol=0)


@st.composite
def _merge_inputs(draw):
    fin, fout = draw(st.integers(1, MAX_D)), draw(st.integers(1, MAX_D))
    r = draw(st.integers(1, min(fin, fout)))
    return (draw(arrays((fout, fin), f32(-2, 2))), draw(arrays((r, fin), f32(-1, 1))),
            draw(arrays((fout, r), f32(-1, 1))), float(draw(f32(-4, 4))))


@property_check("run_lora_merge", lesson=5, examples=60, inp=_merge_inputs())
def lora_merge_matches_formula(merge, inp):
    """lora_merge(W0, A, B, scaling) equals W0 + scaling B A (float64), keeps W0's shape and dtype
    (float32 here)."""
    W0, A, B, s = inp
    what = f"run_lora_merge(W0, A, B, scaling={s!r})"
    y = merge(tensor(W0), tensor(A), tensor(B), s)
    if isinstance(y, torch.Tensor) and y.dtype != torch.float32:
        raise AssertionError(f"{what} returned dtype {y.dtype}; the merged weight keeps W0's dtype (float32)")
    W, a, b_ = (t.astype(np.float64) for t in (W0, A, B))
    assert_close(output(y, W0.shape, what), W + s * (b_ @ a), f"{what} vs W0 + scaling B A",
                 atol=1e-5 * (np.abs(W) + abs(s) * (np.abs(b_) @ np.abs(a))) + 1e-7, rtol=0)


@property_check("run_lora_merge", lesson=5, examples=60, inp=_merge_inputs())
def lora_merge_bfloat16_rounds_once(merge, inp):
    """merging a bfloat16 W0 is computed in float32 and rounded once: the result is bfloat16 and within
    half a bfloat16 step (2^-8 relative) of W0 + scaling B A (float64)."""
    W0, A, B, s = (tensor(a).to(torch.bfloat16) if isinstance(a, np.ndarray) else a for a in inp)
    what = f"run_lora_merge(W0, A, B, scaling={s!r}) in bfloat16"
    y = merge(W0.clone(), A.clone(), B.clone(), s)
    if not isinstance(y, torch.Tensor) or y.dtype != torch.bfloat16:
        raise AssertionError(f"{what} returned {getattr(y, 'dtype', type(y).__name__)}; expected bfloat16, "
                             f"W0's dtype")
    W, a, b_ = (t.to(torch.float64).numpy() for t in (W0, A, B))
    expected = W + s * (b_ @ a)
    tol = 2.0 ** -8 * np.abs(expected) + 2.0 ** -20 * (np.abs(W) + abs(s) * (np.abs(b_) @ np.abs(a))) + 1e-30
    assert_close(output(y, W.shape, what), expected, f"{what} vs W0 + scaling B A rounded once to bfloat16",
                 atol=tol, rtol=0)


@property_check("run_lora_merge", "run_lora_linear", lesson=5, examples=40, inp=_lora_inputs())
def lora_merge_then_forward(merge, lora, inp):
    """merge then forward equals the unmerged forward: x W^T + b with W = lora_merge(W0, A, B, alpha
    / r) matches lora_linear(x, W0, b, A, B, alpha, r) (both adapters)."""
    x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
    W = output(merge(tensor(W0), tensor(A), tensor(B), alpha / r), W0.shape, "run_lora_merge(W0, A, B, alpha / r)")
    merged = x.astype(np.float64) @ W.T + (0.0 if b is None else b.astype(np.float64))
    y = output(lora(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(B), alpha, r), merged.shape,
               "run_lora_linear(x, W0, b, A, B, alpha, r)")
    f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B)]
    assert_close(y, merged, f"unmerged run_lora_linear vs x W_merged^T + b (alpha={alpha!r}, r={r})",
                 atol=2e-5 * _lora_bound(*f64, alpha / r), rtol=0)


def dora64(x, W0, b, A, B, m, s):
    V = W0 + s * (B @ A)                                                  # (out, in)
    n = np.sqrt((V ** 2).sum(axis=1))                                     # one norm per output row
    return x @ (m[:, None] * V / n[:, None]).T + (0.0 if b is None else b), n


@property_check("run_dora_linear", lesson=5, examples=60, inp=_lora_inputs(), data=st.data())
def dora_linear_matches_formula(dora, inp, data):
    """dora_linear(x, W0, b, A, B, m, alpha, r) equals x W'^T + b with W' = m V / ‖V‖, V = W0
    + (alpha/r) B A and ‖V‖ the L2 norm of each output row of V (out, in), in float64 (rows with ‖V‖
    >= 0.25)."""
    x, W0, b, A, B, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "B", "alpha", "r"))
    m = data.draw(arrays((W0.shape[0],), f32(0.125, 3)), label="m")
    s = alpha / r
    f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B, m)]
    expected, n = dora64(*f64, s)
    assume(n.min() >= 0.25)                                           # no near-zero row to divide by
    what = f"run_dora_linear(x, W0, b, A, B, m, alpha={alpha!r}, r={r})"
    y = output(dora(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(B), tensor(m), alpha, r), expected.shape, what)
    Vabs = np.abs(f64[1]) + s * (np.abs(f64[4]) @ np.abs(f64[3]))     # |W0| + s |B| |A|
    cond = np.sqrt((Vabs ** 2).sum(axis=1)) / n                       # cancellation inside a row's norm
    bound = np.abs(f64[0]) @ (f64[5][:, None] * Vabs / n[:, None]).T * cond + (0.0 if b is None else np.abs(b))
    assert_close(y, expected, f"{what} vs x (m V / ‖V‖_row)^T + b", atol=2e-5 * bound + 1e-6, rtol=0)


@property_check("run_dora_linear", lesson=5, examples=40, inp=_lora_inputs())
def dora_init_is_base(dora, inp):
    """DoRA starts as the base layer: with m = ‖W0‖ (per output row) and B = 0 the output equals x W0^T
    + b for any A and alpha (rows of W0 with norm >= 0.1)."""
    x, W0, b, A, alpha, r = (inp[k] for k in ("x", "W0", "b", "A", "alpha", "r"))
    W = W0.astype(np.float64)
    n = np.sqrt((W ** 2).sum(axis=1))
    assume(n.min() >= 0.1)
    Z = np.zeros((W0.shape[0], r), np.float32)
    base = x.astype(np.float64) @ W.T + (0.0 if b is None else b.astype(np.float64))
    what = f"run_dora_linear(x, W0, b, A, B=0, m=‖W0‖_row, alpha={alpha!r}, r={r})"
    y = output(dora(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(Z), tensor(n), alpha, r), base.shape, what)
    assert_close(y, base, f"{what} vs the base layer x W0^T + b",
                 atol=2e-5 * (np.abs(x) @ np.abs(W).T + (0.0 if b is None else np.abs(b))) + 1e-6, rtol=0)
