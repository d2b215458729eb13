"""Planted bugs for lesson 19 (choosing a method): copies of `run_trainable_count`, each with one
plausible learner mistake in one method's count, and copies of `run_merge_into_linear` (part 4, the
taxonomy), each merging one class of method wrongly. tests/test_planted.py checks that lesson 19's
checks catch every one. Do not copy from this file.

The count copies count from the closed forms (the reference builds the model and counts, which is slow
to repeat for every drawn shape), and each one gets one method wrong."""
import math
from fractions import Fraction

import torch

from minift.conformance import reference as ref


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


# ---- run_merge_into_linear (part 4: what the class of a method predicts) ----

def run_merge_into_linear__lora_without_scaling(W0, b0, method, params):
    """merges W0 + B A, forgetting the scaling s"""
    if method in ("lora", "dora"):
        params = dict(params, scaling=1.0)
    return ref.run_merge_into_linear(W0, b0, method, params)


def run_merge_into_linear__dora_as_lora(W0, b0, method, params):
    """merges DoRA as plain LoRA: W0 + s B A, the magnitude and the normalisation dropped"""
    return ref.run_merge_into_linear(W0, b0, "lora" if method == "dora" else method, params)


def run_merge_into_linear__dora_column_norm(W0, b0, method, params):
    """normalises W0 + s B A per input column instead of per output row"""
    if method != "dora":
        return ref.run_merge_into_linear(W0, b0, method, params)
    V = W0.double() + params["scaling"] * (params["B"].double() @ params["A"].double())
    cols = torch.linalg.vector_norm(V, dim=0, keepdim=True).clamp(min=1e-12)
    return (V / cols * params["magnitude"].double()[:, None]).float(), b0.clone()


def run_merge_into_linear__masking_column_major(W0, b0, method, params):
    """reads the masked positions column-major (row idx mod out, column idx // out)"""
    if method != "masking":
        return ref.run_merge_into_linear(W0, b0, method, params)
    out_f, in_f = W0.shape
    flat = W0.detach().T.contiguous().reshape(-1)                          # column-major order
    flat = flat.index_add(0, params["indices"].long(), params["values"])
    return flat.reshape(in_f, out_f).T.contiguous(), b0.clone()


def run_merge_into_linear__bitfit_bias_as_delta(W0, b0, method, params):
    """adds the trained bias to b0 as if it were a difference"""
    if method != "bitfit":
        return ref.run_merge_into_linear(W0, b0, method, params)
    return W0.clone(), b0 + params["bias"]


def run_merge_into_linear__adapter_linearised(W0, b0, method, params):
    """folds a series adapter into the layer as if its nonlinearity were the identity:
    W = (I + W_up W_down) W0, b = (I + W_up W_down) b0 + W_up b_down + b_up"""
    if method != "adapter":
        return ref.run_merge_into_linear(W0, b0, method, params)
    M = torch.eye(W0.shape[0]) + params["up"] @ params["down"]
    return M @ W0, M @ b0 + params["up"] @ params["b_down"] + params["b_up"]


def run_merge_into_linear__drops_additive(W0, b0, method, params):
    """returns the base layer unchanged for an additive method instead of refusing (the update is lost)"""
    if method in ("adapter", "prefix", "prompt", "reft"):
        return W0.clone(), b0.clone()
    return ref.run_merge_into_linear(W0, b0, method, params)
