"""Slow subprocesses the suite needs, started in the background as soon as collection ends.

The walkthroughs' `--fast` runs (tests/test_lessons.py) are separate processes that use one thread
each (every walkthrough calls torch.set_num_threads(1)); so is the one-time C++ build of cuda_ext.
Run one after another in pytest's own process they would leave every other core idle for most of
the suite. Here they start in worker threads when collection is finished (only the ones the
selected tests need: `pytest -m lesson05` runs lesson 05's walkthrough and nothing else) while the
rest of the suite runs in the main thread; a test that needs a run waits for it, or runs it itself
if no worker has started it yet. Workers: one per core beyond the first (at least one). Where the
OS can fork, each thread sends its walkthroughs to a fork server (tests/walkthrough_server.py) that
has done the imports every walkthrough starts with once; a run it cannot serve falls back to a
plain subprocess.

    MINIFT_TEST_WORKERS=0 pytest     # no background: every run starts when its test does
    MINIFT_TEST_TIMELINE=FILE pytest # append "thread, run, start s, end s" of every run to FILE
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "walkthrough_server.py"
T0 = time.perf_counter()                         # the suite's start, for MINIFT_TEST_TIMELINE


@dataclass
class Run:
    """One command and, once it has run, its CompletedProcess (or the exception) and its seconds."""
    key: str
    argv: list
    cwd: str
    timeout: float
    script: str | None = None                    # a walkthrough: run `script --fast *flags` (the fork server)
    flags: tuple = ()
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    seconds: float = 0.0


class Background:
    def __init__(self):
        self._lock = threading.Lock()
        self._pending: list[Run] = []
        self._runs: dict[str, Run] = {}
        self._live: set = set()                  # processes running now (killed if the session ends)
        self._local = threading.local()           # each thread's fork server

    def submit(self, key: str, argv: list, cwd: str, timeout: float, script: str | None = None,
               front: bool = False, flags: tuple = ()) -> None:
        """Queue a run (at the queue's head with `front`: the long ones first keep both cores busy)."""
        with self._lock:
            if key not in self._runs:
                run = Run(key, list(argv), cwd, timeout, script, flags=tuple(flags))
                self._runs[key] = run
                self._pending.insert(0, run) if front else self._pending.append(run)

    def start(self, workers: int) -> None:
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True).start()

    def _take(self, key: str | None = None, last: bool = False) -> Run | None:
        """The pending run for `key` (else the first, or with `last` the last one), now taken."""
        with self._lock:
            order = range(len(self._pending) - 1, -1, -1) if last else range(len(self._pending))
            for i in order:
                if key is None or self._pending[i].key == key:
                    return self._pending.pop(i)
        return None

    def _work(self) -> None:
        while (run := self._take()) is not None:
            self._execute(run)

    def _server(self, cwd: str):
        srv = getattr(self._local, "server", None)
        if srv is None or srv.poll() is not None:
            srv = subprocess.Popen([sys.executable, str(SERVER)], cwd=cwd, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._local.server = srv
            self._live.add(srv)
        return srv

    def _via_server(self, run: Run) -> subprocess.CompletedProcess | None:
        """The run through this thread's fork server; None if the server cannot serve it."""
        srv = self._server(run.cwd)
        with tempfile.TemporaryDirectory() as d:
            out, err = Path(d) / "out", Path(d) / "err"
            try:
                srv.stdin.write(json.dumps({"path": run.script, "out": str(out), "err": str(err),
                                            "timeout": run.timeout, "flags": list(run.flags)}) + "\n")
                srv.stdin.flush()
                line = srv.stdout.readline()
            except OSError:
                line = ""
            if not line:                             # the server died (or never started): no answer
                srv.kill()
                return None
            rc = json.loads(line)["rc"]
            return subprocess.CompletedProcess(run.argv, rc, out.read_text(), err.read_text())

    def _execute(self, run: Run) -> None:
        t0 = time.perf_counter()
        try:
            self._execute_timed(run)
        finally:
            log = os.environ.get("MINIFT_TEST_TIMELINE")         # where each run's start and end go (tuning)
            if log:
                with open(log, "a") as f:
                    f.write(f"{threading.current_thread().name}\t{run.key}\t{t0 - T0:.1f}\t{time.perf_counter() - T0:.1f}\n")

    def _execute_timed(self, run: Run) -> None:
        t0 = time.perf_counter()
        if run.script is not None and hasattr(os, "fork") and os.environ.get("MINIFT_TEST_FORK", "1") == "1":
            run.result = self._via_server(run)
            if run.result is not None:
                run.seconds = time.perf_counter() - t0
                run.done.set()
                return
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

    def result(self, key: str, argv: list, cwd: str, timeout: float, script: str | None = None,
               flags: tuple = ()) -> tuple[subprocess.CompletedProcess, float]:
        """The finished run for `key`: waits for a worker that has it, or runs it here. Re-raises
        a timeout or a failure to start, as subprocess.run would have."""
        self.submit(key, argv, cwd, timeout, script, flags=flags)
        run = self._take(key)
        if run is not None:                      # no worker has started it: run it in this thread
            self._execute(run)
        else:                                    # a worker has it: help with the queue's far end meanwhile
            run = self._runs[key]
            while not run.done.is_set() and (other := self._take(last=True)) is not None:
                self._execute(other)
            run.done.wait()
        if isinstance(run.result, BaseException):
            raise run.result
        return run.result, run.seconds


RUNS = Background()


def workers() -> int:
    """Background threads for this pytest process: none inside a pytest-xdist worker (`pytest -n 8`, as
    .ci/gpu_check.sh runs the suite), where xdist's own processes are the parallelism: each of them
    would otherwise start every walkthrough and its own copy of the offloaded files (tests/offload.py)."""
    env = os.environ.get("MINIFT_TEST_WORKERS")
    if env is not None:
        return max(0, int(env))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return 0
    return max(1, (os.cpu_count() or 2) - 1)


WALKTHROUGH_TIMEOUT = 120


def _walkthrough(lesson_dir, flags: tuple = ()) -> tuple:
    path = Path(lesson_dir) / "walkthrough.py"
    key = " ".join([Path(lesson_dir).name, *flags])
    return key, [sys.executable, str(path), "--fast", *flags], str(path)


def submit_walkthrough(lesson_dir, cwd: str, flags: tuple = ()) -> None:
    """Queue `python lessons/NN_name/walkthrough.py --fast [flags]` (run from cwd, the repository root)."""
    key, argv, script = _walkthrough(lesson_dir, flags)
    RUNS.submit(key, argv, cwd, WALKTHROUGH_TIMEOUT, script, flags=flags)


def walkthrough_result(lesson_dir, cwd: str, flags: tuple = ()) -> tuple[subprocess.CompletedProcess, float]:
    """That run's CompletedProcess and seconds (waiting for it, or running it here)."""
    key, argv, script = _walkthrough(lesson_dir, flags)
    return RUNS.result(key, argv, cwd, WALKTHROUGH_TIMEOUT, script, flags=flags)


def extension_argv() -> list:
    """Build (or find cached) the C++ extension, as minift.quant.ops would on first use."""
    return [sys.executable, "-c", "from minift.quant import ops; ops.extension()"]
