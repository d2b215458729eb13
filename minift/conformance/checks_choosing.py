"""Conformance checks of lesson 19 (choosing a method), registered into `checks.CHECKS` with
lesson="lesson19". The expected counts are the papers' closed forms for a GPT-2 block with a tied LM
head (C = n_embd, L = n_layer, V = vocab_size, T = block_size), written here from the shapes, never
by calling minift's reference adapter (which builds the model and counts what requires grad):

    a block        ln_1 (2C) + c_attn (3C² + 3C) + c_proj (C² + C) + ln_2 (2C) + c_fc (4C² + 4C)
                   + mlp.c_proj (4C² + C)  =  12 C² + 13 C
    full           V C + T C + L (12 C² + 13 C) + 2 C   (wte, wpe, blocks, ln_f; lm_head is wte)
    BitFit         L (3C + C + 4C + C + C + C) + C = 11 L C + C   (every bias, LayerNorm's included)
    LoRA           W_q, W_v: L · 2 · r (C + C);  the whole fused c_attn: L · r (C + 3C);
                   DoRA + one magnitude per adapted output row (+ 2 L C, or + 3 L C)
    adapters       one adapter: 2 C m + m + C; Houlsby has two per block, Pfeiffer and parallel one
    prefix         no MLP: 2 L P C;  with the MLP: P C + (C m + m) + (2 L C m + 2 L C)
    prompt         n C
    LoReFT         L r (2 C + 1)
    masking        ⌊d · 2 L C² + ½⌋   (the W_q, W_v rows of every c_attn: 2 C x C each)
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from .checks import _adapter, _register, _run  # noqa: F401
from .strategies import check_settings

N_EMBD = st.sampled_from([4, 8, 12, 16])
SHAPES = st.fixed_dictionaries({"n_layer": st.integers(1, 3), "n_embd": N_EMBD, "vocab_size": st.integers(8, 40),
                                "block_size": st.integers(8, 32)})


def _count(y, what: str) -> int:
    """The impl's output as a Python int: an integer, or a one-element integral tensor."""
    if isinstance(y, torch.Tensor):
        if y.numel() != 1:
            raise AssertionError(f"{what} must return a number, got a tensor of shape {tuple(y.shape)}")
        y = y.item()
    if isinstance(y, bool) or not isinstance(y, (int, float, np.integer, np.floating)):
        raise AssertionError(f"{what} must return an integer count, got {type(y).__name__}")
    if float(y) != math.floor(float(y)):
        raise AssertionError(f"{what} returned {y!r}, not a whole number of parameters")
    return int(y)


def _expect(count, method, s, hp, expected: int, formula: str) -> None:
    what = (f"run_trainable_count({method!r}, n_layer={s['n_layer']}, n_embd={s['n_embd']}, "
            f"vocab_size={s['vocab_size']}, block_size={s['block_size']}, hp={hp})")
    got = _count(count(method, s["n_layer"], s["n_embd"], s["vocab_size"], s["block_size"], dict(hp)), what)
    if got != expected:
        raise AssertionError(f"{what} = {got:,}, expected {formula} = {expected:,} (difference {got - expected:+,})")


@_register("run_trainable_count", "full fine-tuning trains V C + T C + L (12 C² + 13 C) + 2 C parameters of a "
           "GPT-2 model with a tied LM head, BitFit its 11 L C + C biases (LayerNorm's included).",
           lesson="lesson19")
def check_trainable_count_full_and_bitfit(impl):
    count = _adapter(impl, "run_trainable_count")

    @check_settings(20)
    @given(s=SHAPES)
    def trainable_count_full_and_bitfit(s):
        V, T, L, C = s["vocab_size"], s["block_size"], s["n_layer"], s["n_embd"]
        _expect(count, "full", s, {}, V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C,
                "V C + T C + L (12 C² + 13 C) + 2 C")
        _expect(count, "bitfit", s, {}, 11 * L * C + C, "11 L C + C")
    _run(trainable_count_full_and_bitfit)


@_register("run_trainable_count", "LoRA of rank r trains L · 2 · r (C + C) on W_q, W_v and L · r (C + 3C) on "
           "the whole fused c_attn; DoRA adds one magnitude per adapted output row.", lesson="lesson19")
def check_trainable_count_lora(impl):
    count = _adapter(impl, "run_trainable_count")

    @check_settings(25)
    @given(s=SHAPES, r=st.integers(1, 4), whole=st.booleans(), dora=st.booleans())
    def trainable_count_lora(s, r, whole, dora):
        L, C = s["n_layer"], s["n_embd"]
        if whole:
            hp, n, f = {"r": r, "qkv": None, "dora": dora}, L * r * (C + 3 * C) + dora * L * 3 * C, "L r (C + 3C)"
        else:
            hp, n, f = {"r": r, "qkv": ("q", "v"), "dora": dora}, L * 2 * r * (C + C) + dora * L * 2 * C, \
                "L · 2 · r (C + C)"
        _expect(count, "lora", s, hp, n, f + (" + the DoRA magnitudes" if dora else ""))
    _run(trainable_count_lora)


@_register("run_trainable_count", "a bottleneck adapter of width m trains 2 C m + m + C (W_down, b_down, W_up, "
           "b_up): two per block for Houlsby, one for Pfeiffer and for the parallel adapter.", lesson="lesson19")
def check_trainable_count_adapters(impl):
    count = _adapter(impl, "run_trainable_count")

    @check_settings(25)
    @given(s=SHAPES, m=st.integers(1, 4),               # m <= n_embd (>= 4)
           kind=st.sampled_from([("series", "houlsby", 2), ("series", "pfeiffer", 1), ("parallel", "houlsby", 1)]))
    def trainable_count_adapters(s, m, kind):
        L, C = s["n_layer"], s["n_embd"]
        k, placement, per_block = kind
        hp = {"kind": k, "placement": placement, "bottleneck": m}
        _expect(count, "adapter", s, hp, per_block * L * (2 * C * m + m + C), f"{per_block} L (2 C m + m + C)")
    _run(trainable_count_adapters)


@_register("run_trainable_count", "prompt tuning trains n C; prefix tuning 2 L P C without its MLP, and "
           "P C + (C m + m) + (2 L C m + 2 L C) through it (the paper's reparameterisation).", lesson="lesson19")
def check_trainable_count_prefix_and_prompt(impl):
    count = _adapter(impl, "run_trainable_count")

    @check_settings(25)
    @given(s=SHAPES, n=st.integers(1, 6), P=st.integers(1, 6), m=st.integers(1, 8), reparam=st.booleans())
    def trainable_count_prefix_and_prompt(s, n, P, m, reparam):
        L, C = s["n_layer"], s["n_embd"]
        _expect(count, "prompt", s, {"n_tokens": n}, n * C, "n C")
        hp = {"n_prefix": P, "reparam": reparam, "hidden": m}
        if reparam:
            _expect(count, "prefix", s, hp, P * C + C * m + m + 2 * L * C * m + 2 * L * C,
                    "P C + C m + m + 2 L C m + 2 L C")
        else:
            _expect(count, "prefix", s, hp, 2 * L * P * C, "2 L P C")
    _run(trainable_count_prefix_and_prompt)


@_register("run_trainable_count", "LoReFT of rank r on every block trains L r (2 C + 1) (R, W, b); random masking "
           "at density d on the W_q, W_v rows trains ⌊d · 2 L C² + ½⌋ values.", lesson="lesson19")
def check_trainable_count_reft_and_masking(impl):
    count = _adapter(impl, "run_trainable_count")

    @check_settings(25)
    @given(s=SHAPES, r=st.integers(1, 4), d=st.sampled_from([1.0, 0.5, 0.25, 0.1, 0.05]))
    def trainable_count_reft_and_masking(s, r, d):
        L, C = s["n_layer"], s["n_embd"]
        _expect(count, "reft", s, {"r": r}, L * r * (2 * C + 1), "L r (2 C + 1)")
        k = int(math.floor(Fraction(d) * 2 * L * C * C + Fraction(1, 2)))
        _expect(count, "masking", s, {"density": d}, k, "⌊d · 2 L C² + ½⌋")
    _run(trainable_count_reft_and_masking)
