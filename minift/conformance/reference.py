"""minift's reference functions: every lesson's `run_*` functions, in one namespace.

Each `lessonNN_*.py` file of this package holds its lesson's reference `run_*` functions (plain
tensors and hyperparameters in, tensors out, computed by the code minift itself uses) beside the
checks that grade them. This module imports every lesson file, in lesson order, which registers
their checks in `harness.CHECKS`, and gathers their `run_*` functions here:

    from minift.conformance import reference
    reference.run_softmax(torch.randn(2, 3), dim=-1)

It is the implementation the checks grade when no `--impl FILE` is given; a student's
`exercise.py` or a wrapper around another library provides functions with the same names and
signatures instead.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import re

LESSONS: list[str] = sorted(m.name for m in pkgutil.iter_modules([os.path.dirname(__file__)])
                            if re.fullmatch(r"lesson\d\d_\w+", m.name))    # lesson00_transformer, ...
__all__: list[str] = []

for _lesson in LESSONS:
    _module = importlib.import_module(f"{__package__}.{_lesson}")
    for _name, _fn in vars(_module).items():
        if _name.startswith("run_") and callable(_fn) and getattr(_fn, "__module__", "") == _module.__name__:
            if _name in globals():
                raise ImportError(f"{_name} is defined by two lessons: {globals()[_name].__module__} and {_lesson}")
            globals()[_name] = _fn
            __all__.append(_name)
