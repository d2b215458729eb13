"""Lesson 19 (choosing a method): the reference `run_*` functions and their conformance checks.

The reference `run_*` function: how many parameters each method of the course trains on a
GPT-2-shaped model, counted by building the model and applying the method.

    run_trainable_count(method, n_layer, n_embd, vocab_size, block_size, hp)
        the number of trainable parameters after `method` is applied to a GPT (no task head):
        "full", "bitfit", "lora" (DoRA with hp["dora"]), "adapter", "prefix", "prompt", "reft",
        "masking"; the table of lesson 19 and its at-scale claims rest on these counts.

The checks, registered into `CHECKS` with lesson="lesson19". The expected counts are the papers'
closed forms for a GPT-2 block with a tied LM head (C = n_embd, L = n_layer, V = vocab_size, T =
block_size), written here from the shapes, never by calling minift's reference function (which
builds the model and counts what requires grad):

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

import torch
from fractions import Fraction
from hypothesis import strategies as st

from minift.model import GPT, GPTConfig
from minift.peft.adapters import AdapterConfig
from minift.peft.io import apply_config
from minift.peft.lora import LoRAConfig
from minift.peft.masking import MaskingConfig
from minift.peft.prefix import PrefixConfig
from minift.peft.prompt import PromptConfig
from minift.peft.reft import ReFTConfig
from minift.peft.selective import SelectiveConfig

from .harness import number, property_check


# ---- the reference functions --------------------------------------------------------------------

METHODS = ("full", "bitfit", "lora", "adapter", "prefix", "prompt", "reft", "masking")


def _config(method: str, hp: dict):
    """The method's config from the plain hyperparameters the check passes (no task head)."""
    if method == "full":
        return None
    if method == "bitfit":
        return SelectiveConfig(param_types=["bias"], include_head=False)
    if method == "lora":
        qkv = hp.get("qkv", ("q", "v"))
        return LoRAConfig(r=int(hp["r"]), targets=("attn.c_attn",), qkv=None if qkv is None else tuple(qkv),
                          use_dora=bool(hp.get("dora", False)), include_head=False)
    if method == "adapter":
        return AdapterConfig(kind=hp.get("kind", "series"), placement=hp.get("placement", "houlsby"),
                             bottleneck=int(hp["bottleneck"]), include_head=False)
    if method == "prefix":
        return PrefixConfig(n_prefix=int(hp["n_prefix"]), reparam=bool(hp.get("reparam", True)),
                            hidden=int(hp.get("hidden", 32)), include_head=False)
    if method == "prompt":
        return PromptConfig(n_tokens=int(hp["n_tokens"]), init="random", include_head=False)
    if method == "reft":
        return ReFTConfig(r=int(hp["r"]), positions="all", include_head=False)
    if method == "masking":
        return MaskingConfig(density=float(hp["density"]), include_head=False)
    raise ValueError(f"run_trainable_count: method={method!r} must be one of {METHODS}")


def run_trainable_count(method: str, n_layer: int, n_embd: int, vocab_size: int, block_size: int,
                        hp: dict) -> int:
    """Trainable parameters of a GPT-2-layout model (tied LM head, biases, n_head = 1) after `method`
    is applied with the hyperparameters `hp`, each tensor counted once:

        "full"     every parameter                      "bitfit"   every bias (LayerNorm's too)
        "lora"     hp r, qkv (("q", "v") or None = the whole fused c_attn), dora (bool)
        "adapter"  hp kind ("series" | "parallel"), placement ("houlsby" | "pfeiffer"), bottleneck m
        "prefix"   hp n_prefix P, reparam (bool: through the MLP), hidden m (the MLP's width)
        "prompt"   hp n_tokens n                        "reft"     hp r (LoReFT on every block)
        "masking"  hp density d (on the W_q, W_v rows of every c_attn)

    Returns an int. Built on the CPU and counted (requires_grad), never from a formula."""
    cfg = _config(method, dict(hp))
    with torch.random.fork_rng(devices=[]):                           # the caller's RNG is left as it was
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=int(vocab_size), block_size=int(block_size), n_layer=int(n_layer),
                              n_head=1, n_embd=int(n_embd)))
        apply_config(model, cfg)
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad and p.is_floating_point()))


# ---- the checks ----------------------------------------------------------------------------------

N_EMBD = st.sampled_from([4, 8, 12, 16])
SHAPES = st.fixed_dictionaries({"n_layer": st.integers(1, 3), "n_embd": N_EMBD, "vocab_size": st.integers(8, 40),
                                "block_size": st.integers(8, 32)})


def _count(y, what: str) -> int:
    """The impl's output as a Python int: an integer, or a one-element integral tensor."""
    y = number(y, what, "an integer count")
    if float(y) != math.floor(float(y)):
        raise AssertionError(f"{what} returned {y!r}, not a whole number of parameters")
    return int(y)


def _expect(count, method, s, hp, expected: int, formula: str) -> None:
    what = (f"run_trainable_count({method!r}, n_layer={s['n_layer']}, n_embd={s['n_embd']}, "
            f"vocab_size={s['vocab_size']}, block_size={s['block_size']}, hp={hp})")
    got = _count(count(method, s["n_layer"], s["n_embd"], s["vocab_size"], s["block_size"], dict(hp)), what)
    if got != expected:
        raise AssertionError(f"{what} = {got:,}, expected {formula} = {expected:,} (difference {got - expected:+,})")


@property_check("run_trainable_count", lesson=19, examples=20, s=SHAPES)
def trainable_count_full_and_bitfit(count, s):
    """full fine-tuning trains V C + T C + L (12 C² + 13 C) + 2 C parameters of a GPT-2 model with
    a tied LM head, BitFit its 11 L C + C biases (LayerNorm's included)."""
    V, T, L, C = s["vocab_size"], s["block_size"], s["n_layer"], s["n_embd"]
    _expect(count, "full", s, {}, V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C,
            "V C + T C + L (12 C² + 13 C) + 2 C")
    _expect(count, "bitfit", s, {}, 11 * L * C + C, "11 L C + C")


@property_check("run_trainable_count", lesson=19, examples=25, s=SHAPES, r=st.integers(1, 4),
                whole=st.booleans(), dora=st.booleans())
def trainable_count_lora(count, s, r, whole, dora):
    """LoRA of rank r trains L · 2 · r (C + C) on W_q, W_v and L · r (C + 3C) on the whole fused
    c_attn; DoRA adds one magnitude per adapted output row."""
    L, C = s["n_layer"], s["n_embd"]
    if whole:
        hp, n, f = {"r": r, "qkv": None, "dora": dora}, L * r * (C + 3 * C) + dora * L * 3 * C, "L r (C + 3C)"
    else:
        hp, n, f = {"r": r, "qkv": ("q", "v"), "dora": dora}, L * 2 * r * (C + C) + dora * L * 2 * C, \
            "L · 2 · r (C + C)"
    _expect(count, "lora", s, hp, n, f + (" + the DoRA magnitudes" if dora else ""))


@property_check("run_trainable_count", lesson=19, examples=25, s=SHAPES, m=st.integers(1, 4),
                kind=st.sampled_from([("series", "houlsby", 2), ("series", "pfeiffer", 1), ("parallel", "houlsby", 1)]))
def trainable_count_adapters(count, s, m, kind):
    """a bottleneck adapter of width m trains 2 C m + m + C (W_down, b_down, W_up, b_up): two per block
    for Houlsby, one for Pfeiffer and for the parallel adapter."""
    L, C = s["n_layer"], s["n_embd"]
    k, placement, per_block = kind
    hp = {"kind": k, "placement": placement, "bottleneck": m}
    _expect(count, "adapter", s, hp, per_block * L * (2 * C * m + m + C), f"{per_block} L (2 C m + m + C)")


@property_check("run_trainable_count", lesson=19, examples=25, s=SHAPES, n=st.integers(1, 6),
                P=st.integers(1, 6), m=st.integers(1, 8), reparam=st.booleans())
def trainable_count_prefix_and_prompt(count, s, n, P, m, reparam):
    """prompt tuning trains n C; prefix tuning 2 L P C without its MLP, and P C + (C m + m) + (2 L C m
    + 2 L C) through it (the paper's reparameterisation)."""
    L, C = s["n_layer"], s["n_embd"]
    _expect(count, "prompt", s, {"n_tokens": n}, n * C, "n C")
    hp = {"n_prefix": P, "reparam": reparam, "hidden": m}
    if reparam:
        _expect(count, "prefix", s, hp, P * C + C * m + m + 2 * L * C * m + 2 * L * C,
                "P C + C m + m + 2 L C m + 2 L C")
    else:
        _expect(count, "prefix", s, hp, 2 * L * P * C, "2 L P C")


# d · 2 L C² = 0.1 · 128 = 12.8 (L = 1, C = 8): the nearest count is 13, rounding down gives 12. Drawn shapes and
# densities reach a fraction of one half or more too, but not in every run of 25 examples.
_MASKING_ROUNDS_UP = dict(s={"n_layer": 1, "n_embd": 8, "vocab_size": 8, "block_size": 8}, r=1, d=0.1)


@property_check("run_trainable_count", lesson=19, examples=25, explicit=[_MASKING_ROUNDS_UP], s=SHAPES,
                r=st.integers(1, 4), d=st.sampled_from([1.0, 0.5, 0.25, 0.1, 0.05]))
def trainable_count_reft_and_masking(count, s, r, d):
    """LoReFT of rank r on every block trains L r (2 C + 1) (R, W, b); random masking at density d on
    the W_q, W_v rows trains ⌊d · 2 L C² + ½⌋ values."""
    L, C = s["n_layer"], s["n_embd"]
    _expect(count, "reft", s, {"r": r}, L * r * (2 * C + 1), "L r (2 C + 1)")
    k = int(math.floor(Fraction(d) * 2 * L * C * C + Fraction(1, 2)))
    _expect(count, "masking", s, {"density": d}, k, "⌊d · 2 L C² + ½⌋")
