"""Shared pytest setup: the `--impl FILE` option, the `impl` fixture, hypothesis profiles.

    pytest -m lesson00 --impl lessons/00_transformer/exercise.py   # grade a student's lesson 00
    CI=1 pytest                                                     # deterministic examples
"""
import os
import platform
from importlib.metadata import PackageNotFoundError, version

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
    if path:                                 # a missing or broken file: one line, pytest's usage-error status
        from minift.conformance import load_impl
        try:
            load_impl(path)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None


@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test: the --impl file as a module, else minift's adapters."""
    path = request.config.getoption("--impl")
    if path is None:
        from minift.conformance import adapters
        return adapters
    from minift.conformance import load_impl
    return load_impl(path)


def pytest_terminal_summary(terminalreporter):
    """One line, last: the versions this run used (a fresh install gets the newest pyproject allows)."""
    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"
    names = ["torch", "numpy", "tokenizers", "safetensors", "tqdm", "pytest", "hypothesis"]
    terminalreporter.write_line("versions: python " + platform.python_version() + ", " +
                                ", ".join(f"{n} {v(n)}" for n in names))
