"""The fused quantized-LoRA matmul (lesson 13): one op, a pure-PyTorch reference that defines it, a C++
kernel (cuda_ext/) that computes it without ever building the float weight, and the dispatcher.

**The op.** For a frozen weight stored quantized (NF4 with block absmax, optionally double-quantized,
or int8 with one absmax scale per row) and an optional LoRA pair:

    y = x · dequant(W_q)ᵀ + s · (x Aᵀ) Bᵀ + b          x (..., in), W_q (out, in), A (r, in), B (out, r)

    NF4:   dequant(W_q)_j = NF4[q_j] · c_{j // bs}        (flat index j = o·in + k; c from the state)
    int8:  dequant(W_q)_{o,k} = q_{o,k} · scale_o

**Why a kernel.** At batch 1 (decoding) a matmul reads every weight once and does 2 flops with it:
the time is the time to move the weight from memory. float32 moves 4 bytes per weight, int8 1,
NF4 0.5 (+ 1/64 for an 8-bit absmax per block of 64). The reference `dequantize-then-matmul` first
writes the float32 weight (4 bytes per weight, several passes) and then reads it back: it moves
*more* bytes than the float matmul. The kernel decodes each 4-bit index into a register and
multiplies it at once (cuda_ext/quant_lora.cpp: 32 table lookups per `vpshufb` on byte planes of the
16-value table, then FMA), so its memory traffic is the packed bytes. For big batches it decodes 256 rows at a time into a buffer
and hands them to the BLAS GEMM, so the dequantization is paid once per tile instead of per input.

**dtypes.** x may be float32, bfloat16 or float16 (the extension; the reference takes any float
dtype); y comes back in x's dtype. The kernel accumulates in float32 and rounds y to x's dtype once,
at the end; the reference computes in x's dtype. A, B and the bias may be any float dtype.

**Semantics and tolerance.** `quant_lora_matmul_reference` is the definition. The kernel sums in a
different order (per block, c_b · Σ x_k NF4[q_k]; in 8 lanes); for float32 both are within the float32
rounding bound of two dot products of length n = in + r + 2 of the exact (float64) value y:

    |ŷ - y| <= e32 = 2 n 2⁻²⁴ · M,    M = |x| |Ŵ|ᵀ + s |x Aᵀ| |B|ᵀ + |b|      elementwise

plus, for a bfloat16 / float16 y, the final rounding (u = 2⁻⁸ / 2⁻¹¹) and, on the GPU's large-batch
path, Ŵ rounded to x's dtype (see `error_bound`, which computes it; tests/test_ops.py checks every
dtype against float64 on random shapes, including sizes that are not multiples of the block or of
the 8-float vector width, which take the scalar path).

**Dispatch.** `quant_lora_matmul` uses the extension when it loaded (JIT-built on first use by
cuda_ext/loader.py, cached outside the repository), x is float32, bfloat16 or float16, and either on
the CPU, or (NF4 only) on a GPU when the extension was built with CUDA; MINIFT_NO_EXT=1 turns it off,
and so does a `with reference_path():` block.
Otherwise the reference. On a GPU, batches of up to 16 rows take a fused GEMV; larger ones dequantize
Ŵ once into x's dtype and multiply with cuBLAS. The stored tensors go to the kernel as they are (the
double-quantized absmax is decoded inside it), so a call does no per-weight work in Python. One line
on stderr says which path is in use. Autograd: gradients flow to x, A, B (and the bias if it
requires one); backward re-dequantizes W (dL/dx = g Ŵ + s (g B) A), so no float copy of W is kept
between forward and backward, and the base stays frozen.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.utils.weak import WeakIdKeyDictionary

from .int8 import Int8Tensor
from .nf4 import CODES, NF4State, dequantize_nf4, quantize_nf4

EXT_DIR = Path(__file__).resolve().parents[2] / "cuda_ext"
QuantState = Union[NF4State, Int8Tensor]

_ext = None                     # the loaded module, once tried
_ext_tried = False
_ext_error: Optional[str] = None  # why the build failed, if it did
_announced = False
_forced: list = []               # the open reference_path() blocks' reasons, innermost last


# ---- the extension: load once, lazily ------------------------------------------------------------

def _switched_off() -> Optional[str]:
    """Why the extension is off right now without having failed, or None: MINIFT_NO_EXT=1 (read on every
    call) or an open reference_path() block."""
    if os.environ.get("MINIFT_NO_EXT") == "1":
        return "MINIFT_NO_EXT=1"
    return _forced[-1] if _forced else None


# From which batch the CUDA wrapper's automatic choice takes the tensor-core kernel, for this process:
# MMA_AUTO_MIN_N (cuda_ext/quant_lora_cuda.h) unless this says otherwise. For trying a value the bench
# suggested (`minift bench kernels --device cuda`, its last line) without rebuilding the extension.
MMA_ENV = "MINIFT_MMA_AUTO_MIN_N"


def mma_batch(text: str) -> int:
    """MINIFT_MMA_AUTO_MIN_N's value as a batch size >= 1, or a ValueError that names the variable."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n < 2 ** 63:
        raise ValueError(f"{MMA_ENV}={text!r} must be a batch size, an integer >= 1 (and < 2**63)")
    return n


def extension():
    """The cuda_ext module, or None (MINIFT_NO_EXT=1, inside reference_path(), no compiler, a failed
    build). Built once."""
    global _ext, _ext_tried, _ext_error
    if _switched_off():
        return None
    if not _ext_tried:
        mma = os.environ.get(MMA_ENV)
        mma = mma_batch(mma) if mma else None                   # a bad value: an error now, and at every call
        _ext_tried = True
        try:
            spec = importlib.util.spec_from_file_location("minift_cuda_ext_loader", EXT_DIR / "loader.py")
            loader = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loader)
            _ext = loader.load()
        except Exception as e:  # noqa: BLE001 (any build failure means: use the reference)
            _ext, _ext_error = None, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        if _ext is not None and _ext.cuda and mma is not None:
            _ext.set_mma_auto_min_n(mma)
    return _ext


@contextlib.contextmanager
def reference_path(reason: str = "reference_path()"):
    """Inside this block every quant_lora_matmul takes the PyTorch reference, whatever was built:
    for code that must see the arithmetic as PyTorch ops (torch.utils.flop_counter counts none of the
    kernel's work) or that times the reference against the kernel. use_extension=True raises inside it,
    naming `reason`. Blocks nest; the switch is one for the whole process, not per thread."""
    _forced.append(str(reason))
    try:
        yield
    finally:
        _forced.pop()


def backend() -> str:
    """Which path quant_lora_matmul takes for CPU inputs: "extension (avx2)", "extension (scalar)" (with
    ", cuda built" when the CUDA kernels are in it too) or "reference (<why>)"."""
    ext = extension()
    if ext is None:
        return f"reference ({_switched_off() or _ext_error})"
    return f"extension ({'avx2' if ext.avx2 else 'scalar'}{', cuda built' if ext.cuda else ''})"


def _announce() -> None:
    global _announced
    if not _announced:
        _announced = True
        print(f"minift.quant.ops: quant_lora_matmul uses the {backend()} path", file=sys.stderr, flush=True)


# ---- validation at the public boundary -----------------------------------------------------------

def _shape(wq) -> tuple:
    if isinstance(wq, NF4State):
        if len(wq.shape) != 2:
            raise ValueError(f"wq must hold a 2-D (out, in) weight, got shape {tuple(wq.shape)}")
        return tuple(wq.shape)
    if isinstance(wq, Int8Tensor):
        if wq.granularity != "row" or wq.zero_point is not None or wq.q.dim() != 2:
            raise ValueError(f"wq: an int8 weight must be absmax per row (quantize_absmax(W, 'row')), got "
                             f"granularity={wq.granularity!r}, zero point {'set' if wq.zero_point is not None else 'none'}, "
                             f"shape {tuple(wq.q.shape)}")
        return tuple(wq.q.shape)
    raise TypeError(f"wq must be an NF4State (quantize_nf4) or an Int8Tensor (quantize_absmax(W, 'row')), "
                    f"got {type(wq).__name__}")


def _device(wq) -> torch.device:
    return wq.packed.device if isinstance(wq, NF4State) else wq.q.device


def _validate(x, wq, A, B, bias) -> tuple:
    out_f, in_f = _shape(wq)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != in_f:
        raise ValueError(f"x must have shape (..., in={in_f}) for a weight of shape ({out_f}, {in_f}), got {tuple(x.shape)}")
    dev = _device(wq)
    if x.device != dev:
        raise ValueError(f"x is on {x.device} but the quantized weight is on {dev}; move one of them")
    if (A is None) != (B is None):
        raise ValueError("A and B come together: pass both (LoRA) or neither")
    if A is not None:
        for name, t in (("A", A), ("B", B)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.device != dev:
                raise TypeError(f"{name} must be a floating-point tensor on {dev}, got "
                                f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}"
                                f"{' on ' + str(t.device) if isinstance(t, torch.Tensor) else ''}")
        if A.dim() != 2 or A.shape[1] != in_f or B.dim() != 2 or B.shape != (out_f, A.shape[0]):
            raise ValueError(f"LoRA factors must be A (r, in={in_f}) and B (out={out_f}, r), got A "
                             f"{tuple(A.shape)} and B {tuple(B.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (out_f,)
                             or not bias.is_floating_point() or bias.device != dev):
        raise ValueError(f"bias must be a floating-point tensor of shape (out={out_f},) on {dev}, got "
                         f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    return out_f, in_f


# ---- the reference: the definition ---------------------------------------------------------------

def dequantize(wq: QuantState) -> torch.Tensor:
    """Ŵ (out, in) float32: NF4[q] · c_b (double quantization undone first), or q · scale_o."""
    return dequantize_nf4(wq) if isinstance(wq, NF4State) else wq.dequantize()


def quant_lora_matmul_reference(x, wq, A=None, B=None, scaling=1.0, bias=None) -> torch.Tensor:
    """Dequantize, then matmul: y = x Ŵᵀ + s (x Aᵀ) Bᵀ + b, in x's dtype (for bfloat16 / float16 that is
    the usual dequantize-then-matmul: Ŵ rounded to x's dtype, each step rounded). Differentiable."""
    y = F.linear(x, dequantize(wq).to(x.dtype))                                # x Ŵᵀ  (..., out)
    if A is not None:
        y = y + scaling * ((x @ A.to(x.dtype).T) @ B.to(x.dtype).T)           # + s (x Aᵀ) Bᵀ
    return y if bias is None else y + bias.to(x.dtype)                         # + b


_ROUNDOFF = {torch.bfloat16: (2.0 ** -8, 2.0 ** -134), torch.float16: (2.0 ** -11, 2.0 ** -25)}   # (u, η)


def error_bound(x, wq, A=None, B=None, scaling=1.0, bias=None, weight_rounded: bool = True) -> torch.Tensor:
    """The tolerance the extension is held to, elementwise, against the exact (float64) value y:

        e32 = 2 n 2⁻²⁴ M,   M = |x||Ŵ|ᵀ + s|xAᵀ||B|ᵀ + |b|,   n = in + r + 2        (float32 accumulation)

    A bfloat16 / float16 result is the float32 one, ŷ, rounded once to x's dtype: with unit roundoff u
    (2⁻⁸ / 2⁻¹¹: 8 / 11 significant bits) and η, half the smallest subnormal (2⁻¹³⁴ / 2⁻²⁵),
        |fl(ŷ) - y| <= |ŷ - y| + u |ŷ| + η <= e32 + u (M + e32) + η,      as |y| <= M.
    The GPU's large-batch path also rounds Ŵ to x's dtype before cuBLAS multiplies it (ŵ (1 + δ),
    |δ| <= u, or |Δ| <= η where ŵ is subnormal; the products of two such numbers are exact in float32),
    which adds u |x||Ŵ|ᵀ + η Σ_k |x_k|: included
    unless weight_rounded=False (the CPU kernel and the GEMV never round Ŵ). That covers the reference's
    x Ŵᵀ too (F.linear of the rounded Ŵ, float32 accumulation), but not its LoRA and bias steps, each
    rounded to x's dtype. float32 and float64 x: e32 alone. Returned in float64, shape (..., out)."""
    x64 = x.detach().to(torch.float64)
    mag_w = x64.abs() @ dequantize(wq).to(device=x.device, dtype=torch.float64).abs().T   # Σ |x_k| |ŵ_k|
    mag, r = mag_w, 0
    if A is not None:
        r = A.shape[0]
        mag = mag + abs(scaling) * (x64 @ A.detach().double().T).abs() @ B.detach().double().abs().T
    if bias is not None:
        mag = mag + bias.detach().double().abs()
    e32 = 2 * (x.shape[-1] + r + 2) * 2.0 ** -24 * mag
    if x.dtype not in _ROUNDOFF:
        return e32
    u, eta = _ROUNDOFF[x.dtype]
    rounded_w = u * mag_w + eta * x64.abs().sum(-1, keepdim=True) if weight_rounded else 0.0
    return e32 + u * (mag + e32) + eta + rounded_w


# ---- the extension call (no autograd) ------------------------------------------------------------

_EXT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _ext_eligible(ext, x, wq) -> bool:
    if ext is None or x.dtype not in _EXT_DTYPES or (isinstance(wq, NF4State) and wq.bits != 4):
        return False                                   # the kernels read 4-bit indices; NF3/NF2 run in PyTorch
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and bool(ext.cuda) and isinstance(wq, NF4State)   # NF4 only on the GPU


_CODE_CACHE: dict = {}


def _code(name: str, device: torch.device) -> torch.Tensor:
    """The 16-value code table, built once per (code, device): nf_code() runs ndtri, ~0.1 ms."""
    key = (name, str(device))
    if key not in _CODE_CACHE:
        _CODE_CACHE[key] = CODES[name]().to(device).contiguous()
    return _CODE_CACHE[key]


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.detach().to(torch.float32).contiguous()


_EMPTY: dict = {}


def _empty(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An empty tensor ("none" for the kernel), one per (device, dtype): the kernel never writes it."""
    key = (str(device), dtype)
    if key not in _EMPTY:
        _EMPTY[key] = torch.empty(0, device=device, dtype=dtype)
    return _EMPTY[key]


_MEAN: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _mean(t: torch.Tensor) -> float:
    """float(absmax_mean), read once per tensor (again after an in-place change): on a GPU float() waits
    for the device, which would put a synchronisation into every call."""
    hit = _MEAN.get(t)
    if hit is None or hit[0] != t._version:
        hit = _MEAN[t] = (t._version, float(t))
    return hit[1]


CUDA_KERNELS = {"auto": 0, "cores": 1, "tensor": 2}   # nf4_lora_matmul_cuda's `kernel` (cuda_ext/quant_lora.cpp)


def _ext_forward(ext, x2, wq, A, B, scaling, bias, kernel: str = "auto") -> torch.Tensor:
    """The extension on a contiguous (N, in) input of float32, bfloat16 or float16: (N, out) in x's dtype.
    A, B, bias go as they are (the C++ converts them to float32 once); None is an empty tensor. Called
    with grad off or nothing requiring it (QuantLoRAMatmul or inference), so nothing needs detaching.
    kernel (NF4 on CUDA only): "auto"; "cores", the GEMV (N <= 16) or dequantize + cuBLAS; "tensor", the
    tensor-core kernel (bf16 / fp16 x, sm_80+; an error where it cannot run)."""
    empty = _empty(x2.device)
    A_, B_, b_ = (empty if t is None else t for t in (A, B, bias))
    if isinstance(wq, Int8Tensor):
        return ext.int8_lora_matmul(x2, wq.q.contiguous(), _f32(wq.scale), A_, B_, float(scaling), b_, True)
    out_f, in_f = wq.shape
    if wq.double_quant:                       # raw: the kernel decodes c_b = q8_b · scale_{b / dq} + mean
        am, q8, sc, mean = empty, wq.absmax_q.contiguous(), _f32(wq.absmax_scales), _mean(wq.absmax_mean)
    else:
        am, q8, sc, mean = _f32(wq.absmax), _empty(x2.device, torch.int8), empty, 0.0
    args = (x2, wq.packed.contiguous(), out_f, in_f, am, q8, sc, mean, wq.dq_block_size,
            _code(wq.code_name, x2.device), wq.block_size, A_, B_, float(scaling), b_)
    if x2.device.type == "cuda":
        return ext.nf4_lora_matmul_cuda(*args, CUDA_KERNELS[kernel])          # GEMV (N <= 16) or cuBLAS, or mma
    return ext.nf4_lora_matmul(*args, True)


class QuantLoRAMatmul(torch.autograd.Function):
    """Forward: the extension (ext given) or the reference (ext None); no float weight is kept.
    Backward: re-dequantize Ŵ and take
        dL/dx = g Ŵ + s (g B) A,   dL/dA = s (g B)ᵀ x,   dL/dB = s gᵀ (x Aᵀ),   dL/db = Σ g."""

    @staticmethod
    def forward(ctx, x2, A, B, bias, wq, scaling, ext):
        ctx.wq, ctx.scaling = wq, scaling
        ctx.save_for_backward(x2 if A is not None else None, A, B)            # nothing of W is saved
        ctx.has_bias = bias is not None
        if ext is None:                                                        # Ŵ built here, then freed
            return quant_lora_matmul_reference(x2, wq, A, B, scaling, bias)
        return _ext_forward(ext, x2, wq, A, B, scaling, bias)                  # (N, out)

    @staticmethod
    def backward(ctx, g):
        x2, A, B = ctx.saved_tensors
        s = ctx.scaling
        gx = gA = gB = gb = None
        if ctx.needs_input_grad[0]:
            gx = g @ dequantize(ctx.wq).to(g.dtype)                            # g Ŵ  (N, in)
        if A is not None:
            gz = s * (g @ B.to(g.dtype))                                       # s g B  (N, r)
            if ctx.needs_input_grad[0]:
                gx = gx + gz @ A.to(g.dtype)
            if ctx.needs_input_grad[1]:
                gA = (gz.T @ x2).to(A.dtype)                                   # (r, in)
            if ctx.needs_input_grad[2]:
                gB = (s * (g.T @ (x2 @ A.to(g.dtype).T))).to(B.dtype)          # (out, r)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = g.sum(0)
        return gx, gA, gB, gb, None, None, None


# ---- the public op ---------------------------------------------------------------------------------

def quant_lora_matmul(x: torch.Tensor, wq: QuantState, A: Optional[torch.Tensor] = None,
                      B: Optional[torch.Tensor] = None, scaling: float = 1.0,
                      bias: Optional[torch.Tensor] = None, use_extension: Optional[bool] = None) -> torch.Tensor:
    """y = x · dequant(wq)ᵀ + scaling · (x Aᵀ) Bᵀ + bias, shape (..., out).

    wq: an NF4State (quantize_nf4, any code, double-quantized or not; the extension reads 4-bit codes,
    NF3/NF2 take the reference) or a per-row absmax Int8Tensor
    (quantize_absmax(W, "row")). use_extension: None = the extension when it applies (see the module
    doc), False = the reference, True = the extension or a RuntimeError saying why not."""
    out_f, in_f = _validate(x, wq, A, B, bias)
    if not (isinstance(scaling, (int, float)) and not isinstance(scaling, bool) and math.isfinite(scaling)):
        raise TypeError(f"scaling must be a finite number, got {scaling!r}")
    ext = None if use_extension is False else extension()
    if use_extension is not False:
        _announce()
    if not _ext_eligible(ext, x, wq):
        if use_extension:
            low = f", a {wq.bits}-bit code" if isinstance(wq, NF4State) and wq.bits != 4 else ""
            raise RuntimeError(f"quant_lora_matmul(use_extension=True): the extension does not apply here "
                               f"(x {x.dtype} on {x.device}{low}; backend: {backend()})")
        ext = None
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_f)                                                   # (N, in)
    if ext is not None:
        x2 = x2.contiguous()                                                   # the kernel reads rows
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, A, B, bias))
    if ext is not None and not needs_grad:                                     # inference: no autograd node
        y = _ext_forward(ext, x2, wq, A, B, scaling, bias)
    else:
        y = QuantLoRAMatmul.apply(x2, A, B, bias, wq, float(scaling), ext)     # (N, out)
    return y.reshape(*lead, out_f)


__all__ = ["quant_lora_matmul", "quant_lora_matmul_reference", "dequantize", "error_bound", "extension",
           "backend", "reference_path", "QuantLoRAMatmul"]


# ---- the NF4 layer: a frozen linear layer stored in 4 bits, multiplied through the kernel above ---

class NF4Linear(nn.Module):
    """A frozen linear layer stored in 4 bits: y = x dequant(W_q)^T + b. The float weight is rebuilt
    inside forward and dropped after it, so no full-precision copy lives between calls."""

    def __init__(self, linear: nn.Linear, block_size: int = 64, double_quant: bool = True, code: str = "nf4",
                 compute_dtype: torch.dtype = torch.float32, weight: Optional[torch.Tensor] = None):
        """weight: quantize this (out, in) tensor instead of linear.weight (LoftQ quantizes W - ΔW)."""
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear wraps an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        w = linear.weight if weight is None else weight
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"NF4Linear: weight must be {(self.out_features, self.in_features)}, got {tuple(w.shape)}")
        st = quantize_nf4(w, block_size, double_quant, code)
        self.shape, self.block_size, self.code_name, self.dq_block_size = st.shape, block_size, code, st.dq_block_size
        for name, t in st.tensors().items():                            # buffers: saved, moved, never trained
            self.register_buffer(name, t)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def state(self) -> NF4State:
        kw = {n: getattr(self, n) for n in ("packed", "absmax", "absmax_q", "absmax_scales", "absmax_mean")
              if getattr(self, n, None) is not None}
        return NF4State(shape=self.shape, block_size=self.block_size, code_name=self.code_name,
                        dq_block_size=self.dq_block_size, **kw)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_nf4(self.state(), self.compute_dtype)                  # (out, in)

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        # lesson 13: the fused C++ kernel when built, else dequantize-then-matmul; W is never kept
        return quant_lora_matmul(x.to(self.compute_dtype), self.state(), bias=bias)   # (..., out)

    def extra_repr(self) -> str:
        dq = getattr(self, "absmax_q", None) is not None
        return (f"in_features={self.in_features}, out_features={self.out_features}, code={self.code_name}, "
                f"block_size={self.block_size}, double_quant={dq}")
