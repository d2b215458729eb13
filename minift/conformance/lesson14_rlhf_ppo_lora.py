"""Lesson 14, PPO with a LoRA policy (part 6, `--lora`): the reference `run_*` function and its checks.

With LoRA, π_ref needs no copy of the model: it is the policy with its adapters switched off
(`train_ppo(ref=None)` runs the reference forward inside `minift.peft.common.disable_adapters`).
The KL penalty's k1 then comes from ONE set of weights, read twice. On one LoRA output layer
(W0 (V, C), A (r, C), B (V, r), s = alpha / r) over final hidden states h (B, N, C):

    z_t     = h_t (W0 + s B A)ᵀ          the policy's logits      (B, N, V)
    z_ref,t = h_t W0ᵀ                    the adapters disabled    (B, N, V)
    k1_t    = log softmax(z_t)[y_t] − log softmax(z_ref,t)[y_t]   on real tokens, 0 on padding   (B, N)

    run_lora_kl(hidden, weight, lora_A, lora_B, scaling, tokens, mask)      k1 (B, N)

The reference builds a `minift.peft.lora.LoRALinear` on those weights and scores the tokens with
the adapter on and off (`disable_adapters`), as `minift.align.ppo.rollout` does for a PEFT policy.

The checks, registered into `CHECKS` with lesson="lesson14". Expected values are float64 numpy
(log-sum-exp written out) or exact properties, never minift's own functions.

    run_lora_kl   the float64 formula, with junk on the padding (hidden up to ±1e3, any token id);
                  B = 0 (LoRA's initialisation) gives k1 = 0 on every token: the policy IS π_ref;
                  scoring every token id v of the vocabulary, Σ_v π(v) k1(v) = KL(π ‖ π_ref) >= 0
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from hypothesis import strategies as st

from minift.align.logps import zero_masked
from minift.align.ppo import kl_penalty, logps_of
from minift.peft.common import disable_adapters
from minift.peft.lora import LoRALinear

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, MAX_T, MAX_V, arrays, f32

# ---- the reference function ---------------------------------------------------------------------


def run_lora_kl(hidden, weight, lora_A, lora_B, scaling: float, tokens, mask):
    """k1 = log π(y_t) − log π_ref(y_t) for a policy whose output layer is W0 + s B A and whose
    reference is the same layer with the adapter disabled (W0 alone), 0 on padding.
    hidden: (B, N, C); weight: (V, C); lora_A: (r, C); lora_B: (V, r); tokens: (B, N) integer ids in
    [0, V), any id on padding; mask: (B, N) of 0/1. Returns (B, N)."""
    hidden, weight, lora_A, lora_B, tokens, mask = (tensor_arg(n, t) for n, t in (
        ("hidden", hidden), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B), ("tokens", tokens),
        ("mask", mask)))
    V, C = weight.shape
    r = lora_A.shape[0]
    if (hidden.dim() != 3 or hidden.shape[-1] != C or tuple(lora_A.shape) != (r, C) or tuple(lora_B.shape) != (V, r)
            or tuple(tokens.shape) != tuple(hidden.shape[:2]) or tuple(mask.shape) != tuple(hidden.shape[:2])):
        raise ValueError(f"run_lora_kl: expected hidden (B, N, C), weight (V, C), lora_A (r, C), lora_B (V, r), tokens "
                         f"and mask (B, N); got {tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(lora_A.shape)}, "
                         f"{tuple(lora_B.shape)}, {tuple(tokens.shape)}, {tuple(mask.shape)}")
    base = nn.Linear(C, V, bias=False, device=hidden.device, dtype=weight.dtype)   # on the inputs' device
    with torch.no_grad():
        base.weight.copy_(weight)
        layer = LoRALinear(base, r, alpha=float(scaling) * r)
        layer.scaling = float(scaling)                                     # s exactly, not (s r) / r
        layer.lora_A.copy_(lora_A)
        layer.lora_B.copy_(lora_B)
        head = nn.Sequential(layer)
        logp = logps_of(head(hidden), tokens.long())                       # π_θ: the adapter on    (B, N)
        with disable_adapters(head):
            ref_logp = logps_of(head(hidden), tokens.long())               # π_ref: the adapter off  (B, N)
    return zero_masked(kl_penalty(logp, ref_logp), mask)


# ---- the checks -----------------------------------------------------------------------------------

def _logsoftmax64(z: np.ndarray) -> np.ndarray:
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _k1_64(h, W, A, Bm, s, tokens) -> np.ndarray:
    """log softmax(h (W + s B A)ᵀ)[y] − log softmax(h Wᵀ)[y] in float64, every position."""
    h, W, A, Bm = (x.astype(np.float64) for x in (h, W, A, Bm))
    lp = _logsoftmax64(h @ (W + s * Bm @ A).T)                            # (B, N, V)
    lr = _logsoftmax64(h @ W.T)
    pick = tokens[..., None]
    return (np.take_along_axis(lp, pick, -1) - np.take_along_axis(lr, pick, -1))[..., 0]


@st.composite
def _lora_head(draw, zero_b=False):
    """hidden (B, N, C), W0 (V, C), A (r, C), B (V, r), tokens (B, N), a mask of runs of 1s from column 0."""
    Bn, N = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T))
    C, V = draw(st.integers(1, MAX_D)), draw(st.integers(2, MAX_V))
    r = draw(st.integers(1, min(C, V, 3)))
    x = {"h": draw(arrays((Bn, N, C), f32(-2, 2))), "W": draw(arrays((V, C), f32(-1, 1))),
         "A": draw(arrays((r, C), f32(-1, 1))),
         "B": np.zeros((V, r), np.float32) if zero_b else draw(arrays((V, r), f32(-1, 1))),
         "tokens": np.array(draw(st.lists(st.integers(0, V - 1), min_size=Bn * N, max_size=Bn * N))).reshape(Bn, N)}
    lens = [draw(st.integers(1, N)) for _ in range(Bn)]
    x["mask"] = np.array([[1.0] * n + [0.0] * (N - n) for n in lens], np.float32)
    return x


def _call(fn, x, s, what):
    B, N = x["tokens"].shape
    y = fn(tensor(x["h"]), tensor(x["W"]), tensor(x["A"]), tensor(x["B"]), s, torch.tensor(x["tokens"]),
           tensor(x["mask"]))
    return output(y, (B, N), what)


SCALES = st.sampled_from([0.5, 1.0, 2.0, 16.0])


@property_check("run_lora_kl", lesson=14, examples=40, x=_lora_head(), data=st.data(), s=SCALES)
def lora_kl_matches_float64(fn, x, data, s):
    """run_lora_kl(hidden, weight, lora_A, lora_B, scaling, tokens, mask) is log softmax(h (W0 + s B A)ᵀ)[y]
    − log softmax(h W0ᵀ)[y] by the float64 formula on the real tokens and 0 on padding, whatever the
    padding holds (hidden up to ±1e3, any token id)."""
    pad = x["mask"] == 0
    j = dict(x)
    j["h"] = np.where(pad[..., None], data.draw(arrays(x["h"].shape, f32(-1e3, 1e3))), x["h"]).astype(np.float32)
    want = np.where(pad, 0.0, _k1_64(x["h"], x["W"], x["A"], x["B"], s, x["tokens"]))
    what = f"run_lora_kl(hidden, weight, lora_A, lora_B, scaling={s}, tokens, mask)"
    assert_close(_call(fn, j, s, what), want, f"{what} vs log π − log π_ref in float64, 0 on padding",
                 atol=1e-4, rtol=1e-4)


@property_check("run_lora_kl", lesson=14, examples=20, x=_lora_head(zero_b=True), s=SCALES)
def lora_kl_zero_at_init(fn, x, s):
    """with B = 0 (LoRA's initialisation) the adapted layer IS the frozen one: k1 = 0 on every token,
    so PPO's first rollout pays no KL penalty."""
    what = f"run_lora_kl with lora_B = 0 (scaling={s})"
    assert_close(_call(fn, x, s, what), np.zeros(x["tokens"].shape), f"{what} vs 0", atol=1e-6, rtol=0)


@property_check("run_lora_kl", lesson=14, examples=30, x=_lora_head(), s=SCALES)
def lora_kl_expectation_is_kl(fn, x, s):
    """scoring EVERY token id v at one position (each as its own row), the π-weighted mean of k1 is the
    KL divergence: Σ_v π(v) k1(v) = KL(π ‖ π_ref) >= 0, the quantity PPO's penalty estimates."""
    V = x["W"].shape[0]
    h = np.repeat(x["h"][:1, :1], V, axis=0)                             # (V, 1, C): one position, V rows
    y = {**x, "h": h, "tokens": np.arange(V).reshape(V, 1), "mask": np.ones((V, 1), np.float32)}
    what = f"run_lora_kl on every token id at one position (scaling={s})"
    k1 = _call(fn, y, s, what)[:, 0]                                      # (V,)
    h64, W, A, Bm = (a.astype(np.float64) for a in (x["h"][0, 0], x["W"], x["A"], x["B"]))
    lp, lr = _logsoftmax64(h64 @ (W + s * Bm @ A).T), _logsoftmax64(h64 @ W.T)
    kl = float((np.exp(lp) * (lp - lr)).sum())                            # KL(π ‖ π_ref) >= 0
    assert_close(float((np.exp(lp) * k1).sum()), kl, f"{what}: Σ_v π(v) k1(v) vs KL(π ‖ π_ref) = {kl:.6g}",
                 atol=1e-4, rtol=1e-4)
