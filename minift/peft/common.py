"""What every module-surgery method shares: the adapter layers' base class, turning adapters off,
the record of what was applied, and the counting.

A method (LoRA, bottleneck adapters, ...) replaces some modules of the model by an
`AdapterLayer`: a module that computes the frozen base function plus a small trainable part.
Each one has a switch, `adapter_enabled`, so that

    with disable_adapters(model):
        ref_logits = model(idx).logits        # the base model, exactly: no adapter term is computed

gives the base model back without copying it (DPO and PPO use this for their reference model).
Only unmerged layers can be switched off exactly: a merged LoRA has changed the weight itself.

`apply_*` records what it did in `model.peft_methods` (a list of {"method", "config", "modules"}),
which is what an adapter file stores (minift.peft.io).
"""
from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn

_HEAD = re.compile(r"(^|\.)head\.")          # a task head (minift.heads), never the tied lm_head


class ConfigIO:
    """to_dict / from_dict for a method's config dataclass, as adapter files store it (JSON):
    tuples become lists, and from_dict refuses unknown fields by name."""

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown {cls.__name__} field(s) {sorted(set(d) - known)}; expected {sorted(known)}")
        return cls(**d)


QKV = ("q", "k", "v")                          # the slices of GPT-2's fused attn.c_attn, in order


def check_targets(targets, what: str) -> tuple:
    """Config targets: one regex or several, each non-empty and valid (re.search over module names).
    `what` names the config in the error ("LoRAConfig", "MaskingConfig")."""
    if isinstance(targets, (str, list, tuple)):
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not isinstance(targets, tuple) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{what}.targets={targets!r} must be non-empty regexes over module names, "
                         f"e.g. ['attn.c_attn', 'mlp.c_fc']")
    for t in targets:
        try:
            re.compile(t)
        except re.error as e:
            raise ValueError(f"{what}.targets: {t!r} is not a valid regular expression ({e})") from None
    return targets


def check_qkv(qkv, what: str):
    """None (the whole c_attn) or distinct slices of QKV, returned in q, k, v order."""
    if qkv is None:
        return None
    chosen = [qkv] if isinstance(qkv, str) else list(qkv) if isinstance(qkv, (list, tuple)) else None
    if not chosen or any(s not in QKV for s in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"{what}.qkv={qkv!r} must be None (the whole c_attn) or distinct "
                         f"slices from {QKV}, e.g. ('q', 'v')")
    return tuple(s for s in QKV if s in chosen)


class AdapterLayer(nn.Module):
    """Base class of every adapted module. Subclasses list their trainable tensors' local names
    in `adapter_names()` and honour `self.adapter_enabled` in forward."""

    adapter_enabled: bool = True
    merged: bool = False                      # only LoRA can merge; adapters never do

    def adapter_names(self) -> list[str]:     # e.g. ["lora_A", "lora_B"]
        raise NotImplementedError

    def original(self) -> nn.Module:
        """The module this layer replaced, rebuilt around the same (frozen) tensors."""
        raise NotImplementedError

    def remove_from(self, model: nn.Module, name: str) -> None:
        """Undo this layer's surgery on `model` (it lives at dotted `name`). Module replacements put
        `original()` back; a method that attaches a module and a hook instead (prefix, prompt,
        ReFT) overrides this to delete both."""
        set_module(model, name, self.original())


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    for name, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            yield name, m


@contextmanager
def disable_adapters(model: nn.Module):
    """Inside the block every adapter layer computes its base function only: the model is the
    base model, bit for bit. Refuses merged LoRA layers (their weight is no longer W0)."""
    layers = [m for _, m in adapter_layers(model)]
    merged = [n for n, m in adapter_layers(model) if m.merged]
    if merged:
        raise ValueError(f"disable_adapters: {len(merged)} layer(s) are merged into the base weights "
                         f"({merged[:3]}); call unmerge_lora(model) first, merged weights are not W0")
    before = [m.adapter_enabled for m in layers]
    try:
        for m in layers:
            m.adapter_enabled = False
        yield model
    finally:
        for m, flag in zip(layers, before):
            m.adapter_enabled = flag


def adapter_state_dict(model: nn.Module, kind: type = AdapterLayer) -> dict:
    """The adapters' own tensors by full name (what an adapter file holds), for layers of `kind`."""
    out = {}
    for name, m in adapter_layers(model):
        if isinstance(m, kind):
            params = dict(m.named_parameters())
            for local in m.adapter_names():
                out[f"{name}.{local}" if name else local] = params[local]
    return out


def freeze_all_but_adapters(model: nn.Module, include_head: bool) -> None:
    """requires_grad = False everywhere, then True for the adapters' tensors (and a task head)."""
    for p in model.parameters():
        p.requires_grad = False
    for p in adapter_state_dict(model).values():
        if p.is_floating_point() or p.is_complex():        # an integer tensor (a mask's indices) never trains
            p.requires_grad = True
    if include_head:
        for n, p in model.named_parameters():
            if _HEAD.search(n) and not n.startswith("lm_head") and ".lm_head." not in n:
                p.requires_grad = True


def record(model: nn.Module, method: str, config: dict, modules: list[str]) -> None:
    """Note on the model what apply_<method> did (read by save_adapter)."""
    methods = getattr(model, "peft_methods", None)
    if methods is None:
        methods = []
        object.__setattr__(model, "peft_methods", methods)   # a plain attribute, not a submodule
    methods.append({"method": method, "config": config, "modules": list(modules)})


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name` by `new`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def remove_adapters(model: nn.Module) -> list[str]:
    """Put every replaced module back (same tensors: unmerged weights are W0 exactly) and forget the
    record. Merged LoRA layers must be unmerged first (or use lora.merge_and_unload). Parameters stay
    frozen. Returns the names of the modules restored."""
    found = list(adapter_layers(model))
    merged = [n for n, m in found if m.merged]
    if merged:
        raise ValueError(f"remove_adapters: layer(s) {merged[:3]} are merged; unmerge_lora(model) first, "
                         f"or merge_and_unload(model) to keep the merged weights")
    for name, m in found:
        m.remove_from(model, name)
    if hasattr(model, "peft_methods"):
        model.peft_methods.clear()
    return [n for n, _ in found]


def remove_hooks(module: nn.Module, match) -> int:
    """Delete the forward hooks and pre-hooks of `module` whose function satisfies match(fn); returns
    how many. Methods that work through hooks (prefix, prompt, ReFT) remove theirs this way rather than
    through the handles register_* returned: a deep-copied model has its own hook dicts, and the old
    handles point at the original's."""
    n = 0
    for hooks, with_kwargs in ((module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs),
                               (module._forward_hooks, module._forward_hooks_with_kwargs)):
        for key in [k for k, fn in hooks.items() if match(fn)]:
            del hooks[key]
            with_kwargs.pop(key, None)
            n += 1
    return n


def count_adapter_parameters(model: nn.Module) -> int:
    """Number of adapter parameters (LoRA: r (in + out) per adapted matrix, DoRA + out). Integer
    tensors (random masking's stored indices) are part of the file, not parameters, and do not count."""
    return sum(p.numel() for p in adapter_state_dict(model).values() if p.is_floating_point() or p.is_complex())

