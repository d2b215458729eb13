"""Shared pytest setup: the `--impl FILE` option, the `impl` fixture, hypothesis profiles.

    pytest -m lesson00 --impl lessons/00_transformer/exercise.py   # grade a student's lesson 00
    CI=1 pytest                                                     # deterministic examples
"""
import os
import platform
from importlib.metadata import PackageNotFoundError, version

import pytest
import torch
from hypothesis import settings

from minift.conformance.strategies import no_local_constants, register_profiles

import background
import offload

register_profiles()
settings.load_profile("ci" if os.environ.get("CI") else "dev")


try:                                            # hypothesis' own lookup, before the fixture below swaps it
    from hypothesis.internal.conjecture import providers as _providers
    _LOCALS = (_providers._get_local_constants, _providers.CONSTANTS_CACHE)
except (ImportError, AttributeError):           # a hypothesis without local constants
    _providers, _LOCALS = None, None


@pytest.fixture
def hypothesis_local_constants(monkeypatch):
    """hypothesis' local constants as it draws them outside this suite (for a test of the harness's own
    switch, which the session fixture below would otherwise hide under CI)."""
    if _LOCALS is not None:
        get, cache = _LOCALS
        monkeypatch.setattr(_providers, "_get_local_constants", get)
        monkeypatch.setattr(_providers, "CONSTANTS_CACHE", type(cache)(cache.max_size) if hasattr(cache, "max_size") else {})
    return _LOCALS is not None


@pytest.fixture(scope="session", autouse=True)
def _examples_of_the_test_alone():
    """With CI set, every @given test draws the same examples until the test itself changes. Hypothesis
    would also mix in literals from every loaded local module (minift's source and these tests), so a
    number edited anywhere in minift/ changed every derandomized draw of the suite. The checks already
    run this way (harness.run_property); runs without CI keep hypothesis' constants, for variety."""
    if not os.environ.get("CI"):
        yield
        return
    with no_local_constants():
        yield

# The tests use tiny tensors: one thread is as fast as several, and it leaves the other cores to the
# walkthrough runs and the extension build that tests/background.py starts beside the suite.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--impl", action="store", default=None, metavar="FILE",
                     help="Python file defining run_* functions to check (default: minift's reference)")


def pytest_configure(config):
    path = config.getoption("--impl")
    if path:                                 # a missing or broken file: one line, pytest's usage-error status
        from minift.conformance import load_impl
        try:
            load_impl(path)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None


# Test files whose tests load the cuda_ext build (quant_lora_matmul): if any is selected, the build
# starts in the background first, so its minute of compiling overlaps the rest of the suite.
_EXTENSION_USERS = {"test_ops.py", "test_qlora.py", "test_nf4.py", "test_conformance.py", "test_golden.py",
                    "test_quant_checks.py"}


@pytest.hookimpl(trylast=True)                  # after -m / -k have deselected
def pytest_collection_modifyitems(config, items):
    """Some whole files run in a background subprocess (tests/offload.py); the walkthrough runs and those
    files' stand-ins go last: by the time the suite reaches them, the background has run them."""
    items[:] = offload.offload(config, items)
    items.sort(key=lambda item: (isinstance(item, offload.Offloaded), item.path.name == "test_lessons.py"))


def pytest_runtest_logreport(report):
    offload.record(report)                      # only inside the offloaded subprocess


def pytest_collection_finish(session):
    """Start the slow subprocesses the selected tests need (tests/background.py)."""
    if os.environ.get("MINIFT_NO_EXT") != "1" and any(i.path.name in _EXTENSION_USERS for i in session.items):
        background.RUNS.submit("cuda_ext", background.extension_argv(), str(session.config.rootpath), 900,
                               front=True)
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.path.name == "test_lessons.py" and "les" in params:
            background.submit_walkthrough(params["les"]["dir"], str(session.config.rootpath), params.get("flags", ()))
    background.RUNS.start(background.workers())


def pytest_unconfigure(config):
    background.RUNS.stop()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device this machine has: cpu always, cuda when torch sees a GPU (DESIGN.md, "Tests")."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def cuda_device() -> torch.device:
    """The GPU, for the tests that compare a CUDA run with the CPU one; skipped where there is none.
    Session-scoped: a @given test may take it (hypothesis refuses function-scoped fixtures there)."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU here (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test: the --impl file as a module, else minift's reference functions."""
    path = request.config.getoption("--impl")
    if path is None:
        from minift.conformance import reference
        return reference
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
