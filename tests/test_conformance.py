"""The conformance checks, one test each, against `--impl FILE` (default: minift's reference).

    pytest tests/test_conformance.py                                   # minift itself
    pytest -m lesson00 --impl lessons/00_transformer/exercise.py       # grade lesson 00
"""
import pytest

from minift.conformance import CHECKS, MISSING, NOT_IMPLEMENTED, PASS, run_check


def _param(check):
    return pytest.param(check, id=check.name,
                        marks=[pytest.mark.conformance, getattr(pytest.mark, check.lesson)])


@pytest.mark.parametrize("check", [_param(c) for c in CHECKS.values()])
def test_conformance(check, impl):
    r = run_check(check, impl)
    if r.status == MISSING:
        pytest.skip(f"{check.adapter} not provided by the implementation")
    if r.status == NOT_IMPLEMENTED:
        pytest.fail(f"{check.adapter} is not implemented yet ({r.error})", pytrace=False)
    if not r.passed:
        pytest.fail(f"{check.name} ({check.adapter}): {check.description}\n\n{r.error}\n\n"
                    f"{r.counterexample}", pytrace=False)
    assert r.status == PASS
