"""Lesson 12 exercise: NF4 quantization, 4-bit packing and LoftQ, then the assignment "NF4 end to end".

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 12`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (abs, amax, mean, round, argmin or bucketize, integer division and remainder,
bit shifts, sort, torch.special.ndtri or statistics.NormalDist for Φ⁻¹, torch.linalg.svd, @). Do not
call minift. Inputs are float32 unless a docstring says otherwise.

The NF4 table is yours to build: `run_nf4_code()` (the assignment's part 1) returns it, and the
warm-ups use it. Write it first. The last three functions (`run_nf_code`, `run_pack_bits`,
`run_unpack_bits`) are the key step of part 3b, the 3- and 2-bit codes: README exercise 7.

Starter for the "try it" exercise of the README: `python lessons/12_qlora/exercise.py try_memory_65b`.
"""

import torch  # noqa: F401


# ---- warm-ups -------------------------------------------------------------------------------------

def run_nf4_quantize(w, block_size=64):
    """Blockwise NF4 of w (any shape, numel divisible by block_size), w flattened row-major into blocks
    of block_size consecutive values; NF4 = run_nf4_code():

        c_b  = max over j in block b of |w_j|                         (n_blocks,) float32
        q_j  = the index i in 0..15 minimising |w_j / c_b - NF4_i|     (numel,) uint8

    A w_j / c_b exactly halfway between two NF4 values takes the lower index (bitsandbytes' rule).
    An all-zero block has c_b = 0 and every q_j pointing at NF4's 0 (index 7). Returns (q, c).
    """
    raise NotImplementedError("run_nf4_quantize: not written yet; lessons/12_qlora/README.md, "
                              "\"The maths\", equation (12.3), says what it computes")


def run_nf4_dequantize(codes, absmax, block_size=64):
    """ŵ_j = NF4_{q_j} · c_b for the block b holding element j (the integer part of j / block_size);
    codes q (numel,) integers in 0..15, absmax c (n_blocks,). Returns a flat (numel,) float32 tensor."""
    raise NotImplementedError("run_nf4_dequantize: not written yet; lessons/12_qlora/README.md, "
                              "\"The maths\", equation (12.4), says what it computes")


def run_pack_4bit(codes):
    """Two 4-bit codes per byte: codes 2i and 2i+1 share byte i, the even one in the HIGH nibble
    (byte_i = 16 · q_{2i} + q_{2i+1}). An odd number of codes gets a 0 low nibble in its last byte.
    codes: (n,) integers in 0..15. Returns (⌈n / 2⌉,) torch.uint8."""
    raise NotImplementedError("run_pack_4bit: not written yet; lessons/12_qlora/README.md, "
                              "\"The maths\", equation (12.5), says what it computes")


def run_loftq(W, r, iters, block_size=64):
    """LoftQ (Li et al., 2023) with the NF4 quantizer of the warm-ups and s = 1. W: (out, in).

        nf4(X)   = X quantized and dequantized blockwise (the two warm-ups), in X's shape
        ΔW_0     = 0
        for t = 1 .. iters:
            Q_t      = nf4(W − ΔW_{t−1})
            W − Q_t  = U Σ Vᵀ                       thin SVD, singular values in decreasing order
            B_t      = U_r Σ_r^½                    (out × r): the first r columns of U, scaled
            A_t      = Σ_r^½ V_rᵀ                   (r × in): the first r rows of Vᵀ, scaled
            ΔW_t     = B_t A_t

    Return (Q_t, A_t, B_t) of the t with the smallest ‖W − (Q_t + B_t A_t)‖_F. The check wants Q on the
    NF4 grid of its blocks and the error no larger than plain nf4(W)'s.
    """
    raise NotImplementedError("run_loftq: not written yet; lessons/12_qlora/README.md, "
                              "\"The maths\", equation (12.8), says what it computes")


# ---- Assignment: NF4 end to end ----

def run_nf4_code():
    """Part 1. The 16 NF4 values, sorted, float32, bit for bit the paper's table:

        p⁺_k = δ − k (δ − ½) / 8,  k = 0 .. 7      p⁻_k = δ − k (δ − ½) / 7,  k = 0 .. 6      δ = 0.9677083
        (the p exactly as PyTorch's linspace gives them in float32: 9 and 8 points from δ to ½, the
        last one, ½, dropped; δ − k (δ − ½) / 7 worked out in float64 differs in one last bit)
        v    = the 16 numbers Φ⁻¹(p⁺_k), −Φ⁻¹(p⁻_k) and 0, Φ⁻¹ in float64, each rounded to float32
        NF4  = sort(v) / max(v), the division in float32

    Returns a (16,) float32 tensor: 7 negative values, 0 at index 7, 8 positive, from −1 to 1.
    """
    raise NotImplementedError("run_nf4_code: not written yet; lessons/12_qlora/README.md, "
                              "\"Assignment: NF4 end to end\", equation (12.10), says what it computes")


def run_double_quantize(absmax, block_size=256):
    """Part 2. Double quantization of the (n,) block absmax c (all ≥ 0), in groups of block_size:

        m     = the mean of all n values c_b                             0-dim float32
        s_k   = max over b in group k of |c_b − m| / 127                (⌈n / block_size⌉,) float32
        q8_b  = round((c_b − m) / s_k)   (0 where s_k = 0)              (n,) int8 in −127 .. 127

    Group k holds the values kG .. kG + G − 1 (G = block_size); the last group may be shorter.
    Returns (q8, s, m); ĉ_b = m + s_k q8_b rebuilds c_b within s_k / 2.
    """
    raise NotImplementedError("run_double_quantize: not written yet; lessons/12_qlora/README.md, "
                              "\"Assignment: NF4 end to end\", equation (12.13), says what it computes")


def run_nf4_roundtrip(W, block_size=64, double_quant=False, dq_block_size=256):
    """Part 3. The storage path of QLoRA, end to end: quantize W (any shape, numel divisible by
    block_size) blockwise to NF4 codes q and absmax c (the warm-ups, with the table of part 1), pack
    q two per byte, then rebuild W from what is stored only: unpack the bytes (the high nibble first)
    and dequantize with ĉ = c, or with double_quant the ĉ = m + s_k q8 of part 2 (groups of
    dq_block_size), so Ŵ_j = NF4_{q_j} · ĉ_b in float32, in W's shape. Leave W unchanged.

    Returns (packed (⌈numel / 2⌉,) uint8, Ŵ).
    """
    raise NotImplementedError("run_nf4_roundtrip: not written yet; lessons/12_qlora/README.md, "
                              "\"Assignment: NF4 end to end\", equation (12.16), says what it computes")


# ---- Fewer bits: the NF-k code and k-bit packing (part 3b, --low-bits) ----

def run_nf_code(bits):
    """The 2^k NormalFloat values for k = bits (2 to 8), sorted, float32, with h = 2^(k−1):

        p⁺_i = δ − i (δ − ½) / h,        i = 0 .. h − 1      (h positive values)
        p⁻_i = δ − i (δ − ½) / (h − 1),  i = 0 .. h − 2      (h − 1 negative values)
        NF-k = sort{ Φ⁻¹(p⁺_i), −Φ⁻¹(p⁻_i), 0 } / Φ⁻¹(δ),    δ = 1 − (1/30 + 1/32) / 2 for EVERY k

    δ is NF4's outermost quantile, kept at every width (bitsandbytes and LoftQ do the same), so
    run_nf_code(4) is NF4 again (within a float32 step of the paper's table) and NF2 has 4 values,
    −1, 0, one positive quantile and 1. Returns a (2^k,) float32 tensor from −1 to 1.
    """
    raise NotImplementedError("run_nf_code: not written yet; lessons/12_qlora/README.md, "
                              "\"Exercises\", equation (12.18), says what it computes")


def run_pack_bits(codes, bits):
    """The indices q_0 .. q_{n−1} (integers in 0 .. 2^k − 1, k = bits) as one big-endian bit stream:
    write each q_i with its k binary digits, the most significant first, one index after the other,
    append zero bits up to a whole number of bytes, and read every 8 consecutive bits as one byte
    whose first bit is worth 128. At k = 4 this is run_pack_4bit's layout (the first code of a pair
    in the high nibble). codes: (n,) integers. Returns (⌈n k / 8⌉,) torch.uint8.
    """
    raise NotImplementedError("run_pack_bits: not written yet; lessons/12_qlora/README.md, "
                              "\"Exercises\", equation (12.19), says what it computes")


def run_unpack_bits(packed, n, bits):
    """The inverse of run_pack_bits: the n consecutive k-bit fields (k = bits) of the stream that the
    bytes `packed` spell out, each byte's most significant bit first; the padding bits at the end are
    ignored, whatever they hold. packed: (⌈n k / 8⌉,) torch.uint8. Returns (n,) torch.uint8.
    """
    raise NotImplementedError("run_unpack_bits: not written yet; lessons/12_qlora/README.md, "
                              "\"Exercises\", equation (12.20), says what it computes")


# ---- try it ---------------------------------------------------------------------------------------

def try_memory_65b(checkpointing=False, r=64, seq=512):
    """The README's exercise 4: the training-step memory of a LLaMA-65B-shaped model under QLoRA (NF4
    with double quantization, LoRA of rank r on every linear layer, one sequence of `seq` tokens), with
    and without gradient checkpointing, predicted on the meta device (about 10 s of CPU, no memory used)."""
    from minift.memory import PRESETS, estimate
    targets = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for ckpt in sorted({checkpointing, True}):
        e = estimate(PRESETS["llama-65b"], "qlora", batch=1, seq=seq, dtype=torch.bfloat16, r=r, qkv=None,
                     checkpointing=ckpt, targets=targets)
        print(f"checkpointing={ckpt!s:5}  " + "  ".join(f"{k} {e[k] / 1e9:.1f} GB" for k in
                                                          ("weights", "gradients", "optimizer", "activations", "total")))


if __name__ == "__main__":         # python lessons/12_qlora/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
