"""Lesson 11 exercise: int8 quantization and the LLM.int8() matrix multiplication.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 11`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch tensor operations (abs, amax, amin, round, clamp, reshape, boolean masks, @, .to).
Do not call minift. Inputs are float32; return float32 tensors.

Starter for the "try it" exercise of the README: `python lessons/11_quantization/exercise.py try_int8_sums`.
"""
import math  # noqa: F401

import torch  # noqa: F401


def run_int8_quantize(x, granularity="tensor", block_size=64, zero_point=False):
    """Quantize x to int8 and dequantize it again; return x̂ (x's shape, float32).

    The groups g that share one scale: "tensor" = all of x; "row" = each row along x's last
    dimension (x seen as a matrix with x's last size as its number of columns); "block" = runs of
    block_size consecutive values of x flattened row-major.

    absmax (zero_point=False):    s = max_{j in g} |x_j| / 127     q_j = round(x_j / s) in −127 .. 127
                                  x̂_j = s · q_j                    (a group of zeros: x̂ = 0)
    zero point (zero_point=True): lo = min(min_g x, 0), hi = max(max_g x, 0)
                                  s = (hi − lo) / 255              z = −128 − round(lo / s)
                                  q_j = clamp(round(x_j / s) + z, −128, 127)      x̂_j = s · (q_j − z)

    Both must keep 0 exactly, and absmax must be exact at each group's largest |x|. A scale is never
    below 2^−126, the smallest normal float32 (README, "A floor on the scale").
    """
    raise NotImplementedError("run_int8_quantize: not written yet; lessons/11_quantization/README.md, "
                              "\"The maths\", equation (11.1), says what it computes")


def run_int8_matmul(x, W, threshold=6.0):
    """LLM.int8() (Dettmers et al., 2022): y = x Wᵀ for x (N, in), W (out, in); returns (N, out).

        O = { j : max_i |x_ij| > threshold }          the outlier feature columns (over all tokens i)
        y = x_O W_Oᵀ                                   the columns in O, in floating point
          + (s_x s_wᵀ) ⊙ (Q_x Q_wᵀ)                    the other columns, vector-wise int8:
              Q_x = round(x' / s_x), s_x = max_j |x'_ij| / 127 for each row i of x'
              Q_w = round(W' / s_w), s_w = max_j |W'_oj| / 127 for each row o of W'
              (x', W': x and W without the columns in O)

    Q_x Q_wᵀ must be summed exactly: a product of two int8 matrices in torch stays int8 and
    overflows, so widen to a 32-bit integer type first.
    threshold = math.inf: plain vector-wise int8 (no outliers); threshold = 0: every column
    with a non-zero entry is an outlier, so y is the float product.
    """
    raise NotImplementedError("run_int8_matmul: not written yet; lessons/11_quantization/README.md, "
                              "\"The maths\", equation (11.6), says what it computes")


# ---- try it ---------------------------------------------------------------------------------------

def try_int8_sums(n=4):
    """The README's exercise 2: the dot product of two int8 vectors of n values 127, summed in int8
    (torch keeps the product of two int8 tensors in int8) and in int32, against the exact 127² n."""
    a = torch.full((1, n), 127, dtype=torch.int8)
    in_int8 = (a @ a.T).item()
    in_int32 = (a.int() * a.int()).sum().item()                       # the same sum, in int32
    print(f"{n} x 127 x 127: exact {127 * 127 * n}, summed in int8 {in_int8}, in int32 {in_int32}")


if __name__ == "__main__":         # python lessons/11_quantization/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
