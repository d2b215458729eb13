"""Lesson 19, part 4 (the PEFT taxonomy): the reference `run_*` function that folds a trained update
into one linear layer, and its checks.

    run_merge_into_linear(W0, b0, method, params)
        (W, b) of the plain nn.Linear that computes what the adapted layer computes, for a method
        whose class merges (selective: "bitfit", "masking"; reparameterization: "lora", "dora"), and
        ValueError for one whose class does not (additive: "adapter", "prefix", "prompt", "reft")

The reference reads the method's class with `minift/taxonomy.py: family` and its consequence
(`CONSEQUENCES[...].mergeable`), builds the adapted layer from minift's own modules (`LoRALinear`,
`MaskedLinear`) around W0 and b0, and merges it with `merge_into_base`. The checks compute the
merged weights from the definitions in float64 numpy (W0 + s B A; DoRA's m ⊙ (W0 + s B A) / ‖·‖ per
output row; W0 with v added at the flat positions; the trained bias) and never call minift.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from hypothesis import strategies as st

from minift.peft.adapters import AdapterConfig
from minift.peft.common import linear_around
from minift.peft.lora import LoRAConfig, LoRALinear
from minift.peft.masking import MaskedLinear, MaskingConfig
from minift.peft.prefix import PrefixConfig
from minift.peft.prompt import PromptConfig
from minift.peft.reft import ReFTConfig
from minift.peft.selective import SelectiveConfig
from minift.taxonomy import CONSEQUENCES, family, merge_into_base

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import arrays, f32

CONFIG_OF = {"bitfit": SelectiveConfig, "masking": MaskingConfig, "lora": LoRAConfig, "dora": LoRAConfig,
             "adapter": AdapterConfig, "prefix": PrefixConfig, "prompt": PromptConfig, "reft": ReFTConfig}
ADDITIVE = ("adapter", "prefix", "prompt", "reft")


# ---- the reference function ---------------------------------------------------------------------

def run_merge_into_linear(W0: torch.Tensor, b0: torch.Tensor, method: str, params: dict):
    """Merge `method`'s trained tensors `params` into the linear layer h = x W0ᵀ + b0 (W0 (out, in), b0
    (out,), float32) and return (W, b), float32, with x Wᵀ + b the adapted layer's output for every x:

        "bitfit"   params bias (out,), the trained bias:        W = W0,  b = bias
        "masking"  params indices (k,) int64, sorted distinct flat row-major positions of W0, values
                   (k,):                                        W = W0 + scatter(indices, values),  b = b0
        "lora"     params A (r, in), B (out, r), scaling s:     W = W0 + s B A,  b = b0
        "dora"     as "lora", plus magnitude m (out,):          W_i = m_i (W0 + s B A)_i / ‖(W0 + s B A)_i‖
        "adapter", "prefix", "prompt", "reft": additive methods, ValueError (nothing to merge into: a
                   series adapter is nonlinear in h, prefix and prompt add positions, LoReFT edits h
                   at chosen positions only, while a weight acts on every position alike)

    W0 and b0 are left unchanged."""
    W0, b0 = tensor_arg("W0", W0), tensor_arg("b0", b0)
    if method not in CONFIG_OF:
        raise ValueError(f"run_merge_into_linear: method={method!r} must be one of {sorted(CONFIG_OF)}")
    cls = family(CONFIG_OF[method]())
    if not CONSEQUENCES[cls].mergeable:
        raise ValueError(f"run_merge_into_linear: {method!r} is {cls}: its update is a new function of x, not a "
                         f"change of W0 or b0, so it has no weight to merge into")
    base = linear_around(nn.Parameter(W0.detach().clone()), nn.Parameter(b0.detach().clone()))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):          # LoRALinear draws A: keep the caller's RNG
        if method == "bitfit":
            base.bias.copy_(params["bias"])                            # already the base's architecture
            layer = base
        elif method == "masking":
            layer = MaskedLinear(base, params["indices"].long())
            layer.mask_values.copy_(params["values"])
        else:
            A, B = params["A"], params["B"]                            # (r, in), (out, r)
            layer = LoRALinear(base, A.shape[0], alpha=1.0, use_dora=method == "dora")
            layer.scaling = float(params["scaling"])                   # s exactly, not alpha / r
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
            if method == "dora":
                layer.lora_magnitude.copy_(params["magnitude"])
        holder = nn.Sequential(layer)
        merge_into_base(holder)                                        # LoRA, DoRA, masking -> a plain Linear
    merged = holder[0]
    return merged.weight.detach().clone(), merged.bias.detach().clone()


# ---- the checks -----------------------------------------------------------------------------------

def _merged(merge, W0, b0, method, params, what):
    """Call the impl on copies; returns (W, b) as float64 numpy, and that W0 and b0 were left alone."""
    W0_t, b0_t = tensor(W0), tensor(b0)
    out = merge(W0_t, b0_t, method, params)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AssertionError(f"{what} must return (W, b), got {type(out).__name__}")
    W, b = out
    for name, t in (("W", W), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            got = getattr(t, "dtype", type(t).__name__)
            raise AssertionError(f"{what}: {name} must be a float32 tensor, got {got}")
    if not (np.array_equal(W0_t.numpy(), W0) and np.array_equal(b0_t.numpy(), b0)):
        raise AssertionError(f"{what} changed W0 or b0 in place (merge into a copy: the base is shared)")
    return output(W, W0.shape, what + " W"), output(b, b0.shape, what + " b")


@st.composite
def _lowrank(draw):
    """(W0, b0, A, B, s, magnitude or None): W0 (out, in), rank r <= min(out, in)."""
    out_f, in_f = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    r = draw(st.integers(1, min(out_f, in_f)))
    W0, b0 = draw(arrays((out_f, in_f), f32(-2, 2))), draw(arrays((out_f,), f32(-2, 2)))
    A, B = draw(arrays((r, in_f), f32(-2, 2))), draw(arrays((out_f, r), f32(-2, 2)))
    s = draw(st.sampled_from([2.0, 0.5, 4.0, 0.25]))
    m = draw(st.one_of(st.none(), arrays((out_f,), f32(0.5, 3))))     # None: LoRA, else DoRA's magnitude
    return W0, b0, A, B, s, m


_EXAMPLE = (np.array([[1.0, -2.0, 0.5], [0.0, 1.5, -1.0]], np.float32), np.array([0.25, -0.5], np.float32),
            np.array([[1.0, 0.5, -1.0]], np.float32), np.array([[2.0], [-1.0]], np.float32), 0.5,
            np.array([1.0, 2.5], np.float32))


@property_check("run_merge_into_linear", lesson=19, examples=60, case=_lowrank(),
                explicit=[dict(case=_EXAMPLE), dict(case=_EXAMPLE[:5] + (None,))])
def merge_reparameterized_is_the_adapted_weight(merge, case):
    """A reparameterized update merges into W0's shape and nothing else: LoRA gives W = W0 + s B A and
    DoRA row i W_i = m_i V_i / ‖V_i‖ with V = W0 + s B A (rows with ‖V_i‖ >= 0.1), within float32
    rounding of the float64 formula; b = b0 bit for bit, so x Wᵀ + b is the adapted layer's output."""
    W0, b0, A, B, s, m = case
    A64, B64, W064 = A.astype(np.float64), B.astype(np.float64), W0.astype(np.float64)
    V = W064 + s * (B64 @ A64)                                                 # (out, in)
    S = np.abs(W064) + abs(s) * (np.abs(B64) @ np.abs(A64))                   # what float32 rounding scales with
    norm = np.linalg.norm(V, axis=1)
    if m is not None and norm.min() < 0.1:
        m = None                                                               # DoRA's direction is ill-posed there
    params = {"A": tensor(A), "B": tensor(B), "scaling": s}
    if m is None:
        method, want, tol = "lora", V, 2.0 ** -20 * S + 1e-30
    else:
        method, params["magnitude"] = "dora", tensor(m)
        g = m.astype(np.float64) / norm                                        # m_i / ‖V_i‖   (out,)
        want = V * g[:, None]
        rel = np.linalg.norm(S, axis=1) / norm                                 # the norm's relative rounding
        tol = 2.0 ** -20 * g[:, None] * (S + np.abs(V) * rel[:, None]) + 1e-30
    what = f"run_merge_into_linear(W0 {W0.shape}, b0, {method!r}, A {A.shape}, B {B.shape}, scaling={s})"
    W, b = _merged(merge, W0, b0, method, params, what)
    formula = "W0 + s B A" if method == "lora" else "m ⊙ V / ‖V‖ per output row, V = W0 + s B A"
    assert_close(W, want, f"{what} W vs {formula} (float64)", atol=tol, rtol=0)
    assert_close(b, b0, f"{what} b vs b0 (a weight update leaves the bias alone)", atol=0, rtol=0)


@st.composite
def _selective(draw):
    """(W0, b0, indices, values, bias): k sorted distinct flat positions of W0 (out, in), and a trained bias."""
    out_f, in_f = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    W0, b0 = draw(arrays((out_f, in_f), f32(-2, 2))), draw(arrays((out_f,), f32(-2, 2)))
    idx = np.array(sorted(draw(st.sets(st.integers(0, out_f * in_f - 1), min_size=1, max_size=out_f * in_f))),
                   np.int64)
    values = draw(arrays((idx.size,), f32(-2, 2)))
    return W0, b0, idx, values, draw(arrays((out_f,), f32(-2, 2)))


@property_check("run_merge_into_linear", lesson=19, examples=60, case=_selective(),
                explicit=[dict(case=(np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.0, -1.0], np.float32),
                                     np.array([1, 3], np.int64), np.array([0.5, -2.0], np.float32),
                                     np.array([0.25, 3.0], np.float32)))])
def merge_selective_changes_only_the_trained_entries(merge, case):
    """A selective update is already W0's own entries: masking gives W0 with v_t added at flat row-major
    position idx_t (row idx_t // in, column idx_t mod in; one float32 addition) and every other entry and
    b0 bit for bit; BitFit gives W = W0 bit for bit and b = the trained bias."""
    W0, b0, idx, values, bias = case
    what = f"run_merge_into_linear(W0 {W0.shape}, b0, 'masking', indices {idx.tolist()}, values)"
    W, b = _merged(merge, W0, b0, "masking", {"indices": torch.from_numpy(idx.copy()), "values": tensor(values)},
                   what)
    want = W0.copy().reshape(-1)
    want[idx] = want[idx] + values                                             # float32 addition, row-major
    want = want.reshape(W0.shape).astype(np.float64)
    bad = np.argwhere(W != want)
    if bad.size:
        i, j = (int(t) for t in bad[0])
        flat = i * W0.shape[1] + j
        which = "is trained: W0 + v, one float32 addition" if flat in set(idx.tolist()) else "is not trained: W0 exactly"
        raise AssertionError(f"{what}: W[{i}, {j}] = {float(W[i, j])!r}, expected {float(want[i, j])!r} (flat "
                             f"position {flat} {which})")
    assert_close(b, b0, f"{what} b vs b0", atol=0, rtol=0)
    what = f"run_merge_into_linear(W0 {W0.shape}, b0, 'bitfit', bias)"
    W, b = _merged(merge, W0, b0, "bitfit", {"bias": tensor(bias)}, what)
    assert_close(W, W0, f"{what} W vs W0 (BitFit trains biases only)", atol=0, rtol=0)
    assert_close(b, bias, f"{what} b vs the trained bias (it replaces b0)", atol=0, rtol=0)


@st.composite
def _additive(draw):
    """(method, W0, b0, params): an additive method's trained tensors around W0 (out, in)."""
    out_f, in_f, k = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    W0, b0 = draw(arrays((out_f, in_f), f32(-2, 2))), draw(arrays((out_f,), f32(-2, 2)))
    method = draw(st.sampled_from(ADDITIVE))
    a = lambda shape: tensor(draw(arrays(shape, f32(-1, 1))))                 # noqa: E731
    params = {"adapter": lambda: {"down": a((k, out_f)), "b_down": a((k,)), "up": a((out_f, k)), "b_up": a((out_f,))},
              "prefix": lambda: {"keys": a((k, out_f)), "values": a((k, out_f))},
              "prompt": lambda: {"embeddings": a((k, in_f))},
              "reft": lambda: {"R": a((k, out_f)), "W": a((k, out_f)), "b": a((k,))}}[method]()
    return method, W0, b0, params


@property_check("run_merge_into_linear", lesson=19, examples=30, case=_additive())
def merge_refuses_additive_methods(merge, case):
    """An additive method ("adapter": h + relu(h W_downᵀ + b_down) W_upᵀ + b_up after the layer, nonlinear
    in h; "prefix", "prompt": extra keys, values or tokens; "reft": an edit of h at chosen positions
    only) adds a new function of x, not a change of W0 or b0: merging it raises ValueError and leaves
    W0 and b0 unchanged."""
    method, W0, b0, params = case
    W0_t, b0_t = tensor(W0), tensor(b0)
    what = f"run_merge_into_linear(W0 {W0.shape}, b0, {method!r}, {sorted(params)})"
    try:
        merge(W0_t, b0_t, method, params)
    except ValueError:
        if not (np.array_equal(W0_t.numpy(), W0) and np.array_equal(b0_t.numpy(), b0)):
            raise AssertionError(f"{what} raised, but changed W0 or b0 first") from None
        return
    raise AssertionError(f"{what} returned instead of raising ValueError: {method} is additive, the class "
                         f"that cannot merge (its update is no change of any existing weight)")
