"""Reference `run_*` adapters of lesson 13 (the fused quantized-LoRA matmul).

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

__all__: list[str] = []
