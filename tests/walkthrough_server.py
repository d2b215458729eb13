"""A fork server for the walkthroughs' --fast runs (tests/background.py starts one per worker).

Every walkthrough is its own `python lessons/NN_name/walkthrough.py --fast`; about 5 s of each are
the same imports (torch, torch._dynamo, which AdamW's constructor pulls in, minift). This process
pays them once, then forks a child per request that runs the walkthrough as `__main__` exactly as
the command line would (sys.argv, sys.path[0] = the lesson's folder, stdout and stderr to files)
and exits with its status (printing what the walkthrough's exit hook would: `minift.course.end`,
the bottom line of a --fast run). The parent never runs a tensor operation, so each child starts from the
same clean state a fresh interpreter would have after these imports.

Protocol, one JSON object a line: in {"path", "out", "err", "timeout", "flags" (optional, after --fast)};
out {"rc"}.
"""
import json
import os
import runpy
import shutil
import signal
import sys
import tempfile
import traceback

import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (imported by the first optimizer: 3 s)

import minift.course  # noqa: F401
import minift.evals  # noqa: F401
import minift.peft.io  # noqa: F401


def run(path: str, out: str, err: str, timeout: float, flags: tuple = ()) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    scratch = tempfile.mkdtemp(prefix="minift-walkthrough-")          # the child's temporary files go here:
    pid = os.fork()                                                    # os._exit skips what would remove them
    if pid == 0:                                                       # the child: the walkthrough
        code = 1
        try:
            tempfile.tempdir = scratch
            for fd, name in ((1, out), (2, err)):
                f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            signal.alarm(max(1, int(timeout)))                         # the default action ends the child
            sys.argv = [path, "--fast", *flags]
            sys.path[0] = os.path.dirname(os.path.abspath(path))
            try:
                runpy.run_path(path, run_name="__main__")
                code = 0
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
        except BaseException:  # noqa: BLE001 (reported as the run's failure)
            traceback.print_exc()
        finally:
            try:
                minift.course.end()                                    # what atexit prints; os._exit skips it
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(scratch, ignore_errors=True)
    return os.waitstatus_to_exitcode(status)


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        rc = run(req["path"], req["out"], req["err"], req["timeout"], tuple(req.get("flags", ())))
        sys.stdout.write(json.dumps({"rc": rc}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
