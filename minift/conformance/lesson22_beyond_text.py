"""Lesson 22 (beyond text: the tiny ViT): the reference `run_*` functions and their conformance checks.

The reference `run_*` function (PEFT beyond text, minift/vision.py).

    run_patchify(x, patch_size)    (B, c, H, W) -> (B, N, c P P): the image as a sequence of patches, row by row

The checks, registered with lesson="lesson22". Expected values are built here with explicit loops
over patches in numpy.

    run_patchify    patch k is the block (k // (W/P), k % (W/P)), flattened channel-major; the
                    patches hold every pixel exactly once
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minift.vision import patchify

from .harness import assert_close, output, property_check, tensor
from .strategies import arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def run_patchify(x, patch_size: int):
    return patchify(x, patch_size)


# ---- the checks ----------------------------------------------------------------------------------

def _patches64(x: np.ndarray, P: int) -> np.ndarray:
    B, c, H, W = x.shape
    out = []
    for b in range(B):
        row = []
        for i in range(H // P):
            for j in range(W // P):
                row.append(x[b, :, i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(-1))
        out.append(row)
    return np.array(out, np.float64)


@property_check("run_patchify", lesson=22, examples=40, B=st.integers(1, 2), c=st.integers(1, 3),
                P=st.integers(1, 3), nh=st.integers(1, 3), nw=st.integers(1, 3), data=st.data())
def patchify_matches_loop(f, B, c, P, nh, nw, data):
    """patchify(x, P) is the image's P x P blocks row by row, each flattened channel-major (x[:, :,
    rows, cols].reshape(-1)): (B, c, H, W) -> (B, H W / P², c P²)"""
    x = data.draw(arrays((B, c, nh * P, nw * P), f32(-5, 5)))
    expected = _patches64(x, P)
    got = output(f(tensor(x), P), expected.shape, f"run_patchify(x of shape {x.shape}, {P})")
    assert_close(got, expected, f"run_patchify(x of shape {x.shape}, {P})", atol=0, rtol=0)
