"""Slow subprocesses the suite needs, started in the background as soon as collection ends.

The walkthroughs' `--fast` runs (tests/test_lessons.py) are separate processes that use one thread
each (every walkthrough calls torch.set_num_threads(1)); so is the one-time C++ build of cuda_ext.
Run one after another in pytest's own process they would leave every other core idle for most of
the suite. Here they start in worker threads when collection is finished (only the ones the
selected tests need: `pytest -m lesson05` runs lesson 05's walkthrough and nothing else) while the
rest of the suite runs in the main thread; a test that needs a run waits for it, or runs it itself
if no worker has started it yet. Workers: one per core beyond the first (at least one).

    MINIFT_TEST_WORKERS=0 pytest     # no background: every run starts when its test does
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    """One command and, once it has run, its CompletedProcess (or the exception) and its seconds."""
    key: str
    argv: list
    cwd: str
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    seconds: float = 0.0


class Background:
    def __init__(self):
        self._lock = threading.Lock()
        self._pending: list[Run] = []
        self._runs: dict[str, Run] = {}
        self._live: set = set()                  # processes running now (killed if the session ends)

    def submit(self, key: str, argv: list, cwd: str, timeout: float) -> None:
        with self._lock:
            if key not in self._runs:
                run = Run(key, list(argv), cwd, timeout)
                self._runs[key] = run
                self._pending.append(run)

    def start(self, workers: int) -> None:
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True).start()

    def _take(self, key: str | None = None) -> Run | None:
        with self._lock:
            for i, run in enumerate(self._pending):
                if key is None or run.key == key:
                    return self._pending.pop(i)
        return None

    def _work(self) -> None:
        while (run := self._take()) is not None:
            self._execute(run)

    def _execute(self, run: Run) -> None:
        t0 = time.perf_counter()
        try:
            with subprocess.Popen(run.argv, cwd=run.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) as p:
                self._live.add(p)
                try:
                    out, err = p.communicate(timeout=run.timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                    raise
                finally:
                    self._live.discard(p)
            run.result = subprocess.CompletedProcess(run.argv, p.returncode, out, err)
        except Exception as e:  # noqa: BLE001 (the test that asked for the run reports it)
            run.result = e
        run.seconds = time.perf_counter() - t0
        run.done.set()

    def stop(self) -> None:
        """End of the session (or Ctrl-C): start nothing more, kill what still runs."""
        with self._lock:
            self._pending.clear()
        for p in list(self._live):
            p.kill()

    def result(self, key: str, argv: list, cwd: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
        """The finished run for `key`: waits for a worker that has it, or runs it here. Re-raises
        a timeout or a failure to start, as subprocess.run would have."""
        self.submit(key, argv, cwd, timeout)
        run = self._take(key)
        if run is not None:                      # no worker has started it: run it in this thread
            self._execute(run)
        else:
            run = self._runs[key]
            run.done.wait()
        if isinstance(run.result, BaseException):
            raise run.result
        return run.result, run.seconds


RUNS = Background()


def workers() -> int:
    env = os.environ.get("MINIFT_TEST_WORKERS")
    if env is not None:
        return max(0, int(env))
    return max(1, (os.cpu_count() or 2) - 1)


WALKTHROUGH_TIMEOUT = 120


def walkthrough_argv(path) -> list:
    return [sys.executable, str(path), "--fast"]


def extension_argv() -> list:
    """Build (or find cached) the C++ extension, as minift.quant.ops would on first use."""
    return [sys.executable, "-c", "from minift.quant import ops; ops.extension()"]
