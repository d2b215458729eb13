"""The README's two quick-start commands are real: CI runs the test command verbatim, and the
lesson command names a real subcommand."""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.core
ROOT = Path(__file__).resolve().parent.parent


def _commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", quick, re.S)


def test_readme_has_exactly_two_quick_start_commands_and_ci_runs_the_test_one():
    cmds = _commands()
    assert len(cmds) == 2, cmds
    lessons, tests = cmds
    assert lessons.endswith("minift run all") and "pytest" in tests
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines, "the README's test command must appear verbatim in .ci/run"


def test_the_lesson_command_is_a_real_subcommand(capsys):
    from minift.cli import main
    assert main(["lessons"]) == 0
    out = capsys.readouterr().out
    assert "00" in out


def _pins(text: str, op: str) -> dict:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(rf'^\s*"?([A-Za-z0-9_.-]+){op}([0-9][^",\s]*)"?',
                                                             text, re.M)}


def test_every_lower_bound_in_pyproject_is_the_version_the_oldest_ci_run_pins():
    """A bound we declare is a version the suite has passed with: `MINIFT_CI_OLDEST=1 bash .ci/run`
    installs exactly .ci/oldest.txt, so the two must name the same versions."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    extras = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    declared = re.findall(r'"([^"]+)"', deps) + re.findall(r'"([^"]+)"', extras)
    bounds = {}
    for req in declared:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", req)
        assert m, f"pyproject requirement {req!r} must be `name>=version`, a version the oldest run tests"
        bounds[m.group(1).lower()] = m.group(2)
    pinned = _pins((ROOT / ".ci" / "oldest.txt").read_text(), "==")
    assert bounds == pinned
    assert re.search(r'requires-python = ">=3\.11"', pyproject)
    assert 'py="${MINIFT_CI_PYTHON:-python3.11}"' in (ROOT / ".ci" / "run").read_text()


def test_the_readme_names_the_oldest_versions_it_is_tested_with():
    readme = " ".join((ROOT / "README.md").read_text().split())          # line breaks as spaces
    for name, v in _pins((ROOT / ".ci" / "oldest.txt").read_text(), "==").items():
        assert f"{name} {v}" in readme, f"README must say the oldest tested {name} is {v}"
    python = re.search(r'requires-python = ">=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    claims = re.findall(r"Python ≥ ?([0-9.]+)", readme)
    assert claims and set(claims) == {python}, f"README says Python ≥ {claims}; pyproject requires {python}"


def test_every_only_selection_a_readme_shows_names_checks():
    """`minift verify --only X` in a README selects checks: a check name, a run_* function or a lesson
    marker. (README.md once showed `--only softmax`, which names none: exit 2.) Placeholders in capitals
    (`--only NAMES`) are not commands."""
    from minift.conformance.harness import select
    import minift.conformance.reference  # noqa: F401  (importing it registers every check)
    docs = [ROOT / "README.md", ROOT / "lessons" / "README.md", *sorted(ROOT.glob("lessons/*/README.md"))]
    shown = [(d.relative_to(ROOT), m.group(1)) for d in docs
             for m in re.finditer(r"minift verify [^`\n]*?--only[ =]([\w,]+)", d.read_text())]
    assert len(shown) >= 10, shown
    for doc, only in shown:
        if only.isupper():
            continue
        assert select(only), (doc, only)
