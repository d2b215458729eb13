"""Planted bugs for lesson 12 (NF4, packing, LoftQ, and the assignment "NF4 end to end"): each
`run_<fn>__<bug>` is the reference with one plausible learner mistake; tests/test_planted.py checks
that run_<fn>'s conformance checks catch every one."""
import torch

from minift.conformance import reference as ref
from minift.quant.nf4 import NF4_PUBLISHED, dequantize_absmax, nf4_code, nf_code, quantize_absmax, quantize_blockwise

CODE = torch.tensor(NF4_PUBLISHED)


def run_nf4_quantize__absmax_per_tensor(w, block_size=64):
    """one absmax for the whole tensor instead of one per block"""
    flat = w.detach().float().reshape(-1)
    c = flat.abs().max()
    q = (flat[:, None] / torch.where(c > 0, c, 1.0) - CODE).abs().argmin(1).to(torch.uint8)
    return q, c.repeat(flat.numel() // block_size)


def run_nf4_quantize__rounds_down(w, block_size=64):
    """picks the largest code below w / absmax instead of the nearest one"""
    _, a = ref.run_nf4_quantize(w, block_size)
    s = w.detach().float().reshape(-1, block_size) / torch.where(a > 0, a, 1.0)[:, None]
    return (torch.bucketize(s, CODE, right=True) - 1).clamp(0, 15).reshape(-1).to(torch.uint8), a


def run_nf4_dequantize__block_index_mod(codes, absmax, block_size=64):
    """looks up element j's absmax at j mod n_blocks instead of j // block_size"""
    return CODE[codes.long()] * absmax.float().repeat(codes.numel() // absmax.numel())


def run_pack_4bit__low_nibble_first(codes):
    """puts the first code of each pair in the LOW nibble"""
    p = ref.run_pack_4bit(codes)
    return ((p & 15) << 4) | (p >> 4)


def run_pack_4bit__drops_odd_code(codes):
    """drops the last code of an odd count instead of padding it with a zero low nibble"""
    n = codes.numel() - codes.numel() % 2
    return ref.run_pack_4bit(codes[:n]) if n else torch.zeros(0, dtype=torch.uint8)


def run_loftq__q_off_grid(W, r, iters, block_size=64):
    """returns W - B A as Q, forgetting to quantize it"""
    Q, A, B = ref.run_loftq(W, r, iters, block_size)
    return W - B @ A, A, B


def run_loftq__swapped_factors(W, r, iters, block_size=64):
    """returns (Q, B, A): the factors in the wrong order"""
    Q, A, B = ref.run_loftq(W, r, iters, block_size)
    return Q, B.T.contiguous(), A.T.contiguous()


def run_nf4_quantize__ties_go_up(w, block_size=64):
    """a value exactly between two NF4 values takes the upper index (bucketize right=True), not
    bitsandbytes' lower one"""
    blocks = w.float().reshape(-1, block_size)
    absmax = blocks.abs().amax(1)
    x = torch.where(absmax[:, None] > 0, blocks / absmax[:, None], 0.0)
    mid = (CODE[1:] + CODE[:-1]) / 2
    return torch.bucketize(x, mid, right=True).reshape(-1).to(torch.uint8), absmax


def run_nf4_code__float64_exact_delta():
    """builds the code in float64 from the exact δ (minift's nf_code(4)): 1.8e-7 off the printed table"""
    return nf_code(4)


def run_nf4_code__symmetric():
    """takes 8 quantiles on both sides (no exact 0, no asymmetry)"""
    p = torch.linspace(0.9677083, 0.5, 9)[:-1].double()
    pos = torch.special.ndtri(p)
    v = torch.cat([-pos, pos]).float().sort().values
    return v / v.max()


def run_double_quantize__no_centring(absmax, block_size=256):
    """quantizes the absmax without subtracting their mean (and returns mean 0)"""
    c = absmax.float()
    pad = (-c.numel()) % block_size
    blocks = torch.cat([c, c.new_zeros(pad)]).reshape(-1, block_size)
    s = blocks.abs().amax(1) / 127
    q8 = torch.round(torch.where(s[:, None] > 0, blocks / s[:, None], 0.0)).reshape(-1)[:c.numel()]
    return q8.to(torch.int8), s, torch.zeros(())


def run_double_quantize__one_scale(absmax, block_size=256):
    """one scale for all the absmax values instead of one per block of block_size"""
    q8, s, mean = quantize_absmax(absmax.float(), max(block_size, absmax.numel()))
    return q8, s.repeat(-(-absmax.numel() // block_size)), mean


def run_nf4_roundtrip__low_nibble_first(W, block_size=64, double_quant=False, dq_block_size=256):
    """packs the first code of each pair in the LOW nibble (and unpacks consistently, so W_hat is right)"""
    packed, W_hat = ref.run_nf4_roundtrip(W, block_size, double_quant, dq_block_size)
    return ((packed & 15) << 4) | (packed >> 4), W_hat


def run_nf4_roundtrip__dq_not_used(W, block_size=64, double_quant=False, dq_block_size=256):
    """double-quantizes the absmax but rebuilds W_hat with the exact absmax"""
    return ref.run_nf4_roundtrip(W, block_size, False, dq_block_size)


def run_nf4_roundtrip__dq_no_mean(W, block_size=64, double_quant=False, dq_block_size=256):
    """double quantization without the mean offset: ĉ = s round(c / s)"""
    packed, W_hat = ref.run_nf4_roundtrip(W, block_size, False, dq_block_size)
    if not double_quant:
        return packed, W_hat
    q, c = quantize_blockwise(W, CODE, block_size)
    c_hat = dequantize_absmax(*run_double_quantize__no_centring(c, dq_block_size), dq_block_size)
    return packed, (CODE[q.long()].reshape(-1, block_size) * c_hat[:, None]).reshape(W.shape)


def run_nf4_roundtrip__in_place(W, block_size=64, double_quant=False, dq_block_size=256):
    """divides W by its block absmax in place (the caller's weight is overwritten)"""
    packed, W_hat = ref.run_nf4_roundtrip(W, block_size, double_quant, dq_block_size)
    blocks = W.view(-1, block_size)
    blocks.div_(blocks.abs().amax(1, keepdim=True).clamp(min=1e-30))
    return packed, W_hat



# ---- part 3b: the NF-k code and k-bit packing (minift/conformance/lesson12_lowbits.py) ----

def _nf(bits, offset, pos_n, neg_n, zero=True):
    """Φ⁻¹ of pos_n and neg_n evenly spaced p from `offset` towards 1/2, (0), sorted, divided by the largest."""
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, pos_n + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, neg_n + 1, dtype=torch.float64)[:-1])
    v = torch.cat([neg] + ([torch.zeros(1, dtype=torch.float64)] if zero else []) + [pos]).sort().values
    return (v / v.max()).float()


def run_nf_code__offset_per_k(bits):
    """recomputes the outermost quantile for each k, 1 - (1/(2(2^k - 1)) + 1/2^(k+1)) / 2, instead of NF4's δ"""
    n = 2 ** bits
    return _nf(bits, 1 - (1 / (2 * (n - 1)) + 1 / (2 * n)) / 2, n // 2, n // 2 - 1)


def run_nf_code__symmetric(bits):
    """takes 2^(k-1) quantiles on both sides (no exact 0, no asymmetry)"""
    return _nf(bits, 0.9677083, 2 ** (bits - 1), 2 ** (bits - 1), zero=False)


def run_nf_code__extra_value_negative(bits):
    """puts the extra value on the negative side: 2^(k-1) negative quantiles, 2^(k-1) - 1 positive"""
    return -ref.run_nf_code(bits).flip(0)


def run_pack_bits__lsb_first(codes, bits):
    """writes each index's bits least significant first"""
    rev = sum(((codes.long() >> j) & 1) << (bits - 1 - j) for j in range(bits))
    return ref.run_pack_bits(rev, bits)


def run_pack_bits__one_byte_per_code(codes, bits):
    """stores each index in its own byte (no packing)"""
    return codes.to(torch.uint8)


def run_pack_bits__padding_in_front(codes, bits):
    """reads the stream as one big integer and writes its bytes, so the zero padding lands in front"""
    value = 0
    for q in codes.tolist():
        value = (value << bits) | int(q)
    nbytes = -(-codes.numel() * bits // 8)
    return torch.tensor(list(value.to_bytes(nbytes, "big")), dtype=torch.uint8)


def run_unpack_bits__lsb_first(packed, n, bits):
    """reads each field least significant bit first"""
    q = ref.run_unpack_bits(packed, n, bits).long()
    return sum(((q >> j) & 1) << (bits - 1 - j) for j in range(bits)).to(torch.uint8) if n else q.to(torch.uint8)


def run_unpack_bits__from_the_end(packed, n, bits):
    """takes the last n fields of the bytes, as if the padding were in front"""
    value = int.from_bytes(bytes(packed.tolist()), "big")
    out = [(value >> (bits * (n - 1 - i))) & (2 ** bits - 1) for i in range(n)]
    return torch.tensor(out, dtype=torch.uint8)
