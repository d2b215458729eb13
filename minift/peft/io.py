"""Adapter files: save only what a method trained, load it onto a base model, refuse the wrong base.

minift's own format is a folder with

    adapter.safetensors   the adapters' tensors (+ any other parameter that was trainable, e.g. a
                          task head), by their names in the adapted model
    adapter.json          {"format": "minift-adapter", "methods": [{"method": "lora", "config":
                          {...}, "modules": [...]}], "base_model": {"fingerprint", "config"},
                          "extra_trainable": [...]}

`load_adapter(model, folder)` applies the recorded methods to a base model (or, if the model already
carries the same methods, swaps the tensors in: one base, several task adapters), then loads strictly:
every expected key present, nothing else, shapes equal. A file made for a different base model
(another GPTConfig fingerprint) is refused before anything changes.

LoRA can also be written in the Hugging Face PEFT layout (`export_peft` / `import_peft`):

    adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
                                "target_modules": [full module names], "fan_in_fan_out": true, ...}
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight   (r, in)
                               base_model.model.<module>.lora_B.weight   (out, r)
                               base_model.model.<module>.lora_magnitude_vector   (out,)   DoRA only

Orientation: PEFT builds lora_A and lora_B as nn.Linear layers even on GPT-2's Conv1D, so their
weights are (r, in) and (out, r), the same as minift's, and are written untransposed. Only the base
weight of a Conv1D is stored (in, out); fan_in_fan_out = true tells PEFT to transpose B A when it
merges into it. Our module names are GPT-2's (transformer.h.0.attn.c_attn), so the file loads onto
transformers' GPT2LMHeadModel with peft's PeftModel.from_pretrained (given the base weights in the
Hugging Face layout; `minift.checkpoint.load_gpt2` reads that layout).

A q/v-sliced c_attn (LoRAConfig.qkv) has no exact name in PEFT: it is written as a plain LoRA of
rank S r on c_attn whose A stacks A_q, A_v and whose B (3C, S r) is block-diagonal, zero in the k
rows, with lora_alpha rescaled so that PEFT's scaling equals ours (alpha S, or alpha sqrt(S) with
rsLoRA). The output is identical. minift's own config rides along in the safetensors metadata
(which PEFT ignores), so `import_peft` restores the sliced layout exactly.
"""
from __future__ import annotations

import json
import math
import os
import re

import torch
import torch.nn as nn
from safetensors import safe_open

from ..checkpoint import load_json, load_state_dict_strict, load_tensors, save_folder, save_json, save_tensors
from ..model import GPTConfig
from ..quant import qlora  # noqa: F401  (each import registers a method's config: common.CONFIGS)
from . import adapters, masking, prefix, prompt, reft, selective  # noqa: F401  (the same)
from .common import adapter_layers, adapter_state_dict, apply_config, method_config, remove_adapters  # noqa: F401
from .lora import LoRAConfig, apply_lora, lora_layers

FORMAT, VERSION = "minift-adapter", 1
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def base_config(model: nn.Module) -> GPTConfig:
    """The GPTConfig of the GPT inside `model` (the model itself, or the body of a classifier)."""
    for m in model.modules():
        if isinstance(getattr(m, "config", None), GPTConfig):
            return m.config
    raise ValueError(f"{type(model).__name__} contains no GPT (no submodule with a GPTConfig `config`)")


def _check_base(model: nn.Module, recorded: dict, source: str) -> None:
    cfg = base_config(model)
    want, have = recorded.get("fingerprint"), cfg.fingerprint()
    if want != have:
        theirs = recorded.get("config") or {}
        diff = ", ".join(f"{k} {theirs.get(k)!r} vs {v!r}" for k, v in cfg.to_dict().items()
                         if k != "dropout" and theirs.get(k) != v)
        raise ValueError(f"{source} was made for a different base model: its GPTConfig fingerprint is {want}, "
                         f"this model's is {have} (file vs model: {diff or 'no config stored'})")


def _methods(model: nn.Module) -> list[dict]:
    return list(getattr(model, "peft_methods", None) or [])


class _Rollback:
    """Undo apply_* (and the freezing it did) if loading fails half-way."""

    def __init__(self, model):
        self.model, self.flags = model, {n: p.requires_grad for n, p in model.named_parameters()}

    def __call__(self):
        remove_adapters(self.model)
        for n, p in self.model.named_parameters():
            p.requires_grad = self.flags.get(n, p.requires_grad)


def _load_exact(model: nn.Module, sd: dict, expected: set, source: str) -> None:
    unexpected = sorted(set(sd) - expected)
    if unexpected:
        raise ValueError(f"{source} does not match the model: unexpected keys {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    load_state_dict_strict(model, sd, source=source, keys=expected)


# ---- minift's own format ----------------------------------------------------------------------

def save_adapter(model: nn.Module, folder: str) -> None:
    """Write folder/adapter.safetensors (adapters + other trainable tensors) and folder/adapter.json."""
    methods = _methods(model)
    if not methods:
        raise ValueError("save_adapter: the model carries no adapter; apply_lora / apply_adapters first")
    cfg = base_config(model)
    tensors = adapter_state_dict(model)                 # (not `adapters`: that name is the module imported above)
    extra = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in tensors)
    params = dict(model.named_parameters())
    state = {**tensors, **{n: params[n] for n in extra}}
    meta = {"format": FORMAT, "version": VERSION, "methods": methods, "extra_trainable": extra,
            "base_model": {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}}
    save_folder(folder, {ADAPTER_WEIGHTS: lambda p: save_tensors(state, p, metadata={"format": "pt"}),
                         ADAPTER_CONFIG: lambda p: save_json(meta, p)})     # both files or neither


def load_adapter(model: nn.Module, folder: str) -> list[str]:
    """Apply the file's methods to `model` (a base model, or one carrying exactly those methods) and
    load its tensors strictly. Returns the adapted module names."""
    cpath, wpath = os.path.join(folder, ADAPTER_CONFIG), os.path.join(folder, ADAPTER_WEIGHTS)
    meta = load_json(cpath)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cpath} is not a minift adapter file (format={meta.get('format')!r}, expected "
                         f"{FORMAT!r}); for a Hugging Face PEFT folder use import_peft")
    for rec in meta.get("methods", []):
        method_config(rec.get("method"), cpath)               # unknown method: ValueError naming it
    _check_base(model, meta.get("base_model", {}), cpath)
    sd = load_tensors(wpath)
    have = [(r["method"], r["config"], r["modules"]) for r in _methods(model)]
    want = [(r["method"], r["config"], r["modules"]) for r in meta["methods"]]
    rollback = None
    if have and have != want:
        raise ValueError(f"load_adapter: the model already carries {[h[0] for h in have]} adapters on other "
                         f"modules or with another config than {cpath}; load into a fresh base model, or "
                         f"remove_adapters(model) first")
    try:
        if not have:
            rollback = _Rollback(model)
            for method, config, modules in want:
                names = method_config(method, cpath).from_dict(config).apply(model)
                if names != modules:
                    raise ValueError(f"{cpath}: {method} on this model adapts {names[:3]} ..., the file was made "
                                     f"for {modules[:3]} ...")
        params = dict(model.named_parameters())
        missing = [n for n in meta.get("extra_trainable", []) if n not in params]
        if missing:
            raise ValueError(f"{cpath} trained parameters {missing} that this model does not have")
        for n in meta.get("extra_trainable", []):
            params[n].requires_grad = True
        _load_exact(model, sd, set(adapter_state_dict(model)) | set(meta.get("extra_trainable", [])), wpath)
        for _, layer in adapter_layers(model):                # a file's stored indices must be valid masks
            if hasattr(layer, "check_indices"):
                layer.check_indices()
    except BaseException:
        if rollback is not None:
            rollback()
        raise
    return [n for _, _, mods in want for n in mods]


# ---- Hugging Face PEFT layout (LoRA only) -----------------------------------------------------

def _peft_pattern_key(name: str) -> str:
    """rank_pattern / alpha_pattern key: the escaped name without its first part, which PEFT's
    old (".*\\.key$") and new ("(.*\\.)?key$") matching both accept."""
    return re.escape(name.split(".", 1)[1] if "." in name else name)


def export_peft(model: nn.Module, folder: str, base_model_name_or_path: str | None = None) -> None:
    """Write the model's LoRA as adapter_config.json + adapter_model.safetensors (PEFT layout)."""
    layers = lora_layers(model)
    recs = [r for r in _methods(model) if r["method"] == "lora"]
    if not layers or not recs:
        raise ValueError("export_peft: the model carries no LoRA layer; apply_lora (or load_adapter) first")
    if any(r["method"] != "lora" for r in _methods(model)):
        raise ValueError("export_peft: the model also carries non-LoRA adapters, which PEFT's LoRA layout "
                         "cannot hold; use save_adapter")
    cfg = LoRAConfig.from_dict(recs[0]["config"])
    lora_names = set(adapter_state_dict(model))
    others = [n for n, p in model.named_parameters() if p.requires_grad and n not in lora_names]
    if others:
        raise ValueError(f"export_peft: trainable parameters {others[:4]} are not LoRA tensors and would be lost "
                         f"(PEFT's modules_to_save is not supported); use save_adapter")
    tensors, ranks, alphas = {}, {}, {}
    for name, m in layers:
        A, B = m.lora_A.detach(), m.lora_B.detach()
        if m.slices is not None:                                           # block-diagonal B, zero k rows
            S, r, d = m.n_slices, m.r, m.slice_out
            B_full = B.new_zeros(m.out_features, S * r)
            for i, (a, b) in enumerate(m.slices):
                B_full[a:b, i * r:(i + 1) * r] = B[i * d:(i + 1) * d]
            B = B_full
            ranks[name] = S * r
            alphas[name] = cfg.alpha * (math.sqrt(S) if cfg.use_rslora else S)   # same scaling at rank S r
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = A                  # (r, in)
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = B                  # (out, r)
        if m.use_dora:                                                     # untouched rows: m = ‖W0 row‖
            if m.merged:
                raise ValueError(f"export_peft: {name} is merged (DoRA); unmerge_lora(model) first")
            W = m.weight.detach()
            W = W.to(torch.promote_types(W.dtype, torch.float32))              # >= float32, float64 stays
            mag = torch.linalg.vector_norm(W, dim=1).to(m.lora_magnitude.dtype)
            tensors[f"{PEFT_PREFIX}{name}.lora_magnitude_vector"] = mag.index_copy(0, m.rows, m.lora_magnitude.detach())
    r, alpha = cfg.r, cfg.alpha
    if ranks and len(ranks) == len(layers):                                # every layer sliced alike
        r, alpha, ranks, alphas = next(iter(ranks.values())), next(iter(alphas.values())), {}, {}
    base = base_config(model)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": alpha, "lora_dropout": cfg.dropout, "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora, "target_modules": sorted(n for n, _ in layers), "fan_in_fan_out": True,
        "bias": "none", "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {_peft_pattern_key(n): v for n, v in ranks.items()},
        "alpha_pattern": {_peft_pattern_key(n): v for n, v in alphas.items()},
    }
    minift = {"lora": cfg.to_dict(), "modules": [n for n, _ in layers],
              "base_model": {"fingerprint": base.fingerprint(), "config": base.to_dict()}}
    md = {"format": "pt", "minift": json.dumps(minift)}
    save_folder(folder, {PEFT_WEIGHTS: lambda p: save_tensors(tensors, p, metadata=md),
                         PEFT_CONFIG: lambda p: save_json(config, p)})      # both files or neither


def _read_peft(folder: str):
    cpath, wpath = os.path.join(folder, PEFT_CONFIG), os.path.join(folder, PEFT_WEIGHTS)
    conf = load_json(cpath)
    if conf.get("peft_type") != "LORA":
        raise ValueError(f"{cpath}: peft_type={conf.get('peft_type')!r}; only 'LORA' can be imported")
    tensors = load_tensors(wpath)
    with safe_open(wpath, "pt") as f:
        md = f.metadata() or {}
    by_module: dict[str, dict] = {}
    suffixes = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_magnitude_vector": "m",
                ".lora_magnitude_vector.weight": "m"}
    for key, t in tensors.items():
        kind = next((v for s, v in suffixes.items() if key.startswith(PEFT_PREFIX) and key.endswith(s)), None)
        if kind is None:
            raise ValueError(f"{wpath}: key {key!r} is not a PEFT LoRA tensor "
                             f"({PEFT_PREFIX}<module>.lora_A.weight / .lora_B.weight / .lora_magnitude_vector)")
        suffix = next(s for s in sorted(suffixes, key=len, reverse=True) if key.endswith(s))
        by_module.setdefault(key[len(PEFT_PREFIX):-len(suffix)], {})[kind] = t
    return conf, by_module, (json.loads(md["minift"]) if "minift" in md else None), cpath, wpath


def import_peft(model: nn.Module, folder: str) -> list[str]:
    """Apply LoRA to a base model from a PEFT-layout folder and load its tensors. Returns the adapted
    module names. A folder written by export_peft comes back exactly (q/v slices included)."""
    conf, by_module, mine, cpath, wpath = _read_peft(folder)
    if mine is not None:
        _check_base(model, mine["base_model"], wpath)
        cfg, names = LoRAConfig.from_dict(mine["lora"]), mine["modules"]
    else:
        unsupported = {k: conf.get(k) for k in ("rank_pattern", "alpha_pattern", "modules_to_save") if conf.get(k)}
        if conf.get("bias", "none") != "none":
            unsupported["bias"] = conf["bias"]
        if unsupported:
            raise ValueError(f"{cpath}: {unsupported} is not supported; import_peft reads plain LoRA "
                             f"(one r and lora_alpha, bias 'none', no modules_to_save)")
        names = sorted(by_module)
        cfg = LoRAConfig(r=int(conf["r"]), alpha=float(conf["lora_alpha"]), dropout=float(conf.get("lora_dropout", 0.0)),
                         targets=[rf"(^|\.){re.escape(n)}$" for n in names], qkv=None,
                         use_rslora=bool(conf.get("use_rslora", False)), use_dora=bool(conf.get("use_dora", False)))
    rollback = _Rollback(model)
    applied = apply_lora(model, cfg)
    try:
        if sorted(applied) != sorted(names) or set(by_module) != set(names):
            raise ValueError(f"{wpath} holds LoRA tensors for {sorted(by_module)[:3]} ..., but the config adapts "
                             f"{sorted(applied)[:3]} ... on this model")
        sd = {}
        for name, m in lora_layers(model):
            t = by_module[name]
            if "A" not in t or "B" not in t or ("m" in t) != m.use_dora:
                raise ValueError(f"{wpath}: module {name} has tensors {sorted(t)}; expected lora_A, lora_B"
                                 f"{' and lora_magnitude_vector' if m.use_dora else ''}")
            A, B = t["A"], t["B"]
            if m.slices is not None:                                       # undo the block-diagonal B
                S, r = m.n_slices, m.r
                if tuple(B.shape) != (m.out_features, S * r):
                    raise ValueError(f"{wpath}: {name}.lora_B is {tuple(B.shape)}, expected {(m.out_features, S * r)}")
                blocks = [B[a:b, i * r:(i + 1) * r] for i, (a, b) in enumerate(m.slices)]
                rest = B.clone()
                for i, (a, b) in enumerate(m.slices):
                    rest[a:b, i * r:(i + 1) * r] = 0
                if bool(rest.any()):
                    raise ValueError(f"{wpath}: {name}.lora_B is not zero outside the q/k/v slices {m.slices}; "
                                     f"it cannot be the sliced LoRA its metadata describes")
                B = torch.cat(blocks, dim=0)
            sd[f"{name}.lora_A"], sd[f"{name}.lora_B"] = A, B
            if m.use_dora:
                full = t["m"].dim() == 1 and len(t["m"]) == m.out_features    # PEFT: one per output row
                sd[f"{name}.lora_magnitude"] = t["m"][m.rows.cpu()] if full else t["m"]
        _load_exact(model, sd, set(adapter_state_dict(model)), wpath)
    except BaseException:
        rollback()
        raise
    return applied
