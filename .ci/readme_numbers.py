"""Do the lessons' READMEs still print what their walkthroughs print? For maintainers, after a change.

    python .ci/readme_numbers.py                  every lesson's default run (about 10 to 30 minutes)
    python .ci/readme_numbers.py 05 08            these lessons
    python .ci/readme_numbers.py 12 --flags       also every `walkthrough.py --flag ...` command that the
                                                  README's own code blocks list (some take many minutes)

Each walkthrough runs as `minift run` starts it (torch's AVX2 CPU kernels where the CPU has AVX-512:
minift.cli.walkthrough_env). Then every line with a digit in the README's output blocks (``` fences with
no language) must be a line the runs printed, compared with runs of spaces squeezed and times masked
(12.3s, 45 ms, 1.20x, ...: they depend on the machine). A block that the paragraph before it says comes
from a flag (`--long` adds ...) is left out unless --flags ran that flag; it is counted as unchecked.

Prints, per lesson, the lines no run printed, each beside the closest line a run did print, and exits 1 if
there are any. Read them: a flag named further up than the 4 lines before a block escapes the rule above.
Lesson 13's tables are speeds, different on every machine: it is checked only when named. The runs'
outputs are kept in --out (default: a temporary folder, printed).
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


def squeeze(line: str) -> str:
    """A line as compared: times masked, runs of spaces squeezed, ends stripped."""
    return re.sub(r"\s+", " ", TIME.sub("T", line)).strip()


def output_blocks(readme: str) -> list[tuple[list[tuple[int, str]], set[str]]]:
    """([(line number, line) for its lines with a digit], the flags named by the 4 lines before) of every
    language-less fenced block: what a run printed."""
    out = []
    for m in FENCE.finditer(readme):
        if m.group(1):
            continue
        start = readme.count("\n", 0, m.start(2)) + 1
        before = readme[:m.start()].splitlines()[-4:]
        flags = set(FLAG.findall("\n".join(before))) - {"--fast"}
        lines = [(start + k, ln) for k, ln in enumerate(m.group(2).splitlines()) if re.search(r"\d", ln)]
        out.append((lines, flags))
    return out


def flag_commands(readme: str, folder: str) -> list[list[str]]:
    """The `python lessons/NN_name/walkthrough.py --flag ...` commands of the README's bash blocks, as argv
    tails (comments dropped)."""
    cmds = []
    for m in FENCE.finditer(readme):
        if m.group(1) != "bash":
            continue
        for line in m.group(2).splitlines():
            words = shlex.split(line.split("#", 1)[0])
            if len(words) > 2 and words[0] == "python" and words[1] == f"lessons/{folder}/walkthrough.py":
                cmds.append(words[2:])
    return cmds


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
    p.add_argument("--flags", action="store_true", help="also run the flag commands each README lists")
    p.add_argument("--out", default=None, help="where the runs' outputs go (default: a temporary folder)")
    args = p.parse_args(argv)
    import torch
    env = walkthrough_env(os.environ, torch.backends.cpu.get_cpu_capability())
    out = Path(args.out or tempfile.mkdtemp(prefix="minift-readme-numbers-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"outputs in {out}; ATEN_CPU_CAPABILITY={env.get('ATEN_CPU_CAPABILITY', '(torch picks)')}", flush=True)
    named = {n.zfill(2) for n in args.lessons}
    lessons = [les for les in list_lessons() if les["nn"] in named or (not named and les["nn"] not in TIMINGS)]
    failed = 0
    for les in lessons:
        folder, readme = les["dir"].name, (les["dir"] / "README.md").read_text()
        runs = [[]] + (flag_commands(readme, folder) if args.flags else [])
        printed, ran = [], set()
        for tail in runs:
            name = "_".join([folder] + [w.strip("-") for w in tail]) or folder
            cmd = [sys.executable, str(les["dir"] / "walkthrough.py"), *tail]
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
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
