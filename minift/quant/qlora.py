"""QLoRA (Dettmers et al., 2023) and LoftQ (Li et al., 2023): LoRA on a frozen, quantized base.

**QLoRA.** Every linear layer of the base is stored in 4 bits (NF4, double-quantized) or 8 bits
(LLM.int8()); the adapted ones also carry LoRA's A and B in float:

    h = dequant(W_q) x + b + s · B A dropout(x)          W_q: NF4 (or int8), A, B: float32

The base weight is rebuilt inside each forward and freed after it (no full-precision copy lives
between calls); gradients flow through it to the input, so adapters in lower layers train. Only A
and B (and a task head) get gradients. B = 0 at the start, so the model starts as the *dequantized*
base, not the float one: quantization error is there from step 0.

Merging is lossy. `merge_to_float` gives a float layer with W = dequant(W_q) + s B A: exactly the
adapted function. `merge_to_quantized` re-quantizes that sum, and its output differs: W + s B A is
not on the NF4 grid, and the rounding error of one step (up to half the gap between codes times
the block's absmax) is usually larger than the update s B A itself.

**LoftQ** chooses Q and (A, B) together so that Q + s B A ≈ W from the start, with the *same*
quantizer that training uses:

    ΔW_0 = 0
    for t = 1..T:   Q_t = dequant(quant(W - ΔW_{t-1}))          quantize what LoRA does not explain
                    U Σ Vᵀ = SVD(W - Q_t),  ΔW_t = U_r Σ_r V_rᵀ  the best rank-r fix (Eckart-Young)
    s B = U_r Σ_r^½,  A = Σ_r^½ V_rᵀ (split evenly, divided by √s each)

With sliced q/v LoRA each slice gets its own SVD of its rows. t = 1 is "quantize, then fit the
residual", so ‖W - (Q + sBA)‖ ≤ ‖W - quant(W)‖; later iterates are usually better still but are not
guaranteed to be, so the best iterate is kept (the errors of all are returned).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..peft.common import (_HEAD, TARGETS_HINT, MethodConfig, freeze_all_but_adapters, qkv_slices, record, set_module,
                           names_by_tensor, tied_names)
from ..peft.lora import LoRAConfig, LoRALinear, find_targets
from ..validate import check_bool, check_choice, check_float, check_int, check_multiple, check_qkv, check_regexes
from .int8 import Int8Linear, quantize_absmax
from .nf4 import dequantize_nf4, quantize_nf4
from .ops import NF4Linear

QUANTS = ("nf4", "nf3", "nf2", "int8")     # NF3/NF2: LoftQ's low-bit experiments (lesson 12)


@dataclass
class QLoRAConfig(MethodConfig):
    """LoRA's fields (see LoRAConfig), then how the base is quantized. QLoRA's paper adapts every
    linear layer; the default here follows LoRAConfig (W_q, W_v) so the two compare directly."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Sequence[str] = ("attn.c_attn",)
    qkv: Optional[Sequence[str]] = ("q", "v")
    use_rslora: bool = False
    include_head: bool = True
    quant: str = "nf4"                    # "nf4" | "int8" | "nf3", "nf2" (3 and 2 bits, PyTorch only)
    block_size: int = 64                  # NF4 block
    double_quant: bool = True             # NF4: 8-bit absmax in blocks of 256
    threshold: float = 6.0                # int8: LLM.int8() outlier threshold
    quantize_rest: bool = True            # quantize the linear layers LoRA does not adapt, too
    loftq_iters: int = 0                  # 0: plain QLoRA init (B = 0); T >= 1: LoftQ
    method = "qlora"                      # its name in an adapter file (int8, NF4 and LoftQ are options)
    family = "reparameterization"           # minift/taxonomy.py: W = W0 + a compact update

    def __post_init__(self):
        check_int(self, "r", self.r, lo=1, hint=" (the rank; <= min(in, out) of every adapted matrix)")
        check_float(self, "alpha", self.alpha, lo=0, lo_open=True, hint=" (s = alpha / r)")
        check_float(self, "dropout", self.dropout, 0, 1, hi_open=True)
        for name in ("use_rslora", "include_head", "double_quant", "quantize_rest"):
            check_bool(self, name, getattr(self, name))
        self.targets = check_regexes(self, "targets", self.targets, TARGETS_HINT)
        self.qkv = check_qkv(self, "qkv", self.qkv)
        self.lora = LoRAConfig(self.r, self.alpha, self.dropout, self.targets, self.qkv, self.use_rslora,
                               False, self.include_head)
        check_choice(self, "quant", self.quant, QUANTS)
        check_int(self, "block_size", self.block_size, lo=2, hint=", even (two 4-bit codes per byte)")
        check_multiple(self, "block_size", self.block_size, 2, hint=" (two 4-bit codes per byte)")
        check_float(self, "threshold", self.threshold, lo=0, finite=False, hint=" (math.inf: no outliers)")
        check_int(self, "loftq_iters", self.loftq_iters, lo=0, hint=" (0: plain QLoRA init)")

    @property
    def scaling(self) -> float:
        return self.lora.scaling

    def apply(self, model: nn.Module) -> list[str]:
        return apply_qlora(model, self)

    def quantize_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """W -> dequant(quant(W)): the quantizer training sees (what LoftQ must use)."""
        if self.quant != "int8":
            return lambda W: dequantize_nf4(quantize_nf4(W, self.block_size, self.double_quant, self.quant))
        return lambda W: quantize_absmax(W, "row").dequantize()

    def quantized(self, linear: nn.Linear, weight: Optional[torch.Tensor] = None) -> nn.Module:
        if self.quant != "int8":
            return NF4Linear(linear, self.block_size, self.double_quant, self.quant, weight=weight,   # stored in
                             compute_dtype=linear.weight.dtype)              # 4 (3, 2) bits, computed in the model's dtype
        return Int8Linear(linear, self.threshold, weight=weight)


# ---- LoftQ ------------------------------------------------------------------------------------

def loftq(W: torch.Tensor, r: int, scaling: float, quantize: Callable, iters: int,
          slices: Optional[Sequence[tuple]] = None) -> dict:
    """LoftQ's alternating initialisation. Returns {"target": W - ΔW (what to quantize), "A": (S r, in),
    "B": (S d, r), "errors": [‖W - (Q_t + ΔW_t)‖_F for t = 0 (plain quantization) .. T], "best": t}."""
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"loftq: iters={iters!r} must be an integer >= 1")
    W = W.detach().to(torch.promote_types(W.dtype, torch.float32))         # (out, in), >= float32, W's device
    if not bool(torch.isfinite(W).all()):
        raise ValueError("loftq: W contains NaN or Inf in float32 (|W| > 3.4e38 overflows the cast)")
    out_f, in_f = W.shape
    slices = [(0, out_f)] if slices is None else [tuple(s) for s in slices]
    d = slices[0][1] - slices[0][0]
    if not 1 <= r <= min(d, in_f):
        raise ValueError(f"loftq: rank r={r} must be between 1 and {min(d, in_f)}")
    zeros = (W.new_zeros(len(slices) * r, in_f), W.new_zeros(len(slices) * d, r))
    errors = [float(torch.linalg.matrix_norm(W - quantize(W)))]             # t = 0: plain quantization
    best = {"target": W, "A": zeros[0], "B": zeros[1], "best": 0}
    dW = torch.zeros_like(W)                                                # ΔW_0 = 0
    for t in range(1, iters + 1):
        target = W - dW                                                     # W - ΔW_{t-1}
        Q = quantize(target)                                                # Q_t
        R = W - Q                                                           # what LoRA must explain
        As, Bs, dW = [], [], torch.zeros_like(W)
        for a, b in slices:
            U, S, Vh = torch.linalg.svd(R[a:b], full_matrices=False)       # R_i = U Σ Vᵀ
            root = S[:r].sqrt()                                             # Σ_r^½
            Bs.append(U[:, :r] * root / math.sqrt(scaling))                 # (d, r)
            As.append(root[:, None] * Vh[:r] / math.sqrt(scaling))          # (r, in)
            dW[a:b] = scaling * Bs[-1] @ As[-1]                             # ΔW_t = U_r Σ_r V_rᵀ
        errors.append(float(torch.linalg.matrix_norm(W - (Q + dW))))        # ‖W - (Q_t + ΔW_t)‖_F
        if errors[-1] < errors[best["best"]]:
            best = {"target": target, "A": torch.cat(As), "B": torch.cat(Bs), "best": t}
    return {**best, "errors": errors}


# ---- the layer -----------------------------------------------------------------------------------

class QLoRALinear(LoRALinear):
    """LoRALinear whose frozen W0 is stored quantized (NF4Linear or Int8Linear in `self.base_q`,
    bias included): base_forward dequantizes and multiplies; the LoRA branch is LoRALinear's."""

    def __init__(self, base: nn.Linear, cfg: QLoRAConfig, slices: Optional[Sequence[tuple]] = None):
        super().__init__(base, cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora, False, slices)
        self.quant, self.loftq_errors = cfg.quant, None
        target = None
        if cfg.loftq_iters:
            init = loftq(base.weight, cfg.r, self.scaling, cfg.quantize_fn(), cfg.loftq_iters, self.slices)
            target, self.loftq_errors = init["target"], init["errors"]
            with torch.no_grad():
                self.lora_A.copy_(init["A"])
                self.lora_B.copy_(init["B"])
        self.base_q = cfg.quantized(base, weight=target)                  # W_q (+ b), frozen
        del self.weight                                                    # no float copy of W0 is kept
        self.bias = None                                                   # (it lives in base_q)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_q(x).to(x.dtype)                                  # dequant(W_q) x + b

    def dequantized_weight(self) -> torch.Tensor:
        return self.base_q.dequantized_weight()                            # (out, in) float32

    def merge(self) -> None:
        raise ValueError("QLoRALinear.merge: merging into a quantized weight is lossy (W + sBA is not on the "
                         "quantization grid); use merge_to_float(layer) for the exact float layer, or "
                         "merge_to_quantized(layer) to re-quantize it knowingly")

    def original(self) -> nn.Module:
        return self.base_q                                                 # the quantized base layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.quant}"


def merge_to_float(layer: QLoRALinear) -> nn.Linear:
    """A float nn.Linear computing exactly what the adapted layer computes (without dropout):
    W = dequant(W_q) + s B A, summed in float32 (float64 for a float64 adapter), stored in the
    adapter's dtype on its device."""
    bias = getattr(layer.base_q, "bias", None)
    A = layer.lora_A
    lin = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device=A.device, dtype=A.dtype)
    with torch.no_grad():
        dW = layer.delta_weight()                                          # s B A  (out, in), >= float32
        lin.weight.copy_(layer.dequantized_weight().to(dW.dtype) + dW)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin.requires_grad_(False)


def merge_to_quantized(layer: QLoRALinear, cfg: QLoRAConfig) -> nn.Module:
    """Re-quantize W = dequant(W_q) + s B A with the base's quantizer (lossy: see the module doc)."""
    return cfg.quantized(merge_to_float(layer))


# ---- module surgery ----------------------------------------------------------------------------

def _linears_to_quantize(model: nn.Module) -> list[str]:
    """Every nn.Linear of the base: not a task head, not an lm_head tied to the embedding."""
    names_of = names_by_tensor(model)
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and not _HEAD.search(n + ".")
            and not tied_names(model, m, names_of)]


def quantize_model(model: nn.Module, cfg: Optional[QLoRAConfig] = None, names: Optional[Sequence[str]] = None) -> list[str]:
    """Replace nn.Linear layers (default: every one of the base, see _linears_to_quantize) by their
    frozen NF4 / int8 version. Returns the names replaced."""
    cfg = cfg or QLoRAConfig()
    names = _linears_to_quantize(model) if names is None else list(names)
    if not names:
        raise ValueError("quantize_model: no nn.Linear left to quantize (already quantized?)")
    for n in names:
        m = model.get_submodule(n)
        if type(m) is not nn.Linear:
            raise ValueError(f"quantize_model: {n} is a {type(m).__name__}, not an nn.Linear")
        set_module(model, n, cfg.quantized(m))
    for n, p in model.named_parameters():                                   # the base is frozen
        if not _HEAD.search(n):
            p.requires_grad = False
    return names


def apply_qlora(model: nn.Module, cfg: QLoRAConfig) -> list[str]:
    """QLoRA surgery: the LoRA targets become QLoRALinear (quantized W0 + float A, B; LoftQ init if
    cfg.loftq_iters), every other linear layer of the base is quantized too (cfg.quantize_rest),
    everything but A, B (and a task head) is frozen. Returns the adapted module names."""
    quantized = [n for n, m in model.named_modules() if isinstance(m, (NF4Linear, Int8Linear, LoRALinear))]
    if quantized:
        raise ValueError(f"apply_qlora: the model already has quantized or LoRA layers ({quantized[:3]}); "
                         f"start from a float base model")
    names = find_targets(model, cfg.lora, "QLoRA")
    layers = {}
    for n in names:                                                        # validate all, then replace
        m = model.get_submodule(n)
        try:
            layers[n] = QLoRALinear(m, cfg, qkv_slices(n, m, cfg.qkv))
        except ValueError as e:
            raise ValueError(f"{n}: {e}") from None
    rest = [n for n in _linears_to_quantize(model) if n not in layers] if cfg.quantize_rest else []
    for n, layer in layers.items():
        set_module(model, n, layer)
    for n in rest:
        set_module(model, n, cfg.quantized(model.get_submodule(n)))
    freeze_all_but_adapters(model, cfg.include_head)
    return record(model, cfg, names)


def merge_and_unload_qlora(model: nn.Module) -> nn.Module:
    """Every QLoRALinear becomes its exact float merge (merge_to_float); other quantized layers stay."""
    for n, m in [(n, m) for n, m in model.named_modules() if isinstance(m, QLoRALinear)]:
        set_module(model, n, merge_to_float(m))
    if hasattr(model, "peft_methods"):
        model.peft_methods[:] = [r for r in model.peft_methods if r["method"] != "qlora"]
    return model


def quantized_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (NF4Linear, Int8Linear))]


__all__ = ["QLoRAConfig", "QLoRALinear", "apply_qlora", "loftq", "merge_and_unload_qlora", "merge_to_float",
           "merge_to_quantized", "quantize_model", "quantized_layers"]
