"""Every lesson folder is complete and its walkthrough runs in --fast mode, honestly: a smoke test
that says so at its top and bottom and judges no claim."""
import re
import signal
from pathlib import Path

import pytest
from background import walkthrough_result

from minift.cli import list_lessons
from minift.course import FAST_NOTE

ROOT = Path(__file__).resolve().parent.parent
LESSONS = list_lessons()
# A judgement of a claim or target: tiny budgets cannot make one (minift.course.verdict prints them
# in default runs only). "holds"/"fails" as a verdict: at the end of a line or after "->".
VERDICT = re.compile(r"(->|:)\s*(holds|fails|does not hold)\b|\b(holds|fails)\s*$|\bdoes NOT\b|\b(supports|contradicts)"
                     r" the (claim|target)|\b(PASS|FAIL|PASSED|FAILED)\b|[✓✗]|\bmet\s*$|\btarget(s)? (is |are )?(not )?met\b")


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
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) >= 5, "a walkthrough prints what its README promises"
    note = FAST_NOTE.format(lesson=les["nn"])
    assert lines[0] == note and lines[-1] == note, \
        f"{les['dir'].name} --fast: its first and last lines say it is a smoke test (course.start / course.end)"
    verdicts = [x for x in lines if VERDICT.search(x)]
    assert not verdicts, f"{les['dir'].name} --fast judges a claim (use course.verdict): {verdicts[:3]}"
    print(f"{les['dir'].name} --fast: {seconds:.1f}s")
