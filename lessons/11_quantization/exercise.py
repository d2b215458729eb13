"""Lesson 11 exercise: int8 quantization and the LLM.int8() matrix multiplication.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 11`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch tensor operations (abs, amax, round, clamp, @, .to). Do not call minift.
Inputs are float32; return float32 tensors.
"""
import math  # noqa: F401

import torch  # noqa: F401


def run_int8_quantize(x, granularity="tensor", block_size=64, zero_point=False):
    """Quantize x to int8 and dequantize it again; return x_hat (x's shape, float32).

    The groups that share one scale: "tensor" = all of x; "row" = each row of the last dim
    (x.reshape(-1, x.shape[-1])); "block" = consecutive runs of block_size values of x.flatten().

    absmax (zero_point=False):  s = max|x_g| / 127        q = round(x / s)   (in -127..127)
                                x_hat = s q               (a group of zeros: x_hat = 0)
    zero point (zero_point=True): lo = min(min x_g, 0), hi = max(max x_g, 0)
                                s = (hi - lo) / 255        z = -128 - round(lo / s)
                                q = clamp(round(x / s) + z, -128, 127)     x_hat = s (q - z)

    Both must keep 0 exactly, and absmax must be exact at each group's largest |x|. A scale is never
    below 2^-126, the smallest normal float32 (README, "A floor on the scale").
    """
    raise NotImplementedError("run_int8_quantize: not written yet; its docstring and "
                              "lessons/11_quantization/README.md, \"The maths\", say what it computes")


def run_int8_matmul(x, W, threshold=6.0):
    """LLM.int8() (Dettmers et al., 2022): y = x W^T for x (N, in), W (out, in), returns (N, out).

        O = { j : max_i |x[i, j]| > threshold }             the outlier feature columns
        y = x[:, O] @ W[:, O].T                               in floating point
          + s_x s_w^T * (q_x @ q_w^T)                         int8 for the other columns:
              q_x = round(x[:, ~O] / s_x),  s_x = max_j |x[i, ~O]| / 127 per ROW i of x
              q_w = round(W[:, ~O] / s_w),  s_w = max_j |W[o, ~O]| / 127 per ROW o of W
              q_x @ q_w^T summed exactly: int8 @ int8 in torch stays int8 and overflows, so
              cast to torch.int32 first.

    threshold = math.inf: plain vector-wise int8 (no outliers); threshold = 0: every column
    with a non-zero entry is an outlier, so y is the float product.
    """
    raise NotImplementedError("run_int8_matmul: not written yet; its docstring and "
                              "lessons/11_quantization/README.md, \"The maths\", say what it computes")
