"""Checkpoints: safetensors for tensors, JSON for configs. No pickle anywhere.

A checkpoint is a folder:

    model.safetensors   the tensors (tied weights stored once, under their first name)
    config.json         {"model": GPTConfig fields, ...anything the caller adds, e.g. method config}

Writes are atomic: each file goes to a temporary name in the same folder, is flushed and
fsync'ed, then `os.replace`d over the target, so a crash never leaves a half-written file under
the real name. Loads are strict: any missing, unexpected or mis-shaped key is named.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Optional

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _atomic_write(path: str, write) -> None:
    """Call write(tmp_path), then move tmp_path over path. The temporary never survives."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json(obj, path: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    _atomic_write(path, write)


def load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def save_tensors(tensors: dict, path: str, metadata: Optional[dict] = None) -> None:
    """Save a flat dict name -> tensor as safetensors, atomically. Shared storage is copied."""
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_tensors: value for key {k!r} is {type(t).__name__}, expected a tensor")
    flat = {k: t.detach().contiguous().clone() for k, t in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(path: str) -> dict:
    """Load a safetensors file; anything else (missing, truncated, another format) -> ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found")
    try:
        return load_file(path)
    except Exception as e:
        raise ValueError(f"{path} is not a valid safetensors file ({e})") from None


def model_state(model: torch.nn.Module, only_trainable: bool = False) -> dict:
    """The model's tensors, each storage once (a tied weight keeps its first name).
    With only_trainable, just the parameters that require grad (an adapter's state)."""
    out, seen = {}, set()
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in model.state_dict(keep_vars=True).items():
        key = (t.data_ptr(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        if only_trainable and not (name in params and params[name].requires_grad):
            continue
        out[name] = t.detach()
    return out


def load_state_dict_strict(model: torch.nn.Module, sd: dict, source: str = "state dict",
                           skip: Iterable[str] = (), keys: Optional[Iterable[str]] = None) -> None:
    """Copy sd into model, naming every missing, unexpected or mis-shaped key.

    keys: the names the model expects (default: model_state(model)); skip: names never required.
    """
    expected = dict(model.state_dict())
    wanted = set(model_state(model) if keys is None else keys) - set(skip)
    missing = sorted(wanted - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(sd) & set(expected)) if tuple(sd[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        problems.append("mis-shaped keys " + "; ".join(shapes[:8]))
    if problems:
        raise ValueError(f"{source} does not match the model: " + ", ".join(problems))
    with torch.no_grad():
        for k, t in sd.items():
            expected[k].copy_(t.to(expected[k].dtype))


def save_model(model, folder: str, extra: Optional[dict] = None) -> None:
    """Write folder/model.safetensors and folder/config.json (model config + extra)."""
    cfg = {"model": model.config.to_dict(), **(extra or {})}
    save_tensors(model_state(model), os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
    save_json(cfg, os.path.join(folder, CONFIG_NAME))


def load_model(folder: str, map_location: str = "cpu"):
    """Build a GPT from folder/config.json and load folder/model.safetensors strictly."""
    from .model import GPT, GPTConfig
    cfg = load_json(os.path.join(folder, CONFIG_NAME))
    if "model" not in cfg or not isinstance(cfg["model"], dict):
        raise ValueError(f"{os.path.join(folder, CONFIG_NAME)} has no 'model' section with the GPTConfig fields")
    model = GPT(GPTConfig.from_dict(cfg["model"]))
    sd = load_tensors(os.path.join(folder, WEIGHTS_NAME))
    load_state_dict_strict(model, sd, source=os.path.join(folder, WEIGHTS_NAME))
    return model.to(map_location)


def save_trainable(model, path: str, metadata: Optional[dict] = None) -> None:
    """Save only the parameters that require grad (what a fine-tuning method trained)."""
    state = model_state(model, only_trainable=True)
    if not state:
        raise ValueError("save_trainable: the model has no trainable parameters")
    md = None if metadata is None else {"config": json.dumps(metadata, sort_keys=True)}
    save_tensors(state, path, metadata=md)


def load_trainable(model, path: str) -> None:
    """Load a save_trainable file strictly: exactly the model's trainable keys, same shapes."""
    sd = load_tensors(path)
    load_state_dict_strict(model, sd, source=path, keys=model_state(model, only_trainable=True))
