"""The classroom workflow: hand out a lesson's exercise, grade it with one command.

    minift exercise 05                  copy lessons/05_lora/exercise.py to exercises/05_lora.py (yours to edit)
    minift exercise 05 --reset          put the stubs back (your file is kept as exercises/05_lora.py.bak)
    minift check 05                     grade exercises/05_lora.py (or, if you have none, the lesson's own file)
    minift check 05 --impl FILE         grade any file, e.g. a student's submission
    minift check 05 --json              the same, as one JSON object (for a gradebook or CI)
    minift grade 05 submissions/ --out grades.csv --reports feedback/
                                        a whole class: every .py file, each in a process of its own;
                                        a CSV gradebook, and each file's report to hand back

An exercise is one `run_*` function of the lesson. Its points are the conformance checks that use it
(one point per check, registered with the lesson's pytest marker, see harness.py); a check passes
only if every hypothesis example passes. The report is a table per exercise, then each failure with
the property it tests and hypothesis' smallest counterexample.

The lesson's own exercise.py is never written to, so `git pull` never conflicts with a student's work.

Grading a class (`grade_class`). Each submission runs as `minift check NN --impl FILE --json-out F`
in a process of its own, in a temporary folder, with the derandomized examples (CI=1: every student
gets the same ones; `minift check` alone draws the same unless --random) and a time limit. Each check
also has a time limit of its own (`CHECK_SECONDS`, `--check-timeout`; SIGALRM, where the OS has it):
an exercise that never returns fails its checks, with the call it was stopped in, and the file's
other exercises are still graded. The child logs the grading as it goes (`grade`'s log): when the
interpreter dies inside a check (os._exit, a crash in C), that check fails and a new child grades
the rest; when the whole file runs past its time limit, the checks graded so far keep their points
("timeout"). A file that exits or crashes while being imported costs its own row ("crashed"), never
the class. Printing in a student's file cannot spoil the grade, which travels in F. The gradebook is
one row per file: status, points, max points, the points of each exercise, and a note (what lost
points, what stopped it, and CHECK BY HAND when the file imports minift where the rules forbid it:
`uses_minift`). A process is isolation from mistakes, not a sandbox: a submission runs with the
teacher's permissions, so grade untrusted code in a container.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from .harness import CHECKS, FAIL, MISSING, NOT_IMPLEMENTED, PASS, Result, run_check
from .runner import attach_follows, load_impl

WORK_DIR = Path("exercises")          # relative to where the student runs minift
CHECK_SECONDS = 60.0                  # one check's time limit (the reference's slowest check takes about 1 s)


def workspace_file(lesson: dict, work_dir: Path = WORK_DIR) -> Path:
    """exercises/NN_name.py: the student's copy of lesson NN's stubs."""
    return Path(work_dir) / f"{lesson['dir'].name}.py"


def hand_out(lesson: dict, reset: bool = False, work_dir: Path = WORK_DIR) -> tuple[Path, Path | None]:
    """Copy the lesson's exercise.py into the workspace. An existing copy is kept unless reset=True,
    and then it is moved to NAME.py.bak first (nothing is lost). Returns (path, backup or None)."""
    src = lesson["dir"] / "exercise.py"
    if not src.is_file():
        raise ValueError(f"lesson {lesson['nn']} has no exercise.py")
    dst = workspace_file(lesson, work_dir)
    backup = None
    if dst.exists():
        if not reset:
            raise ValueError(f"{dst} exists (your work); `minift exercise {lesson['nn']} --reset` puts the stubs "
                             f"back and keeps your file as {dst.name}.bak")
        backup = dst.with_name(dst.name + ".bak")
        shutil.copy2(dst, backup)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return dst, backup


def default_impl(lesson: dict, work_dir: Path = WORK_DIR) -> Path:
    """What `minift check NN` grades without --impl: the workspace copy if there is one, else the
    lesson's exercise.py (which holds stubs, so it scores 0 until it is filled in)."""
    mine = workspace_file(lesson, work_dir)
    return mine if mine.is_file() else lesson["dir"] / "exercise.py"


def check_names(lesson: dict) -> list[str]:
    """The conformance checks that grade lesson NN (those carrying its pytest marker lessonNN)."""
    return [n for n, c in CHECKS.items() if c.lesson == f"lesson{lesson['nn']}"]


def grade(lesson: dict, impl_path, seconds: float | None = CHECK_SECONDS, log=None) -> dict:
    """Run lesson NN's checks against the file, each within `seconds` (None: no limit; past it the
    check fails, and the others still run); {"lesson", "impl", "points", "max_points",
    "exercises": [{"adapter", "points", "max_points", "checks": [...]}], "results": [Result]}.
    A file that defines none of the lesson's functions scores 0 (every check MISSING).

    log: a file that records the grading as it goes, one JSON line per event ({"imported": true},
    {"start": check}, {"result": {...}}), so that the process that started this one can tell which
    check was running when the interpreter died, and what was graded before. Checks whose results the
    log already holds (from an earlier, stopped run) are not run again."""
    names = check_names(lesson)
    if not names:
        return summary(lesson, impl_path, [])
    from .strategies import register_profiles
    register_profiles()
    impl = load_impl(impl_path, need_run=False)
    earlier = {r.name: r for r in logged_results(log)} if log else {}
    _log(log, {"imported": True})
    results = []
    for name in names:
        if name in earlier:
            results.append(earlier[name])
            continue
        _log(log, {"start": name})
        results.append(run_check(CHECKS[name], impl, seconds))
        _log(log, {"result": asdict(results[-1])})
    return summary(lesson, impl_path, attach_follows(impl, results))


def summary(lesson: dict, impl_path, results: list) -> dict:
    """The grade of a list of Results: points per exercise (one per passing check) and in all."""
    exercises: dict = {}
    for r in results:
        e = exercises.setdefault(r.adapter, {"adapter": r.adapter, "points": 0, "max_points": 0, "checks": []})
        e["max_points"] += 1
        e["points"] += r.status == PASS
        e["checks"].append({"name": r.name, "status": r.status})
    return {"lesson": lesson["nn"], "impl": str(impl_path), "points": sum(e["points"] for e in exercises.values()),
            "max_points": len(results), "exercises": list(exercises.values()), "results": results}


def _log(log, event: dict) -> None:
    """One line appended, the file closed at once: what a crash a moment later cannot take back."""
    if log is not None:
        with open(log, "a") as f:
            f.write(json.dumps(event) + "\n")


def _events(log) -> list[dict]:
    try:
        lines = Path(log).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:                        # a line cut by the crash
            pass
    return out


def logged_results(log) -> list[Result]:
    """The Results a grading log holds, in order."""
    return [Result(**(e["result"] | {"follows": tuple(e["result"].get("follows", ()))}))
            for e in _events(log) if "result" in e]


def _running(log) -> str | None:
    """The check a log started last and holds no result of (None: none)."""
    done = {r.name for r in logged_results(log)}
    started = [e["start"] for e in _events(log) if "start" in e]
    return started[-1] if started and started[-1] not in done else None


def report_text(g: dict) -> str:
    """The grade as text: every failure first (the failing call as code), then one row per exercise
    with its points, the total, and what each status means."""
    from .verify import failure_text, legend, missing_line, stubs_text
    if not g["max_points"]:
        return f"lesson {g['lesson']} has no graded exercises (no conformance check carries its marker)"
    lines = [f"lesson {g['lesson']}: grading {g['impl']}"]
    results = g["results"]
    for r in results:
        if r.status == FAIL:
            lines += ["", failure_text(r)]
    if any(r.status == NOT_IMPLEMENTED for r in results):
        lines += ["", stubs_text(results)]
    if missing_line(results):
        lines += ["", missing_line(results)]
    rows = [("exercise", "points", "checks")]
    for e in g["exercises"]:
        marks = ", ".join(f"{c['name']} {'ok' if c['status'] == PASS else c['status'].lower()}" for c in e["checks"])
        rows.append((e["adapter"], f"{e['points']}/{e['max_points']}", marks))
    w = [max(len(r[i]) for r in rows) for i in range(2)]
    lines += ["", f"{rows[0][0]:<{w[0]}}  {rows[0][1]:>{w[1]}}  {rows[0][2]}", f"{'-' * w[0]}  {'-' * w[1]}  ------"]
    lines += [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]}" for r in rows[1:]]
    lines += ["", f"total: {g['points']}/{g['max_points']} points", legend(results)]
    return "\n".join(lines)


def as_json(g: dict) -> str:
    return json.dumps({k: v for k, v in g.items() if k != "results"} | {
        "failures": [{"check": r.name, "adapter": r.adapter, "status": r.status, "error": r.error,
                      "counterexample": r.counterexample, "calls": r.calls, "follows": list(r.follows), "stopped": r.stopped} for r in g["results"] if r.status in (FAIL, NOT_IMPLEMENTED, MISSING)]},
        indent=1)


def write_whole(path, text: str) -> None:
    """`text` written to `path` all at once (a temporary file, then renamed): a grade, a report or a
    gradebook is never left half-written; the folder is made if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---- a whole class ----------------------------------------------------------------------------------

def submissions(paths) -> list[Path]:
    """The .py files to grade: each path a .py file, or a folder whose .py files (at any depth, sorted)
    are taken. Raises ValueError for a path that does not exist, a file that is not .py, or no file."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*.py") if q.is_file() and "__pycache__" not in q.parts)
            if not inside:
                raise ValueError(f"{p}: a folder without any .py file to grade")
            found += inside
        elif p.is_file():
            if p.suffix != ".py":
                raise ValueError(f"{p}: not a .py file; a submission is a Python file of run_* functions")
            found.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    return list(dict.fromkeys(found))                      # each file once, in the order given


def exercise_names(lesson: dict) -> list[str]:
    """The lesson's graded run_* functions, in the order of its checks."""
    return list(dict.fromkeys(CHECKS[n].adapter for n in check_names(lesson)))


def report_name(path) -> str:
    """The report file of a submission: its path with the folders joined by "__", e.g.
    sub/bob/05.py -> sub__bob__05.py.txt (distinct paths, distinct names)."""
    parts = [p for p in Path(path).parts if p not in ("/", "\\", ".", "..") and not p.endswith(":\\")]
    return "__".join(parts) + ".txt"


def grade_one(lesson: dict, path, timeout: float, threads: int = 1, report=None,
              check_seconds: float = CHECK_SECONDS) -> dict:
    """Grade one file in a child process (see the module doc). Returns the gradebook row
    {"submission", "status", "points", "max_points", "exercises": {run_*: points}, "note"}.
    With `report` (a path), the file's text report is written there, or why it was not graded."""
    row = _grade_child(lesson, Path(path), timeout, threads, report, check_seconds)
    uses = uses_minift(path)
    if uses:
        row["note"] = "; ".join(x for x in (f"CHECK BY HAND: {uses}", row["note"]) if x)
    if report is not None and row["status"] not in ("graded", "timeout"):      # those two wrote theirs
        write_whole(report, f"lesson {lesson['nn']}: grading {path}\n\n{row['status']}: {row['note']}\n")
    if report is not None and uses:                          # the student reads it too: the rule it breaks
        write_whole(report, f"note: {uses}; the exercises' rules say not to call minift, so a teacher checks "
                            f"this file by hand.\n\n" + Path(report).read_text(encoding="utf-8"))
    return row


def uses_minift(path) -> str:
    """'' or where the graded code reaches into minift, which the exercises' rules forbid: an import of
    a minift module (or the string "minift.conformance", as importlib would take it) at module level,
    in a run_* function, or in a function a run_* function calls. The "try it" starters, the
    `if __name__ == "__main__":` block and the helpers only they use may import minift: every stub does."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, OSError):
        return ""
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    graded, todo = set(), [name for name in functions if name.startswith("run_")]
    while todo:                                               # run_* and what they call, by name, in this file
        name = todo.pop()
        if name in graded:
            continue
        graded.add(name)
        todo += [c.id for c in ast.walk(functions[name]) if isinstance(c, ast.Name) and c.id in functions]
    hits = []

    def imports(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and not node.level:
            return [node.module or ""]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "minift.conformance" in node.value:
            return [node.value]
        return []

    def visit(node, where: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name in graded:
                    visit(child, f"in {child.name}")
                continue                                      # a starter or a helper of starters: free
            if isinstance(child, ast.If) and "__main__" in ast.unparse(child.test):
                continue                                      # the command-line block of every stub
            hits.extend(f"line {child.lineno}: {m} ({where})" for m in imports(child)
                        if m == "minift" or m.startswith("minift."))
            visit(child, where)
    visit(tree, "at module level")
    return ("uses minift: " + ", ".join(dict.fromkeys(hits))[:200]) if hits else ""


def _child_env(threads: int) -> dict:
    """The child's environment: the derandomized examples, its threads, and minift importable from anywhere
    (it runs in a folder of its own)."""
    here = str(Path(__file__).resolve().parents[2])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "CI": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join([here, *(os.path.abspath(p) for p in paths)])}


def _why(code: int) -> str:
    """A child's end, in words."""
    names = {int(n): n.name for n in signal.Signals}
    return f"exit status {code}" if code >= 0 else f"killed by signal {-code} ({names.get(-code, '?')})"


def _grade_child(lesson: dict, path: Path, timeout: float, threads: int, report, check_seconds: float) -> dict:
    """Run `minift check` on the file in a child process, in a folder of its own (what the file writes
    lands there), with a log of the grading (`grade`'s). When the interpreter dies during a check
    (os._exit, a crash in C), that check fails and a new child grades the rest; when the file's time
    runs out, the checks graded so far keep their points."""
    names = check_names(lesson)
    row = {"submission": str(path), "status": "crashed", "points": 0, "max_points": len(names),
           "exercises": {name: 0 for name in exercise_names(lesson)}, "note": ""}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="minift-grade-") as tmp:
        out, log, work = Path(tmp) / "grade.json", Path(tmp) / "log.jsonl", Path(tmp) / "cwd"
        work.mkdir()
        cmd = [sys.executable, "-m", "minift.cli", "check", lesson["nn"], "--impl", str(path.resolve()),
               "--json-out", str(out), "--log", str(log), "--check-timeout", repr(float(check_seconds))]
        cmd += [] if report is None else ["--report-out", str(Path(report).resolve())]
        crashes = []
        while True:
            left = timeout - (time.monotonic() - started)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    env=_child_env(threads), cwd=work, start_new_session=True)  # its own group
            try:
                _, err = proc.communicate(timeout=max(left, 0.01))
            except subprocess.TimeoutExpired:
                if hasattr(os, "killpg"):
                    os.killpg(proc.pid, signal.SIGKILL)     # the child and whatever it started
                else:                                       # Windows: no process groups here
                    proc.kill()
                proc.communicate()
                row = _stopped(lesson, path, row, log, timeout, report)
                return row | {"note": row["note"] + _crash_note(crashes)}
            if out.is_file():      # written whole at the end: the grade, whatever the exit after it (atexit, teardown)
                g = json.loads(out.read_text())
                return row | {"status": "graded", "points": g["points"], "max_points": g["max_points"],
                              "exercises": {e["adapter"]: e["points"] for e in g["exercises"]},
                              "note": _failing_note(g["failures"]) + _crash_note(crashes)}
            last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
            if proc.returncode == 2 and "cannot import it: " in last:
                return row | {"status": "import error", "note": last.split("cannot import it: ", 1)[1]}
            running = _running(log)
            if not _imported(log) or running is None:
                where = "while being imported" if not _imported(log) else "between checks"
                return row | {"note": f"exited {where} ({_why(proc.returncode)}: sys.exit, os._exit or a crash)"
                              + (f": {last}" if last else "")}
            crashes.append(CHECKS[running].adapter)
            _log(log, {"result": asdict(_failed(
                running, f"the interpreter ended during this check ({_why(proc.returncode)}): {CHECKS[running].adapter} "
                         f"exits (os._exit) or crashes the process" + (f"; its last words: {last}" if last else ""),
                counterexample="(none: the process ended before the check could report the example)"))})


def _stopped(lesson: dict, path: Path, row: dict, log: Path, timeout: float, report) -> dict:
    """The row (and report) of a file stopped at its time limit: the checks the log holds keep their
    points; the one it was stopped in and those never reached fail."""
    if not _imported(log):
        row = row | {"status": "timeout", "note": f"stopped after {timeout:g} s while being imported"}
        if report is not None:
            write_whole(report, f"lesson {lesson['nn']}: grading {path}\n\ntimeout: {row['note']}\n")
        return row
    done, running = {r.name: r for r in logged_results(log)}, _running(log)
    results = [done.get(name) or _failed(name, ("the file's time limit struck during this check" if name == running
                                                else "not run: the file's time limit struck before it")
                                         + f" (--timeout {timeout:g} s)", stopped=True)
               for name in check_names(lesson)]
    g = summary(lesson, path, results)
    if report is not None:
        write_whole(report, report_text(g) + "\n")
    return row | {"status": "timeout", "points": g["points"],
                  "exercises": {e["adapter"]: e["points"] for e in g["exercises"]},
                  "note": f"stopped after {timeout:g} s" + (f" in {CHECKS[running].adapter}" if running else "")
                          + f", {len(done)} of {len(results)} checks graded (their points kept)"}


def _failed(name: str, error: str, **more) -> Result:
    """A FAIL of check `name` that the parent records itself (the child could not)."""
    c = CHECKS[name]
    return Result(c.name, c.adapter, c.lesson, c.description, FAIL, error=error, **more)


def _imported(log) -> bool:
    return any("imported" in e for e in _events(log))


def _crash_note(crashes: list) -> str:
    """' (2 checks ended the interpreter, in run_gelu)', or '' for none."""
    return (f" ({len(crashes)} check{'s' * (len(crashes) > 1)} ended the interpreter, in "
            f"{', '.join(dict.fromkeys(crashes))})") if crashes else ""


def _failing_note(failures: list) -> str:
    """The gradebook's note for a graded file: the exercises that lose points, sorted, each marked with
    what went wrong when it is not a wrong answer: "(not implemented)", "(missing)", "(time limit)"
    when one of its checks was stopped at --check-timeout."""
    marks = {}
    for f in failures:
        mark = (" (time limit)" if f.get("stopped") else " (not implemented)" if f["status"] == NOT_IMPLEMENTED
                else " (missing)" if f["status"] == MISSING else "")
        if f["adapter"] not in marks or mark == " (time limit)":
            marks[f["adapter"]] = mark
    return ", ".join(a + marks[a] for a in sorted(marks))


def grade_class(lesson: dict, paths, timeout: float = 600.0, jobs: int = 1, progress: bool = True,
                reports=None, check_seconds: float = CHECK_SECONDS) -> list[dict]:
    """Grade every submission (see `submissions`), `jobs` at a time, each within `timeout` seconds
    and each of its checks within `check_seconds` (so one endless loop costs that exercise's checks);
    with `reports` (a folder), each file's report goes to reports/report_name(file). Rows come back
    in the submissions' order."""
    files = submissions(paths)
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs={jobs!r} must be an int >= 1")
    for name, x in (("timeout", timeout), ("check_seconds", check_seconds)):
        if not x > 0:
            raise ValueError(f"{name}={x!r} must be > 0 seconds")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    names = report_names(files)
    from tqdm import tqdm
    rows: dict = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(grade_one, lesson, f, timeout, threads,
                               None if reports is None else Path(reports) / names[f], check_seconds): f
                   for f in files}
        for fut in tqdm(as_completed(futures), total=len(files), desc=f"grading lesson {lesson['nn']}",
                        disable=not progress, leave=False):
            rows[futures[fut]] = fut.result()
    return [rows[f] for f in files]


def report_names(files: list[Path]) -> dict:
    """Each file's report name (`report_name`); when two paths give the same name (sec1/alice.py and
    sec1__alice.py), the later ones get ~2, ~3 before .txt, so no report overwrites another."""
    names, seen = {}, set()
    for f in files:
        base = report_name(f)
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base[:-4]}~{k}.txt"
        seen.add(name)
        names[f] = name
    return names


def not_submissions(paths) -> list[Path]:
    """Files in the given folders that are not graded (not .py): a notebook or a text handed in by
    mistake, which the gradebook would otherwise not mention."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix not in (".py", ".pyc")
                          and not any(part == "__pycache__" or part.startswith(".") for part in q.relative_to(p).parts))
    return out


def gradebook_csv(rows: list[dict]) -> str:
    """The rows as CSV: submission, status, points, max_points, one column per exercise, note."""
    names = list(dict.fromkeys(n for r in rows for n in r["exercises"]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["submission", "status", "points", "max_points", *names, "note"])
    for r in rows:
        w.writerow([r["submission"], r["status"], r["points"], r["max_points"],
                    *(r["exercises"].get(n, 0) for n in names), r["note"]])
    return buf.getvalue()


def gradebook_table(rows: list[dict]) -> str:
    """The rows as a text table (points as k/max), then how many files were graded."""
    head = ("submission", "status", "points", "failing or why")
    body = [(r["submission"], r["status"], f"{r['points']}/{r['max_points']}", r["note"]) for r in rows]
    w = [max(len(x[i]) for x in [head, *body]) for i in range(3)]
    lines = [f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:>{w[2]}}  {head[3]}",
             f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  {'-' * len(head[3])}"]
    lines += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in body]
    n = sum(r["status"] == "graded" for r in rows)
    part = sum(r["status"] == "timeout" and "checks graded" in r["note"] for r in rows)   # stopped, points kept
    lines.append(f"{n} of {len(rows)} file(s) graded" + (f"; {part} stopped at the time limit, with the points of "
                 f"the checks graded before" if part else "") + (f"; {len(rows) - n - part} could not be (see status)"
                                                                  if n + part < len(rows) else ""))
    return "\n".join(lines)
