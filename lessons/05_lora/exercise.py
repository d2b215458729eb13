"""Lesson 05 exercise: the LoRA layer's forward, its merge, and DoRA's forward.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 05`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Layouts are nn.Linear's, as in minift/peft/lora.py: a weight is (out, in) and a layer computes
x W^T + b. So A is (r, in), B is (out, r), and the update s B A is (out, in), like W0.

Rules: plain PyTorch tensor operations (@, .T, .to, torch.linalg.vector_norm or .pow/.sum/.sqrt).
Do not call minift. Inputs are float32 unless a docstring says otherwise; return tensors.
"""
import math  # noqa: F401  (math.sqrt for rsLoRA)

import torch  # noqa: F401


def run_lora_linear(x, W0, b, A, B, alpha, r, rslora=False):
    """The LoRA layer's forward (Hu et al., 2021), unmerged and without dropout:

        h = x W0^T + b + s (x A^T) B^T        s = alpha / r           (LoRA)
                                              s = alpha / sqrt(r)     (rsLoRA, when rslora=True)

    x: (N, in); W0: (out, in), frozen; b: (out,) or None (then no bias term); A: (r, in);
    B: (out, r); alpha: float > 0; r: int, 1 <= r <= min(in, out). Returns (N, out).

    Compute the low-rank branch as (x A^T) B^T, never by forming B A: that is the point of LoRA
    (2 small matmuls, r (in + out) multiply-adds per row instead of in * out).
    With B = 0 the result must be bit-for-bit x W0^T + b, whatever A, alpha and rslora are.
    """
    raise NotImplementedError("run_lora_linear: not written yet; its docstring and "
                              "lessons/05_lora/README.md, \"The maths\", say what it computes")


def run_lora_merge(W0, A, B, scaling):
    """Fold the update into the weight, for inference at no extra cost:

        W = W0 + scaling * (B @ A)            (out, in)

    Compute it in float32 (W0, A, B may be bfloat16: upcast them first) and cast the result back
    to W0's dtype once, at the end. W0: (out, in); A: (r, in); B: (out, r); scaling: a float
    (s = alpha / r for LoRA). Returns a new (out, in) tensor with W0's dtype; do not modify W0.
    """
    raise NotImplementedError("run_lora_merge: not written yet; its docstring and "
                              "lessons/05_lora/README.md, \"The maths\", say what it computes")


def run_dora_linear(x, W0, b, A, B, m, alpha, r):
    """DoRA (Liu et al., 2024), weight-decomposed LoRA: a magnitude m and a direction V / ‖V‖.

        V  = W0 + s B A,   s = alpha / r                          (out, in)
        n  = ‖V‖ per output row: n_o = sqrt(sum_i V[o, i]^2)      (out,)
        W' = (m / n)[:, None] * V                                 each row rescaled to length m_o
        h  = x W'^T + b

    (The paper writes weights as (in, out) and calls n the column-wise norm; in nn.Linear's
    (out, in) layout it is the norm of each row.) x: (N, in); W0: (out, in); b: (out,) or None;
    A: (r, in); B: (out, r); m: (out,); alpha: float; r: int. Returns (N, out).
    With m = ‖W0‖ row-wise and B = 0, W' = W0: DoRA starts as the base layer.
    """
    raise NotImplementedError("run_dora_linear: not written yet; its docstring and "
                              "lessons/05_lora/README.md, \"The maths\", say what it computes")
