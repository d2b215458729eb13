"""Planted bugs: every lesson's checks must catch the mistakes a learner plausibly makes.

`tests/planted/lessonNN.py` holds buggy copies of lesson NN's reference functions, one mistake
each, named `run_<function>__<bug>` with a docstring naming the bug (a wrong scale, a swapped
argument, an off-by-one shift, a masked position that leaks, a missing factor, a wrong order of
operations ...). Each one is graded as a learner's file would be: the reference with that one
function replaced, the function's checks under the loaded profile (derandomized in CI), stopping at
the first failing example instead of shrinking it. At least one check must FAIL (a missing or
unimplemented function does not count).
"""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from minift.conformance import CHECKS, FAIL, reference
from minift.conformance.harness import run_check
from minift.conformance.strategies import no_shrinking

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).resolve().parents[1]
PLANTED = Path(__file__).resolve().with_name("planted")
LESSONS = sorted(p.name[:2] for p in (ROOT / "lessons").iterdir() if (p / "exercise.py").is_file())


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"planted_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bugs():
    """(lesson file stem, the run_* function it replaces, the bug's name, the buggy function)."""
    for path in sorted(PLANTED.glob("lesson*.py")):
        module = _load(path)
        for name, fn in vars(module).items():
            if name.startswith("run_") and "__" in name and callable(fn) and fn.__module__ == module.__name__:
                target, bug = name.split("__", 1)
                yield path.stem, target, bug, fn


BUGS = list(_bugs())


def _checks_of(target: str) -> list:
    return [c for c in CHECKS.values() if target in (c.runs or (c.adapter,))]


@pytest.mark.parametrize("stem,target,bug,fn", [
    pytest.param(*b, id=f"{b[0]}-{b[1]}__{b[2]}", marks=getattr(pytest.mark, b[0])) for b in BUGS])
def test_each_planted_bug_is_caught(stem, target, bug, fn):
    assert (fn.__doc__ or "").strip(), f"{target}__{bug}: say which mistake it plants, in its docstring"
    checks = _checks_of(target)
    assert checks, f"{stem}: {target} is not a function any check grades"
    assert all(c.lesson == stem for c in checks if c.adapter == target), (stem, target)
    impl = SimpleNamespace(**{n: getattr(reference, n) for n in reference.__all__})
    setattr(impl, target, fn)
    seen = []
    with no_shrinking():
        for check in checks:
            r = run_check(check, impl)
            if r.status == FAIL:
                return
            seen.append(f"{check.name}: {r.status}")
    pytest.fail(f"planted bug {target}__{bug} ({fn.__doc__.strip()}) passes every check of {target}: "
                f"{'; '.join(seen)}")


def test_every_lesson_has_planted_bugs_for_every_function_a_learner_writes():
    planted = {(stem, target) for stem, target, _, _ in BUGS}
    wanted = {(c.lesson, c.adapter) for c in CHECKS.values()}
    assert sorted(wanted - planted) == [], "these reference functions have no planted bug in tests/planted/"
    assert {stem.removeprefix("lesson") for stem, _ in wanted} == set(LESSONS)
