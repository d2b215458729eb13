"""Lesson 12 exercise: NF4 quantization, 4-bit packing and LoftQ.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 12`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (abs, amax, argmin or bucketize, bit shifts, torch.linalg.svd). Do not call
minift. Inputs are float32 unless a docstring says otherwise.
"""
import torch  # noqa: F401

# The NF4 code of the QLoRA paper (appendix E), sorted: index i in 0..15 stands for NF4[i].
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])


def run_nf4_quantize(w, block_size=64):
    """Blockwise NF4 of w (any shape, numel divisible by block_size), flattened row-major:

        absmax_b = max_{j in block b} |w_j|                         (n_blocks,) float32
        codes_j  = argmin_i | w_j / absmax_b - NF4[i] |              (numel,) uint8 in 0..15

    An all-zero block has absmax 0 and codes pointing at NF4's 0 (index 7). Returns (codes, absmax).
    """
    raise NotImplementedError("run_nf4_quantize: not written yet; its docstring and "
                              "lessons/12_qlora/README.md, \"The maths\", say what it computes")


def run_nf4_dequantize(codes, absmax, block_size=64):
    """w_hat_j = NF4[codes_j] * absmax[j // block_size]: a flat (numel,) float32 tensor."""
    raise NotImplementedError("run_nf4_dequantize: not written yet; its docstring and "
                              "lessons/12_qlora/README.md, \"The maths\", say what it computes")


def run_pack_4bit(codes):
    """Two 4-bit codes per byte: byte i = 16 * codes[2i] + codes[2i + 1] (the first code in the HIGH
    nibble). An odd number of codes gets a 0 low nibble at the end. codes: (n,) integers in 0..15.
    Returns (ceil(n / 2),) torch.uint8."""
    raise NotImplementedError("run_pack_4bit: not written yet; its docstring and "
                              "lessons/12_qlora/README.md, \"The maths\", say what it computes")


def run_loftq(W, r, iters, block_size=64):
    """LoftQ (Li et al., 2023) with the NF4 quantizer above and s = 1. W: (out, in).

        nf4(X)  = run_nf4_dequantize(*run_nf4_quantize(X, block_size), block_size).reshape(X.shape)
        ΔW = 0
        repeat iters times:
            Q  = nf4(W - ΔW)
            U, S, Vh = torch.linalg.svd(W - Q, full_matrices=False)
            B  = U[:, :r] * S[:r].sqrt()          (out, r)
            A  = S[:r].sqrt()[:, None] * Vh[:r]    (r, in)
            ΔW = B @ A

    Return (Q, A, B) of the iteration with the smallest ||W - (Q + B A)||_F. The check wants Q on
    the NF4 grid of its blocks and the error no larger than plain nf4(W)'s.
    """
    raise NotImplementedError("run_loftq: not written yet; its docstring and "
                              "lessons/12_qlora/README.md, \"The maths\", say what it computes")
