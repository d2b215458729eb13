"""Shared pytest setup: the `--impl FILE` option, the `impl` fixture, hypothesis profiles.

    pytest -m lesson00 --impl lessons/00_transformer/exercise.py   # grade a student's lesson 00
    CI=1 pytest                                                     # deterministic examples
"""
import os

import pytest
from hypothesis import settings

from minift.conformance.strategies import register_profiles

register_profiles()
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_addoption(parser):
    parser.addoption("--impl", action="store", default=None, metavar="FILE",
                     help="Python file defining run_* adapters to check (default: minift's reference)")


def pytest_configure(config):
    path = config.getoption("--impl")
    if path and not os.path.isfile(path):
        raise pytest.UsageError(f"--impl {path}: no such file; expected a Python file defining run_* functions")


@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test: the --impl file as a module, else minift's adapters."""
    path = request.config.getoption("--impl")
    if path is None:
        from minift.conformance import adapters
        return adapters
    from minift.conformance import load_impl
    return load_impl(path)
