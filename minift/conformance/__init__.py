"""Conformance: property checks that any implementation of the `run_*` adapters must pass.

    from minift.conformance import CHECKS, run_checks, load_impl, verify_main
    results = run_checks(load_impl("lessons/00_transformer/exercise.py"), only="lesson00")
    for r in results:
        print(r.name, r.status, r.counterexample)

- `adapters`: minift's reference `run_*` functions (plain tensors in, tensors out);
- `checks`: the hypothesis properties (`CHECKS`: name -> Check) and the runner (`Result`);
- `strategies`: shared input strategies and the hypothesis profiles "ci" and "dev";
- `verify`: `minift verify [--impl FILE] [--only NAME[,NAME]] [--list]`.
"""
from .checks import (CHECKS, FAIL, MISSING, NOT_IMPLEMENTED, PASS, Check, Result, run_check,
                     run_checks, select)
from .verify import load_impl, verify_main

__all__ = ["CHECKS", "Check", "Result", "run_check", "run_checks", "select", "load_impl",
           "verify_main", "PASS", "FAIL", "NOT_IMPLEMENTED", "MISSING"]
