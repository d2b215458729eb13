"""Planted bugs for lesson 13 (the scalar NF4 dot product and the fused NF4-LoRA matmul): each
`run_<fn>__<bug>` is the reference with one plausible learner mistake; tests/test_planted.py checks
that run_<fn>'s conformance checks catch every one."""
import torch

from minift.conformance import reference as ref
from minift.quant.nf4 import NF4_PUBLISHED

CODE = torch.tensor(NF4_PUBLISHED, dtype=torch.float64)


def _codes(packed, n):
    """(n,) indices: high nibble first."""
    return torch.stack([packed.long() >> 4, packed.long() & 15], 1).reshape(-1)[:n]


def run_nf4_dot__low_nibble_first(x, packed, absmax, block_size=64):
    """reads the LOW nibble of each byte as the first of its two indices"""
    swapped = ((packed & 15) << 4) | (packed >> 4)
    return ref.run_nf4_dot(x, swapped, absmax, block_size)


def run_nf4_dot__block_of_byte(x, packed, absmax, block_size=64):
    """finds the block from the byte index i (i // block_size) instead of the element index j"""
    n = x.numel()
    j = torch.arange(n)
    w = CODE[_codes(packed, n)] * absmax.double()[((j // 2) // block_size).clamp(max=absmax.numel() - 1)]
    return (x.double() @ w).float()


def run_nf4_lora_matmul__rows_start_on_a_byte(x, packed, absmax, out_features, block_size=64, A=None, B=None,
                                              scaling=1.0, bias=None):
    """starts row o at byte o · ceil(in / 2), as if every row were padded to whole bytes"""
    N, k = x.shape
    per_row = (k + 1) // 2
    rows = []
    for o in range(out_features):
        chunk = packed[o * per_row:(o + 1) * per_row] if (o + 1) * per_row <= packed.numel() else packed[-per_row:]
        c = _codes(chunk, k)
        j = o * k + torch.arange(k)
        rows.append(CODE[c] * absmax.double()[j // block_size])
    W = torch.stack(rows)
    y = x.double() @ W.T
    if A is not None:
        y = y + scaling * (x.double() @ A.double().T) @ B.double().T
    return (y if bias is None else y + bias.double()).float()


def run_nf4_lora_matmul__no_scaling(x, packed, absmax, out_features, block_size=64, A=None, B=None,
                                    scaling=1.0, bias=None):
    """adds the LoRA branch without the scaling s"""
    return ref.run_nf4_lora_matmul(x, packed, absmax, out_features, block_size, A, B, 1.0, bias)


def run_nf4_lora_matmul__blocks_restart_each_row(x, packed, absmax, out_features, block_size=64, A=None, B=None,
                                                 scaling=1.0, bias=None):
    """numbers the blocks of each row from 0 (row o, column k: block o · ceil(in / B) + k // B), as if no
    block spanned two rows"""
    N, k = x.shape
    n = out_features * k
    per_row = -(-k // block_size)
    c = _codes(packed, n).reshape(out_features, k)
    b = (torch.arange(out_features)[:, None] * per_row + torch.arange(k)[None] // block_size).clamp(max=absmax.numel() - 1)
    W = CODE[c] * absmax.double()[b]
    y = x.double() @ W.T
    if A is not None:
        y = y + scaling * (x.double() @ A.double().T) @ B.double().T
    return (y if bias is None else y + bias.double()).float()
