"""Bottleneck adapters: small trainable MLPs inserted into a frozen transformer.

Series (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP"): the output h of a
sublayer, after its projection back to C and before the residual add, goes through

    h <- h + s · (f(h W_down + b_down) W_up + b_up)      W_down: C -> m, W_up: m -> C, m << C

- placement "houlsby": after the attention output (attn.c_proj) and after the MLP output (mlp.c_proj);
- placement "pfeiffer" (Pfeiffer et al., 2021, "AdapterFusion"): after the MLP output only.

Parallel (He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning";
LLM-Adapters, Hu et al., 2023): the adapter reads the MLP's *input* x = LN_2(a) and its output is
added beside the MLP's:

    a_l + MLP(x) + s · (f(x W_down + b_down) W_up + b_up)

W_up and b_up start at zero, so every adapter starts as an exact no-op (h + 0 = h). W_down starts as
nn.Linear does. An adapter costs 2 C m + m + C parameters. The weights are nn.Linear modules, so in
code W_down is `down.weight` (m, C) and "h W_down" is `h @ down.weight.T`.

The surgery wraps existing modules and keeps their tensors under their old names (the wrapped
c_proj's weight stays `...attn.c_proj.weight`): a base checkpoint still loads, and model.py does
not change. The adapter's tensors are `...attn.c_proj.adapter.down.weight`, `...mlp.adapter.up.bias`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validate import check_bool, check_choice, check_float, check_int, check_ints
from .common import AdapterLayer, MethodConfig, detached_state, freeze_all_but_adapters, linear_around, record, set_module

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": lambda h: F.gelu(h, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
    "identity": lambda h: h,
}
KINDS = ("series", "parallel")
PLACEMENTS = ("houlsby", "pfeiffer")


@dataclass
class AdapterConfig(MethodConfig):
    kind: str = "series"                       # "series" | "parallel"
    placement: str = "houlsby"                 # series only: "houlsby" (attn + mlp) | "pfeiffer" (mlp)
    bottleneck: int = 16                       # m
    activation: str = "relu"                   # f, a key of ACTIVATIONS
    scaling: float = 1.0                       # s (He et al. use s = 4 for the parallel adapter)
    layers: Optional[Sequence[int]] = None     # which blocks; None = all; negative counts from the end
    include_head: bool = True                  # keep a task head (head.*) trainable
    method = "adapters"                        # its name in an adapter file
    family = "additive"                     # minift/taxonomy.py: adds modules or tokens the base does not have

    def __post_init__(self):
        check_choice(self, "kind", self.kind, KINDS)
        check_choice(self, "placement", self.placement, PLACEMENTS, hint=" (used by kind='series'; a parallel "
                     "adapter always sits beside the MLP)")
        check_int(self, "bottleneck", self.bottleneck, lo=1, hint=" (and <= n_embd)")
        check_choice(self, "activation", self.activation, sorted(ACTIVATIONS))
        check_float(self, "scaling", self.scaling)
        self.layers = check_ints(self, "layers", self.layers, optional=True, hint=" (block indices; -1 is the last)")
        check_bool(self, "include_head", self.include_head)

    def apply(self, model: nn.Module) -> list[str]:
        return apply_adapters(model, self)


def adapter_parameter_count(n_embd: int, bottleneck: int) -> int:
    """W_down (m, C) + b_down (m) + W_up (C, m) + b_up (C)."""
    return 2 * n_embd * bottleneck + bottleneck + n_embd


class Bottleneck(nn.Module):
    """s · (f(h W_down + b_down) W_up + b_up): (..., C) -> (..., C), zero at initialisation."""

    def __init__(self, n_embd: int, bottleneck: int, activation: str = "relu", scaling: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(n_embd, bottleneck, device="cpu", dtype=dtype)    # W_down (m, C), drawn on the CPU
        self.up = nn.Linear(bottleneck, n_embd, device="cpu", dtype=dtype)      # W_up (C, m)
        nn.init.zeros_(self.up.weight)                                          # a no-op at start
        nn.init.zeros_(self.up.bias)
        if device is not None:
            self.to(device)                        # moved after the draw: the same W_down on every device
        self.activation, self.scaling = activation, float(scaling)
        self.f = ACTIVATIONS[activation]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(self.f(self.down(h)))                     # (..., C)

    def extra_repr(self) -> str:
        return f"f={self.activation}, s={self.scaling:g}"


class SeriesAdapterLinear(AdapterLayer):
    """A frozen nn.Linear (a sublayer's output projection) followed by a series adapter:
    h = W x + b;  h + s · (f(h W_down + b_down) W_up + b_up)."""

    def __init__(self, base: nn.Linear, cfg: AdapterConfig):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias                         # same tensors, same names
        self.in_features, self.out_features = base.weight.shape[1], base.weight.shape[0]
        self.adapter = Bottleneck(self.out_features, cfg.bottleneck, cfg.activation, cfg.scaling,
                                  device=base.weight.device, dtype=base.weight.dtype)

    def adapter_names(self) -> list[str]:
        return [f"adapter.{n}" for n, _ in self.adapter.named_parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight, self.bias)                                 # (..., C)
        if not self.adapter_enabled:
            return h
        return h + self.adapter(h)                                              # h + s f(h Wd) Wu

    def original(self) -> nn.Linear:
        return linear_around(self.weight, self.bias)                            # the same tensors


class ParallelAdapterMLP(AdapterLayer):
    """A frozen GPT MLP with an adapter beside it: MLP(x) + s · (f(x W_down + b_down) W_up + b_up).

    It takes over the MLP's own submodules (c_fc, c_proj, dropout), so their tensors keep their names."""

    def __init__(self, mlp: nn.Module, cfg: AdapterConfig):
        super().__init__()
        self._mlp_class = type(mlp)
        for name, child in mlp.named_children():                               # c_fc, c_proj, dropout
            self.add_module(name, child)
        C = mlp.c_fc.weight.shape[1]
        self.adapter = Bottleneck(C, cfg.bottleneck, cfg.activation, cfg.scaling,
                                  device=mlp.c_fc.weight.device, dtype=mlp.c_fc.weight.dtype)

    def adapter_names(self) -> list[str]:
        return [f"adapter.{n}" for n, _ in self.adapter.named_parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mlp_class.forward(self, x)                                    # MLP(x): the frozen path
        if not self.adapter_enabled:
            return y
        return y + self.adapter(x)                                              # + s f(x Wd) Wu, beside it

    def original(self) -> nn.Module:
        mlp = self._mlp_class.__new__(self._mlp_class)
        nn.Module.__init__(mlp)
        for name, child in self.named_children():
            if name != "adapter":
                mlp.add_module(name, child)
        return mlp


def _blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks ('transformer.h.0', ...; 'body.transformer.h.0' in a classifier)."""
    return [n for n, m in model.named_modules() if n.split(".")[-2:-1] == ["h"] and hasattr(m, "mlp")
            and hasattr(m, "attn")]


def adapter_targets(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """The module names apply_adapters wraps for this config."""
    blocks = _blocks(model)
    if not blocks:
        raise ValueError("apply_adapters: the model has no GPT blocks (modules named '...h.<i>' with attn and mlp)")
    L = len(blocks)
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if isinstance(i, bool) or not isinstance(i, int) or not -L <= i < L]
        if bad:
            raise ValueError(f"AdapterConfig.layers has {bad}: out of range for n_layer={L} "
                             f"(use 0..{L - 1} or -{L}..-1)")
        keep = sorted({i % L for i in cfg.layers})
        blocks = [blocks[i] for i in keep]
    if cfg.kind == "parallel":
        return [f"{b}.mlp" for b in blocks]
    where = ("attn.c_proj", "mlp.c_proj") if cfg.placement == "houlsby" else ("mlp.c_proj",)
    return [f"{b}.{w}" for b in blocks for w in where]


def apply_adapters(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Insert bottleneck adapters, freeze everything else (a task head stays trainable unless
    cfg.include_head is False). Returns the wrapped module names."""
    names = adapter_targets(model, cfg)
    again = [n for n in names if isinstance(model.get_submodule(n), AdapterLayer)]
    if again:
        raise ValueError(f"adapters are already applied to {again[:3]}; applying them twice to the same "
                         f"module is not supported (remove_adapters(model) first)")
    C = model.get_submodule(names[0]).weight.shape[0] if cfg.kind == "series" else \
        model.get_submodule(names[0]).c_fc.weight.shape[1]
    if cfg.bottleneck > C:
        raise ValueError(f"AdapterConfig.bottleneck={cfg.bottleneck} must be <= n_embd={C} (a bottleneck)")
    for n in names:
        m = model.get_submodule(n)
        set_module(model, n, ParallelAdapterMLP(m, cfg) if cfg.kind == "parallel" else SeriesAdapterLinear(m, cfg))
    freeze_all_but_adapters(model, cfg.include_head)
    return record(model, cfg, names)


def adapters_state_dict(model: nn.Module) -> dict:
    """Only the adapters' tensors, by full name."""
    return detached_state(model, (SeriesAdapterLinear, ParallelAdapterMLP))
