"""LoRA: low-rank adaptation of a frozen weight (Hu et al., 2021, "LoRA: Low-Rank Adaptation of
Large Language Models"), with rsLoRA (Kalajdzievski, 2023) and DoRA (Liu et al., 2024) as options.

A pretrained weight W0 (out, in) stays frozen; a rank-r update is learned beside it:

    h = W0 x + b + s · B A dropout(x)          A: (r, in), B: (out, r), r << min(in, out)
    s = alpha / r                              LoRA
    s = alpha / sqrt(r)                        rsLoRA: the update's scale no longer shrinks as r grows

A starts Kaiming-uniform (a = sqrt(5), as nn.Linear and PEFT), B starts at zero, so B A = 0 and the
adapted model *is* the base model at step 0. Only A and B train: r (in + out) numbers per adapted
matrix instead of in · out.

Merging folds the update into the weight, for inference at no extra cost:

    W = W0 + s B A            computed in float32, cast back to W0's dtype; merging twice is a no-op

`unmerge()` subtracts it again (W0 back up to one rounding in W0's dtype). The unmerged forward is
the ground truth.

DoRA (weight-decomposed LoRA) learns a magnitude and a direction separately:

    W' = m ⊙ (W0 + s B A) / ‖W0 + s B A‖       m: one per adapted output row, initialised to ‖W0‖

‖·‖ is the L2 norm of each *output row* of the (out, in) weight: the paper writes weights as
(in, out) and calls it the column-wise norm; PEFT does the same. As the paper suggests (its section
4.3) and PEFT does, the norm is a constant in backward (detached): m, A and B get gradients, the
norm passes none. It is computed as h = W0 x + b + (m/‖·‖ - 1) ⊙ W0 x + (m/‖·‖) ⊙ s B A dropout(x),
which equals m/‖·‖ ⊙ (W0 x + s B A x) + b and is exactly the base output while m = ‖W0‖, B = 0.
(With dropout, W0 x sees the undropped x here; PEFT feeds the dropped x to that term in training.
At inference, and with dropout 0, the two agree.)

GPT-2 fuses W_q, W_k, W_v into one `attn.c_attn` (out = 3 C); the LoRA paper adapts W_q and W_v.
`LoRAConfig(targets=["attn.c_attn"], qkv=("q", "v"))` gives each chosen slice its own pair, A_q
(r, C), B_q (C, r) and A_v, B_v, exactly as if W_q and W_v were separate matrices (so the count is
r (C + C) per slice, the paper's); the k rows of c_attn's output receive no update at all. They
are stored stacked: lora_A (2r, C), lora_B (2C, r), slice by slice in q, k, v order. In Hugging
Face PEFT this is a LoRA of rank 2r on c_attn whose B is zero in the k rows and block-diagonal
(see minift.peft.io.export_peft).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validate import QKV, check_bool, check_float, check_int, check_qkv, check_regexes
from .common import (TARGETS_HINT, AdapterLayer, MethodConfig, adapter_layers, detached_state, freeze_all_but_adapters,
                     linear_around, linear_targets, merge_layers, qkv_slices, record, set_module)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (bfloat16 / float16 -> float32; float64 stays): where merges are computed."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class LoRAConfig(MethodConfig):
    """Which nn.Linear modules get LoRA, and how. `targets` are regexes searched (re.search) in module
    names; each must match at least one nn.Linear. `qkv` only concerns fused `c_attn` modules (out =
    3 in): the slices to adapt, each as its own matrix; other targets are adapted whole. The defaults
    are the LoRA paper's: W_q and W_v. Everything else is frozen (a task head stays trainable unless
    include_head=False)."""

    r: int = 8                                    # rank of B A
    alpha: float = 16.0                           # s = alpha / r (or alpha / sqrt(r) with rsLoRA)
    dropout: float = 0.0                          # on the LoRA branch's input only
    targets: Sequence[str] = ("attn.c_attn",)     # regexes, re.search over module names
    qkv: Optional[Sequence[str]] = ("q", "v")     # slices of a fused c_attn to adapt; None = all of it
    use_rslora: bool = False
    use_dora: bool = False
    include_head: bool = True                     # keep a task head (head.*) trainable
    method = "lora"                               # its name in an adapter file (DoRA is LoRA with use_dora)
    family = "reparameterization"           # minift/taxonomy.py: W = W0 + a compact update

    def __post_init__(self):
        check_int(self, "r", self.r, lo=1, hint=" (the rank; <= min(in, out) of every adapted matrix)")
        check_float(self, "alpha", self.alpha, lo=0, lo_open=True, hint=" (s = alpha / r)")
        check_float(self, "dropout", self.dropout, 0, 1, hi_open=True)
        for name in ("use_rslora", "use_dora", "include_head"):
            check_bool(self, name, getattr(self, name))
        self.targets = check_regexes(self, "targets", self.targets, TARGETS_HINT)
        self.qkv = check_qkv(self, "qkv", self.qkv)                    # canonical q, k, v order

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def apply(self, model: nn.Module) -> list[str]:
        return apply_lora(model, self)


def lora_parameter_count(in_features: int, out_features: int, r: int) -> int:
    """Parameters of one adapted matrix: A (r, in) + B (out, r) = r (in + out)."""
    return r * (in_features + out_features)


class LoRALinear(AdapterLayer):
    """A frozen nn.Linear plus s · B A on all its output rows, or on some row slices.

    base: the nn.Linear to adapt (its weight and bias are taken over, same tensors, same names).
    slices: None (the whole matrix) or [(start, stop), ...] of equal length d: each slice gets its
    own A_i (r, in), B_i (d, r).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 use_dora: bool = False, slices: Optional[Sequence[tuple[int, int]]] = None):
        super().__init__()
        out_f, in_f = base.weight.shape
        self.in_features, self.out_features = in_f, out_f
        self.weight, self.bias = base.weight, base.bias                    # W0 (out, in), b (out,)
        self.slices = None if slices is None else [tuple(s) for s in slices]
        d = out_f if slices is None else self.slices[0][1] - self.slices[0][0]
        if self.slices is not None and any(b - a != d or not 0 <= a < b <= out_f for a, b in self.slices):
            raise ValueError(f"LoRA slices {self.slices} must be equal-length ranges inside 0..{out_f}")
        S = 1 if slices is None else len(self.slices)
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(in_f, d):
            raise ValueError(f"LoRA rank r={r!r} must be between 1 and min(in_features, out_features)="
                             f"{min(in_f, d)} (this matrix is ({d}, {in_f}))")
        self.r, self.alpha, self.n_slices, self.slice_out = r, float(alpha), S, d
        self.use_rslora, self.use_dora = use_rslora, use_dora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r    # s
        dev = base.weight.device
        kw = dict(device=dev, dtype=base.weight.dtype)
        A = torch.empty(S * r, in_f, dtype=base.weight.dtype, device="cpu")  # drawn from the CPU stream, then
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))                        # moved: the same A on every device
        self.lora_A = nn.Parameter(A.to(dev))                              # (S r, in): A_1 .. A_S stacked
        self.lora_B = nn.Parameter(torch.zeros(S * d, r, **kw))            # (S d, r): B = 0, a no-op
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        rows = torch.arange(out_f, device=dev) if slices is None else \
            torch.cat([torch.arange(a, b, device=dev) for a, b in self.slices])
        self.register_buffer("rows", rows, persistent=False)               # adapted rows (S d,)
        if use_dora:                                                       # m = ‖W0‖ per adapted row
            self.lora_magnitude = nn.Parameter(self._row_norm(torch.zeros(S * d, in_f, **kw)).to(kw["dtype"]))
        self._merged_norm = None                                           # DoRA's ‖W0 + sBA‖ at merge

    def adapter_names(self) -> list[str]:
        return ["lora_A", "lora_B"] + (["lora_magnitude"] if self.use_dora else [])

    # ---- the update --------------------------------------------------------------------------

    def lora(self, x: torch.Tensor) -> torch.Tensor:
        """B A dropout(x) on the adapted rows, without s: (..., S d)."""
        z = self.lora_dropout(x) @ self.lora_A.T                           # (..., S r)
        if self.slices is None:
            return z @ self.lora_B.T                                       # (..., out)
        S, r, d = self.n_slices, self.r, self.slice_out
        z = z.unflatten(-1, (S, r))                                        # (..., S, r)
        y = torch.einsum("...sr,sdr->...sd", z, self.lora_B.view(S, d, r))  # B_i A_i x per slice
        return y.flatten(-2)                                               # (..., S d)

    def delta_rows(self) -> torch.Tensor:
        """s B A for the adapted rows, in float32 (float64 stays float64): (S d, in)."""
        A, B = _wide(self.lora_A), _wide(self.lora_B)
        if self.slices is None:
            return self.scaling * (B @ A)                                  # (out, in)
        S, r, d = self.n_slices, self.r, self.slice_out
        per = torch.bmm(B.view(S, d, r), A.view(S, r, self.in_features))  # (S, d, in): B_i A_i
        return self.scaling * per.reshape(S * d, self.in_features)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s B A as a full (out, in) float32 matrix, zero in the rows that are not adapted."""
        dW = self.delta_rows()
        return dW.new_zeros(self.out_features, self.in_features).index_copy(0, self.rows, dW)

    def _row_norm(self, delta_rows: torch.Tensor) -> torch.Tensor:
        """‖W0 + s B A‖ per adapted output row, in float32 (or float64): (S d,)."""
        return torch.linalg.vector_norm(_wide(self.weight)[self.rows] + _wide(delta_rows), dim=1)

    # ---- forward -----------------------------------------------------------------------------

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer: W0 x + b. (QLoRA overrides this with a dequantize-then-matmul.)"""
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)                                           # W0 x + b   (..., out)
        if self.merged or not self.adapter_enabled:
            return y
        upd = self.scaling * self.lora(x)                                  # s B A drop(x)  (..., S d)
        if self.use_dora:                                                  # norm detached (DoRA 4.3)
            norm = self._row_norm(self.delta_rows().detach()).detach().to(self.lora_magnitude.dtype)
            g = (self.lora_magnitude / norm).to(y.dtype)                   # m / ‖W0 + sBA‖   (S d,)
            w0x = y.index_select(-1, self.rows)                            # W0 x + b on adapted rows
            if self.bias is not None:
                w0x = w0x - self.bias[self.rows]                           # W0 x
            upd = (g - 1) * w0x + g * upd                                  # = g (W0 x + sBAx) - W0 x
        if self.slices is None:
            return y + upd
        return y.index_add(-1, self.rows, upd)                             # only the adapted rows move

    # ---- merge / unmerge ---------------------------------------------------------------------

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W0 + s B A (DoRA: the adapted rows become m ⊙ (W0 + sBA) / ‖W0 + sBA‖). No-op if merged.
        A merged layer computes W x + b only, so A, B (and m) get no gradient: unmerge to train on."""
        if self.merged:
            return
        W = _wide(self.weight)                                             # merge in float32
        dW = self.delta_rows()
        if self.use_dora:
            norm = self._row_norm(dW)                                      # (S d,)
            rows = (W[self.rows] + dW) * (_wide(self.lora_magnitude) / norm)[:, None]
            self._merged_norm = norm
        else:
            rows = W[self.rows] + dW
        self.weight.copy_(W.index_copy(0, self.rows, rows).to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A (DoRA: divide the rows by m / ‖·‖ first). No-op if not merged."""
        if not self.merged:
            return
        W = _wide(self.weight)
        rows = W[self.rows]
        if self.use_dora:
            rows = rows / (_wide(self.lora_magnitude) / self._merged_norm)[:, None]
            self._merged_norm = None
        rows = rows - self.delta_rows()
        self.weight.copy_(W.index_copy(0, self.rows, rows).to(self.weight.dtype))
        self.merged = False

    def original(self) -> nn.Linear:
        return linear_around(self.weight, self.bias)                       # the same tensors

    def extra_repr(self) -> str:
        what = "all rows" if self.slices is None else f"slices {self.slices}"
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, s={self.scaling:g}, {what}"
                f"{', DoRA' if self.use_dora else ''}{', merged' if self.merged else ''}")


# ---- module surgery --------------------------------------------------------------------------

def find_targets(model: nn.Module, cfg: LoRAConfig, what: str = "LoRA") -> list[str]:
    """The nn.Linear module names the config's patterns select (each pattern must select one, none may
    be tied to the embedding, q/k/v slices need a fused c_attn)."""
    return linear_targets(model, cfg, what, f"{what} qkv", adapted=(LoRALinear,))


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Replace every targeted nn.Linear by a LoRALinear, freeze everything but the LoRA tensors (and a
    task head, unless cfg.include_head is False). Returns the adapted module names."""
    names = find_targets(model, cfg)
    again = [n for n in names if isinstance(model.get_submodule(n), LoRALinear)]
    if again:
        raise ValueError(f"LoRA is already applied to {again[:3]}; applying it twice to the same layer is not "
                         f"supported (merge_and_unload(model) first, or start from a fresh base model)")
    layers = {}
    for n in names:                                                        # validate all, then replace
        m = model.get_submodule(n)
        try:
            layers[n] = LoRALinear(m, cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora, cfg.use_dora,
                                   qkv_slices(n, m, cfg.qkv))
        except ValueError as e:
            raise ValueError(f"{n}: {e}") from None
    for n, layer in layers.items():
        set_module(model, n, layer)
    freeze_all_but_adapters(model, cfg.include_head)
    return record(model, cfg, names)


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return list(adapter_layers(model, LoRALinear))


def lora_state_dict(model: nn.Module) -> dict:
    """Only the LoRA tensors (lora_A, lora_B, and DoRA's lora_magnitude), by full name."""
    return detached_state(model, LoRALinear)


def merge_lora(model: nn.Module) -> None:
    merge_layers(model, LoRALinear)


def unmerge_lora(model: nn.Module) -> None:
    merge_layers(model, LoRALinear, merge=False)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer and put plain nn.Linear modules back: a model with the base's
    architecture and no adapter left (save it with checkpoint.save_model)."""
    for n, m in lora_layers(model):
        m.merge()
        set_module(model, n, m.original())
    if hasattr(model, "peft_methods"):
        model.peft_methods[:] = [r for r in model.peft_methods if r["method"] != "lora"]
    return model


def lora_report(model: nn.Module) -> list[dict]:
    """One row per adapted matrix: its name, shape (out, in), r and r (in + out) LoRA parameters.
    A q/v-sliced c_attn gives one row per slice (name 'transformer.h.0.attn.c_attn[q]')."""
    rows = []
    for n, m in lora_layers(model):
        parts = [(n, m.out_features)] if m.slices is None else \
            [(f"{n}[{QKV[a // m.slice_out]}]", m.slice_out) for a, _ in m.slices]
        for name, out in parts:
            rows.append({"module": name, "shape": (out, m.in_features), "r": m.r, "dense": out * m.in_features,
                         "lora": lora_parameter_count(m.in_features, out, m.r) + (out if m.use_dora else 0)})
    return rows
