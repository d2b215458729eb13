"""Conformance: property checks that any implementation of the lessons' `run_*` functions must pass.

    from minift.conformance import CHECKS, run_checks, load_impl, verify_main
    results = run_checks(load_impl("lessons/00_transformer/exercise.py"), only="lesson00")
    for r in results:
        print(r.name, r.status, r.counterexample)

- `harness`: the `Check`/`Result` types, the registry `CHECKS` and `property_check`, the runner of
  one check, closeness assertions and the float64 textbook formulas several lessons share;
- `lessonNN_<name>`: one file per lesson (mirroring `lessons/NN_name/exercise.py`), holding that
  lesson's reference `run_*` functions and their checks side by side;
- `reference`: minift's reference functions, gathered from the lesson files (the default `--impl`);
- `runner`: `load_impl(FILE)` and `run_checks(impl, only)`;
- `strategies`: shared input strategies and the hypothesis profiles "ci" and "dev";
- `verify`: `minift verify [--impl FILE] [--only NAME[,NAME]] [--list]`;
- `golden`: golden vectors (inputs and the reference's outputs, in files); `classroom`: `minift check NN`.
"""
from .harness import CHECKS, FAIL, MISSING, NOT_IMPLEMENTED, PASS, Check, Result, run_check, select
from .runner import load_impl, run_checks
from .verify import verify_main

__all__ = ["CHECKS", "Check", "Result", "run_check", "run_checks", "select", "load_impl",
           "verify_main", "PASS", "FAIL", "NOT_IMPLEMENTED", "MISSING"]
