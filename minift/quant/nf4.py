"""NF4: 4-bit NormalFloat, blockwise absmax quantization and double quantization
(Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", section 3).

**The code.** Pretrained weights are roughly N(0, σ²) inside a block; divided by the block's
absmax they lie in [-1, 1]. A k-bit code for such numbers should put one value at each of 2^k
equal-probability slices of the normal distribution: q_i = Φ⁻¹(p_i). NF4 does this separately
for the two halves so that 0 is exactly representable (padding and exact zeros stay exact):

    positive half: 8 values  Φ⁻¹(p),  p = linspace(δ', 1/2, 9)[:-1]   (from δ' down, 1/2 dropped)
    negative half: 7 values -Φ⁻¹(p),  p = linspace(δ', 1/2, 8)[:-1]
    plus 0, then divide all 16 by the largest, so the code spans [-1, 1] exactly.

δ' = 1 - (1/(2·15) + 1/(2·16)) / 2 = 0.9677083: the outermost quantile is taken halfway between
the 15- and 16-slice choices, since Φ⁻¹(1) = ∞. The code is asymmetric: 8 positive values, 7
negative. `nf_code(4)` builds it in float64 from the unrounded δ'; `NF4_PUBLISHED` is the table
printed in the paper's appendix and used by bitsandbytes: the same construction with δ rounded to
0.9677083 and p in float32 (lesson 12, part 1), up to 1.8e-7 from nf_code(4). `nf4_code()`, the table
minift quantizes with, is the published one, and its float32 decision boundaries are bitsandbytes'
thresholds, so minift stores the codes bitsandbytes computes by w / c_b (its CUDA kernel multiplies
by 1 / c_b, which can round a weight a float32 step from a boundary the other way); with nf_code(4),
a weight within 1.8e-7 of a boundary would differ.

**Blockwise quantization** (block B = 64 by default), for a weight flattened in row-major order:

    c_b = max_{j in b} |w_j|                         absmax of block b     (n_blocks,)
    q_j = argmin_i | w_j / c_b - code_i |            nearest code index    (numel,) in 0..15
    ŵ_j = code[q_j] · c_b                            dequantized

The nearest value is found by bucketing w / c_b between the midpoints of
neighbouring codes; a value exactly on a midpoint goes to the lower code. An all-zero block has c_b = 0 and dequantizes to 0.

**Double quantization** (section 3, "Double Quantization"): the absmax constants cost 32/B bits per
parameter (0.5 at B = 64). Quantizing them again, to 8 bits in blocks of 256, after subtracting
their mean (they are all positive, so centring halves the range), costs 8/64 + 32/(64·256)
= 0.127 bits. The second level here is linear absmax int8 (bitsandbytes uses its 8-bit
"dynamic" float code for it; the storage, and so the bit count, is the same).

**Packing**: two 4-bit indices per byte, element 2i in the HIGH nibble and 2i+1 in the LOW nibble
(bitsandbytes' order). An odd count gets a zero low nibble at the end; the true count is stored.

`bits_per_parameter(state)` counts the bytes actually stored, so the 4.127 and 4.5 are measured,
not asserted. FP4 (E2M1) and int4 are here as comparison codes for lesson 12.

**Fewer bits** (LoftQ's 2- and 3-bit experiments; lesson 12). NF-k is the same construction with
2^k values: 2^(k-1) positive quantiles, 2^(k-1) - 1 negative ones and 0, at the same outermost
quantile δ' for every k (bitsandbytes' and LoftQ's k-bit NormalFloat do the same):

    NF3: 8 values  (4 positive, 3 negative, 0)       NF2: 4 values  (-1, 0, 0.338, 1)

Their indices are packed as one big-endian bit stream (`pack_bits`): element 0's most significant
bit first, k bits each, zero-padded to a whole byte. For k = 4 that is exactly `pack_4bit`'s layout
(high nibble first), which the C++/CUDA kernels read; the 2- and 3-bit codes run in PyTorch only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..validate import check_bool, check_int

NF4_OFFSET = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2                  # δ' = 0.9677083...
NF4_PUBLISHED = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


# The code tables are built on the CPU (in float64 where there is arithmetic) and then moved to
# `device`: the same 16 float32 values, bit for bit, on every device.

def nf_code(bits: int, offset: float = NF4_OFFSET, device=None) -> torch.Tensor:
    """The 2^bits NF-k values, sorted, built from normal quantiles in float64 (see the module doc):
    h = 2^(bits-1) positive ones, h - 1 negative ones and an exact 0. nf_code(4) is NF4."""
    if not (isinstance(bits, int) and 2 <= bits <= 8):
        raise ValueError(f"nf_code: bits={bits!r} must be an integer from 2 to 8")
    h = 2 ** (bits - 1)
    cpu = dict(dtype=torch.float64, device="cpu")
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, h + 1, **cpu)[:-1])              # (h,)    Φ⁻¹(p)
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, h, **cpu)[:-1])                 # (h-1,)
    v = torch.cat([neg, torch.zeros(1, **cpu), pos]).sort().values                          # (2^bits,)
    return (v / v.max()).to(device=device, dtype=torch.float32)                             # in [-1, 1]


def nf4_code(offset: float | None = None, device=None) -> torch.Tensor:
    """The 16 NF4 values: 8 positive quantiles, 7 negative, 0: the published table (bitsandbytes'),
    or, with another `offset`, nf_code(4, offset) built from it."""
    if offset is None:
        return torch.tensor(NF4_PUBLISHED, dtype=torch.float32, device=device)          # (16,)
    return nf_code(4, offset, device)


def fp4_code(device=None) -> torch.Tensor:
    """FP4 E2M1 (OCP microscaling): ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, divided by 6. 16 bit patterns,
    15 distinct values (+0 and -0)."""
    mag = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float32, device="cpu") / 6.0
    return torch.cat([-mag.flip(0), mag]).to(device)                                        # (16,)


def int4_code(device=None) -> torch.Tensor:
    """Uniform symmetric int4 under the same absmax scaling: k / 7 for k = -8..7. As in absmax
    int4 (q = round(7 w / c), which only reaches -7..7), the value -8/7 is never the nearest one
    to a number in [-1, 1]; 15 values are used."""
    return (torch.arange(-8, 8, dtype=torch.float32, device="cpu") / 7.0).to(device)        # (16,)


CODES = {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code,
         "nf3": lambda device=None: nf_code(3, device=device), "nf2": lambda device=None: nf_code(2, device=device)}
CODE_BITS = {"nf4": 4, "fp4": 4, "int4": 4, "nf3": 3, "nf2": 2}     # bits per stored index
_TABLES: dict = {}


def code_table(name: str, device) -> torch.Tensor:
    """CODES[name]() on `device`, built once per (code, device) (nf_code runs ndtri). Read-only:
    every caller shares the tensor."""
    key = (name, str(torch.device(device)))
    if key not in _TABLES:
        _TABLES[key] = CODES[name](device=device)
    return _TABLES[key]


def _check_weight(w: torch.Tensor, block_size: int, name: str = "w") -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor to quantize, got dtype {w.dtype}")
    if not (isinstance(block_size, int) and block_size >= 2 and block_size % 2 == 0):
        raise ValueError(f"block_size={block_size!r} must be an even integer >= 2 (two codes per byte)")
    if w.numel() == 0 or w.numel() % block_size:
        raise ValueError(f"{name} has {w.numel()} elements, which block_size={block_size} does not divide; "
                         f"pick a block size that divides the tensor (64 divides every GPT weight here)")
    if not bool(torch.isfinite(w.detach().to(torch.float32)).all()):            # we quantize in float32
        raise ValueError(f"{name} contains NaN or Inf in float32 (|{name}| > 3.4e38 overflows the cast): "
                         f"refusing to quantize (the block's absmax would be garbage)")


# ---- packing -----------------------------------------------------------------------------------

def pack_4bit(q: torch.Tensor) -> torch.Tensor:
    """(n,) integers in 0..15 -> (ceil(n/2),) uint8, element 2i in the high nibble."""
    if q.dim() != 1:
        raise ValueError(f"pack_4bit expects a 1-D tensor of indices, got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError(f"pack_4bit: indices must be in 0..15, got range [{int(q.min())}, {int(q.max())}]")
    q = q.to(torch.uint8)
    if q.numel() % 2:
        q = torch.cat([q, q.new_zeros(1)])                           # zero low nibble at the end
    return (q[0::2] << 4) | q[1::2]                                  # (n/2,)


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_4bit: (ceil(n/2),) uint8 -> (n,) uint8 indices."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"unpack_4bit expects a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() != (n + 1) // 2:
        raise ValueError(f"unpack_4bit: {packed.numel()} bytes cannot hold n={n} codes (need {(n + 1) // 2})")
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """(n,) integers in 0..2^bits - 1 -> (ceil(n·bits / 8),) uint8: one big-endian bit stream, element
    0's most significant bit first, zero-padded to whole bytes (for bits = 4: pack_4bit's layout)."""
    if q.dim() != 1:
        raise ValueError(f"pack_bits expects a 1-D tensor of indices, got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) >= 2 ** bits):
        raise ValueError(f"pack_bits: indices must be in 0..{2 ** bits - 1} for {bits} bits, "
                         f"got range [{int(q.min())}, {int(q.max())}]")
    shifts = torch.arange(bits - 1, -1, -1, device=q.device)                      # MSB first  (bits,)
    stream = ((q.long()[:, None] >> shifts) & 1).reshape(-1)                       # (n·bits,) of 0/1
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)])          # whole bytes
    place = 2 ** torch.arange(7, -1, -1, device=q.device)                          # 128 .. 1  (8,)
    return (stream.reshape(-1, 8) * place).sum(1).to(torch.uint8)                 # (ceil(n·bits/8),)


def unpack_bits(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Inverse of pack_bits: (ceil(n·bits / 8),) uint8 -> (n,) uint8 indices."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"unpack_bits expects a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() != -(-n * bits // 8):
        raise ValueError(f"unpack_bits: {packed.numel()} bytes cannot hold n={n} {bits}-bit codes "
                         f"(need {-(-n * bits // 8)})")
    stream = ((packed.long()[:, None] >> torch.arange(7, -1, -1, device=packed.device)) & 1).reshape(-1)
    place = 2 ** torch.arange(bits - 1, -1, -1, device=packed.device)              # (bits,)
    return (stream[:n * bits].reshape(n, bits) * place).sum(1).to(torch.uint8)    # (n,)


# ---- blockwise quantization with any code --------------------------------------------------------

def quantize_blockwise(w: torch.Tensor, code: torch.Tensor, block_size: int = 64):
    """Nearest-code indices and per-block absmax: returns (q (numel,) uint8, absmax (n_blocks,) fp32)."""
    _check_weight(w, block_size)
    blocks = w.detach().to(torch.float32).reshape(-1, block_size)               # (n_blocks, B)
    absmax = blocks.abs().amax(dim=1)                                            # c_b   (n_blocks,)
    scaled = torch.where(absmax[:, None] > 0, blocks / absmax[:, None], 0.0)     # w / c_b in [-1, 1]
    mid = (code[1:] + code[:-1]).to(scaled) / 2                                  # decision boundaries (len - 1,)
    q = torch.bucketize(scaled, mid)                                             # nearest code  (n_blocks, B)
    return q.reshape(-1).to(torch.uint8), absmax


def dequantize_blockwise(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int = 64):
    """ŵ = code[q] · c_b, flat (numel,) float32, on q's device (the code table is moved there)."""
    code = code.to(q.device)                                                    # (2^bits,): a no-op when there
    return (code[q.long()].reshape(-1, block_size) * absmax[:, None].to(torch.float32)).reshape(-1)


# ---- double quantization of the absmax constants --------------------------------------------------

def quantize_absmax(absmax: torch.Tensor, block_size: int = 256):
    """Second-level quantization: c = mean + s_k · q8 with q8 int8 per block of 256.
    Returns (q8 (n,) int8, scales (ceil(n/256),) fp32, mean () fp32)."""
    mean = absmax.mean()
    centred = absmax - mean                                                     # (n,)
    pad = (-centred.numel()) % block_size
    blocks = torch.cat([centred, centred.new_zeros(pad)]).reshape(-1, block_size)  # (m, 256)
    scales = blocks.abs().amax(dim=1) / 127                                     # s_k   (m,)
    q8 = torch.round(torch.where(scales[:, None] > 0, blocks / scales[:, None], 0.0))
    # |q8| <= 127, but a subnormal s_k (absmax near 1e-42) is rounded by up to 2^-150, a large part of
    # it, and (c - mean) / s_k can pass 127: clamp, so that the int8 cast never wraps to the other sign
    q8 = q8.clamp(-127, 127)
    return q8.reshape(-1)[:absmax.numel()].to(torch.int8), scales, mean


def dequantize_absmax(q8: torch.Tensor, scales: torch.Tensor, mean: torch.Tensor, block_size: int = 256):
    n = q8.numel()
    pad = (-n) % block_size
    q = torch.cat([q8.to(torch.float32), q8.new_zeros(pad, dtype=torch.float32)]).reshape(-1, block_size)
    return (q * scales[:, None]).reshape(-1)[:n] + mean                        # c ≈ mean + s q8


# ---- the quantized state of one weight ---------------------------------------------------------

@dataclass
class NF4State:
    """What is stored for one quantized weight: packed 4-bit indices + (double-)quantized absmax."""
    packed: torch.Tensor                  # (ceil(numel·bits/8),) uint8: (ceil(numel/2),) at 4 bits
    shape: tuple
    block_size: int
    code_name: str                        # "nf4" | "fp4" | "int4" (4 bits) | "nf3" | "nf2"
    absmax: Optional[torch.Tensor] = None  # (n_blocks,) fp32, without double quantization
    absmax_q: Optional[torch.Tensor] = None     # (n_blocks,) int8, with it
    absmax_scales: Optional[torch.Tensor] = None  # (ceil(n_blocks/256),) fp32
    absmax_mean: Optional[torch.Tensor] = None    # () fp32
    dq_block_size: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_q is not None

    @property
    def bits(self) -> int:
        return CODE_BITS[self.code_name]

    def tensors(self) -> dict:
        """Every stored tensor by name (what a file of this state holds)."""
        names = ("packed", "absmax", "absmax_q", "absmax_scales", "absmax_mean")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def block_absmax(self) -> torch.Tensor:
        if self.double_quant:
            return dequantize_absmax(self.absmax_q, self.absmax_scales, self.absmax_mean, self.dq_block_size)
        return self.absmax


def quantize_nf4(w: torch.Tensor, block_size: int = 64, double_quant: bool = False, code: str = "nf4",
                 dq_block_size: int = 256) -> NF4State:
    """Quantize a floating-point weight to 4 bits (NF4 by default; "fp4", "int4" for comparison;
    "nf3", "nf2": 3 and 2 bits)."""
    if code not in CODES:
        raise ValueError(f"code={code!r} must be one of {sorted(CODES)}")
    check_int("quantize_nf4", "dq_block_size", dq_block_size, lo=1)              # 256 in the paper
    check_bool("quantize_nf4", "double_quant", double_quant)
    q, absmax = quantize_blockwise(w, code_table(code, w.device), block_size)
    bits = CODE_BITS[code]
    packed = pack_4bit(q) if bits == 4 else pack_bits(q, bits)
    st = NF4State(packed, tuple(w.shape), block_size, code, dq_block_size=dq_block_size)
    if double_quant:
        st.absmax_q, st.absmax_scales, st.absmax_mean = quantize_absmax(absmax, dq_block_size)
    else:
        st.absmax = absmax
    return st


def dequantize_nf4(st: NF4State, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight the state stands for, shape st.shape."""
    n = math.prod(st.shape)
    q = unpack_4bit(st.packed, n) if st.bits == 4 else unpack_bits(st.packed, n, st.bits)
    code = code_table(st.code_name, st.packed.device)                          # on the state's device
    return dequantize_blockwise(q, st.block_absmax(), code, st.block_size).reshape(st.shape).to(dtype)


def bits_per_parameter(st: NF4State) -> float:
    """8 × (bytes of every stored tensor) / (number of weights): measured from storage."""
    return 8 * sum(t.numel() * t.element_size() for t in st.tensors().values()) / math.prod(st.shape)
