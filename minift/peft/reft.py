"""LoReFT: edit the hidden representations, not the weights.

Wu et al., 2024, "ReFT: Representation Finetuning for Language Models". The base model stays frozen;
at chosen layers and chosen token positions, the residual stream h (the output of block l) is
replaced by

    Φ(h) = h + Rᵀ (W h + b − R h)        h: (C,)   R, W: (r, C)   b: (r,)   r << C

R has orthonormal rows (R Rᵀ = I_r), so Rᵀ R projects onto an r-dimensional subspace of the
residual stream. Φ moves h only inside that subspace: its coordinates there, R h, become W h + b
(R Φ(h) = R h + R Rᵀ (W h + b − R h) = W h + b), and the part of h orthogonal to the rows of R is
left alone. Every edit h' − h = Rᵀ (...) lies in the row space of R.

R is kept orthonormal by a parametrisation: the trainable tensor is any full-rank (r, C) matrix
A (`R_raw`), and R = orthonormal_rows(A) is its Gram–Schmidt orthonormalisation (a QR
decomposition of Aᵀ, signs fixed so that the triangular factor has a positive diagonal: A = G R
with G lower triangular). Gradients flow through the QR, and R Rᵀ = I holds after every step, up
to float rounding. W starts as a copy of R and b at 0, so W h + b − R h = 0 and Φ is the identity,
exactly (`init="identity"`; `init="random"` starts W as nn.Linear does, as pyreft does).
Parameters per intervention: r C (R) + r C (W) + r (b) = r (2C + 1).

**Where.** `layers` (default: every block) and positions. `positions="prompt"` (the default, the
paper's): the first p = `first` and the last s = `last` real tokens of the prompt, counted over
real tokens (attention_mask), so left and right padding edit the same tokens. A prompt of n < p + s
real tokens is edited at the first min(p, n) and the last min(s, n), each position once. With
`tied=False` the first and last positions get separate interventions (where they overlap, the
first one edits). `positions="all"`: every real token, for token-level tasks (NER). The defaults:
r = 4, positions="prompt" with first = last = 1, tied, every block.

**Generation.** The prompt is a call without `past_kv`. A call with `past_kv` is a generation step:
with positions="prompt" its tokens are *not* edited (the paper's p and s count prompt tokens; the
prompt's edits reach the new tokens through the cached keys and values). With positions="all"
every token, generated ones included, is edited. Cached generation therefore equals a full forward
pass over prompt + generated tokens in which the same positions are edited. (An uncached
`generate(use_cache=False)` re-reads prompt + generated tokens as one longer prompt, so its "last
s" move onto generated tokens: use the cache, which is the default.)

**How.** No module of the base is replaced. Each edited block gets a child `reft` (`reft_first`,
`reft_last` when untied) and a forward hook that edits the block's output; a pre-hook on the GPT
reads attention_mask and past_kv and tells the layers which positions (B, T) to edit. Positions not
edited are the base hidden states bit for bit (torch.where, not a multiply by a 0/1 mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validate import check_bool, check_choice, check_int, check_ints
from .common import AdapterLayer, MethodConfig, adapter_layers, detached_state, freeze_all_but_adapters, record, remove_hooks

POSITIONS = ("prompt", "all")
INITS = ("identity", "random")


@dataclass
class ReFTConfig(MethodConfig):
    r: int = 4                                 # rank: rows of R, 1 <= r <= n_embd
    layers: Optional[Sequence[int]] = None     # which blocks' outputs; None = all; negative from the end
    positions: str = "prompt"                  # "prompt": first/last prompt tokens | "all": every real token
    first: int = 1                             # p: the first p real prompt tokens  (positions="prompt")
    last: int = 1                              # s: the last s real prompt tokens   (positions="prompt")
    tied: bool = True                          # one intervention for first and last; False: one each
    init: str = "identity"                     # "identity": W = R, b = 0 (a no-op) | "random": W as nn.Linear
    include_head: bool = True                  # keep a task head (head.*) trainable
    method = "reft"                            # its name in an adapter file
    family = "additive"                     # minift/taxonomy.py: adds modules or tokens the base does not have

    def __post_init__(self):
        check_int(self, "r", self.r, lo=1, hint=" (and <= n_embd)")
        self.layers = check_ints(self, "layers", self.layers, optional=True, hint=" (block indices; -1 is the last)")
        check_choice(self, "positions", self.positions, POSITIONS)
        for name in ("first", "last"):
            check_int(self, name, getattr(self, name), lo=0, hint=" (a number of prompt tokens)")
        if self.positions == "prompt" and self.first + self.last == 0:
            raise ValueError("ReFTConfig.first=0 and last=0 edit no position; set first + last >= 1, "
                             "or positions='all'")
        check_bool(self, "tied", self.tied)
        if not self.tied and (self.positions != "prompt" or self.first == 0 or self.last == 0):
            raise ValueError(f"ReFTConfig.tied=False gives the first and the last prompt tokens separate "
                             f"interventions: it needs positions='prompt', first >= 1 and last >= 1 "
                             f"(got positions={self.positions!r}, first={self.first}, last={self.last})")
        check_choice(self, "init", self.init, INITS)
        check_bool(self, "include_head", self.include_head)

    def apply(self, model: nn.Module) -> list[str]:
        return apply_reft(model, self)


def reft_parameter_count(n_embd: int, r: int) -> int:
    """One intervention: R (r, C) + W (r, C) + b (r,) = r (2C + 1)."""
    return r * (2 * n_embd + 1)


# ---- the intervention ------------------------------------------------------------------------

def orthonormal_rows(A: torch.Tensor) -> torch.Tensor:
    """Gram–Schmidt on the rows of a full-rank A (r, C), r <= C: R (r, C) with R Rᵀ = I and
    A = G R, G lower triangular with a positive diagonal (the unique such R). Computed in float32
    at least (float64 stays float64), returned in A's dtype."""
    Q, T = torch.linalg.qr(A.mT.to(torch.promote_types(A.dtype, torch.float32)))   # Aᵀ = Q T, Q (C, r)
    sign = torch.where(T.diagonal() < 0, -1.0, 1.0).to(Q.dtype)                     # make diag(T) > 0
    return (Q * sign).mT.to(A.dtype)                                                # (r, C)


def loreft(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Φ(h) = h + Rᵀ (W h + b − R h) for row vectors h (..., C); R, W: (r, C), b: (r,)."""
    delta = F.linear(h, W - R, b)                      # W h + b − R h = (W − R) h + b     (..., r)
    return h + delta @ R                               # h + Rᵀ (...)                      (..., C)


class ReFTLayer(AdapterLayer):
    """One LoReFT intervention on the output of one block, at the positions its GPT marks.

    R_raw (r, C): R = orthonormal_rows(R_raw);  W (r, C), b (r,).  `group` says which positions it
    edits: "prompt" (tied first + last), "first", "last" or "all"."""

    def __init__(self, n_embd: int, r: int, group: str, init: str = "identity", device=None, dtype=None):
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= n_embd:
            raise ValueError(f"ReFT rank r={r!r} must be between 1 and n_embd={n_embd} "
                             f"(R has r orthonormal rows in R^{n_embd})")
        self.n_embd, self.r, self.group = n_embd, r, group
        kw = dict(device="cpu", dtype=dtype)       # drawn from the CPU stream, then moved (below): the same
        A = torch.empty(r, n_embd, **kw)           # initial R, W, b on every device
        nn.init.orthogonal_(A)                                              # a random orthonormal R
        self.R_raw = nn.Parameter(A)                                        # (r, C), R = GS(R_raw)
        lin = nn.Linear(n_embd, r, **kw)                                    # init="random": nn.Linear's
        with torch.no_grad():
            W = orthonormal_rows(A) if init == "identity" else lin.weight   # identity: W = R ...
            self.W = nn.Parameter(W.detach().clone())                       # (r, C)
            self.b = nn.Parameter(torch.zeros(r, **kw) if init == "identity" else lin.bias.detach().clone())
        if device is not None:
            self.to(device)
        self.where: Optional[torch.Tensor] = None                          # (B, T) bool, set per call

    def adapter_names(self) -> list[str]:
        return ["R_raw", "W", "b"]

    @property
    def R(self) -> torch.Tensor:
        return orthonormal_rows(self.R_raw)                                 # (r, C), R Rᵀ = I

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, C), the block's output -> Φ(h) at the marked positions, h elsewhere (bit for bit)."""
        where = self.where
        if not self.adapter_enabled or where is None or not bool(where.any()):
            return h
        if tuple(where.shape) != tuple(h.shape[:2]):
            raise ValueError(f"ReFT layer: positions {tuple(where.shape)} do not match the hidden states "
                             f"{tuple(h.shape[:2])}; call the GPT, not its blocks, so it can mark the positions")
        out = loreft(h, self.R.to(h.dtype), self.W.to(h.dtype), self.b.to(h.dtype))   # (B, T, C)
        return torch.where(where[..., None], out, h)                       # only the marked positions

    def remove_from(self, model: nn.Module, name: str) -> None:
        """Delete this child of its block; drop the block's hook (and the GPT's) once no layer is left."""
        parent_name, _, child = name.rpartition(".")
        block = model.get_submodule(parent_name)
        delattr(block, child)
        if not any(isinstance(m, ReFTLayer) for m in block.children()):
            remove_hooks(block, lambda fn: fn is _edit_block_output)
        for gpt in _gpts(model):
            if not any(isinstance(m, ReFTLayer) for m in gpt.modules()):
                remove_hooks(gpt, lambda fn: fn is _mark_positions)

    def extra_repr(self) -> str:
        return f"C={self.n_embd}, r={self.r}, positions={self.group}"


# ---- which positions: read from the GPT's call -----------------------------------------------

def edit_masks(cfg: ReFTConfig, attention_mask: Optional[torch.Tensor], B: int, T: int, past: int,
               device=None) -> dict:
    """The positions (B, T) bool each group edits in one forward call of B rows, T new tokens after
    `past` cached ones. attention_mask: (B, past + T) or None (every token real)."""
    real = torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None \
        else attention_mask[:, past:].to(device=device).bool()             # (B, T)
    if cfg.positions == "all":
        return {"all": real}
    if past > 0:                                                           # a generation step: no edit
        none = torch.zeros_like(real)
        return {"prompt": none, "first": none, "last": none}
    k = real.long().cumsum(1) - 1                                          # index among real tokens
    n = real.long().sum(1, keepdim=True)                                   # real tokens per row (B, 1)
    first = real & (k < cfg.first)                                         # the first min(p, n)
    last = real & (k >= n - cfg.last)                                      # the last min(s, n)
    return {"prompt": first | last, "first": first, "last": last & ~first}  # overlap: once


def _mark_positions(gpt: nn.Module, args: tuple, kwargs: dict):
    """GPT forward pre-hook: compute this call's edit positions, hand them to its ReFT layers."""
    idx = args[0] if args else kwargs.get("idx")
    emb = kwargs.get("inputs_embeds")
    B, T = (idx if idx is not None else emb).shape[:2]
    past_kv = kwargs.get("past_kv")
    past = 0 if past_kv is None else past_kv[0][0].shape[2]
    cfg = gpt.reft_config
    masks = edit_masks(cfg, kwargs.get("attention_mask"), B, T, past, gpt.lm_head.weight.device)
    for m in gpt.modules():
        if isinstance(m, ReFTLayer):
            m.where = masks[m.group]
    return None


def _edit_block_output(block: nn.Module, args: tuple, output):
    """Block forward hook: output (h, present) -> (Φ(h) at the marked positions, present)."""
    h, present = output
    for m in block.children():
        if isinstance(m, ReFTLayer):
            h = m(h)                                                       # first/last: disjoint positions
    return h, present


def _gpts(model: nn.Module) -> list[nn.Module]:
    """The GPT(s) inside model: the model itself, or a classifier's body."""
    from ..model import GPT
    return [m for m in model.modules() if isinstance(m, GPT)]


# ---- module surgery --------------------------------------------------------------------------

def reft_targets(model: nn.Module, cfg: ReFTConfig) -> list[tuple[str, str]]:
    """(module name, group) of every ReFT layer apply_reft adds: 'transformer.h.1.reft' ..."""
    gpts = _gpts(model)
    if len(gpts) != 1:
        raise ValueError(f"apply_reft: the model must contain exactly one GPT (itself, or a classifier's "
                         f"body), found {len(gpts)}")
    gpt = gpts[0]
    prefix = next(n for n, m in model.named_modules() if m is gpt)
    L = gpt.config.n_layer
    layers = range(L)
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if isinstance(i, bool) or not isinstance(i, int) or not -L <= i < L]
        if bad or not cfg.layers:
            raise ValueError(f"ReFTConfig.layers={list(cfg.layers)}: {bad or 'empty'} out of range for "
                             f"n_layer={L} (use 0..{L - 1} or -{L}..-1, or None for all)")
        layers = sorted({i % L for i in cfg.layers})
    groups = ["all"] if cfg.positions == "all" else ["prompt"] if cfg.tied else ["first", "last"]
    child = {"all": "reft", "prompt": "reft", "first": "reft_first", "last": "reft_last"}
    return [(f"{prefix + '.' if prefix else ''}transformer.h.{i}.{child[g]}", g) for i in layers for g in groups]


def apply_reft(model: nn.Module, cfg: ReFTConfig) -> list[str]:
    """Attach LoReFT interventions to the chosen blocks' outputs, freeze everything else (a task head
    stays trainable unless cfg.include_head is False). Returns the added module names."""
    targets = reft_targets(model, cfg)
    gpt = _gpts(model)[0]
    C, block_size = gpt.config.n_embd, gpt.config.block_size
    if not 1 <= cfg.r <= C:
        raise ValueError(f"ReFTConfig.r={cfg.r} must be between 1 and n_embd={C} (R has r orthonormal rows in R^{C})")
    for name in ("first", "last"):
        if cfg.positions == "prompt" and getattr(cfg, name) > block_size:
            raise ValueError(f"ReFTConfig.{name}={getattr(cfg, name)} names positions outside any sequence: "
                             f"it must be <= block_size={block_size}")
    if any(isinstance(m, ReFTLayer) for m in model.modules()):
        raise ValueError("ReFT is already applied to this model; remove_adapters(model) first, or start from a "
                         "fresh base model")
    w = gpt.lm_head.weight
    for name, group in targets:
        parent, _, child = name.rpartition(".")
        block = model.get_submodule(parent)
        block.add_module(child, ReFTLayer(C, cfg.r, group, cfg.init, device=w.device, dtype=w.dtype))
        if _edit_block_output not in block._forward_hooks.values():
            block.register_forward_hook(_edit_block_output)
    object.__setattr__(gpt, "reft_config", cfg)                             # read by the pre-hook
    gpt.register_forward_pre_hook(_mark_positions, with_kwargs=True)
    freeze_all_but_adapters(model, cfg.include_head)
    return record(model, cfg, [n for n, _ in targets])


def reft_layers(model: nn.Module) -> list[tuple[str, ReFTLayer]]:
    return list(adapter_layers(model, ReFTLayer))


def reft_state_dict(model: nn.Module) -> dict:
    """Only the ReFT tensors (R_raw, W, b of every intervention), by full name."""
    return detached_state(model, ReFTLayer)


@torch.no_grad()
def orthonormality_error(model: nn.Module) -> float:
    """max over interventions of ‖R Rᵀ − I‖_max, computed in float64 (0 up to rounding)."""
    errs = [(m.R.double() @ m.R.double().T - torch.eye(m.r, dtype=torch.float64, device=m.R.device)).abs().max()
            for _, m in reft_layers(model)]
    return float(max(errs)) if errs else 0.0
