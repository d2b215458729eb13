"""The classroom workflow: every lesson's stubs score zero, the reference scores full marks, a
student's copy is never lost, and `minift check` reports points a gradebook can read."""
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minift.cli import ROOT, list_lessons
from minift.conformance import CHECKS, NOT_IMPLEMENTED, classroom, load_impl, reference

pytestmark = pytest.mark.core
LESSONS = list_lessons()
GRADED = [les for les in LESSONS if any(c.lesson == f"lesson{les['nn']}" for c in CHECKS.values())]


@pytest.mark.parametrize("les", GRADED, ids=[les["dir"].name for les in GRADED])
def test_every_stub_file_scores_zero_and_matches_the_reference_signatures(les):
    stub = load_impl(les["dir"] / "exercise.py")
    needed = {c.adapter for c in CHECKS.values() if c.lesson == f"lesson{les['nn']}"}
    have = {n for n in dir(stub) if n.startswith("run_")}
    assert needed <= have, f"{les['dir'].name}/exercise.py lacks {sorted(needed - have)}"
    for name in needed:
        got = list(inspect.signature(getattr(stub, name)).parameters)
        want = list(inspect.signature(getattr(reference, name)).parameters)
        assert got == want, f"{name}: the stub takes {got}, the reference {want}"
    g = classroom.grade(les, les["dir"] / "exercise.py")
    assert g["max_points"] == sum(c.lesson == f"lesson{les['nn']}" for c in CHECKS.values())
    assert g["points"] == 0
    assert {r.status for r in g["results"]} == {NOT_IMPLEMENTED}     # stubs raise, they do not fail


def test_a_file_filled_with_the_reference_scores_full_marks(tmp_path):
    # lesson 10: several functions and checks, and cheap ones (every check's reference run is
    # already tested in tests/test_conformance.py; this is the grade's arithmetic)
    les = next(le for le in GRADED if le["nn"] == "10")
    stub = load_impl(les["dir"] / "exercise.py")
    names = sorted(n for n in dir(stub) if n.startswith("run_"))
    filled = tmp_path / "filled.py"
    filled.write_text(f"from minift.conformance.reference import {', '.join(names)}  # noqa: F401\n")
    g = classroom.grade(les, filled)
    assert g["max_points"] > 0 and g["points"] == g["max_points"]


def test_handing_out_never_loses_a_students_work(tmp_path):
    les = LESSONS[0]
    path, backup = classroom.hand_out(les, work_dir=tmp_path)
    assert backup is None and path.read_text() == (les["dir"] / "exercise.py").read_text()
    path.write_text("# my work\n")
    with pytest.raises(ValueError, match="--reset"):
        classroom.hand_out(les, work_dir=tmp_path)                   # refuses to overwrite
    assert path.read_text() == "# my work\n"
    path, backup = classroom.hand_out(les, reset=True, work_dir=tmp_path)
    assert backup.read_text() == "# my work\n"                       # kept
    assert path.read_text() == (les["dir"] / "exercise.py").read_text()
    assert classroom.default_impl(les, tmp_path) == path             # check grades the copy


def test_check_prints_json_points_and_exits_nonzero_when_an_exercise_fails(tmp_path):
    # wrong_impl's softmax (no max shift) and its correct gelu; lesson 00's other functions are MISSING
    (tmp_path / "wrong_impl.py").write_text((ROOT / "tests" / "wrong_impl.py").read_text())
    part = tmp_path / "softmax_and_gelu.py"                # the graded file's folder is importable
    part.write_text("from wrong_impl import run_softmax, run_gelu  # noqa: F401\n")
    r = subprocess.run([sys.executable, "-m", "minift.cli", "check", "00", "--impl", str(part), "--json"],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    g = json.loads(r.stdout)
    assert 0 < g["points"] < g["max_points"]
    assert g["failures"] and all(f["status"] in ("FAIL", "NOT IMPLEMENTED", "MISSING") for f in g["failures"])
    assert any(f["adapter"] == "run_softmax" and f["counterexample"] for f in g["failures"])


def test_grading_a_class_isolates_every_submission_and_writes_a_gradebook(tmp_path, capsys):
    """`minift grade`: a full-marks file that prints, one in a subfolder that does not parse and one that
    exits at import each get their own row, and the CSV holds them all; a file that never finishes
    is stopped at its time limit."""
    from minift.cli import main
    les = next(le for le in GRADED if le["nn"] == "10")
    names = sorted({c.adapter for c in CHECKS.values() if c.lesson == "lesson10"})
    sub = tmp_path / "sub"
    (sub / "bob").mkdir(parents=True)
    (sub / "alice.py").write_text(f"from minift.conformance.reference import {', '.join(names)}  # noqa: F401\n"
                                  f"print('{{\"points\": 0}}')\n")                  # its prints are not the grade
    carol = tmp_path / "carol.py"                       # graded alone below, with a short time limit
    carol.write_text("import time\nwhile True:\n    time.sleep(0.2)\n")
    (sub / "bob" / "dave.py").write_text("def run_loreft(:\n")
    (sub / "erin.py").write_text("import os\nos._exit(7)\n")
    (sub / "notes.txt").write_text("not a submission\n")
    out = tmp_path / "grades" / "g10.csv"
    reports = tmp_path / "reports"
    assert main(["grade", "10", str(sub), "--out", str(out), "--timeout", "300", "--jobs", "2",
                 "--reports", str(reports)]) == 0
    rows = list(__import__("csv").DictReader(out.open()))
    got = {r["submission"].replace(str(sub), "sub"): r for r in rows}
    assert list(got) == ["sub/alice.py", "sub/bob/dave.py", "sub/erin.py"]
    n = sum(c.lesson == "lesson10" for c in CHECKS.values())
    assert {r["max_points"] for r in rows} == {str(n)}
    assert (got["sub/alice.py"]["status"], got["sub/alice.py"]["points"]) == ("graded", str(n))
    assert sum(int(got["sub/alice.py"][a]) for a in names) == n
    dave = got["sub/bob/dave.py"]                                               # folders: at any depth
    assert (dave["status"], dave["points"]) == ("import error", "0") and dave["note"].startswith("line 1: SyntaxError")
    assert got["sub/erin.py"]["status"] == "crashed"
    assert got["sub/erin.py"]["note"].startswith("exited while being imported (exit status 7")
    assert "1 of 3 file(s) graded" in capsys.readouterr().out
    back = {p.name: p.read_text() for p in reports.iterdir()}             # one report per file, to hand back
    assert set(back) == {classroom.report_name(sub / f) for f in ("alice.py", "bob/dave.py", "erin.py")}
    assert f"total: {n}/{n} points" in back[classroom.report_name(sub / "alice.py")]
    assert "crashed: exited while being imported" in back[classroom.report_name(sub / "erin.py")]
    assert classroom.report_name("sub/bob/dave.py") == "sub__bob__dave.py.txt"
    row = classroom.grade_one(les, carol, timeout=2)      # never finishes: stopped, and the row says so
    assert (row["status"], row["points"], row["note"]) == ("timeout", 0, "stopped after 2 s while being imported")


def test_a_check_past_its_time_limit_fails_alone_and_shows_the_call_it_was_stopped_in():
    """run_check(..., seconds): an endless loop (one that even swallows Exception) fails its check after
    the limit, with the example it was stopped in; the alarm is put back as it was."""
    import signal
    import time

    from minift.conformance.harness import FAIL, PASS, run_check

    class Looping:
        @staticmethod
        def run_softmax(x, dim):
            while True:
                try:
                    time.sleep(0.01)
                except Exception:                  # noqa: BLE001 - the student's catch-all cannot hold it
                    pass
    before = signal.getsignal(signal.SIGALRM)
    t0 = time.perf_counter()
    r = run_check(CHECKS["softmax_sums_to_one"], Looping, seconds=0.5)
    assert time.perf_counter() - t0 < 10
    assert r.status == FAIL and r.error.startswith("stopped after 0.5 s, the time limit of one check: run_softmax")
    assert "run_softmax(" in r.calls and r.counterexample.startswith("softmax_sums_to_one(")
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert run_check(CHECKS["softmax_sums_to_one"], reference, seconds=60).status == PASS
    with pytest.raises(ValueError, match="seconds"):
        run_check(CHECKS["softmax_sums_to_one"], reference, seconds=0)
    signal.setitimer(signal.ITIMER_REAL, 300)                   # someone else's alarm: left as it is
    try:
        assert run_check(CHECKS["softmax_sums_to_one"], reference, seconds=60).status == PASS
        assert 250 < signal.getitimer(signal.ITIMER_REAL)[0] <= 300
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def test_verify_takes_the_same_time_limit_and_every_time_flag_refuses_what_is_not_one(tmp_path, capsys):
    import argparse

    from minift.conformance.verify import verify_main
    from minift.validate import seconds_arg
    f = tmp_path / "looping.py"
    f.write_text("import time\n\n\ndef run_softmax(x, dim):\n    while True:\n        time.sleep(0.05)\n")
    assert verify_main(["--impl", str(f), "--only", "softmax_sums_to_one", "--check-timeout", "0.5"]) == 1
    assert "stopped after 0.5 s, the time limit of one check: run_softmax" in capsys.readouterr().out
    assert seconds_arg("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="not a time limit"):
            seconds_arg(bad)


def test_one_endless_exercise_costs_its_own_checks_not_the_whole_file(tmp_path):
    les = next(le for le in GRADED if le["nn"] == "10")
    names = sorted({c.adapter for c in CHECKS.values() if c.lesson == "lesson10"})
    stuck = names[0]
    f = tmp_path / "frank.py"
    f.write_text(f"from minift.conformance.reference import {', '.join(names)}  # noqa: F401\n"
                 f"import time\n\n\ndef {stuck}(*args, **kwargs):\n    while True:\n        time.sleep(0.05)\n")
    n = sum(c.lesson == "lesson10" for c in CHECKS.values())
    lost = sum(c.lesson == "lesson10" and c.adapter == stuck for c in CHECKS.values())
    row = classroom.grade_one(les, f, timeout=240, check_seconds=1)
    assert (row["status"], row["points"]) == ("graded", n - lost)
    assert row["note"].endswith(f"{stuck} (time limit)") and row["note"].startswith("CHECK BY HAND")   # (it imports the reference)
    assert row["exercises"][stuck] == 0 and all(row["exercises"][a] > 0 for a in names if a != stuck)
    with pytest.raises(ValueError, match="check_seconds"):
        classroom.grade_class(les, [f], check_seconds=0)
    from minift.cli import CHECK_SECONDS
    assert CHECK_SECONDS == classroom.CHECK_SECONDS                     # what `--help` says is the default


def test_grade_refuses_what_is_not_a_submission(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.txt").write_text("x")
    for paths, match in (([tmp_path / "nope"], "no such file or folder"), ([tmp_path / "a.txt"], "not a .py file"),
                         ([tmp_path / "empty"], "without any .py file")):
        with pytest.raises(ValueError, match=match):
            classroom.submissions(paths)
    (tmp_path / "x.py").write_text("")
    assert classroom.submissions([tmp_path / "x.py", tmp_path, tmp_path / "x.py"]) == [tmp_path / "x.py"]
    with pytest.raises(ValueError, match="jobs"):
        classroom.grade_class(LESSONS[0], [tmp_path / "x.py"], jobs=0)


def test_two_files_that_differ_only_in_their_numbers_are_checked_on_the_same_examples(tmp_path, monkeypatch,
                                                                                     hypothesis_local_constants):
    """Hypothesis mixes literals of loaded local modules into its draws; a graded file is one. Without
    strategies.no_local_constants, a file with a few more numbers in it drew other examples (a student's
    own constants chose their tests)."""
    from minift.conformance import run_check
    monkeypatch.setenv("CI", "1")                                  # derandomized, as when grading
    body = ("from minift.conformance.reference import run_response_logps as _reference\n"
            "SEEN = []\n\n\n"
            "def run_response_logps(logits, input_ids, response_mask):\n"
            "    SEEN.append(repr(logits.flatten()[:4].tolist()))\n"
            "    return _reference(logits, input_ids, response_mask)\n")
    seen = []
    for i, extra in enumerate(["", "WIDTHS = (7, 9, 11, 13, 4096, 0.123, -77.5, 3.75, 1e-3, 2.5e4)\n"]):
        f = tmp_path / f"student_{i}.py"
        f.write_text(body + extra)
        impl = load_impl(str(f))
        assert run_check(CHECKS["response_logps_ignore_unscored"], impl).status == "PASS"
        seen.append(impl.SEEN)
    assert len(seen[0]) >= 10 and seen[0] == seen[1]           # (repr: a drawn NaN equals itself)


def test_the_suites_own_derandomized_draws_ignore_the_sources_numbers():
    """With CI set, tests/conftest.py gives every @given test of the suite the same treatment: no
    constants from minift's source, so editing a number in minift/ leaves the suite's examples as they
    were (without the fixture this pool holds the ~100 literals of minift/ and tests/)."""
    if not os.environ.get("CI"):
        pytest.skip("runs without CI keep hypothesis' local constants on purpose")
    providers = pytest.importorskip("hypothesis.internal.conjecture.providers")
    if not hasattr(providers, "_get_local_constants"):
        pytest.skip("this hypothesis draws no local constants")
    import minift.model, minift.quant.nf4            # noqa: F401  (local modules full of numbers)
    assert len(list(providers._get_local_constants())) == 0


L04 = "from minift.conformance.reference import run_bitfit_select, run_layer_select  # noqa: F401\n"


def test_a_function_that_ends_the_interpreter_costs_its_own_checks_and_the_rest_are_graded(tmp_path):
    """os._exit inside one exercise: that check fails (a new process grades the rest), and the note
    says which exercise ended the interpreter."""
    les = next(le for le in GRADED if le["nn"] == "04")
    f = tmp_path / "olivia.py"
    f.write_text(L04 + "import os\n\n\ndef run_trainable_share(*args, **kwargs):\n    os._exit(3)\n")
    row = classroom.grade_one(les, f, timeout=240, report=tmp_path / "olivia.txt")
    assert (row["status"], row["points"], row["max_points"]) == ("graded", 2, 3)
    assert row["exercises"] == {"run_bitfit_select": 1, "run_layer_select": 1, "run_trainable_share": 0}
    assert "1 check ended the interpreter, in run_trainable_share" in row["note"]
    assert "the interpreter ended during this check (exit status 3)" in (tmp_path / "olivia.txt").read_text()


def test_a_file_stopped_at_its_time_limit_keeps_the_points_it_had_earned(tmp_path):
    les = next(le for le in GRADED if le["nn"] == "04")
    f = tmp_path / "tim.py"                             # the last check loops, and its own limit is longer
    f.write_text(L04 + "\n\ndef run_trainable_share(*args, **kwargs):\n    while True:\n        pass\n")
    row = classroom.grade_one(les, f, timeout=25, check_seconds=600, report=tmp_path / "tim.txt")
    assert (row["status"], row["points"]) == ("timeout", 2)
    assert "stopped after 25 s in run_trainable_share, 2 of 3 checks graded" in row["note"]
    assert "the file's time limit struck during this check" in (tmp_path / "tim.txt").read_text()


def test_sys_exit_in_a_function_fails_its_checks_and_at_import_is_an_import_error(tmp_path):
    from minift.conformance.harness import FAIL, run_check
    les = next(le for le in GRADED if le["nn"] == "04")
    f = tmp_path / "gil.py"
    f.write_text(L04 + "import sys\n\n\ndef run_trainable_share(*args, **kwargs):\n    sys.exit('bye')\n")
    g = classroom.grade(les, f)
    assert (g["points"], g["max_points"]) == (2, 3)
    r = run_check(CHECKS["trainable_share_matches_count"], load_impl(str(f)))
    assert r.status == FAIL and "run_trainable_share called sys.exit('bye')" in r.error
    f.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ValueError, match="calls sys.exit while being imported"):
        load_impl(str(f))


def test_a_file_without_the_lessons_functions_scores_zero_with_every_check_missing(tmp_path):
    les = next(le for le in GRADED if le["nn"] == "04")
    for text in ("", "def bitfit_select(name):\n    return True\n"):      # empty, or the names without run_
        f = tmp_path / "olga.py"
        f.write_text(text)
        g = classroom.grade(les, f)
        assert (g["points"], g["max_points"]) == (0, 3) and {r.status for r in g["results"]} == {"MISSING"}


def test_a_file_that_reaches_into_minift_is_flagged_for_the_teacher(tmp_path):
    cases = {
        "from minift.conformance.lesson00_transformer import *\n": "line 1: minift.conformance.lesson00_transformer",
        "import minift.peft.lora as L\n": "line 1: minift.peft.lora (at module level)",
        "def run_x(a):\n    from minift.model import GPT\n    return a\n": "line 2: minift.model (in run_x)",
        "import importlib\nM = importlib.import_module('minift.conformance.reference')\n": "minift.conformance.reference",
        "def _h(a):\n    from minift.peft import lora\n\n\ndef run_x(a):\n    return _h(a)\n":
            "line 2: minift.peft (in _h)",                                      # a helper of a run_* function
        "def try_it():\n    from minift.conformance import lesson01_training_loop\n": "",   # a starter may
        "if __name__ == '__main__':\n    from minift.course import run_starter\n": "",     # every stub's last lines
        "import math\n\n\ndef run_x(a):\n    return math.sqrt(a)\n": "",
        "def run_x(:\n": "",                                                     # does not parse: no flag
    }
    for text, flag in cases.items():
        f = tmp_path / "s.py"
        f.write_text(text)
        got = classroom.uses_minift(f)
        assert (flag in got and got.startswith("uses minift")) if flag else got == "", (text, got)
    flagged = {les["nn"]: classroom.uses_minift(les["dir"] / "exercise.py") for les in GRADED}
    assert not any(flagged.values()), flagged                                # the stubs themselves: never


def test_reports_never_overwrite_each_other_and_other_files_are_named(tmp_path):
    files = [Path("sec1/alice.py"), Path("sec1__alice.py"), Path("bob.py")]
    names = classroom.report_names(files)
    assert len(set(names.values())) == 3 and names[files[1]] == "sec1__alice.py~2.txt"
    (tmp_path / "a.py").write_text("")
    (tmp_path / "uma.ipynb").write_text("{}")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    assert classroom.not_submissions([tmp_path]) == [tmp_path / "uma.ipynb"]


def test_check_json_stays_parseable_when_the_file_prints_and_an_import_error_is_json_too(tmp_path):
    f = tmp_path / "judy.py"
    f.write_text(L04 + "import os\nprint('x' * 5000)\nos.write(1, b'raw bytes on fd 1\\n')\n")
    r = subprocess.run([sys.executable, "-m", "minift.cli", "check", "04", "--impl", str(f), "--json"],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    g = json.loads(r.stdout)
    assert r.returncode == 1 and (g["points"], g["max_points"]) == (2, 3) and "raw bytes" in r.stderr
    f.write_text("def run_x(:\n")
    r = subprocess.run([sys.executable, "-m", "minift.cli", "check", "04", "--impl", str(f), "--json"],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    g = json.loads(r.stdout)
    assert r.returncode == 2 and g["status"] == "import error" and "SyntaxError" in g["error"]


def test_a_file_stopped_while_imported_still_gets_its_report_and_a_nonzero_exit_after_grading_keeps_the_grade(tmp_path):
    les = next(le for le in GRADED if le["nn"] == "04")
    slow = tmp_path / "bob.py"                         # stopped while imported, and flagged: it imports minift
    slow.write_text("import time\nfrom minift.conformance import reference  # noqa: F401\ntime.sleep(100)\n")
    row = classroom.grade_one(les, slow, timeout=5, report=tmp_path / "bob.txt")
    assert (row["status"], row["points"]) == ("timeout", 0) and "while being imported" in row["note"]
    text = (tmp_path / "bob.txt").read_text()
    assert text.startswith("note: uses minift") and "timeout: stopped after 5 s while being imported" in text
    late = tmp_path / "ann.py"                         # right answers, then an exit status 3 at interpreter exit
    late.write_text(L04 + "import atexit\nimport os\nfrom minift.conformance.reference import run_trainable_share"
                    "  # noqa: F401\natexit.register(os._exit, 3)\n")
    row = classroom.grade_one(les, late, timeout=240)
    assert (row["status"], row["points"]) == ("graded", 3)


def test_check_random_draws_random_examples_even_under_ci(monkeypatch):
    """`minift check` grades with CI=1 (what strategies.derandomize reads), and --random without CI,
    even when the shell has CI set; the variable is put back afterwards."""
    from minift import cli
    monkeypatch.setenv("CI", "yes")
    seen = []
    monkeypatch.setattr(classroom, "grade", lambda *a, **k: seen.append(os.environ.get("CI")) or {"points": 0, "max_points": 0})
    monkeypatch.setattr(classroom, "report_text", lambda g: "")
    for flags in ([], ["--random"]):
        cli.main(["check", "04", "--impl", str(ROOT / "lessons" / "04_selective" / "exercise.py"), *flags])
    assert seen == ["1", None] and os.environ["CI"] == "yes"
