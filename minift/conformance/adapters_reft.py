"""Reference `run_*` adapters of lesson 10 (LoReFT): plain tensors and hyperparameters in,
tensors out, computed by minift's own module (`minift/peft/reft.py`).

`adapters.py` re-exports everything in `__all__`, so `minift.conformance.adapters` stays the one
reference implementation that `--impl` replaces.
"""
from __future__ import annotations

__all__: list[str] = []
