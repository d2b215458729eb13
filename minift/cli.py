"""The `minift` command.

    minift lessons                     the course, in order, with measured times
    minift run NN|all [--fast] [--figures] [--device cuda]   run a lesson's walkthrough (or all, in order)
    minift exercise NN [--reset]       copy a lesson's exercise stubs to exercises/NN_name.py to work in
    minift check NN [--impl FILE]      grade it: points per exercise (its conformance checks), counterexamples
    minift golden [--impl FILE]        regenerate data/golden/, or run an implementation on its inputs
    minift verify [--impl FILE] [--only NAME,...]   property checks against an implementation
    minift bench NAME [--fast] [--device cuda]  benchmarks: train, quant, kernels (tables with ratios against a baseline)
    minift pretrain [--out DIR]        train the tokenizer and base model shipped in data/
    minift pretrain --size S           one model size of lesson 20 (tiny, small) -> data/sizes/S/
    minift data [--out DIR]            regenerate TinyWorld as JSONL
    minift notebook NN|all [--out PATH]   a lesson as a Jupyter notebook (README + walkthrough cells, figures inline)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .report import KERNELS_ENV, REFERENCE_KERNELS, REFERENCE_MACHINE, kernels_to_reproduce
from .validate import count_arg, seconds_arg, seed_arg

ROOT = Path(__file__).resolve().parent.parent
LESSONS_DIR = ROOT / "lessons"


CHECK_SECONDS = 60.0    # the default time limit of one conformance check (minift.conformance.classroom's, kept equal)


def _usage_error(message: str) -> int:
    """One line on stderr and exit status 2: the command could not run (a failed check is 1)."""
    print(message, file=sys.stderr)
    return 2


def list_lessons() -> list[dict]:
    """Lesson folders NN_name with a walkthrough.py, in order. EXPECTED_SECONDS and FAST_SECONDS
    are read from the walkthrough's source (without importing it)."""
    if not LESSONS_DIR.is_dir():
        raise SystemExit(_usage_error(f"minift: no lessons/ folder next to the package ({LESSONS_DIR}); "
                         f"run from a clone installed with `pip install -e .`"))
    out = []
    for d in sorted(LESSONS_DIR.iterdir()):
        m = re.fullmatch(r"(\d\d)_(\w+)", d.name)
        if not (m and (d / "walkthrough.py").is_file()):
            continue
        src = (d / "walkthrough.py").read_text()
        exp = re.search(r"^EXPECTED_SECONDS\s*=\s*(\d+)", src, re.M)
        fast = re.search(r"^FAST_SECONDS\s*=\s*(\d+)", src, re.M)
        title = re.search(r'^"""(.*)', src, re.M)
        out.append({"nn": m.group(1), "name": m.group(2), "dir": d,
                    "title": title.group(1).strip() if title else m.group(2),
                    "expected": int(exp.group(1)) if exp else None,
                    "fast": int(fast.group(1)) if fast else None})
    return out


def _find_lesson(nn: str) -> dict:
    lessons = list_lessons()
    for les in lessons:
        if les["nn"] == nn.zfill(2) or les["dir"].name == nn:
            return les
    raise SystemExit(_usage_error(f"minift: no lesson {nn!r}; lessons are {[les['nn'] for les in lessons]}"))


TIMES_FILE = ROOT / "runs" / "lesson_times.json"      # what `minift run` measured on this machine


def _load_times() -> dict:
    import json
    try:
        return json.loads(TIMES_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _record_time(nn: str, fast: bool, seconds: float, rc: int, device: Optional[str] = None) -> None:
    """Remember the last run of lesson NN (default and --fast separately, and a run on another
    device than the CPU under its own key, "default@cuda"), atomically."""
    import json
    times = _load_times()
    which = ("fast" if fast else "default") + ("" if device in (None, "cpu") else f"@{device}")
    times.setdefault(nn, {})[which] = {
        "seconds": round(seconds, 1), "exit": rc, "date": time.strftime("%Y-%m-%d %H:%M")}
    TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = TIMES_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
    tmp.replace(TIMES_FILE)


def cmd_lessons(args) -> int:
    times = _load_times()

    def measured(nn, which):
        t = times.get(nn, {}).get(which)
        return "-" if not t else f"{t['seconds']:.0f}s" + ("" if t["exit"] == 0 else "!")
    print(f"{'NN':<4}{'lesson':<24}{'time':>8}{'--fast':>8}{'here':>8}{'--fast':>8}  title")
    for les in list_lessons():
        t = f"~{les['expected']}s" if les["expected"] else "?"
        f = f"~{les['fast']}s" if les["fast"] else "?"
        print(f"{les['nn']:<4}{les['name']:<24}{t:>8}{f:>8}{measured(les['nn'], 'default'):>8}"
              f"{measured(les['nn'], 'fast'):>8}  {les['title']}")
    print(f"\ntime, --fast: the default run's and --fast's CPU seconds on the machine the READMEs are measured "
          f"on ({REFERENCE_MACHINE}), one torch thread: their wall time on an idle core (each walkthrough's "
          f"EXPECTED_SECONDS / FAST_SECONDS, the one place these are kept). here: the wall time of the last "
          f"`minift run` on this machine ({TIMES_FILE}; ! = it failed; other jobs on the cores inflate it)")
    return 0


def walkthrough_argv(les: dict, args) -> list[str]:
    """The command `minift run` starts for lesson `les`: its walkthrough with the flags passed on
    (its own flags, e.g. --seeds 3, after minift's)."""
    return [sys.executable, str(les["dir"] / "walkthrough.py")] + (["--fast"] if args.fast else []) \
        + (["--figures"] if args.figures else []) + (["--device", args.device] if args.device else []) \
        + args.lesson_flags


def walkthrough_env(environ: dict, capability: str) -> dict:
    """The environment `minift run` starts walkthroughs in: this one, plus the READMEs' CPU kernels where this
    CPU runs wider ones that it can step down from (AVX-512 to AVX2), unless ATEN_CPU_CAPABILITY is set."""
    env = dict(environ)
    if want := kernels_to_reproduce(capability):
        env.setdefault(KERNELS_ENV, want)
    return env


def cmd_run(args) -> int:
    if args.lesson == "all" and args.lesson_flags:
        return _usage_error(f"minift run all: a lesson's own flags ({' '.join(args.lesson_flags)}) go with one "
                            f"lesson: minift run NN {' '.join(args.lesson_flags)}")
    lessons = list_lessons() if args.lesson == "all" else [_find_lesson(args.lesson)]
    import torch
    env = walkthrough_env(os.environ, torch.backends.cpu.get_cpu_capability())
    if env.get(KERNELS_ENV) != os.environ.get(KERNELS_ENV):
        print(f"(torch's {REFERENCE_KERNELS} CPU kernels, as the READMEs' numbers were measured: "
              f"{KERNELS_ENV}={env[KERNELS_ENV]}; set it yourself to choose others)", flush=True)
    for les in lessons:
        print(f"\n=== lesson {les['nn']}: {les['name']} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(walkthrough_argv(les, args), cwd=str(ROOT), env=env)
        secs = time.perf_counter() - t0
        if not args.lesson_flags:                  # `minift lessons` compares the default and --fast runs only
            _record_time(les["nn"], args.fast, secs, rc, args.device)
        print(f"=== lesson {les['nn']} finished in {secs:.1f}s (exit {rc}) ===", flush=True)
        if rc:
            return rc
    return 0


def _need(module: str, what: str) -> None:
    """verify/check use the test tools (hypothesis, pytest), which are an extra, not a dependency."""
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise SystemExit(_usage_error(f"minift {what} needs {module}: install the test extra with "
                         f"`python -m pip install -e \".[test]\"`"))


def cmd_check(args) -> int:
    _need("hypothesis", "check")
    les = _find_lesson(args.lesson)
    if args.pytest:
        _need("pytest", "check --pytest")
        from .conformance.classroom import default_impl
        impl = os.path.abspath(args.impl) if args.impl else str(default_impl(les).resolve())   # pytest runs in ROOT
        if not os.path.isfile(impl):
            return _usage_error(f"minift check: no such file {impl}")
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", f"lesson{les['nn']}", "--impl", impl, str(ROOT / "tests")]
        print("+", " ".join(cmd), flush=True)
        return subprocess.call(cmd, cwd=str(ROOT))
    from .conformance import classroom
    impl = Path(args.impl) if args.impl else classroom.default_impl(les)
    if not impl.is_file():
        return _usage_error(f"minift check: no such file {impl}")
    quiet = args.json and not (args.json_out or args.report_out)
    try:
        with _stdout_to_stderr(quiet), _derandomized(not args.random):   # grade's examples; prints kept off stdout
            g = classroom.grade(les, impl, seconds=args.check_timeout, log=args.log)
    except ValueError as e:                    # not a Python file, or it does not import
        if quiet:
            print(json.dumps({"lesson": les["nn"], "impl": str(impl), "status": "import error", "error": str(e),
                              "points": 0, "max_points": len(classroom.check_names(les))}, indent=1))
        return _usage_error(f"minift check: {e}")
    if args.report_out:
        classroom.write_whole(args.report_out, classroom.report_text(g) + "\n")
    if args.json_out:
        classroom.write_whole(args.json_out, classroom.as_json(g))
    if not (args.json_out or args.report_out):
        print(classroom.as_json(g) if args.json else classroom.report_text(g))
    return 0 if g["points"] == g["max_points"] else 1


@contextlib.contextmanager
def _derandomized(on: bool):
    """While on, CI=1: the checks draw the derandomized examples `minift grade` draws; while off (--random),
    no CI, which would derandomize them too. Put back after."""
    before = os.environ.get("CI")
    if on:
        os.environ["CI"] = "1"
    else:
        os.environ.pop("CI", None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before


@contextlib.contextmanager
def _stdout_to_stderr(on: bool):
    """While on, whatever writes to standard output (print, or C code on file descriptor 1) goes to
    standard error instead."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_grade(args) -> int:
    _need("hypothesis", "grade")
    from .conformance import classroom
    les = _find_lesson(args.lesson)
    try:
        rows = classroom.grade_class(les, args.paths, timeout=args.timeout, jobs=args.jobs, reports=args.reports,
                                     check_seconds=args.check_timeout)
    except ValueError as e:
        return _usage_error(f"minift grade: {e}")
    print(classroom.gradebook_table(rows))
    other = classroom.not_submissions(args.paths)
    if other:
        print(f"not graded, not .py files ({len(other)}): {', '.join(map(str, other[:10]))}"
              + (f" and {len(other) - 10} more" if len(other) > 10 else ""))
    if args.out:
        classroom.write_whole(args.out, classroom.gradebook_csv(rows))   # never left half-written
        print(f"wrote {args.out}")
    if args.reports:
        print(f"wrote one report per file to {Path(args.reports)}/ (what `minift check` prints: every failure with "
              f"its counterexample)")
    return 0


def cmd_exercise(args) -> int:
    from .conformance import classroom
    les = _find_lesson(args.lesson)
    try:
        path, backup = classroom.hand_out(les, reset=args.reset, work_dir=Path(args.dir))
    except ValueError as e:
        raise SystemExit(_usage_error(f"minift exercise: {e}"))
    if backup:
        print(f"your previous file is kept as {backup}")
    print(f"wrote {path}: the stubs of lesson {les['nn']}. Fill them in, then grade with `minift check {les['nn']}`")
    return 0


def cmd_verify(args, rest) -> int:
    _need("hypothesis", "verify")
    from .conformance import verify_main
    return verify_main(rest)


def cmd_bench(args) -> int:
    from .bench import run
    return run(args.name, fast=args.fast, device=args.device)


def cmd_pretrain(args) -> int:
    from .pretrain import SIZES, ShippedModelError, pretrain
    if args.size is not None and args.size not in SIZES:
        raise SystemExit(_usage_error(f"minift pretrain: --size {args.size!r} is not a model size; choose from {sorted(SIZES)}"))
    out = args.out
    if args.fast and out is None:       # the pipeline check never lands on the shipped model the lessons load
        out = os.path.join("runs", "pretrain_fast" + (f"_{args.size}" if args.size else ""))
    try:
        pretrain(out=out, steps=args.steps, fast=args.fast, size=args.size)
    except ShippedModelError as e:                   # refused before any work
        return _usage_error(f"minift pretrain: {e}")
    return 0


def cmd_data(args) -> int:
    from .world import write_jsonl
    manifest = write_jsonl(args.out, seed=args.seed)
    print(f"wrote {len(manifest['files'])} files + MANIFEST.json to {args.out} "
          f"(fingerprint {manifest['fingerprint'][:16]})")
    return 0


def cmd_golden(args) -> int:
    _need("hypothesis", "golden")
    from .conformance import golden
    if args.impl:
        out = args.out or "golden-outputs"
        impl = args.impl
        if impl in ("minift", "reference"):                   # minift's own reference functions (a module, not a file)
            from .conformance import reference as impl
        try:
            info = golden.run_impl(impl, out, args.against or golden.GOLDEN_DIR, args.only)
        except ValueError as e:
            return _usage_error(f"minift golden: {e}")
        print(f"wrote the outputs of {args.impl} for {info['cases'] - info['missing_cases']} of {info['cases']} "
              f"golden cases to {out}/; "
              f"compare them with `minift verify --golden {out}" + (f" --only {args.only}" if args.only else "") + "`")
        if info["missing"]:
            print(f"left without outputs (counted missing): the cases of {', '.join(info['missing'])}, which "
                  f"{args.impl} does not define")
        return 0
    if args.against:
        return _usage_error("minift golden: --against applies with --impl FILE")
    out = args.out or str(golden.GOLDEN_DIR)
    try:
        golden.select(args.only)                             # an unknown name: one line before any recording
    except ValueError as e:
        return _usage_error(f"minift golden: {e}")
    info = golden.generate(out, args.only)
    print(f"wrote {info['cases']} cases of {info['adapters']} adapters to {out}/ (index.json, tensors.safetensors)"
          + (f"; only the cases of --only {args.only} were recorded again" if args.only else ""))
    if info["skipped"]:
        print(f"not recorded (a model among their inputs or outputs, or a draw from torch's random streams; the "
              f"reasons are in index.json): {', '.join(info['skipped'])}")
    return 0


def cmd_notebook(args) -> int:
    from .notebook import write
    lessons = list_lessons() if args.lesson == "all" else [_find_lesson(args.lesson)]
    for les in lessons:
        name = f"{les['dir'].name}.ipynb"
        out = Path(args.out or "notebooks")
        if len(lessons) == 1 and args.out and not out.is_dir() and out.suffix == ".ipynb":
            path = out                                        # NN --out FILE.ipynb; otherwise --out is a folder
        else:
            path = out / name
        print(f"wrote {write(les['dir'], path)}: lesson {les['nn']} as a notebook (open it with Jupyter; its "
              f"first cell finds this clone)")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="minift", description="minift: fine-tuning from scratch")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("lessons", help="list the lessons in order")
    r = sub.add_parser("run", help="run a lesson walkthrough: NN or all (on torch's AVX2 CPU kernels where the CPU "
                       "also has AVX-512, as the READMEs were measured: ATEN_CPU_CAPABILITY=avx2 unless you set it); "
                       "a lesson's own flags (`minift run 05 --seeds 5`) are passed on to its walkthrough",
                       epilog="Any other flag is the lesson's own, after the lesson: `minift run NN --help-lesson` "
                       "lists them (its walkthrough's --help).", allow_abbrev=False)   # --dev is no --device
    r.add_argument("lesson")
    r.add_argument("--fast", action="store_true", help="the quick version used by the tests")
    r.add_argument("--figures", action="store_true", help="also draw the lesson's figures (needs the plots extra: "
                   "pip install -e \".[plots]\"); a --fast run writes them to a temporary folder")
    r.add_argument("--device", default=None, help="cpu (the default: the READMEs' numbers), cuda or cuda:N: "
                   "where the walkthrough puts its models and tensors (it refuses, exit status 2, a device torch "
                   "cannot use)")
    c = sub.add_parser("check", help="grade a lesson's exercise file")
    c.add_argument("lesson")
    c.add_argument("--impl", default=None, help="file with the run_* functions (default: exercises/NN_name.py if "
                   "`minift exercise NN` made one, else the lesson's exercise.py)")
    c.add_argument("--json", action="store_true", help="print the grade as JSON (points per exercise, failures)")
    c.add_argument("--pytest", action="store_true", help="run pytest -m lessonNN --impl FILE instead (every test of the lesson)")
    c.add_argument("--json-out", default=None, metavar="FILE", help="write the JSON grade to FILE instead of printing "
                   "(what `minift grade` reads: a submission's own prints cannot spoil it)")
    c.add_argument("--report-out", default=None, metavar="FILE", help="write the text report to FILE instead of printing")
    c.add_argument("--random", action="store_true", help="draw new random examples (default: the derandomized "
                   "examples `minift grade` uses, the same on every run with the same hypothesis version)")
    c.add_argument("--log", default=None, help=argparse.SUPPRESS)       # minift grade's record of a child's progress
    c.add_argument("--check-timeout", type=seconds_arg, default=CHECK_SECONDS, metavar="S",
                   help=f"seconds one check may run (default {CHECK_SECONDS:g}; the reference's slowest takes about 1): "
                        "past it the check fails, and the others still run")
    gr = sub.add_parser("grade", help="grade a class: every submission (files or folders of .py files) in a process "
                        "of its own, with a time limit; a table, and a CSV gradebook with --out")
    gr.add_argument("lesson")
    gr.add_argument("paths", nargs="+", metavar="PATH", help="a student's .py file, or a folder of them (any depth)")
    gr.add_argument("--out", default=None, metavar="CSV", help="write the gradebook here: submission, status, points, "
                    "max_points, one column per exercise, note")
    gr.add_argument("--timeout", type=seconds_arg, default=600.0, help="seconds per submission (default 600); past it the "
                    "row says timeout")
    gr.add_argument("--check-timeout", type=seconds_arg, default=CHECK_SECONDS, metavar="S",
                    help=f"seconds one check may run (default {CHECK_SECONDS:g}): an endless loop in one exercise costs "
                         "that exercise's checks, not the whole file")
    gr.add_argument("--jobs", "-j", type=count_arg, default=1, help="submissions graded at once (default 1)")
    gr.add_argument("--reports", default=None, metavar="DIR", help="also write each file's report (what `minift "
                    "check` prints, or why it could not be graded) to DIR/PATH.txt, to hand back")
    e = sub.add_parser("exercise", help="copy a lesson's exercise stubs to exercises/NN_name.py (--reset: put them back)")
    e.add_argument("lesson")
    e.add_argument("--reset", action="store_true", help="overwrite your copy with the stubs (kept as .bak)")
    e.add_argument("--dir", default="exercises", help="the folder for your copies (default: exercises/)")
    sub.add_parser("verify", help="property checks against an implementation (--impl FILE, --only NAMES, --list)",
                   add_help=False)
    b = sub.add_parser("bench", help="benchmarks: train, quant, kernels")
    b.add_argument("name")
    b.add_argument("--fast", action="store_true")
    b.add_argument("--device", default="cpu", help="cpu (default), or cuda / cuda:N for `kernels`: the fused "
                   "NF4 kernel against cuBLAS on a GPU (exit status 2 where there is none)")
    pt = sub.add_parser("pretrain", help="train the shipped tokenizer + base model")
    pt.add_argument("--out", default=None, help="folder to write (default: data/base/, or data/sizes/SIZE/ with --size; "
                    "with --fast runs/pretrain_fast/; --steps other than the recipe's needs --out)")
    pt.add_argument("--size", default=None, help="train one model size of lesson 20 (tiny, small, base) on the shipped "
                    "tokenizer, same recipe")
    pt.add_argument("--steps", type=count_arg, default=None, help="optimizer steps (default: the recipe's)")
    pt.add_argument("--fast", action="store_true", help="a tiny run, to check the pipeline (into runs/pretrain_fast/ "
                    "unless --out)")
    g = sub.add_parser("golden", help="regenerate data/golden/ (golden vectors), or run --impl FILE on them",
                       description="Golden vectors: fixed inputs of the property checks and minift's outputs "
                       "(data/golden/: index.json + tensors.safetensors, the layout in minift/conformance/golden.py). "
                       "Without --impl, regenerate them from minift's reference; with --impl FILE, run FILE's run_* "
                       "functions on their inputs and write the outputs to --out, for `minift verify --golden`.")
    g.add_argument("--out", default=None, help="folder to write (default: data/golden/, or golden-outputs/ with --impl)")
    g.add_argument("--impl", default=None, help="a Python file of run_* functions to run on the golden inputs ('minift': the reference)")
    g.add_argument("--only", default=None, help="only these checks (names, run_* functions, lessons): without --impl, "
                   "their cases are recorded again and replace theirs in an existing folder, the rest are kept; "
                   "with --impl, only their cases are run")
    g.add_argument("--against", default=None, help="with --impl: the golden folder to read (default: data/golden/)")
    nb = sub.add_parser("notebook", help="write a lesson (NN or all) as a Jupyter notebook: its README as markdown, "
                        "its walkthrough as code cells, its figures inline")
    nb.add_argument("lesson")
    nb.add_argument("--out", default=None, help="a .ipynb file for one lesson, or a folder "
                    "(default: notebooks/NN_name.ipynb)")
    d = sub.add_parser("data", help="regenerate TinyWorld as JSONL")
    d.add_argument("--out", default=os.path.join("runs", "tinyworld"))
    d.add_argument("--seed", type=seed_arg, default=0, help="the world's seed (default 0: the shipped world)")
    if argv[:1] == ["verify"]:
        return cmd_verify(None, argv[1:])
    args, rest = p.parse_known_args(argv)
    if args.cmd == "run":
        before = argv[1:argv.index(args.lesson, 1)]
        if any(x in rest for x in before):            # `run --seeds 3 05` would take 3 for the lesson
            return _usage_error(f"minift run: the lesson comes before its own flags, as in `minift run 05 --seeds "
                                f"5` (got: minift run {' '.join(argv[1:])})")
        args.lesson_flags = ["--help" if x == "--help-lesson" else x for x in rest]   # the walkthrough's to judge
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"lessons": cmd_lessons, "run": cmd_run, "check": cmd_check, "grade": cmd_grade, "bench": cmd_bench,
            "pretrain": cmd_pretrain, "data": cmd_data, "golden": cmd_golden, "exercise": cmd_exercise,
            "notebook": cmd_notebook}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
