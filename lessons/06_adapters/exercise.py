"""Lesson 06 exercise: a bottleneck adapter, the function every adapter in this lesson computes.

Fill in the function below (delete the `raise NotImplementedError`), then grade your file with
`minift check 06`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional); do not call minift.
"""
import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_adapter(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """A series bottleneck adapter (Houlsby et al., 2019) applied to a sublayer's output h:

        z   = h W_down^T + b_down                  (N, m)   down-projection, m << C
        out = h + scaling * ( f(z) W_up^T + b_up )  (N, C)   up-projection, added to h (the residual)

    The weights are in nn.Linear layout: W_down (m, C), b_down (m,), W_up (C, m), b_up (C,), so the
    paper's "h W_down" is `h @ W_down.T` here. h: (N, C) float tensor. Returns (N, C), h's dtype.

    f is named by `activation`:
        "relu"      max(z, 0)
        "gelu"      the tanh approximation, F.gelu(z, approximate="tanh") (GPT-2's)
        "silu"      z * sigmoid(z)
        "tanh"      tanh(z)
        "identity"  z
    and any other name raises ValueError. `scaling` is a plain float s (He et al. use s = 4 for a
    parallel adapter; it may be negative or 0).

    At initialisation W_up = 0 and b_up = 0, and then the output must be h exactly, bit for bit:
    compute the adapter term on its own and add it to h last, so h + 0 returns h unchanged.
    """
    raise NotImplementedError("run_adapter: not written yet; its docstring and "
                              "lessons/06_adapters/README.md, \"The maths\", say what it computes")
