"""Conformance checks of lesson 22 (the tiny ViT), registered with lesson="lesson22". Expected
values are built here with explicit loops over patches in numpy.

    run_patchify    patch k is the block (k // (W/P), k % (W/P)), flattened channel-major; the
                    patches hold every pixel exactly once
"""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from .checks import _adapter, _assert_close, _out, _register, _run, _t
from .strategies import arrays, check_settings, f32


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


@_register("run_patchify", "patchify(x, P) is the image's P x P blocks row by row, each flattened channel-major "
           "(x[:, :, rows, cols].reshape(-1)): (B, c, H, W) -> (B, H W / P², c P²)", lesson="lesson22")
def check_patchify_matches_loop(impl):
    f = _adapter(impl, "run_patchify")

    @check_settings(40)
    @given(B=st.integers(1, 2), c=st.integers(1, 3), P=st.integers(1, 3), nh=st.integers(1, 3), nw=st.integers(1, 3),
           data=st.data())
    def prop(B, c, P, nh, nw, data):
        x = data.draw(arrays((B, c, nh * P, nw * P), f32(-5, 5)))
        expected = _patches64(x, P)
        got = _out(f(_t(x), P), expected.shape, f"run_patchify(x of shape {x.shape}, {P})")
        _assert_close(got, expected, f"run_patchify(x of shape {x.shape}, {P})", atol=0, rtol=0)
    _run(prop)
