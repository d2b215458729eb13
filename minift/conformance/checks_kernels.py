"""Conformance checks of lesson 13 (the fused quantized-LoRA matmul), registered into
`checks.CHECKS` with lesson="lesson13"."""
from __future__ import annotations

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
