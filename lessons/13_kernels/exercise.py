"""Lesson 13 exercise: the scalar NF4 dot product, and the fused NF4-LoRA matmul built on it.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 13`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: write the loop yourself, the way the C++ kernel's scalar path does (cuda_ext/quant_lora.cpp,
nf4_row_scalar): read a byte, split it into two 4-bit indices, look them up in the table, multiply
by the block's absmax, accumulate. Do not call minift, and never build the whole float weight.
Plain Python loops over the elements are fine (the checks use tiny sizes); torch or numpy for
small vector operations are fine too. Inputs are float32 tensors (packed is uint8); return
float32 tensors.
"""
import torch  # noqa: F401

# The NF4 table (QLoRA, appendix E), sorted: index q in 0..15 stands for NF4[q].
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def run_nf4_dot(x, packed, absmax, block_size=64):
    """The scalar NF4 dot product, x (n,) against a weight row stored in 4 bits. Returns a 0-dim tensor

        y = Σ_j x_j · NF4[q_j] · c_b        c_b = absmax of the block b holding j (b = ⌊j / block_size⌋)

    where q_j is element j's 4-bit index: q_{2i} = ⌊byte_i / 16⌋ (the HIGH nibble of byte i of
    packed) and q_{2i+1} = byte_i mod 16 (the low nibble). absmax has n / block_size values.
    Tip: sum x_j · NF4[q_j] over one block first, then multiply that sum by the block's absmax
    once (the kernel does it this way: one multiply per block instead of one per weight).
    """
    raise NotImplementedError("run_nf4_dot: not written yet; lessons/13_kernels/README.md, "
                              "\"The maths\", equation (13.6), says what it computes")


def run_nf4_lora_matmul(x, packed, absmax, out_features, block_size=64, A=None, B=None, scaling=1.0, bias=None):
    """The fused op: x (N, in) against an NF4 weight W (out_features, in), plus a LoRA branch. Returns (N, out)

        y_{n,o} = Σ_k x_{n,k} · NF4[q_j] · c_{⌊j / block_size⌋},   j = o · in + k   (row o of W)
                  + s · Σ_r (Σ_k x_{n,k} A_{r,k}) · B_{o,r}     if A (r, in) and B (out, r) are given
                  + bias_o                                        if bias (out,) is given

    W is stored flat and row-major, packed as in run_nf4_dot, so row o starts at element o · in:
    when `in` is odd, a row starts in the LOW nibble of a byte, and a block may span two rows.
    """
    raise NotImplementedError("run_nf4_lora_matmul: not written yet; lessons/13_kernels/README.md, "
                              "\"The maths\", equation (13.1), says what it computes")
