"""Checkpoints: safetensors for tensors, JSON for configs. No pickle anywhere.

A checkpoint is a folder:

    model.safetensors   the tensors (tied weights stored once, under their first name)
    config.json         {"model": GPTConfig fields, "weights_sha256": sha256 of model.safetensors,
                         ...anything the caller adds, e.g. method config}
    (any files the caller adds, e.g. tokenizer.json, and any files already in the folder)

A single file is written atomically (`save_json`, `save_tensors`): it goes to a temporary name in
the same folder, is flushed and fsync'ed, then `os.replace`d over the target.

A checkpoint folder is written atomically as a whole (`save_folder`): every file is written into a
fresh hidden folder beside the target (.NAME.new-XXXX), fsync'ed, and the target's other files are
hard-linked (or copied) in; then the stage is published with renames. A new target is one
`os.rename`. An existing one takes two: the old folder to .NAME.old-XXXX, the stage to NAME, then
the old one is deleted; if the second rename fails, the old folder is renamed back. So the real
name never holds a half-written checkpoint. The honest limit: between the two renames (microseconds)
NAME does not exist, and a power cut or SIGKILL exactly there leaves the old checkpoint in
.NAME.old-XXXX and the new one, complete, in .NAME.new-XXXX; `load_model` then names them.

config.json binds the pair: it records the SHA-256 of model.safetensors' bytes, and `load_model`
refuses weights that are not the ones saved with that config (checkpoints without the key, written
before it existed, still load). Loads are strict: any missing, unexpected or mis-shaped key is named,
and a file holding two keys that the model ties (lm_head.weight and transformer.wte.weight) must hold
equal values for them: otherwise one would be silently dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Callable, Iterable, Mapping, Optional

import torch
from safetensors.torch import load_file, save_file

from .model import GPT, GPTConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
WEIGHTS_SHA = "weights_sha256"           # config.json key binding the config to its weights
STAGE_TAG, ASIDE_TAG = ".new-", ".old-"  # beside NAME: .NAME.new-XXXX (being written), .NAME.old-XXXX


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync(path: str, write: bool = False) -> None:
    """Flush path (a file, or a folder's entries) to disk; best effort where a folder can't be."""
    try:
        fd = os.open(path, os.O_RDWR if write else os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write) -> None:
    """Call write(tmp_path), then move tmp_path over path. The temporary never survives."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())        # mkstemp makes 0600; give the usual permissions
        _fsync(tmp, write=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)                      # same bytes, no copy; the old name goes away later
    except OSError:
        shutil.copy2(src, dst)
        _fsync(dst, write=True)


def _carry_over(old: str, stage: str, written) -> None:
    """Hard-link (or copy) into stage every entry of old that the new checkpoint does not write."""
    for entry in os.listdir(old):
        if entry in written:
            continue
        src, dst = os.path.join(old, entry), os.path.join(stage, entry)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)


def leftovers(folder: str) -> list[str]:
    """The .NAME.old-* / .NAME.new-* folders an interrupted save_folder(NAME) left beside it."""
    parent, name = os.path.split(os.path.abspath(folder))
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    return sorted(os.path.join(parent, e) for e in entries
                  if e.startswith(f".{name}{ASIDE_TAG}") or e.startswith(f".{name}{STAGE_TAG}"))


def save_folder(folder: str, files: Mapping[str, Callable[[str], None]]) -> None:
    """Write a folder atomically as a whole: files[name](path) writes each file (in order) into a
    hidden stage beside `folder`; the folder's other files are kept; then the stage replaces it.
    On any exception the old folder is left as it was and no temporary survives."""
    if not files:
        raise ValueError("save_folder: files is empty; name at least one file to write")
    for name, write in files.items():
        if not isinstance(name, str) or name in ("", ".", "..") or os.sep in name or (os.altsep or os.sep) in name:
            raise ValueError(f"save_folder: file name {name!r} must be a plain file name, without a folder part")
        if not callable(write):
            raise TypeError(f"save_folder: the writer for {name!r} is {type(write).__name__}, expected a "
                            f"callable that takes the path to write")
    folder = os.path.realpath(folder)
    parent, base = os.path.split(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"save_folder: {folder} exists and is not a folder")
    if os.path.commonpath([os.path.realpath(os.getcwd()), folder]) == folder:
        raise ValueError(f"save_folder: {folder} is (or holds) the current working directory; a checkpoint "
                         f"folder is replaced as a whole, so save into a folder of its own")
    os.makedirs(parent, exist_ok=True)
    old_exists = os.path.isdir(folder)
    stage, aside = None, os.path.join(parent, f".{base}{ASIDE_TAG}{uuid.uuid4().hex[:8]}")
    try:
        stage = tempfile.mkdtemp(prefix=f".{base}{STAGE_TAG}", dir=parent)
        for name, write in files.items():
            path = os.path.join(stage, name)
            write(path)
            if not os.path.isfile(path):
                raise ValueError(f"save_folder: the writer for {name!r} wrote no file at {path}")
            os.chmod(path, 0o666 & ~_umask())
            _fsync(path, write=True)
        if old_exists:
            _carry_over(folder, stage, files)
            shutil.copymode(folder, stage)
        else:
            os.chmod(stage, 0o777 & ~_umask())   # mkdtemp makes it private
        _fsync(stage)
        if not old_exists:
            os.rename(stage, folder)
        else:
            try:
                os.rename(folder, aside)
                os.rename(stage, folder)         # between these two renames NAME does not exist
            except BaseException:
                if os.path.isdir(aside) and not os.path.exists(folder):
                    os.rename(aside, folder)     # put the old checkpoint back
                raise
        _fsync(parent)
    finally:
        if stage is not None and os.path.isdir(stage):
            shutil.rmtree(stage, ignore_errors=True)     # not published: drop the stage
        elif os.path.isdir(aside) and os.path.isdir(folder):
            shutil.rmtree(aside, ignore_errors=True)     # published: drop the old folder


def _write_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_json(obj, path: str) -> None:
    _atomic_write(path, lambda tmp: _write_json(obj, tmp))


def load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _flat(tensors: dict) -> dict:
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_tensors: value for key {k!r} is {type(t).__name__}, expected a tensor")
    return {k: t.detach().contiguous().clone() for k, t in tensors.items()}


def save_tensors(tensors: dict, path: str, metadata: Optional[dict] = None) -> None:
    """Save a flat dict name -> tensor as safetensors, atomically. Shared storage is copied."""
    flat = _flat(tensors)
    _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(path: str) -> dict:
    """Load a safetensors file; anything else (missing, truncated, another format) -> ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found")
    try:
        return load_file(path)
    except Exception as e:
        raise ValueError(f"{path} is not a valid safetensors file ({e})") from None


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def tied_names(state: dict) -> dict:
    """name -> every name of `state` (a model's state_dict) that is the same tensor: same memory,
    shape and stride (found by data_ptr, so any tying counts, not just lm_head/wte)."""
    groups: dict = {}
    for name, t in state.items():
        if t.numel() and t.data_ptr():
            groups.setdefault((t.device, t.data_ptr(), tuple(t.shape), t.stride()), []).append(name)
    return {n: tuple(g) for g in groups.values() for n in g}


def load_state_dict_strict(model: torch.nn.Module, sd: dict, source: str = "state dict",
                           skip: Iterable[str] = (), keys: Optional[Iterable[str]] = None,
                           exact: bool = False) -> None:
    """Copy sd into model, naming every missing, unexpected or mis-shaped key.

    keys: the names the model expects (default: model_state(model)); skip: names never required;
    exact: any other key of sd is unexpected too (default: only names the model does not have).
    A key is present if sd holds it or a name the model ties to it; two tied names in sd must
    hold equal values (else ValueError naming both: loading would silently keep only one).
    """
    expected = dict(model.state_dict())
    tied = tied_names(expected)
    wanted = set(model_state(model) if keys is None else keys) - set(skip)
    missing = sorted(k for k in wanted if not any(a in sd for a in tied.get(k, (k,))))
    allowed = {a for k in wanted for a in tied.get(k, (k,))} if exact else set(expected)
    unexpected = sorted(set(sd) - allowed)
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
    for group in set(tied.values()):
        present = [k for k in group if k in sd]
        for k in present[1:]:
            a, b = sd[present[0]], sd[k]
            dt = torch.promote_types(a.dtype, b.dtype)
            if not torch.equal(a.to(dt), b.to(dt)):
                raise ValueError(f"{source} holds {present[0]!r} and {k!r} with different values, but the model "
                                 f"ties them (one shared tensor), so loading would silently keep only one; "
                                 f"keep one of the two keys, or give them equal values")
    with torch.no_grad():
        for k, t in sd.items():
            expected[k].copy_(t.to(expected[k].dtype))


def save_model(model, folder: str, extra: Optional[dict] = None,
               files: Optional[Mapping[str, Callable[[str], None]]] = None) -> None:
    """Write folder/model.safetensors and folder/config.json (model config + extra + the weights'
    SHA-256), plus files[name](path) for each extra file (e.g. {"tokenizer.json": tok.save}),
    all in one atomic publish (save_folder): the folder holds the old checkpoint or the new one."""
    extra, files = dict(extra or {}), dict(files or {})
    clash = sorted({"model", WEIGHTS_SHA} & set(extra))
    if clash:
        raise ValueError(f"save_model: extra sets {clash}, which save_model writes itself")
    clash = sorted({WEIGHTS_NAME, CONFIG_NAME} & set(files))
    if clash:
        raise ValueError(f"save_model: files names {clash}, which save_model writes itself")
    flat, digest = _flat(model_state(model)), {}

    def write_weights(path):
        save_file(flat, path, metadata={"format": "pt"})
        digest[WEIGHTS_SHA] = file_sha256(path)

    def write_config(path):
        _write_json({"model": model.config.to_dict(), **extra, **digest}, path)

    save_folder(folder, {WEIGHTS_NAME: write_weights, CONFIG_NAME: write_config, **files})


def _check_checkpoint_folder(folder: str) -> None:
    if os.path.isdir(folder):
        return
    left = leftovers(folder)
    if left:
        base = os.path.basename(os.path.abspath(folder))
        old = [p for p in left if os.path.basename(p).startswith(f".{base}{ASIDE_TAG}")]
        raise ValueError(f"checkpoint folder {folder} is missing, but {left} is beside it: a save was interrupted "
                         f"between moving the old checkpoint aside and moving the new one in. "
                         f"{old or 'None of them'} holds the previous checkpoint, a .new- one the new checkpoint "
                         f"(load_model checks its weights against its config); rename one of them to {folder}")
    raise ValueError(f"checkpoint folder {folder} not found")


def _device(map_location, who: str) -> torch.device:
    """map_location ("cpu", "cuda", "cuda:1" or a torch.device) as a torch.device, or a ValueError naming it."""
    try:
        return torch.device(map_location)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{who}: map_location={map_location!r} is not a device; use 'cpu', 'cuda' or "
                         f"'cuda:N'") from None


def load_model(folder: str, map_location="cpu"):
    """Build a GPT from folder/config.json and load folder/model.safetensors strictly, after checking
    that the weights are the ones saved with that config (its weights_sha256, when recorded). The
    model is built and loaded on the CPU, then moved to map_location ("cpu", "cuda", a torch.device)."""
    device = _device(map_location, "load_model")
    _check_checkpoint_folder(folder)
    cpath, wpath = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    cfg = load_json(cpath)
    if "model" not in cfg or not isinstance(cfg["model"], dict):
        raise ValueError(f"{cpath} has no 'model' section with the GPTConfig fields")
    model = GPT(GPTConfig.from_dict(cfg["model"]))
    sd = load_tensors(wpath)
    want = cfg.get(WEIGHTS_SHA)
    if want is not None:
        if not (isinstance(want, str) and len(want) == 64 and all(c in "0123456789abcdef" for c in want)):
            raise ValueError(f"{cpath}: {WEIGHTS_SHA}={want!r} is not a SHA-256 hex digest (64 lowercase hex digits)")
        have = file_sha256(wpath)
        if have != want:
            raise ValueError(f"{wpath} does not belong with {cpath}: the config records {WEIGHTS_SHA} {want[:16]}..., "
                             f"the weights file hashes to {have[:16]}... (weights from another save, or either file "
                             f"edited); save the model again, or put back the matching pair")
    load_state_dict_strict(model, sd, source=wpath)
    return model.to(device)


def save_trainable(model, path: str, metadata: Optional[dict] = None) -> None:
    """Save only the parameters that require grad (what a fine-tuning method trained)."""
    state = model_state(model, only_trainable=True)
    if not state:
        raise ValueError("save_trainable: the model has no trainable parameters")
    md = None if metadata is None else {"config": json.dumps(metadata, sort_keys=True)}
    save_tensors(state, path, metadata=md)


def load_trainable(model, path: str) -> None:
    """Load a save_trainable file strictly: exactly the model's trainable keys (or a name tied to
    one, with an equal value), same shapes. A frozen tensor in the file is refused, not loaded. Each
    tensor is copied into the model's own tensor: onto its device, in its dtype."""
    sd = load_tensors(path)
    load_state_dict_strict(model, sd, source=path, keys=model_state(model, only_trainable=True), exact=True)


# ---- a GPT-2 checkpoint in the Hugging Face layout ---------------------------------------------

def load_gpt2(path: str, map_location="cpu") -> GPT:
    """Load `config.json` + `model.safetensors` of a GPT-2 checkpoint in the Hugging Face
    layout from the local folder `path` as a minift GPT on map_location. Nothing is downloaded.

    GPT-2's Conv1D stores weights as (in, out), the transpose of nn.Linear's (out, in); the
    four Conv1D matrices per block (c_attn, c_proj, c_fc, mlp.c_proj) are transposed here.
    """
    device = _device(map_location, "load_gpt2")
    cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise ValueError(f"load_gpt2: {p} not found; expected a folder with config.json and model.safetensors")
    with open(cfg_path) as f:
        hf = json.load(f)
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"load_gpt2: activation_function={act!r} is not supported; expected 'gelu_new'")
    cfg = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
                    n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                    layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), bias=True)
    sd = load_tensors(w_path)
    model = GPT(cfg)
    ours = {}
    for k, t in sd.items():
        k = k[len("transformer."):] if k.startswith("transformer.") else k
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias") or k == "lm_head.weight":
            continue                                                   # buffers; tied head
        if any(k.endswith(s) for s in ("attn.c_attn.weight", "attn.c_proj.weight",
                                       "mlp.c_fc.weight", "mlp.c_proj.weight")):
            t = t.t()                                                  # Conv1D (in, out) -> (out, in)
        ours["transformer." + k] = t.contiguous()
    load_state_dict_strict(model, ours, source=w_path, skip={"lm_head.weight"})
    return model.to(device)
