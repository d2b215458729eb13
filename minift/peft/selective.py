"""Selective fine-tuning: train a chosen subset of the pretrained weights, freeze the rest.

The simplest parameter-efficient methods change *which* parameters move, not the model:

- by layer: only the first or last k blocks (Lee et al., 2019, "What would Elsa do? Freezing
  layers during transformer fine-tuning");
- by component: only attention, only the MLP, only the layer norms, only the embeddings, only a
  task head (transfer learning: Howard & Ruder, 2018);
- by parameter type: BitFit trains the bias terms only (Ben Zaken et al., 2022), ~0.1% of BERT.

The update rule is the same for all of them: θ_i ← θ_i − η ĝ_i for selected i, θ_i unchanged
otherwise. Freezing is `requires_grad = False`, so frozen weights get no gradient, no optimizer
state, and stay bit-identical.

Selections combine as an intersection: `SelectiveConfig(layers=[-2, -1], param_types=["bias"])`
is "the biases of the last two blocks"; `patterns` (regular expressions over parameter names) are
added to the result. A new task head (`head.*`, see minift.heads) stays trainable unless
`include_head=False`. Names are matched with re.search, so a body wrapped in a classifier
(`body.transformer.h.0...`) matches the same patterns.

GPT-2 ties lm_head to the token embedding: they are one tensor, so selecting the embeddings
selects the LM head as well, and vice versa.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch.nn as nn

from ..validate import FieldTypeError, check_bool, check_ints
from .common import MethodConfig

# component -> regular expression over parameter names
COMPONENTS = {
    "embeddings": r"transformer\.(wte|wpe)\.",
    "attention": r"\.attn\.",
    "mlp": r"\.mlp\.",
    "layernorm": r"\.(ln_1|ln_2|ln_f)\.",
    "head": r"(^|\.)(lm_head|head)\.",
}
PARAM_TYPES = {"weight": r"\.weight$", "bias": r"\.bias$"}
_LAYER = re.compile(r"transformer\.h\.(\d+)\.")


@dataclass
class SelectiveConfig(MethodConfig):
    """Which pretrained parameters train (see the module docstring); nothing is added to the model,
    so there is no adapter file: save the trainable tensors with checkpoint.save_trainable."""

    family = "selective"                          # minift/taxonomy.py: trains a subset of the base's own parameters
    layers: Optional[Sequence[int]] = None        # block indices; negative counts from the end
    components: Optional[Sequence[str]] = None    # keys of COMPONENTS
    param_types: Optional[Sequence[str]] = None   # "weight" and/or "bias"
    patterns: Sequence[str] = field(default_factory=tuple)  # extra regexes, added to the selection
    include_head: bool = True                     # keep a task head (head.*) trainable

    def __post_init__(self):
        self.layers = check_ints(self, "layers", self.layers, optional=True, hint=" (block indices; -1 is the last)")
        self.components = _check_names("components", self.components, COMPONENTS)
        self.param_types = _check_names("param_types", self.param_types, PARAM_TYPES)
        self.patterns = _check_names("patterns", self.patterns)
        check_bool(self, "include_head", self.include_head)

    def apply(self, model: nn.Module) -> list[str]:
        return apply_selective(model, self)


def _check_names(field_name: str, value, known: Optional[dict] = None):
    """One string or a list of them, as a tuple: keys of `known` (None stays None), or, without
    `known`, regular expressions."""
    if value is None and known is not None:
        return None
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise FieldTypeError(f"SelectiveConfig.{field_name}={value!r} must be a list of strings"
                             + (f" from {sorted(known)}, or None" if known else " (regular expressions)"))
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"SelectiveConfig.{field_name} has unknown {field_name[:-1].replace('_', ' ')}(s) "
                             f"{unknown}; choose from {sorted(known)}")
    else:
        for n in names:
            try:
                re.compile(n)
            except re.error as e:
                raise ValueError(f"SelectiveConfig.{field_name}: {n!r} is not a valid regex ({e})") from None
    return tuple(names)


def _all_names(model: nn.Module) -> dict:
    """Every parameter name, tied aliases included (lm_head.weight), -> the tensor."""
    return dict(model.named_parameters(remove_duplicate=False))


def n_layers(model: nn.Module) -> int:
    found = [int(m.group(1)) for n in _all_names(model) if (m := _LAYER.search(n))]
    return max(found) + 1 if found else 0


def select_by_pattern(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Parameter names matching any regex; a pattern that matches nothing is an error."""
    names = list(_all_names(model))
    out = []
    for p in patterns:
        hits = [n for n in names if re.search(p, n)]
        if not hits:
            raise ValueError(f"pattern {p!r} matches no parameter; names look like {names[:3]} ... {names[-2:]}")
        out += [n for n in hits if n not in out]
    return out


def select(model: nn.Module, cfg: SelectiveConfig) -> list[str]:
    """The parameter names a SelectiveConfig chooses."""
    names = list(_all_names(model))
    chosen = set(names)
    if cfg.layers is not None:
        L = n_layers(model)
        layers = set()
        for i in cfg.layers:
            if not isinstance(i, int) or not -L <= i < L:
                raise ValueError(f"layer index {i!r} is out of range for a model with n_layer={L} "
                                 f"(use 0..{L - 1} or -{L}..-1)")
            layers.add(i % L)
        chosen &= {n for n in names if (m := _LAYER.search(n)) and int(m.group(1)) in layers}
    if cfg.components is not None:
        unknown = [c for c in cfg.components if c not in COMPONENTS]
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(COMPONENTS)}")
        chosen &= {n for n in names if any(re.search(COMPONENTS[c], n) for c in cfg.components)}
    if cfg.param_types is not None:
        unknown = [t for t in cfg.param_types if t not in PARAM_TYPES]
        if unknown:
            raise ValueError(f"unknown parameter type(s) {unknown}; choose from {sorted(PARAM_TYPES)}")
        chosen &= {n for n in names if any(re.search(PARAM_TYPES[t], n) for t in cfg.param_types)}
    if cfg.layers is None and cfg.components is None and cfg.param_types is None:
        chosen = set()                                 # only patterns (and the head) were asked for
    chosen |= set(select_by_pattern(model, cfg.patterns)) if cfg.patterns else set()
    if cfg.include_head:
        chosen |= {n for n in names if re.search(r"(^|\.)head\.", n) and not n.startswith("lm_head")
                   and ".lm_head." not in n}
    if not chosen:
        raise ValueError(f"the selection {cfg} matches no parameter")
    params = _all_names(model)                         # a tied tensor is chosen under all its names
    chosen_ids = {id(params[n]) for n in chosen}
    return [n for n in names if id(params[n]) in chosen_ids]


def apply_selective(model: nn.Module, cfg: SelectiveConfig) -> list[str]:
    """Freeze every parameter, then unfreeze the selection. Returns the selected names."""
    chosen = set(select(model, cfg))
    params = _all_names(model)
    for p in params.values():
        p.requires_grad = False
    for n in chosen:
        params[n].requires_grad = True                 # tied aliases share the tensor
    return [n for n in params if n in chosen]


def bitfit(model: nn.Module) -> list[str]:
    """BitFit: only the bias terms (and a task head) train."""
    return apply_selective(model, SelectiveConfig(param_types=["bias"]))


# ---- accounting ------------------------------------------------------------------------------

def _group(name: str) -> str:
    for comp in ("embeddings", "attention", "mlp", "layernorm", "head"):
        if re.search(COMPONENTS[comp], name):
            return comp
    return "other"


def trainable_report(model: nn.Module, optimizer_states: int = 2) -> dict:
    """Trainable vs total parameters per component and overall, with the bytes they cost.

    Each unique tensor is counted once (a tied weight under its first name). optimizer_states is
    the number of state tensors per trainable parameter (AdamW: 2, the two moments).
    Returns {"rows": [...], "total": {...}}; each row has params, trainable, share, and bytes of
    trainable weights, gradients and optimizer state.
    """
    rows: dict[str, dict] = {}
    for n, p in model.named_parameters():              # deduplicated: tied weights once
        r = rows.setdefault(_group(n), {"component": _group(n), "params": 0, "trainable": 0,
                                        "trainable_bytes": 0, "optimizer_bytes": 0})
        r["params"] += p.numel()
        if p.requires_grad:
            r["trainable"] += p.numel()
            r["trainable_bytes"] += p.numel() * p.element_size()
            r["optimizer_bytes"] += optimizer_states * p.numel() * 4   # fp32 moments
    order = ["embeddings", "attention", "mlp", "layernorm", "head", "other"]
    out = [rows[k] for k in order if k in rows]
    total = {"component": "total", **{k: sum(r[k] for r in out) for k in
                                       ("params", "trainable", "trainable_bytes", "optimizer_bytes")}}
    for r in out + [total]:
        r["share"] = r["trainable"] / r["params"] if r["params"] else 0.0
        r["grad_bytes"] = r["trainable_bytes"]
    return {"rows": out, "total": total}


def format_report(report: dict) -> str:
    lines = [f"{'component':<12}{'params':>12}{'trainable':>12}{'share':>9}{'weights':>11}"
             f"{'grads':>11}{'AdamW':>11}"]
    for r in report["rows"] + [report["total"]]:
        lines.append(f"{r['component']:<12}{r['params']:>12,}{r['trainable']:>12,}{r['share']:>8.2%} "
                     f"{_kib(r['trainable_bytes']):>10}{_kib(r['grad_bytes']):>11}{_kib(r['optimizer_bytes']):>11}")
    return "\n".join(lines)


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}K" if n < 1024 ** 2 else f"{n / 1024 ** 2:,.2f}M"
