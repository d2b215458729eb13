"""Do the lessons' READMEs still print what their walkthroughs print? For maintainers, after a change.

    python .ci/readme_numbers.py                      every lesson's default run (about 10 to 30 minutes)
    python .ci/readme_numbers.py 05 08                these lessons
    python .ci/readme_numbers.py 12 --also=--low-bits also the run with these flags (repeatable); mind that
                                                      some flags run for many minutes or fill a cache

Each walkthrough runs as `minift run` starts it (torch's AVX2 CPU kernels where the CPU has AVX-512:
minift.cli.walkthrough_env). Then every line with a digit in the README's output blocks (``` fences with
no language) must be a line the runs printed, compared with runs of spaces squeezed and times masked
(12.3s, 45 ms, 1.20x, ...: they depend on the machine).

Which run printed a block: the flags named in the 4 lines before it (`--long` adds ...) or in the heading
of its section (### 6. ... (`--plain`)), or by a marker right above the fence where neither says it,
`<!-- printed by: --sweep -->`; none, or "`minift run NN`" named in those 4 lines: the default run. A
block whose flags did not run is counted as unchecked. A README that says "Every number below was
printed by `python lessons/NN_name/walkthrough.py --flag`" is checked against that command instead of
the bare default run.

Prints, per lesson, the lines no run printed, each beside the closest line a run did print, and exits 1 if
there are any. Read them: a time in a table column without its unit still differs (lesson 16's `train CPU
s`, with --also=--ablation). Lesson 13's tables are speeds, different on every machine: it is checked only
when named.
The runs' outputs are kept in --out (default: a temporary folder, printed).
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minift.cli import list_lessons, walkthrough_env  # noqa: E402

TIME = re.compile(r"\d[\d,]*(\.\d+)?\s*(s|ms|µs|us|min|h)\b|\d+(\.\d+)?[x×](?!\w)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
TIMINGS = {"13"}                # lessons whose tables are speeds: checked only when named
MARKER = re.compile(r"<!-- printed by: ([^>]*?) -->")
DEFAULT = re.compile(r"`minift run \d\d`")
# A README whose numbers come from one command with flags says so in these words (lesson 03): its "default".
MAIN = re.compile(r"Every number below was printed by `python lessons/\w+/walkthrough\.py\s+([^`]+)`")


def squeeze(line: str) -> str:
    """A line as compared: times masked (with a rate in brackets, "(14,930 vs 2,510 tokens/s)", and the
    parts a time is split into, "19.0s (8.2 + 3.1 + 7.7)"), runs of spaces squeezed, ends stripped."""
    line = re.sub(r"\([^()]*/s\)", "(T/s)", TIME.sub("T", line))
    return re.sub(r"\s+", " ", re.sub(r"T \([\d.]+(?: \+ [\d.]+)+\)", "T", line)).strip()


def output_blocks(readme: str) -> list[tuple[list[tuple[int, str]], set[str]]]:
    """([(line number, line) for its lines with a digit], the flags of the run that printed it) of every
    language-less fenced block (the module docstring says how the run is found)."""
    out, lines_all = [], readme.splitlines()
    for m in FENCE.finditer(readme):
        if m.group(1):
            continue
        start = readme.count("\n", 0, m.start(2)) + 1                   # its first line, counted from 1
        heading = next((ln for ln in reversed(lines_all[:start - 2]) if ln.startswith("#")), "")
        before = "\n".join(lines_all[max(0, start - 6):start - 2])      # the 4 lines above the fence
        marker = MARKER.search(before)
        if marker:
            flags = set(FLAG.findall(marker.group(1)))
        elif DEFAULT.search(before):
            flags = set()
        else:
            flags = set(FLAG.findall(before + "\n" + heading)) - {"--fast"}
        lines = [(start + k, ln) for k, ln in enumerate(m.group(2).splitlines()) if re.search(r"\d", ln)]
        out.append((lines, flags))
    return out


def unmatched(readme: str, printed: list[str], ran_flags: set[str]) -> tuple[list[tuple[int, str, str]], int]:
    """README lines no run printed: (line number, the line, the closest printed line); and how many lines
    were left unchecked because they come from a flag that did not run."""
    seen = {squeeze(p) for p in printed}
    squeezed = [squeeze(p) for p in printed]
    bad, unchecked = [], 0
    for lines, flags in output_blocks(readme):
        if flags - ran_flags:
            unchecked += len(lines)
            continue
        for line_no, line in lines:
            if squeeze(line) not in seen:
                close = difflib.get_close_matches(squeeze(line), squeezed, n=1, cutoff=0.6)
                bad.append((line_no, line.strip(), close[0] if close else "-"))
    return bad, unchecked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lessons", nargs="*", help="lesson numbers (default: all)")
    p.add_argument("--also", action="append", default=[], metavar="FLAGS",
                   help="also run each lesson with these flags (--also=--sweep; repeatable)")
    p.add_argument("--out", default=None, help="where the runs' outputs go (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds a run may take (default 1800)")
    args = p.parse_args(argv)
    import torch
    env = walkthrough_env(os.environ, torch.backends.cpu.get_cpu_capability())
    out = Path(args.out or tempfile.mkdtemp(prefix="minift-readme-numbers-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"outputs in {out}; ATEN_CPU_CAPABILITY={env.get('ATEN_CPU_CAPABILITY', '(torch picks)')}", flush=True)
    named = {n.zfill(2) for n in args.lessons}
    unknown = named - {les["nn"] for les in list_lessons()}
    if unknown:
        p.error(f"no lesson {sorted(unknown)}; lessons are 00 to {list_lessons()[-1]['nn']}")
    lessons = [les for les in list_lessons() if les["nn"] in named or (not named and les["nn"] not in TIMINGS)]
    failed = 0
    for les in lessons:
        folder, readme = les["dir"].name, (les["dir"] / "README.md").read_text()
        main = MAIN.search(readme)
        runs = [shlex.split(main.group(1)) if main else []] + [shlex.split(a) for a in args.also]
        printed, ran = [], set()
        for tail in runs:
            name = "_".join([folder] + [w.strip("-") for w in tail]) or folder
            cmd = [sys.executable, str(les["dir"] / "walkthrough.py"), *tail]
            try:
                r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{folder} {' '.join(tail)}: no end after {args.timeout} s")
                failed += 1
                continue
            (out / f"{name}.txt").write_text(r.stdout + r.stderr)
            if r.returncode != 0:
                print(f"{folder} {' '.join(tail)}: exit {r.returncode} (see {out / (name + '.txt')})")
                failed += 1
                continue
            printed += r.stdout.splitlines()
            ran |= set(FLAG.findall(" ".join(tail)))
        bad, unchecked = unmatched(readme, printed, ran)
        print(f"{folder}: {len(bad)} README line(s) no run printed"
              + (f"; {unchecked} from flags not run" if unchecked else ""), flush=True)
        for line_no, line, close in bad:
            print(f"  README line {line_no}: {line[:150]}\n  closest printed:  {close[:150]}")
        failed += len(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
