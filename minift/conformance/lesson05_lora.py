"""Lesson 05 (LoRA, rsLoRA, DoRA): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_lora_linear(x, W0, b, A, B, alpha, r, rslora=False)  x W0^T + b + s (x A^T) B^T, s = alpha/r (rsLoRA: alpha/sqrt(r))
    run_lora_merge(W0, A, B, scaling)                        W0 + scaling B A in float32, cast back to W0's dtype
    run_lora_unmerge(W, A, B, scaling)                       W - scaling B A in float32, cast back to W's dtype
    run_lora_dropout_forward(x, W0, b, A, B, s, p, mask)     x W0^T + b + s ((x ⊙ mask) / (1 - p) A^T) B^T
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


def run_lora_unmerge(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The weight `LoRALinear.unmerge` leaves: W0 = W - scaling B A, computed in float32 and cast back to
    W's dtype once (W0 back up to one rounding; unmerge(merge(W0)) is W0 up to float32 rounding).

    W: (out, in) a merged weight; A: (r, in); B: (out, r). Returns (out, in), W's dtype; W is not modified."""
    W, A, B = tensor_arg("W", W), tensor_arg("A", A), tensor_arg("B", B)
    _, _, r = _lora_shapes("run_lora_unmerge", None, W, None, A, B)
    layer = _lora_layer(W.clone(), None, A, B, alpha=1.0, r=r)
    layer.scaling = float(scaling)                                         # s given directly
    layer.merged = True                                                    # W holds W0 + s B A
    layer.unmerge()
    return layer.weight.detach().clone()


class _FixedDropout(nn.Module):
    """Inverted dropout with a given keep-mask (1 = kept): x ⊙ mask / (1 - p), as nn.Dropout computes
    it in training mode, but with the mask chosen by the caller instead of drawn."""

    def __init__(self, mask: torch.Tensor, p: float):
        super().__init__()
        self.mask, self.p = mask, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype) / (1.0 - self.p)


def run_lora_dropout_forward(x: torch.Tensor, W0: torch.Tensor, b, A: torch.Tensor, B: torch.Tensor, s: float,
                             p: float, mask: torch.Tensor) -> torch.Tensor:
    """The LoRA forward in training mode with dropout on the branch's input only,
    `LoRALinear(dropout=p)` with the dropout mask given instead of drawn:

        h = x W0^T + b + s · ((x ⊙ mask) / (1 - p)) A^T B^T       the base path sees x undropped

    x: (N, in); W0: (out, in); b: (out,) or None; A: (r, in); B: (out, r); s: the scaling; p in [0, 1):
    the dropout probability; mask: (N, in) of 0 (dropped) and 1 (kept). Returns (N, out)."""
    x, W0, A, B, mask = (tensor_arg(n, t) for n, t in (("x", x), ("W0", W0), ("A", A), ("B", B), ("mask", mask)))
    _, _, r = _lora_shapes("run_lora_dropout_forward", x, W0, b, A, B)
    if tuple(mask.shape) != tuple(x.shape):
        raise ValueError(f"run_lora_dropout_forward: mask must have x's shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"run_lora_dropout_forward: p={p!r} must be in [0, 1)")
    layer = _lora_layer(W0, b, A, B, alpha=1.0, r=r)
    layer.scaling = float(s)
    layer.lora_dropout = _FixedDropout(mask, float(p))
    with torch.no_grad():
        return layer.train()(x)


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


def _fold_matches_formula(fold, inp, sign: int, call: str) -> None:
    """fold(W, A, B, s) = W + sign·s B A in float64, W's shape and dtype (float32 here), W unchanged:
    the merge (sign +1, W = W0) and the unmerge (sign -1, W = the merged weight)."""
    W, A, B, s = inp
    what = f"{call}(W, A, B, scaling={s!r})"
    Wt = tensor(W)
    y = fold(Wt, tensor(A), tensor(B), s)
    if isinstance(y, torch.Tensor) and y.dtype != torch.float32:
        raise AssertionError(f"{what} returned dtype {y.dtype}; the result keeps W's dtype (float32)")
    if not np.array_equal(Wt.numpy(), W):
        raise AssertionError(f"{what} changed its input W in place; return a new tensor instead")
    W64, a, b_ = (t.astype(np.float64) for t in (W, A, B))
    assert_close(output(y, W.shape, what), W64 + sign * s * (b_ @ a),
                 f"{what} vs W {'+' if sign > 0 else '-'} scaling B A",
                 atol=1e-5 * (np.abs(W64) + abs(s) * (np.abs(b_) @ np.abs(a))) + 1e-7, rtol=0)


@property_check("run_lora_merge", lesson=5, examples=60, inp=_merge_inputs())
def lora_merge_matches_formula(merge, inp):
    """lora_merge(W0, A, B, scaling) equals W0 + scaling B A (float64), keeps W0's shape and dtype
    (float32 here) and leaves W0 itself unchanged."""
    _fold_matches_formula(merge, inp, +1, "run_lora_merge")


@property_check("run_lora_merge", lesson=5, examples=60, inp=_merge_inputs(),   # in bfloat16 throughout: 1.171875, not 1.1796875
                explicit=[dict(inp=(np.array([[0.5]], np.float32), np.array([[0.75]], np.float32),
                                    np.array([[0.3]], np.float32), 3.0))])
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
    assert_close(output(y, W.shape, what, torch.bfloat16), expected, f"{what} vs W0 + scaling B A rounded once to bfloat16",
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


@property_check("run_lora_unmerge", lesson=5, examples=60, inp=_merge_inputs())
def lora_unmerge_matches_formula(unmerge, inp):
    """lora_unmerge(W, A, B, scaling) equals W - scaling B A (float64), keeps W's shape and dtype
    (float32 here) and leaves W itself unchanged."""
    _fold_matches_formula(unmerge, inp, -1, "run_lora_unmerge")


@property_check("run_lora_unmerge", "run_lora_merge", lesson=5, examples=40, inp=_merge_inputs(),
                bf16=st.booleans())
def lora_unmerge_round_trip(unmerge, merge, inp, bf16):
    """unmerge after merge gives W0 back in W0's dtype, up to the rounding of the two steps:
    lora_unmerge(lora_merge(W0, A, B, s), A, B, s) is within 2^-22 (float32) or 2^-7 (bfloat16) of
    |W0| + |s| |B| |A| of W0."""
    W0, A, B, s = inp
    dt = torch.bfloat16 if bf16 else torch.float32
    W0t, At, Bt = (tensor(a).to(dt) for a in (W0, A, B))
    what = f"run_lora_unmerge(run_lora_merge(W0, A, B, {s!r}), A, B, {s!r}) in {str(dt)[6:]}"
    W = merge(W0t.clone(), At.clone(), Bt.clone(), s)
    y = unmerge(W.clone() if isinstance(W, torch.Tensor) else W, At.clone(), Bt.clone(), s)
    if not isinstance(y, torch.Tensor) or y.dtype != dt:
        raise AssertionError(f"{what} returned {getattr(y, 'dtype', type(y).__name__)}; expected {dt}, W0's dtype")
    W64, a, b_ = (t.to(torch.float64).numpy() for t in (W0t, At, Bt))
    scale = np.abs(W64) + abs(s) * (np.abs(b_) @ np.abs(a))
    assert_close(output(y, W64.shape, what, dt), W64, f"{what} vs W0", atol=(2.0 ** -7 if bf16 else 2.0 ** -22) * scale
                 + 1e-30, rtol=0)


@st.composite
def _dropout_inputs(draw):
    inp = draw(_lora_inputs())
    x = inp["x"]
    inp["mask"] = draw(arrays(x.shape, st.sampled_from([0.0, 1.0])))
    inp["p"] = draw(st.sampled_from([0.1, 0.25, 0.5, 0.75]))
    inp["s"] = float(draw(st.one_of(st.sampled_from([1.0, 4.0]), f32(-4, 4))))
    return inp


@property_check("run_lora_dropout_forward", lesson=5, examples=60, inp=_dropout_inputs())
def lora_dropout_matches_formula(fn, inp):
    """lora_dropout_forward(x, W0, b, A, B, s, p, mask) equals x W0^T + b + s ((x ⊙ mask) / (1 - p)
    A^T) B^T in float64: dropout (mask 1 = kept, scaled by 1 / (1 - p)) on the LoRA branch's input
    only, never on the base path or the output."""
    x, W0, b, A, B, s, p, mask = (inp[k] for k in ("x", "W0", "b", "A", "B", "s", "p", "mask"))
    what = f"run_lora_dropout_forward(x, W0, b, A, B, s={s!r}, p={p!r}, mask)"
    y = output(fn(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(B), s, p, tensor(mask)), (x.shape[0], W0.shape[0]),
               what)
    f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b, A, B)]
    xd = f64[0] * mask / (1.0 - p)                                        # the dropped, rescaled input
    expected = f64[0] @ f64[1].T + (0.0 if b is None else f64[2]) + s * ((xd @ f64[3].T) @ f64[4].T)
    bound = _lora_bound(f64[0], f64[1], f64[2], f64[3], f64[4], s / (1.0 - p))
    assert_close(y, expected, f"{what} vs x W0^T + b + s ((x ⊙ mask) / (1 - p) A^T) B^T", atol=2e-5 * bound, rtol=0)


@property_check("run_lora_dropout_forward", lesson=5, examples=40, inp=_dropout_inputs())
def lora_dropout_spares_base_path(fn, inp):
    """dropout never reaches the base path: with B = 0 the output is bit for bit the same for any mask
    and p as with mask = 1 and p = 0, and equals x W0^T + b."""
    x, W0, b, A, s, p, mask = (inp[k] for k in ("x", "W0", "b", "A", "s", "p", "mask"))
    Z = np.zeros((W0.shape[0], A.shape[0]), np.float32)
    shape_out = (x.shape[0], W0.shape[0])
    y = output(fn(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(Z), s, p, tensor(mask)), shape_out,
               f"run_lora_dropout_forward(x, W0, b, A, B=0, s={s!r}, p={p!r}, mask)")
    y1 = output(fn(tensor(x), tensor(W0), _opt(b), tensor(A), tensor(Z), s, 0.0, tensor(np.ones_like(x))), shape_out,
                "run_lora_dropout_forward(x, W0, b, A, B=0, s, p=0, mask=1)")
    assert_close(y, y1, "with B = 0 the mask and p must not change a single bit", atol=0, rtol=0)
    f64 = [None if a is None else a.astype(np.float64) for a in (x, W0, b)]
    base = f64[0] @ f64[1].T + (0.0 if b is None else f64[2])
    assert_close(y, base, "run_lora_dropout_forward with B = 0 vs the base layer x W0^T + b",
                 atol=1e-5 * (np.abs(f64[0]) @ np.abs(f64[1]).T + (0.0 if b is None else np.abs(f64[2]))) + 1e-6,
                 rtol=0)


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
