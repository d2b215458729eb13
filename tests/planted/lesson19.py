"""Planted bugs for lesson 19 (choosing a method): copies of `run_trainable_count`, each with one
plausible learner mistake in one method's count. tests/test_planted.py checks that lesson 19's
checks catch every one. Do not copy from this file.

The copies count from the closed forms (the reference builds the model and counts, which is slow
to repeat for every drawn shape), and each one gets one method wrong."""
import math
from fractions import Fraction


def _count(method, L, C, V, T, hp, bug=None):
    """The closed-form count of lesson 19's README, with `bug` planted."""
    if method == "full":
        return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C + (V * C if bug == "untied" else 0)
    if method == "bitfit":
        return 9 * L * C + (0 if bug == "no_ln" else 2 * L * C + C)
    if method == "lora":
        r, dora, whole = hp["r"], hp.get("dora", False), hp.get("qkv", ("q", "v")) is None
        if whole:
            return L * r * (C + (C if bug == "square" else 3 * C)) + dora * L * 3 * C
        return L * 2 * r * (C + C) + dora * L * 2 * C
    if method == "adapter":
        per = 2 if hp.get("kind", "series") == "series" and hp.get("placement", "houlsby") == "houlsby" else 1
        if bug == "houlsby_one":
            per = 1
        m = hp["bottleneck"]
        return per * L * (2 * C * m + m + C)
    if method == "prefix":
        P, m = hp["n_prefix"], hp.get("hidden", 32)
        if not hp.get("reparam", True):
            return 2 * L * P * C
        return (0 if bug == "no_table" else P * C) + C * m + m + 2 * L * C * m + 2 * L * C
    if method == "prompt":
        return hp["n_tokens"] * C
    if method == "reft":
        return L * hp["r"] * ((C if bug == "one_matrix" else 2 * C) + 1)
    if method == "masking":
        n = Fraction(hp["density"]) * 2 * L * C * C
        return math.floor(n) if bug == "floor" else math.floor(n + Fraction(1, 2))
    raise ValueError(f"method={method!r}")


def run_trainable_count__untied_head(method, n_layer, n_embd, vocab_size, block_size, hp):
    """counts the LM head as its own V C matrix (it is tied to wte)"""
    return _count(method, n_layer, n_embd, vocab_size, block_size, hp, "untied")


def run_trainable_count__bitfit_without_layernorm(method, n_layer, n_embd, vocab_size, block_size, hp):
    """BitFit counts the linear layers' biases only, not LayerNorm's"""
    return _count(method, n_layer, n_embd, vocab_size, block_size, hp, "no_ln")


def run_trainable_count__lora_fused_as_square(method, n_layer, n_embd, vocab_size, block_size, hp):
    """LoRA on the whole fused c_attn counted as r (C + C), as if its output were C wide, not 3C"""
    return _count(method, n_layer, n_embd, vocab_size, block_size, hp, "square")


def run_trainable_count__houlsby_one_adapter(method, n_layer, n_embd, vocab_size, block_size, hp):
    """Houlsby placement counted with one adapter per block instead of two"""
    return _count(method, n_layer, n_embd, vocab_size, block_size, hp, "houlsby_one")


def run_trainable_count__prefix_reparam_without_table(method, n_layer, n_embd, vocab_size, block_size, hp):
    """prefix tuning through the MLP forgets the P' table (P C) the MLP reads"""
    return _count(method, n_layer, n_embd, vocab_size, block_size, hp, "no_table")


def run_trainable_count__masking_floor(method, n_layer, n_embd, vocab_size, block_size, hp):
    """masking rounds d · 2 L C² down instead of to the nearest integer"""
    return _count(method, n_layer, n_embd, vocab_size, block_size, hp, "floor")


def run_trainable_count__reft_one_matrix(method, n_layer, n_embd, vocab_size, block_size, hp):
    """LoReFT counts R but not W: L r (C + 1)"""
    return _count(method, n_layer, n_embd, vocab_size, block_size, hp, "one_matrix")
