"""Reference `run_*` adapter of lesson 22 (PEFT beyond text, minift/vision.py).

    run_patchify(x, patch_size)    (B, c, H, W) -> (B, N, c P P): the image as a sequence of patches, row by row

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

from minift.vision import patchify

__all__: list[str] = ["run_patchify"]


def run_patchify(x, patch_size: int):
    return patchify(x, patch_size)
