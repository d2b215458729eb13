"""Whole test files handed to the background worker as one `pytest` subprocess, so both cores work.

The suite's main thread runs the tests one after another on one core, while tests/background.py's
worker runs the walkthroughs' `--fast` runs on the other; without more, the worker sits idle for the
second half of the suite. Here the selected tests of the files in OFFLOADED (self-contained files
whose fixtures build nothing the rest of the suite shares) run instead in a `pytest` subprocess queued
first for the worker; in the main session each of those tests becomes a stand-in item with the same
node id that waits for the subprocess and reports that test's own outcome: passed, failed (with the
subprocess's traceback), skipped (with its reason). `pytest -m lesson05`, `-k`, `--impl FILE` select
and grade exactly as before; a file not selected is not run.

    MINIFT_TEST_WORKERS=0 pytest      # no background worker: every test runs in the main session
    MINIFT_TEST_OFFLOAD=0 pytest      # the worker runs only the walkthroughs (this module does nothing)
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import background

# Chosen by their measured time (`pytest --junitxml=FILE`, with and without CI set) so that the worker's
# queue (the extension build, this subprocess, then every walkthrough's --fast) outlasts the main thread's
# own tests in both hypothesis profiles: the main thread, once its tests are done, takes walkthroughs from
# the queue's far end (background.RUNS.result), so the two cores finish together. Too few files here and
# the worker idles while the main thread works alone (without CI the checks draw more examples, all of
# them in the main thread's test_conformance.py and test_planted.py).
OFFLOADED = ("test_distributed.py", "test_distill.py", "test_cli.py", "test_classroom.py", "test_choosing.py",
             "test_world.py", "test_scaling.py", "test_harness_catches.py", "test_cuda_emulated.py")
KEY = "pytest:offloaded"
TIMEOUT = 900
REPORT_ENV = "MINIFT_TEST_REPORT"          # set in the subprocess: where each test's outcome is written


def enabled() -> bool:
    return background.workers() > 0 and os.environ.get("MINIFT_TEST_OFFLOAD", "1") == "1" \
        and REPORT_ENV not in os.environ       # never from inside the subprocess itself


class Offloaded(pytest.Item):
    """A test that ran in the subprocess: its outcome, reported here under its own node id."""

    def __init__(self, *, original: pytest.Item, job: "Job", **kw):
        super().__init__(**kw)
        self.job = job
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)
        self._location = original.location

    @property
    def location(self):
        return self._location

    def reportinfo(self):
        return self._location

    def runtest(self) -> None:
        outcome = self.job.outcome(self.nodeid)
        if outcome["outcome"] == "skipped":                   # reported at the test's own line, as pytest does
            try:
                skip = pytest.skip.Exception(outcome["text"], _use_item_location=True)
            except TypeError:                                    # a pytest without that keyword: this line
                skip = pytest.skip.Exception(outcome["text"])
            raise skip
        if outcome["outcome"] != "passed":
            raise OffloadedFailure(outcome["text"])

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, OffloadedFailure):
            return f"(ran in the background pytest subprocess, tests/offload.py)\n{excinfo.value}"
        return super().repr_failure(excinfo, style)


class OffloadedFailure(Exception):
    pass


class Job:
    """The one subprocess: its argv, and once finished, every test's outcome by node id."""

    def __init__(self, nodeids: list, config):
        self.dir = tempfile.mkdtemp(prefix="minift-offload-")
        atexit.register(shutil.rmtree, self.dir, True)          # (also when no outcome is ever read)
        self.report = os.path.join(self.dir, "outcomes.jsonl")
        self.cwd = str(config.rootpath)
        args = ["-q", "-p", "no:cacheprovider"]
        if config.getoption("--impl"):
            args += ["--impl", config.getoption("--impl")]
        args_file = Path(self.dir) / "nodeids"
        args_file.write_text("\n".join(nodeids) + "\n")
        self.argv = [sys.executable, str(Path(__file__).with_name("offload.py")), self.report, str(args_file), *args]
        self._outcomes = None

    def submit(self) -> None:
        background.RUNS.submit(KEY, self.argv, self.cwd, TIMEOUT, front=True)

    def outcome(self, nodeid: str) -> dict:
        if self._outcomes is None:
            try:
                r, _ = background.RUNS.result(KEY, self.argv, self.cwd, TIMEOUT)
                tail = f"\n--- its output ---\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
            except Exception as e:  # noqa: BLE001 (a timeout or a failure to start: every test reports it)
                tail = f"\n--- it did not finish: {type(e).__name__}: {e}"
            self._outcomes = {}
            if os.path.exists(self.report):
                for line in Path(self.report).read_text().splitlines():
                    rec = json.loads(line)
                    prev = self._outcomes.get(rec["nodeid"])
                    if prev is None or prev["outcome"] == "passed":     # setup/call/teardown: the worst counts
                        self._outcomes[rec["nodeid"]] = rec
            self._tail = tail
            shutil.rmtree(self.dir, ignore_errors=True)
        return self._outcomes.get(nodeid) or {"outcome": "failed",
                                              "text": f"no outcome recorded for {nodeid}{self._tail}"}


def offload(config, items: list) -> list:
    """Replace the selected items of OFFLOADED files by stand-ins (at the end), queue the subprocess."""
    if not enabled():
        return items
    chosen = [it for it in items if it.path.name in OFFLOADED]
    if not chosen:
        return items
    job = Job([it.nodeid for it in chosen], config)
    stand_ins = [Offloaded.from_parent(it.session, name=it.nodeid, nodeid=it.nodeid, path=it.path, original=it, job=job)
                 for it in chosen]
    job.submit()
    return [it for it in items if it.path.name not in OFFLOADED] + stand_ins


def record(report) -> None:
    """In the subprocess (pytest_runtest_logreport): append this phase's outcome to the report file."""
    path = os.environ.get(REPORT_ENV)
    if not path or (report.when != "call" and report.outcome == "passed"):
        return
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        text = report.longrepr[2].removeprefix("Skipped: ")
    else:
        text = str(report.longreprtext or "")
    with open(path, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "outcome": report.outcome, "when": report.when,
                            "text": text}) + "\n")


if __name__ == "__main__":            # the subprocess: offload.py REPORT NODEIDS_FILE [pytest args]
    report, ids = sys.argv[1], Path(sys.argv[2]).read_text().split("\n")
    os.environ[REPORT_ENV] = report
    os.environ["MINIFT_TEST_WORKERS"] = "0"
    sys.exit(pytest.main([*sys.argv[3:], *[i for i in ids if i]]))
