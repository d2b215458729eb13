"""The classroom workflow: hand out a lesson's exercise, grade it with one command.

    minift exercise 05                  copy lessons/05_lora/exercise.py to exercises/05_lora.py (yours to edit)
    minift exercise 05 --reset          put the stubs back (your file is kept as exercises/05_lora.py.bak)
    minift check 05                     grade exercises/05_lora.py (or, if you have none, the lesson's own file)
    minift check 05 --impl FILE         grade any file, e.g. a student's submission
    minift check 05 --json              the same, as one JSON object (for a gradebook or CI)

An exercise is one `run_*` function of the lesson. Its points are the conformance checks that use it
(one point per check, registered with the lesson's pytest marker, see harness.py); a check passes
only if every hypothesis example passes. The report is a table per exercise, then each failure with
the property it tests and hypothesis' smallest counterexample.

The lesson's own exercise.py is never written to, so `git pull` never conflicts with a student's work.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .harness import CHECKS, FAIL, MISSING, NOT_IMPLEMENTED, PASS
from .runner import run_checks

WORK_DIR = Path("exercises")          # relative to where the student runs minift


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


def grade(lesson: dict, impl_path) -> dict:
    """Run lesson NN's checks against the file; {"lesson", "impl", "points", "max_points",
    "exercises": [{"adapter", "points", "max_points", "checks": [...]}], "results": [Result]}."""
    marker = f"lesson{lesson['nn']}"
    names = [n for n, c in CHECKS.items() if c.lesson == marker]
    if not names:
        return {"lesson": lesson["nn"], "impl": str(impl_path), "points": 0, "max_points": 0,
                "exercises": [], "results": []}
    from .strategies import register_profiles
    register_profiles()
    results = run_checks(str(impl_path), names)
    exercises: dict = {}
    for r in results:
        e = exercises.setdefault(r.adapter, {"adapter": r.adapter, "points": 0, "max_points": 0, "checks": []})
        e["max_points"] += 1
        e["points"] += r.status == PASS
        e["checks"].append({"name": r.name, "status": r.status})
    return {"lesson": lesson["nn"], "impl": str(impl_path), "points": sum(e["points"] for e in exercises.values()),
            "max_points": len(results), "exercises": list(exercises.values()), "results": results}


def report(g: dict) -> str:
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
                      "counterexample": r.counterexample, "calls": r.calls, "follows": list(r.follows)} for r in g["results"] if r.status in (FAIL, NOT_IMPLEMENTED, MISSING)]},
        indent=1)
