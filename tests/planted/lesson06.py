"""Planted bugs for lesson 06 (bottleneck adapters): copies of the reference `run_adapter`, each with
one plausible learner mistake. tests/test_planted.py swaps each into the reference and asserts that a
check of its function fails. Do not copy from this file."""
import math

import torch
import torch.nn.functional as F

_F = {"relu": torch.relu, "gelu": lambda z: F.gelu(z, approximate="tanh"), "silu": F.silu, "tanh": torch.tanh,
      "identity": lambda z: z}


def _term(h, W_down, b_down, W_up, b_up, f):
    return f(h @ W_down.T + b_down) @ W_up.T + b_up


def run_adapter__no_residual(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """returns the adapter term alone, without adding h back"""
    return scaling * _term(h, W_down, b_down, W_up, b_up, _F[activation])


def run_adapter__scales_residual(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """scales the whole sum: s (h + term) instead of h + s term"""
    return scaling * (h + _term(h, W_down, b_down, W_up, b_up, _F[activation]))


def run_adapter__up_bias_unscaled(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """adds b_up outside the scaling: h + s f(z) W_up^T + b_up"""
    return h + scaling * (_F[activation](h @ W_down.T + b_down) @ W_up.T) + b_up


def run_adapter__gelu_erf(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """uses the exact (erf) GELU instead of GPT-2's tanh approximation"""
    f = F.gelu if activation == "gelu" else _F[activation]
    return h + scaling * _term(h, W_down, b_down, W_up, b_up, f)


def run_adapter__silu_as_sigmoid(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """computes silu as sigmoid(z), forgetting the factor z"""
    f = torch.sigmoid if activation == "silu" else _F[activation]
    return h + scaling * _term(h, W_down, b_down, W_up, b_up, f)


def run_adapter__gelu_coefficient(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """writes the tanh GELU with sqrt(2 pi) instead of sqrt(2 / pi)"""
    def f(z):
        if activation != "gelu":
            return _F[activation](z)
        return 0.5 * z * (1 + torch.tanh(math.sqrt(2 * math.pi) * (z + 0.044715 * z ** 3)))
    return h + scaling * _term(h, W_down, b_down, W_up, b_up, f)
