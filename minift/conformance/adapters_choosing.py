"""Reference `run_*` adapter of lesson 19 (choosing a method): how many parameters each method of the
course trains on a GPT-2-shaped model, counted by building the model and applying the method.

`adapters.py` re-exports everything in `__all__`, so `minift.conformance.adapters` stays the one
reference implementation that `--impl` replaces.

    run_trainable_count(method, n_layer, n_embd, vocab_size, block_size, hp)
        the number of trainable parameters after `method` is applied to a GPT (no task head):
        "full", "bitfit", "lora" (DoRA with hp["dora"]), "adapter", "prefix", "prompt", "reft",
        "masking"; the table of lesson 19 and its at-scale claims rest on these counts.
"""
from __future__ import annotations

import torch

from minift.model import GPT, GPTConfig
from minift.peft.adapters import AdapterConfig
from minift.peft.io import apply_config
from minift.peft.lora import LoRAConfig
from minift.peft.masking import MaskingConfig
from minift.peft.prefix import PrefixConfig
from minift.peft.prompt import PromptConfig
from minift.peft.reft import ReFTConfig
from minift.peft.selective import SelectiveConfig

__all__: list[str] = ["run_trainable_count"]

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
