"""Every lesson folder is complete and its walkthrough runs in --fast mode."""
import signal
from pathlib import Path

import pytest
from background import walkthrough_result

from minift.cli import list_lessons

ROOT = Path(__file__).resolve().parent.parent
LESSONS = list_lessons()


def test_lessons_exist_in_order_with_their_three_files():
    assert [les["nn"] for les in LESSONS] == sorted(les["nn"] for les in LESSONS)
    assert LESSONS and LESSONS[0]["nn"] == "00"
    for les in LESSONS:
        for f in ("README.md", "walkthrough.py", "exercise.py"):
            assert (les["dir"] / f).is_file(), f"{les['dir'].name} lacks {f}"
        assert les["expected"] is not None and les["fast"] is not None, f"{les['dir'].name}: set EXPECTED_SECONDS/FAST_SECONDS"
        assert les["expected"] <= 120 and les["fast"] <= 15, f"{les['dir'].name} is over the time budget"


@pytest.mark.parametrize("les", [pytest.param(les, id=les["dir"].name, marks=getattr(pytest.mark, f"lesson{les['nn']}"))
                                 for les in LESSONS])
def test_walkthrough_runs_in_fast_mode(les):
    """The run itself starts in the background when collection ends (tests/background.py)."""
    r, seconds = walkthrough_result(les["dir"], str(ROOT))
    alarm = getattr(signal, "SIGALRM", None)                                    # the fork server's timeout
    why = "ran out of time" if alarm is not None and r.returncode == -alarm else "failed"
    assert r.returncode == 0, f"{les['dir'].name} --fast {why}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert len(r.stdout.strip().splitlines()) >= 5, "a walkthrough prints what its README promises"
    print(f"{les['dir'].name} --fast: {seconds:.1f}s")
