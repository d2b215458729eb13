"""What every module-surgery method shares: the adapter layers' base class, turning adapters off,
the record of what was applied, and the counting.

A method (LoRA, bottleneck adapters, ...) replaces some modules of the model by an
`AdapterLayer`: a module that computes the frozen base function plus a small trainable part.
Each one has a switch, `adapter_enabled`, so that

    with disable_adapters(model):
        ref_logits = model(idx).logits        # the base model, exactly: no adapter term is computed

gives the base model back without copying it (DPO and PPO use this for their reference model).
Only unmerged layers can be switched off exactly: a merged LoRA has changed the weight itself.

Every method has the same small surface (DESIGN.md, "How a method is written"): a config dataclass
that is a `MethodConfig`, so that it

    cfg.apply(model)            # = apply_<method>(model, cfg): the surgery, then freeze the rest
    cfg.method                  # its name in an adapter file ("lora", "adapters", ...)
    cfg.to_dict(), Cfg.from_dict(d)

Defining such a class registers it under its `method` (`method_config("lora")` finds LoRAConfig), so
an adapter file can be read back without a list of modules held as strings. `apply_*` records what
it did in `model.peft_methods` (a list of {"method", "config", "modules"}), which is what an adapter
file stores (minift.peft.io).

The module surgery of the methods that replace nn.Linear layers (LoRA, random masking, QLoRA) shares
its steps here too: which linears the target regexes select, the q/k/v row slices of GPT-2's fused
c_attn, the tied-weight check, and the plain nn.Linear a layer gives back when it is removed.
"""
from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager
from typing import ClassVar, Iterator, Optional

import torch.nn as nn

from ..validate import QKV

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


CONFIGS: dict[str, type] = {}                 # method name in an adapter file -> its config class


class MethodConfig(ConfigIO):
    """A method's config: it applies itself and names itself in an adapter file. A subclass sets the
    class attribute `method` (no annotation: it is not a dataclass field) and defines `apply`;
    defining the class registers it, so importing a method's module is all a reader needs."""

    method: ClassVar[str] = ""                  # "" (SelectiveConfig): not stored in adapter files
    family: ClassVar[str] = ""                  # its PEFT class (minift/taxonomy.py): selective, additive, ...

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method"):
            CONFIGS[cls.method] = cls

    def apply(self, model: nn.Module) -> list[str]:
        """apply_<method>(model, self): the surgery, then freeze the rest. Returns the adapted names."""
        raise NotImplementedError


def method_config(name, source: str = "adapter file") -> type:
    """The config class of the method called `name` in an adapter file (its module must be imported)."""
    if name not in CONFIGS:
        raise ValueError(f"{source}: unknown method {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


def apply_config(model: nn.Module, cfg: Optional[MethodConfig]) -> nn.Module:
    """cfg.apply(model) for any method config (None applies nothing). Returns the model (the lessons
    build many this way)."""
    if cfg is not None and not isinstance(cfg, MethodConfig):
        raise TypeError(f"apply_config: {type(cfg).__name__} is not a method config; expected one of "
                        f"SelectiveConfig, {', '.join(c.__name__ for c in CONFIGS.values())}")
    if cfg is not None:
        cfg.apply(model)
    return model


TARGETS_HINT = " over module names, e.g. ['attn.c_attn', 'mlp.c_fc']"   # for validate.check_regexes


def is_fused_qkv(name: str, m: nn.Module) -> bool:
    """GPT-2's fused attn.c_attn: out = 3 in (q, k, v stacked)."""
    return name.split(".")[-1] == "c_attn" and m.weight.shape[0] == 3 * m.weight.shape[1]


def qkv_slices(name: str, m: nn.Module, qkv) -> Optional[list[tuple[int, int]]]:
    """The output rows [(start, stop), ...] of the chosen q/k/v slices of a fused c_attn (C rows each);
    None for the whole matrix (qkv is None, or m is not a fused c_attn)."""
    if qkv is None or not is_fused_qkv(name, m):
        return None
    C = m.weight.shape[1]
    return [(QKV.index(s) * C, (QKV.index(s) + 1) * C) for s in qkv]


def find_linears(model: nn.Module, targets, what: str, adapted: tuple = ()) -> list[str]:
    """The nn.Linear module names (or layers of the `adapted` types) the regexes `targets` select
    (re.search); each pattern must select one. `what` names the method in the error ("LoRA")."""
    linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, *adapted))]
    chosen: list[str] = []
    for pat in targets:
        hits = [n for n in linears if re.search(pat, n)]
        if not hits:
            raise ValueError(f"{what} target {pat!r} matches no nn.Linear module; linear modules are named like "
                             f"{linears[:4]} ... (e.g. 'attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def names_by_tensor(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it is registered under in model (two or more: tied)."""
    out: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), []).append(n)
    return out


def tied_names(model: nn.Module, m: nn.Module, _names: Optional[dict] = None) -> list[str]:
    """Other names under which m's weight is registered (lm_head.weight is transformer.wte.weight).
    `_names`: names_by_tensor(model), when the caller asks about many modules of one model."""
    names_of = names_by_tensor(model) if _names is None else _names
    own = list(m.parameters(recurse=False))
    names = [n for p in own for n in names_of.get(id(p), [])]
    return names if len(names) > len(own) else []


def linear_targets(model: nn.Module, cfg, what: str, qkv_what: str, adapted: tuple = ()) -> list[str]:
    """The linear layers cfg.targets select (find_linears), checked before any surgery: cfg.qkv slices
    need a fused c_attn among them, and none may share its weight with another module (GPT-2's lm_head
    is the token embedding). `what` / `qkv_what` name the method and its qkv field in the errors."""
    names = find_linears(model, cfg.targets, what, adapted)
    if cfg.qkv is not None and not any(is_fused_qkv(n, model.get_submodule(n)) for n in names):
        raise ValueError(f"{qkv_what}={cfg.qkv} selects slices of a fused attn.c_attn, but the targets "
                         f"{list(cfg.targets)} match none ({names[:3]}); add 'attn.c_attn' or set qkv=None")
    names_of = names_by_tensor(model)                                   # once: a pass over every parameter
    for n in names:
        tied = [t for t in tied_names(model, model.get_submodule(n), names_of) if not t.startswith(f"{n}.")]
        if tied:
            raise ValueError(f"{what} target {n} shares its weight with {tied} (tied embeddings); adapting it "
                             f"would change the embedding too. Choose other targets")
    return names


def linear_around(weight: nn.Parameter, bias: Optional[nn.Parameter]) -> nn.Linear:
    """A plain nn.Linear holding these very tensors (what an adapted linear layer gives back)."""
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    lin.weight, lin.bias = weight, bias                                    # the same tensors
    return lin


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


def adapter_layers(model: nn.Module, kind: type = AdapterLayer) -> Iterator[tuple[str, AdapterLayer]]:
    """(name, layer) of every adapter layer of `kind` (a class or a tuple of classes) in model."""
    for name, m in model.named_modules():
        if isinstance(m, kind):
            yield name, m


def merge_layers(model: nn.Module, kind: type, merge: bool = True) -> None:
    """merge() (or unmerge()) every adapter layer of `kind`: LoRA and random masking fold into W."""
    for _, m in adapter_layers(model, kind):
        m.merge() if merge else m.unmerge()


def detached_state(model: nn.Module, kind: type) -> dict:
    """The tensors of the adapter layers of `kind`, detached, by full name (e.g. lora_state_dict)."""
    return {k: v.detach() for k, v in adapter_state_dict(model, kind).items()}


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
    for name, m in adapter_layers(model, kind):
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


def record(model: nn.Module, cfg: MethodConfig, modules: list[str]) -> list[str]:
    """Note on the model what cfg.apply did (read by save_adapter). Returns `modules`."""
    methods = getattr(model, "peft_methods", None)
    if methods is None:
        methods = []
        object.__setattr__(model, "peft_methods", methods)   # a plain attribute, not a submodule
    methods.append({"method": cfg.method, "config": cfg.to_dict(), "modules": list(modules)})
    return list(modules)


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

