"""Planted bugs for lesson 11 (int8 quantization, LLM.int8()): each `run_<fn>__<bug>` is the reference
with one plausible learner mistake; tests/test_planted.py checks that run_<fn>'s conformance checks
catch every one."""
import torch

from minift.conformance import reference as ref


def _absmax_rows(v):
    """(q, s): v (n, k) quantized to int8 with one absmax scale per row."""
    s = (v.abs().amax(1) / 127).clamp(min=2.0 ** -126)
    return torch.round(v / s[:, None]).clamp(-127, 127), s


def run_int8_quantize__scale_255(x, granularity="tensor", block_size=64, zero_point=False):
    """absmax with s = max|x| / 255 (the zero-point denominator), clamped to -127..127"""
    if zero_point:
        return ref.run_int8_quantize(x, granularity, block_size, zero_point)
    g = {"tensor": x.reshape(1, -1), "row": x.reshape(-1, x.shape[-1]), "block": x.reshape(-1, block_size)}[granularity]
    s = (g.abs().amax(1) / 255).clamp(min=2.0 ** -126)
    return (torch.round(g / s[:, None]).clamp(-127, 127) * s[:, None]).reshape(x.shape)


def run_int8_quantize__rows_and_blocks_swapped(x, granularity="tensor", block_size=64, zero_point=False):
    """groups "row" by blocks of block_size and "block" by rows"""
    swap = {"row": "block", "block": "row"}.get(granularity, granularity)
    if swap == "block" and x.numel() % block_size:
        swap = "tensor"
    return ref.run_int8_quantize(x, swap, block_size, zero_point)


def run_int8_quantize__zero_point_not_clamped(x, granularity="tensor", block_size=64, zero_point=False):
    """zero point z = -round(lo / s) (lo goes to 0, not to -128): the codes overflow int8 and are clamped"""
    if not zero_point:
        return ref.run_int8_quantize(x, granularity, block_size, zero_point)
    g = {"tensor": x.reshape(1, -1), "row": x.reshape(-1, x.shape[-1]), "block": x.reshape(-1, block_size)}[granularity]
    lo, hi = g.amin(1).clamp(max=0), g.amax(1).clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=2.0 ** -126)
    z = -torch.round(lo / s)
    q = (torch.round(g / s[:, None]) + z[:, None]).clamp(-128, 127)
    return ((q - z[:, None]) * s[:, None]).reshape(x.shape)


def run_int8_matmul__int8_sums(x, W, threshold=6.0):
    """sums the int8 products in int8 (no cast to int32 first): they wrap around"""
    O = x.abs().amax(0) > threshold
    y = x[:, O] @ W[:, O].T
    if (~O).any():
        qx, sx = _absmax_rows(x[:, ~O])
        qw, sw = _absmax_rows(W[:, ~O])
        acc = (qx.to(torch.int8)[:, :, None].to(torch.int16) * qw.to(torch.int8).T[None].to(torch.int16))
        acc = acc.to(torch.int8).sum(1, dtype=torch.int8)                           # wraps at ±128
        y = y + acc.float() * sx[:, None] * sw[None, :]
    return y


def run_int8_matmul__outlier_rows(x, W, threshold=6.0):
    """chooses outliers per ROW of x (tokens with some |x| > threshold go through in float, the other
    tokens in int8 over every column) instead of per feature column"""
    R = x.abs().amax(1) > threshold                                                   # (N,) rows
    y = torch.zeros(x.shape[0], W.shape[0])
    y[R] = x[R] @ W.T
    if (~R).any():
        y[~R] = ref.run_int8_matmul(x[~R], W, threshold=float("inf"))
    return y


def run_int8_matmul__outlier_entries(x, W, threshold=6.0):
    """takes the outlier ENTRIES |x_ij| > threshold to float (each row keeps its own outliers) and
    quantizes the rest of x, and all of W, per row"""
    big = x.abs() > threshold
    xo, xi = torch.where(big, x, 0.0), torch.where(big, 0.0, x)
    qx, sx = _absmax_rows(xi)
    qw, sw = _absmax_rows(W)
    return xo @ W.T + (qx.to(torch.int32) @ qw.to(torch.int32).T).float() * sx[:, None] * sw[None, :]


def run_int8_matmul__w_scale_over_all_columns(x, W, threshold=6.0):
    """quantizes each row of W over ALL its columns (outlier columns included) instead of the kept ones"""
    O = x.abs().amax(0) > threshold
    y = x[:, O] @ W[:, O].T
    if (~O).any():
        qx, sx = _absmax_rows(x[:, ~O])
        qw, sw = _absmax_rows(W)
        y = y + (qx.to(torch.int32) @ qw[:, ~O].to(torch.int32).T).float() * sx[:, None] * sw[None, :]
    return y
