"""The PEFT taxonomy: every method of the course in one of three classes, and what the class alone
predicts (Lialin et al., 2023, "Scaling Down to Scale Up: A Guide to Parameter-Efficient
Fine-Tuning", section 3; Han et al., 2024, "Parameter-Efficient Fine-Tuning for Large Models: A
Comprehensive Survey", section 3).

    selective            train a subset of the base's own parameters: W = W0 + M ⊙ Δ for a mask M
                         (BitFit: the biases; layer and parameter-type freezing; random masking)
    reparameterization   train a compact form θ of a weight update: W = W0 + f(θ), f(θ) = s B A
                         (LoRA, rsLoRA, DoRA's m ⊙ (W0 + s B A) / ‖·‖; QLoRA and LoftQ on a quantized W0)
    additive             add modules or inputs the base does not have: h = g(x; W0) + a(x; θ), or
                         more tokens [P; x] (series and parallel adapters, prefix and prompt tuning,
                         LoReFT's interventions h + Rᵀ(W h + b − R h) at chosen positions)
    hybrid               two classes at once (UniPELT, MAM adapters, S4); no method of the course
                         alone is one, though any two can be stacked

Consequences that follow from the class, before any measurement:

    class                update lands in W0's  merge into W0   inference after merging
    selective            entries                yes (in place)  the base's cost exactly
    reparameterization   shape (ΔW is a dense   yes: W0 + f(θ)  the base's cost exactly
                          matrix of W0's shape)
    additive             nowhere: a new         no              extra modules or tokens
                          function of x                          on every call

Merging puts the update into W0, so the adapted model becomes the base's architecture and runs at
the base's cost; an additive method's extra computation cannot be folded in, because it is not a
change of any existing weight (a series adapter's nonlinearity, a prefix's extra keys, a position-
specific intervention). One nuance the table hides: a quantized base (QLoRA) merges exactly only into
a float weight; merged back into 4 bits, W0 + s B A is rounded to the code again (lesson 12). And an
LLM.int8() base rounds the activations too, which a merged float layer no longer does.

Memory follows the trainable parameter count for every class (gradients and AdamW's two moments
exist only for what trains), but activations do not: every class backpropagates through the frozen
layers above its lowest trainable parameter (lesson 19 measures both).

`family(cfg)` reads a method config's class (`MethodConfig.family`); `merge_into_base(model)` merges
every mergeable update and refuses additive layers by name, so a test can check the prediction
against what each method does (tests/test_taxonomy.py), and lesson 19 prints the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .peft.common import MethodConfig, adapter_layers, set_module
from .peft.lora import LoRALinear, merge_and_unload
from .peft.masking import MaskedLinear
from .quant.qlora import QLoRALinear, merge_and_unload_qlora

FAMILIES = ("selective", "reparameterization", "additive", "hybrid")


@dataclass(frozen=True)
class Consequences:
    """What a class predicts about any of its methods."""
    new_function: bool           # does the adapted model compute something the base's architecture cannot?
    mergeable: bool              # can the update be folded into W0?
    merged_cost: str             # inference cost after merging (or as trained, if it cannot merge)


CONSEQUENCES = {
    "selective": Consequences(new_function=False, mergeable=True, merged_cost="the base's"),
    "reparameterization": Consequences(new_function=False, mergeable=True, merged_cost="the base's"),
    "additive": Consequences(new_function=True, mergeable=False, merged_cost="the base's + the added modules or tokens"),
    "hybrid": Consequences(new_function=True, mergeable=False, merged_cost="that of its additive part"),
}


def family(cfg: MethodConfig) -> str:
    """The class of a method config (its `family` class attribute)."""
    if not isinstance(cfg, MethodConfig):
        raise TypeError(f"family: expected a method config (e.g. LoRAConfig()), got {type(cfg).__name__}")
    if cfg.family not in FAMILIES:
        raise ValueError(f"{type(cfg).__name__}.family={cfg.family!r} must be one of {FAMILIES}")
    return cfg.family


def merge_into_base(model: nn.Module) -> nn.Module:
    """Fold every mergeable update into its weight and put plain layers back: LoRA and DoRA
    (W0 + s B A), QLoRA into float (the layers it did not adapt stay quantized), random masking
    (W0 + scatter(idx, v)); a selectively tuned model is already the base's architecture. Additive
    layers cannot be merged: a ValueError names them and nothing is changed. Returns the model."""
    kinds = (LoRALinear, MaskedLinear)                                   # QLoRALinear is a LoRALinear
    additive = [f"{n} ({type(m).__name__})" for n, m in adapter_layers(model) if not isinstance(m, kinds)]
    if additive:
        raise ValueError(f"merge_into_base: additive layers have no weight to merge into: {', '.join(additive)}")
    if any(isinstance(m, QLoRALinear) for _, m in adapter_layers(model)):
        merge_and_unload_qlora(model)                                    # exact, into float
    merge_and_unload(model)
    for n, m in list(adapter_layers(model, MaskedLinear)):
        m.merge()                                                        # W0[idx] += v
        set_module(model, n, m.original())                               # the same tensors, a plain Linear
    if hasattr(model, "peft_methods"):                                  # the two merges above drop their own records
        model.peft_methods[:] = [r for r in model.peft_methods if r["method"] != "masking"]
    return model


__all__ = ["CONSEQUENCES", "Consequences", "FAMILIES", "family", "merge_into_base"]
