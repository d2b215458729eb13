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
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines, "the README's test command must appear verbatim in .ci/run"


def test_the_lesson_command_is_a_real_subcommand(capsys):
    from minift.cli import main
    assert main(["lessons"]) == 0
    out = capsys.readouterr().out
    assert "00" in out
