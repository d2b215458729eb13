"""Random masking: train a fixed random subset of the entries of a frozen weight (Xu & Zhang, 2024,
"Random Masking Finds Winning Tickets for Parameter Efficient Fine-tuning").

A binary mask M with exactly k ones is drawn once, at random, over the chosen weight matrices, and
only the masked entries may change:

    W = W0 + M ⊙ Δ          stored sparse:  W = W0 + scatter(idx, v),   idx: (k,), v: (k,)
    h = x W^T + b           forward: one dense matmul with the patched weight

    k = ⌊density · N + ½⌋   N = the number of entries in all the chosen matrices (round half up)

idx are flat positions in each matrix's W0.view(-1); v, the trainable values, start at zero, so the
adapted model *is* the base model at step 0. The trainable state and the adapter file are exactly
(idx, v): k int32 positions and k values, 8 bytes per entry in float32, so the file shrinks with the
density. The mask is one draw without replacement over all N chosen entries (every k-subset
equally likely, from a private generator seeded by `seed`); each matrix gets its share (about
density · n_i of its n_i entries, possibly none). The file stores the indices, so it does not rely
on the random stream to be read back; a layer checks its indices (k distinct positions in its
allowed rows) when built and again on its first forward after they were overwritten (load_adapter).

Entries outside the mask are never touched: W0 is frozen, and gradient and optimizer (AdamW with
weight decay included) only ever see v. Weight decay on v pulls W back toward W0, not toward 0
(minift's train loop decays matrices only, so v, a vector, gets none there).

Learning rate. The paper finds that sparser masks need (and tolerate) larger learning rates: the
masked loss landscape is flatter (smaller Hessian eigenvalues), so the best rate grows as the mask
gets sparser, well above LoRA's usual rates. Sweep the rate per density (lesson 09).

Merging patches the weight in place (W0[idx] += v) and keeps the k original entries, so `unmerge()`
restores W0 bit for bit. GPT-2's fused `attn.c_attn` can be masked in its q and v row slices only
(`qkv`), as the paper's code masks q_proj and v_proj.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validate import check_bool, check_float, check_int, check_qkv, check_regexes
from .common import (_HEAD, TARGETS_HINT, AdapterLayer, MethodConfig, adapter_layers, linear_around, linear_targets,
                     merge_layers, qkv_slices, record, set_module)


@dataclass
class MaskingConfig(MethodConfig):
    """Which nn.Linear entries train. `targets` are regexes searched (re.search) in module names; each
    must match at least one nn.Linear. `qkv` only concerns fused `c_attn` modules (out = 3 in): the row
    slices the mask may fall in (None: the whole matrix). Everything else is frozen (a task head
    stays trainable unless include_head=False)."""

    density: float = 0.01                         # k = ⌊density · N + ½⌋ of the N chosen entries train
    targets: Sequence[str] = ("attn.c_attn",)     # regexes, re.search over module names
    qkv: Optional[Sequence[str]] = ("q", "v")     # slices of a fused c_attn; None = all of it
    seed: int = 0                                 # the mask's private generator
    include_head: bool = True                     # keep a task head (head.*) trainable
    method = "masking"                            # its name in an adapter file
    family = "selective"                    # minift/taxonomy.py: trains a subset of W0's own entries

    def __post_init__(self):
        self.density = float(check_float(self, "density", self.density, 0, 1, lo_open=True, hint=": the share of "
                                         "the chosen weights that train, e.g. 0.01 for 1%"))
        check_int(self, "seed", self.seed, lo=0)
        check_bool(self, "include_head", self.include_head)
        self.targets = check_regexes(self, "targets", self.targets, TARGETS_HINT)
        self.qkv = check_qkv(self, "qkv", self.qkv)                   # canonical q, k, v order

    def apply(self, model: nn.Module) -> list[str]:
        return apply_masking(model, self)


def masked_count(n: int, density: float) -> int:
    """k = ⌊density · n + ½⌋: the number of trainable entries out of n (round half up)."""
    return int(math.floor(density * n + 0.5))


def random_mask(n: int, k: int, seed: int) -> torch.Tensor:
    """k distinct positions out of range(n), uniformly at random (a seeded permutation's first k),
    sorted: (k,) int64. The same (n, k, seed) always gives the same mask."""
    if not 0 <= k <= n:
        raise ValueError(f"random_mask: k={k} must be between 0 and n={n}")
    g = torch.Generator().manual_seed(seed)                                # a CPU generator: the draw is on
    return torch.randperm(n, generator=g, device="cpu")[:k].sort().values  # the CPU, the same everywhere (k,)


class MaskedLinear(AdapterLayer):
    """A frozen nn.Linear whose entries at `indices` (flat positions in weight.view(-1)) train:
    h = x (W0 + scatter(indices, values))^T + b. values start at zero."""

    def __init__(self, base: nn.Linear, indices: torch.Tensor, allowed_rows: Optional[torch.Tensor] = None):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias                    # W0 (out, in), b (out,): frozen
        self.out_features, self.in_features = base.weight.shape
        n = base.weight.numel()
        kw = dict(device=base.weight.device)
        idx_dtype = torch.int32 if n < 2 ** 31 else torch.int64            # 4 bytes a position
        self.mask_indices = nn.Parameter(indices.to(idx_dtype).to(**kw).clone(), requires_grad=False)   # (k,)
        self.mask_values = nn.Parameter(torch.zeros(len(indices), dtype=base.weight.dtype, **kw))    # (k,) = 0
        rows = torch.arange(self.out_features, **kw) if allowed_rows is None else allowed_rows
        self.register_buffer("allowed_rows", rows.to(torch.long).to(**kw), persistent=False)
        self._saved = None                                                 # W0[idx] while merged
        self.check_indices()

    @property
    def k(self) -> int:
        return self.mask_indices.numel()

    def adapter_names(self) -> list[str]:
        return ["mask_values", "mask_indices"]           # the file holds both: the delta is self-describing

    def check_indices(self) -> None:
        """Raise ValueError unless mask_indices are k sorted, distinct positions inside the allowed rows."""
        idx, n = self.mask_indices.detach().long(), self.weight.numel()
        what = f"MaskedLinear(out={self.out_features}, in={self.in_features}).mask_indices"
        if idx.dim() != 1 or idx.shape != self.mask_values.shape:
            raise ValueError(f"{what} must have shape (k,)=({self.mask_values.numel()},) like mask_values, "
                             f"got {tuple(idx.shape)}")
        if idx.numel():
            if int(idx.min()) < 0 or int(idx.max()) >= n:
                raise ValueError(f"{what} holds position {int(idx.max() if idx.max() >= n else idx.min())} "
                                 f"outside [0, out * in = {n})")
            if not bool((idx[1:] > idx[:-1]).all()):
                raise ValueError(f"{what} must be sorted and distinct (a repeated position would be trained "
                                 f"twice); got {idx[:8].tolist()} ...")
            if not bool(torch.isin(idx // self.in_features, self.allowed_rows).all()):
                raise ValueError(f"{what} falls outside the masked rows (the q/v slices of this c_attn)")
        self._checked = self.mask_indices._version                         # re-check after a copy_ (load)

    # ---- the update --------------------------------------------------------------------------

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scatter(indices, values) as a dense (out, in) matrix, zero off the mask."""
        flat = self.weight.new_zeros(self.weight.numel())
        return flat.index_add(0, self.mask_indices, self.mask_values.to(flat.dtype)).view_as(self.weight)

    def effective_weight(self) -> torch.Tensor:
        """W = W0 + scatter(indices, values): W0's entries off the mask, bit for bit. (out, in)"""
        if self.merged:
            return self.weight
        W = self.weight.reshape(-1).index_add(0, self.mask_indices, self.mask_values.to(self.weight.dtype))
        return W.view_as(self.weight)                                      # W0 + M ⊙ Δ

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.adapter_enabled or self.k == 0:
            return F.linear(x, self.weight, self.bias)                     # (merged W, or W0) x + b
        if self.mask_indices._version != self._checked:                    # overwritten since the last check
            self.check_indices()
        return F.linear(x, self.effective_weight(), self.bias)             # (W0 + scatter(idx, v)) x + b

    # ---- merge / unmerge ---------------------------------------------------------------------

    @torch.no_grad()
    def merge(self) -> None:
        """W0[idx] += v in place (the k original entries are kept). A merged layer trains nothing."""
        if self.merged:
            return
        self.check_indices()
        flat = self.weight.view(-1)
        self._saved = flat[self.mask_indices.long()].clone()               # W0 at the mask  (k,)
        flat.index_add_(0, self.mask_indices, self.mask_values.to(flat.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the k original entries back: W0 exactly, bit for bit."""
        if not self.merged:
            return
        self.weight.view(-1)[self.mask_indices.long()] = self._saved
        self._saved, self.merged = None, False

    def original(self) -> nn.Linear:
        return linear_around(self.weight, self.bias)                       # the same tensors

    def extra_repr(self) -> str:
        n = self.allowed_rows.numel() * self.in_features
        return (f"in={self.in_features}, out={self.out_features}, k={self.k} of {n} "
                f"({self.k / n:.3%}){', merged' if self.merged else ''}")


# ---- module surgery --------------------------------------------------------------------------

def find_targets(model: nn.Module, cfg: MaskingConfig) -> list[str]:
    """The nn.Linear module names the config's patterns select (each pattern must select one, none may
    be tied to the embedding, q/k/v slices need a fused c_attn)."""
    return linear_targets(model, cfg, "MaskingConfig", "MaskingConfig.qkv", adapted=(MaskedLinear,))


def _rows(name: str, m: nn.Module, cfg: MaskingConfig) -> torch.Tensor:
    """The output rows the mask may fall in: the q/v slices of a fused c_attn, else every row. On the CPU,
    with the draw (MaskedLinear moves its share to the weight's device)."""
    slices = qkv_slices(name, m, cfg.qkv) or [(0, m.weight.shape[0])]
    return torch.cat([torch.arange(a, b, device="cpu") for a, b in slices])


def apply_masking(model: nn.Module, cfg: MaskingConfig) -> list[str]:
    """Draw one random mask of k = ⌊density · N + ½⌋ entries over the targeted matrices, replace each by
    a MaskedLinear, freeze everything but the masked values (and a task head, unless cfg.include_head is
    False). Returns the adapted module names (every target, even one the draw gave no entry)."""
    names = find_targets(model, cfg)
    again = [n for n in names if isinstance(model.get_submodule(n), MaskedLinear)]
    if again:
        raise ValueError(f"random masking is already applied to {again[:3]}; applying it twice to the same "
                         f"layer is not supported (remove_adapters(model) first)")
    rows = {n: _rows(n, model.get_submodule(n), cfg) for n in names}
    allowed = [(r[:, None] * model.get_submodule(n).weight.shape[1]
                + torch.arange(model.get_submodule(n).weight.shape[1], device="cpu")).reshape(-1)
               for n, r in rows.items()]                                   # flat positions, CPU like the draw
    N = sum(a.numel() for a in allowed)                                    # every maskable entry
    k = masked_count(N, cfg.density)
    if k == 0:
        raise ValueError(f"MaskingConfig.density={cfg.density:g} gives k = ⌊density · N + ½⌋ = 0 trainable "
                         f"entries out of the N = {N:,} chosen weights; the smallest density that trains one is "
                         f"{0.5 / N:.3g} (= 0.5 / N), or choose more targets")
    pick = random_mask(N, k, cfg.seed)                                     # positions in the concatenation
    start = 0
    for n, a in zip(names, allowed):
        mine = pick[(pick >= start) & (pick < start + a.numel())] - start  # this matrix's share, sorted
        set_module(model, n, MaskedLinear(model.get_submodule(n), a[mine], rows[n]))
        start += a.numel()
    for p in model.parameters():                                           # freeze all but the values
        p.requires_grad = False
    for _, m in masked_layers(model):
        m.mask_values.requires_grad = True
    if cfg.include_head:
        for n, p in model.named_parameters():
            if _HEAD.search(n) and p.is_floating_point():
                p.requires_grad = True
    return record(model, cfg, names)


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedLinear]]:
    return list(adapter_layers(model, MaskedLinear))


def masking_state_dict(model: nn.Module) -> dict:
    """The sparse delta, by full name: every layer's mask_indices (k,) and mask_values (k,)."""
    return {f"{n}.{local}": getattr(m, local).detach() for n, m in masked_layers(model) for local in m.adapter_names()}


def check_masks(model: nn.Module) -> None:
    """Check every masked layer's indices now (load_adapter copies them in; forward re-checks lazily)."""
    for n, m in masked_layers(model):
        try:
            m.check_indices()
        except ValueError as e:
            raise ValueError(f"{n}: {e}") from None


def masked_count_of(model: nn.Module) -> int:
    """k: the trainable masked entries over all layers."""
    return sum(m.k for _, m in masked_layers(model))


def merge_masking(model: nn.Module) -> None:
    merge_layers(model, MaskedLinear)


def unmerge_masking(model: nn.Module) -> None:
    merge_layers(model, MaskedLinear, merge=False)
