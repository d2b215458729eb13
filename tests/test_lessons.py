"""Every lesson folder is complete and its walkthrough runs in --fast mode, honestly: a smoke test
that says so at its top and bottom and judges no claim."""
import re
import signal
from pathlib import Path

import pytest
import background

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


# The sections a lesson runs only behind a flag of its own: each is smoke-tested too, as `--fast FLAG`.
# (A flag with a value is written --flag=value.) Every --seeds section runs as --seeds=2 (14's with
# --lora), every --sweep as --sweep --sweep-seeds=2 (which runs the plain sweep's code too); course.add_seeds,
# add_sweep, seeds_section, Bench.sweep and Bench.seed_spread themselves are tested in test_course.py.
SWEEP = "--sweep --sweep-seeds=2"
FLAG_SECTIONS = {"03": ["--chat", "--plain"], "04": ["--seeds=2", SWEEP], "05": ["--seeds=2", SWEEP],
                 "06": ["--seeds=2", SWEEP], "07": ["--generation", "--seeds=2", SWEEP], "08": ["--seeds=2", SWEEP],
                 "09": ["--seeds=2", SWEEP], "10": ["--seeds=2", SWEEP], "12": ["--low-bits", "--seeds=2"], "14": ["--lora --seeds=2"],
                 "15": ["--sentiment", "--long", "--seeds=2"], "16": ["--seeds=2"], "17": ["--seeds=2"],
                 "18": ["--seeds=2"], "20": ["--pretrain-axis"], "22": ["--seeds=2"]}
# A section's flags are one string: "--lora --seeds=2" runs the two together.
RUNS = [(les, ()) for les in LESSONS] + [(les, tuple(flags.split())) for les in LESSONS
                                         for flags in FLAG_SECTIONS.get(les["nn"], [])]


def test_every_flag_section_names_a_flag_of_its_walkthrough():
    for les in LESSONS:
        src = (les["dir"] / "walkthrough.py").read_text()
        for flag in " ".join(FLAG_SECTIONS.get(les["nn"], [])).split():
            name = flag.split("=")[0]
            given = (f'"{name}"' in src or (name == "--seeds" and "course.add_seeds(parser" in src)
                     or (name in ("--sweep", "--sweep-seeds") and "course.add_sweep(parser" in src))
            assert given, f"{les['dir'].name}: FLAG_SECTIONS names {name}, which its walkthrough lacks"


@pytest.mark.parametrize("les, flags", [pytest.param(les, flags, id=" ".join([les["dir"].name, *flags]),
                                                     marks=getattr(pytest.mark, f"lesson{les['nn']}"))
                                        for les, flags in RUNS])
def test_walkthrough_runs_in_fast_mode(les, flags):
    """The run itself starts in the background when collection ends (tests/background.py)."""
    r, seconds = background.walkthrough_result(les["dir"], str(ROOT), flags)
    alarm = getattr(signal, "SIGALRM", None)                                    # the fork server's timeout
    why = "ran out of time" if alarm is not None and r.returncode == -alarm else "failed"
    cmd = " ".join([les["dir"].name, "--fast", *flags])
    assert r.returncode == 0, f"{cmd} {why}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) >= 5, "a walkthrough prints what its README promises"
    note = FAST_NOTE.format(lesson=les["nn"])
    assert lines[0] == note and lines[-1] == note, \
        f"{cmd}: its first and last lines say it is a smoke test (course.start / course.end)"
    verdicts = [x for x in lines if VERDICT.search(x)]
    assert not verdicts, f"{cmd} judges a claim (use course.verdict): {verdicts[:3]}"
    print(f"{cmd}: {seconds:.1f}s")


def test_an_xdist_worker_starts_no_background_threads(monkeypatch):
    """Under `pytest -n N` each xdist worker is a whole pytest session: background threads there would run
    every walkthrough and the offloaded files once per worker (tests/background.py, workers())."""
    monkeypatch.delenv("MINIFT_TEST_WORKERS", raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert background.workers() == 0
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert background.workers() >= 1


# ---- the code a README quotes is the code in the files ---------------------------------------------
# A README's ```python / ```cpp blocks quote the files it names (DESIGN: "the ten lines that matter, quoted
# from the file"). Code changes; a quote left behind teaches code that no longer exists. Each line of a
# quote, stripped, must be a line of a file the README names (or of the lesson's own scripts); "..." in
# a line stands for what the quote leaves out of it, and a line that is only "..." for left-out lines.
SOURCE_PATH = re.compile(r"(?:minift|cuda_ext|lessons|tests)/[\w./]+\.(?:py|cpp|cu|cuh|h)\b")
QUOTE = re.compile(r"^```(python|cpp|cuda|c\+\+)\n(.*?)^```", re.S | re.M)
ELIDED = re.compile(r"\.\.\.|…")
DOCS = sorted(ROOT.glob("lessons/*/README.md")) + [ROOT / "README.md", ROOT / "ARCHITECTURE.md"]


def is_quoted(line: str, source: set) -> bool:
    """line (stripped) is a line of source, or, with "..." in it, its pieces appear in order in one."""
    if line in source:
        return True
    parts = [p.strip() for p in ELIDED.split(line)]
    if len(parts) == 1:
        return False
    for s in source:
        at = 0
        for p in parts:
            at = s.find(p, at)
            if at < 0:
                break
            at += len(p)
        else:
            return True
    return False


def misquoted(text: str, source: set) -> list:
    """(line number, line) of every quoted line that source does not hold."""
    bad = []
    for m in QUOTE.finditer(text):
        first = text.count("\n", 0, m.start(2)) + 1
        for k, line in enumerate(m.group(2).splitlines()):
            s = line.strip()
            if s and not ELIDED.fullmatch(s) and not is_quoted(s, source):
                bad.append((first + k, s))
    return bad


def test_the_quote_check_finds_a_changed_line_and_takes_an_elided_one():
    source = {"y = self.base_forward(x)  # W0 x + b", "return y + upd"}
    text = "```python\n    y = self.base_forward(x)  # W0 x\n    ...\n    return y + upd\n```\n"
    assert misquoted(text, source) == [(2, "y = self.base_forward(x)  # W0 x")]
    assert misquoted(text.replace("# W0 x\n", "...\n"), source) == []
    assert misquoted("```text\nanything\n```\n```bash\nminift run 05\n```\n", source) == []
    assert misquoted("```python\nreturn upd + y ... \n```\n", source) == [(2, "return upd + y ...")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_line_a_readme_quotes_is_in_a_file_it_names(doc):
    text = doc.read_text()
    names = {n for n in SOURCE_PATH.findall(text) if "NN" not in n}
    gone = sorted(n for n in names if not (ROOT / n).is_file())
    assert not gone, f"{doc.relative_to(ROOT)} names files that do not exist: {gone}"
    files = [ROOT / n for n in names] + (sorted(doc.parent.glob("*.py")) if doc.parent.parent.name == "lessons" else [])
    source = {line.strip() for f in files for line in f.read_text().splitlines()}
    bad = misquoted(text, source)
    assert not bad, (f"{doc.relative_to(ROOT)} quotes lines that no file it names holds (quote the file as it "
                     f"is now, or fence an illustration as text):\n"
                     + "\n".join(f"  line {n}: {s}" for n, s in bad[:10]))


def test_no_walkthrough_leaves_temporary_files_behind():
    """A walkthrough's scratch files live in a tempfile.TemporaryDirectory, removed when the run ends;
    mkdtemp / mkstemp leave theirs in the system's temporary folder, one more at every run."""
    for les in LESSONS:
        src = (les["dir"] / "walkthrough.py").read_text()
        leaks = re.findall(r"\b(mkdtemp|mkstemp)\(|(NamedTemporaryFile)\([^)]*delete=False", src)
        assert not leaks, f"{les['dir'].name}: {''.join(leaks[0])} (use tempfile.TemporaryDirectory)"


def test_the_readme_numbers_check_masks_times_and_leaves_out_what_flags_print():
    """.ci/readme_numbers.py (for maintainers; it runs the walkthroughs, so the suite tests only its
    comparison): a changed score is reported with its README line, a changed time is not, a block the
    paragraph before says comes from a flag is left out unless that flag ran, and the README's flag
    commands are found."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / ".ci" / "readme_numbers.py")
    rn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rn)
    readme = ("intro\n\n```\nlr 0.1: loss 2.000 -> 0.500, dev F1 0.876, 2.0s CPU\n```\n\n`--long` adds:\n\n"
              "```\nlong run 0.9\n```\n\n### 6. Plain (`--plain`)\n\ntext\n\n```\nplain 0.5\n```\n\n"
              "From `minift run 05` (`--report` prints the same):\n\n```\ndefault 0.7\n```\n\nafter\n\n"
              "<!-- printed by: --sweep -->\n```\nsweep 0.3\n```\n")
    assert [flags for _, flags in rn.output_blocks(readme)] == [set(), {"--long"}, {"--plain"}, set(), {"--sweep"}]
    same_but_time = ["lr 0.1: loss 2.000 -> 0.500, dev F1 0.876,   3.1s CPU", "default 0.7"]
    assert rn.unmatched(readme, same_but_time, set()) == ([], 3)
    bad, _ = rn.unmatched(readme, ["lr 0.1: loss 2.000 -> 0.500, dev F1 0.873, 2.0s CPU", "default 0.7"], set())
    assert [b[:2] for b in bad] == [(4, "lr 0.1: loss 2.000 -> 0.500, dev F1 0.876, 2.0s CPU")]
    assert [b[1] for b in rn.unmatched(readme, same_but_time, {"--long", "--sweep"})[0]] == ["long run 0.9", "sweep 0.3"]
    assert rn.squeeze("train CPU 19.0s (8.2 + 3.1 + 7.7), 5.9x faster (14,930 vs 2,510 tokens/s), F1 0.9") == \
        rn.squeeze("train CPU 4.5s (1.4 + 1.2 + 1.8),  5.0x faster (99,528 vs 19,851 tokens/s), F1 0.9") != \
        rn.squeeze("train CPU 4.5s (1.4 + 1.2 + 1.8),  5.0x faster (99,528 vs 19,851 tokens/s), F1 0.8")
    said = "Every number below was printed by `python lessons/03_instruction_tuning/walkthrough.py\n--mask-ablation` on"
    assert rn.MAIN.search(said).group(1) == "--mask-ablation"
