"""Reference `run_*` adapters of lesson 09 (random masking): plain tensors and hyperparameters in,
tensors out, computed by minift's own module (`minift/peft/masking.py`).

`adapters.py` re-exports everything in `__all__`, so `minift.conformance.adapters` stays the one
reference implementation that `--impl` replaces.

    run_random_mask(shape, density, seed)              k = ⌊density · n + ½⌋ distinct flat positions in [0, n)
    run_masked_update(W0, idx, values)                 W0 + scatter(idx, values): W0 off the mask, bit for bit
    run_masked_linear(x, W0, b, idx, values)           x (W0 + scatter(idx, values))^T + b
    run_masked_adamw_step(x, W0, b, idx, values, grad_out, lr, weight_decay)
                                                       the weight after one AdamW step on the values only
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from minift.peft.masking import MaskedLinear, masked_count, random_mask

__all__: list[str] = ["run_random_mask", "run_masked_update", "run_masked_linear", "run_masked_adamw_step"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _layer(fn: str, W0, b, idx, values) -> MaskedLinear:
    """A MaskedLinear around a copy of W0 (out, in) and b, with the given positions and values."""
    W0, idx, values = _tensor("W0", W0), _tensor("idx", idx), _tensor("values", values)
    if W0.dim() != 2:
        raise ValueError(f"{fn}: W0 must be (out, in) (nn.Linear layout), got {tuple(W0.shape)}")
    if idx.dim() != 1 or tuple(values.shape) != tuple(idx.shape):
        raise ValueError(f"{fn}: idx and values must both be (k,), got {tuple(idx.shape)} and {tuple(values.shape)}")
    if b is not None and tuple(b.shape) != (W0.shape[0],):
        raise ValueError(f"{fn}: b must be (out,)=({W0.shape[0]},) or None, got {tuple(b.shape)}")
    out_f, in_f = W0.shape
    lin = nn.Linear(in_f, out_f, bias=b is not None, dtype=W0.dtype)
    with torch.no_grad():
        lin.weight.copy_(W0)
        if b is not None:
            lin.bias.copy_(b)
    order = idx.long().argsort()                                           # MaskedLinear keeps them sorted
    layer = MaskedLinear(lin, idx.long()[order])
    with torch.no_grad():
        layer.mask_values.copy_(values[order])
    return layer.eval()


def run_random_mask(shape, density: float, seed: int) -> torch.Tensor:
    """The mask `apply_masking` draws, for one matrix of `shape`: k = ⌊density · n + ½⌋ distinct flat
    positions (into W.view(-1)) out of n = prod(shape), uniformly at random from a generator seeded by
    `seed`. Returns (k,) int64; the same arguments always give the same mask. 0 < density <= 1."""
    n = math.prod(int(s) for s in shape)
    if isinstance(density, bool) or not 0 < float(density) <= 1:
        raise ValueError(f"run_random_mask: density={density!r} must be in (0, 1]")
    return random_mask(n, masked_count(n, float(density)), int(seed))


def run_masked_update(W0: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The merged weight of `MaskedLinear.merge`: W = W0 + scatter(idx, values), i.e. W.view(-1)[idx[j]] =
    W0.view(-1)[idx[j]] + values[j], every other entry W0's, bit for bit. W0: (out, in); idx: (k,) distinct
    flat positions; values: (k,). Returns (out, in), W0's dtype; W0 is not modified."""
    layer = _layer("run_masked_update", W0, None, idx, values)
    layer.merge()
    return layer.weight.detach().clone()


def run_masked_linear(x: torch.Tensor, W0: torch.Tensor, b, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`MaskedLinear.forward` (unmerged): h = x (W0 + scatter(idx, values))^T + b.
    x: (N, in); W0: (out, in); b: (out,) or None; idx, values: (k,). Returns (N, out)."""
    x = _tensor("x", x)
    layer = _layer("run_masked_linear", W0, b, idx, values)
    if x.shape[-1:] != (layer.in_features,):
        raise ValueError(f"run_masked_linear: x must be (..., in={layer.in_features}), got {tuple(x.shape)}")
    with torch.no_grad():
        return layer(x)


def run_masked_adamw_step(x: torch.Tensor, W0: torch.Tensor, b, idx: torch.Tensor, values: torch.Tensor,
                          grad_out: torch.Tensor, lr: float, weight_decay: float) -> torch.Tensor:
    """One training step of a MaskedLinear: loss L = Σ grad_out ⊙ h with h = run_masked_linear(x, ...),
    backward (only `values` has requires_grad), then one torch.optim.AdamW step (betas (0.9, 0.999),
    eps 1e-8, fresh state) on the values. Returns the new effective weight W0 + scatter(idx, values'),
    (out, in): off the mask it is W0, bit for bit."""
    x, grad_out = _tensor("x", x), _tensor("grad_out", grad_out)
    layer = _layer("run_masked_adamw_step", W0, b, idx, values)
    y = layer(x)
    if tuple(grad_out.shape) != tuple(y.shape):
        raise ValueError(f"run_masked_adamw_step: grad_out must be {tuple(y.shape)} like the output, "
                         f"got {tuple(grad_out.shape)}")
    (y * grad_out).sum().backward()
    opt = torch.optim.AdamW([layer.mask_values], lr=float(lr), betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=float(weight_decay))
    opt.step()
    return layer.effective_weight().detach().clone()
