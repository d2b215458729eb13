"""`minift verify`: run the conformance checks against an implementation and print a report.

    minift verify                          # minift's own reference functions
    minift verify --impl my_impl.py        # any file defining run_* functions
    minift verify --impl FILE --only softmax_stable_large,run_gelu
    minift verify --impl FILE --check-timeout 60   # a check that runs past 60 s fails; the others still run
    minift verify --list
    minift verify --golden DIR             # outputs another implementation wrote for data/golden/'s inputs

Exit status: 0 when every selected check passes, 1 when one fails or is not implemented (or a
run_* function named by --only is missing), 2 on a usage error (unknown check, missing file, a file that
cannot be imported: a one-line message names the file and the line).
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from . import golden, reference
from .harness import CHECKS, FAIL, MISSING, NOT_IMPLEMENTED, PASS, Result, select
from .runner import load_impl, run_checks
from .strategies import register_profiles
from ..validate import seconds_arg


STATUS_LEGEND = {
    PASS: "every example hypothesis drew satisfied the property",
    FAIL: "an example broke the property; the smallest one found is shown as code to paste",
    NOT_IMPLEMENTED: "the function is still a stub (it raises NotImplementedError)",
    MISSING: "the file has no function of that name: its checks are skipped and score no points (verify fails only when --only names it)",
}


def legend(results: list[Result]) -> str:
    """One line per status that occurs: what it means."""
    seen = [s for s in (PASS, FAIL, NOT_IMPLEMENTED, MISSING) if any(r.status == s for r in results)]
    width = max((len(s) for s in seen), default=0)
    return "\n".join(f"  {s.ljust(width)}  {STATUS_LEGEND[s]}" for s in seen)


def _table(results: list[Result]) -> str:
    rows = [("check", "function", "status", "time")]
    rows += [(r.name, r.adapter, r.status, f"{r.seconds:.2f}s") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _indent(text: str, prefix: str = "    ") -> str:
    return textwrap.indent(text.rstrip(), prefix)


def failure_text(r: Result) -> str:
    """A FAIL, readably: the property, the error, the failing call as torch code, what it follows from."""
    lines = [f"=== FAIL {r.name} ({r.adapter}, {r.lesson})", f"  property: {r.description}", "  error:",
             _indent(r.error)]
    if r.follows:
        one = len(r.follows) == 1
        lines.append(f"  note: {r.adapter} or this check calls {' and '.join(r.follows)}, which fail{'s' * one} "
                     f"{'its' if one else 'their'} own checks: fix {'that' if one else 'those'} first, this failure "
                     f"may follow from {'it' if one else 'them'}")
    calls, drawn = r.calls, r.counterexample or "(none recorded: the failure came before any example ran)"
    if r.stopped:                               # the example it was stopped in is not shrunk: it can be huge
        calls, drawn = _first_lines(calls, STOPPED_LINES), _first_lines(drawn, STOPPED_LINES)
    if calls:
        lines += ["  the failing call (paste it into Python, after importing your function):", _indent(calls)]
    lines += ["  counterexample (the example hypothesis drew):", _indent(drawn)]
    return "\n".join(lines)


STOPPED_LINES = 40                  # of a stopped check's example (never shrunk), shown in a report


def _first_lines(text: str, n: int) -> str:
    lines = text.splitlines()
    return text if len(lines) <= n else "\n".join(lines[:n] + [
        f"... ({len(lines) - n} more lines: the example it was stopped in, never shrunk)"])


def stubs_text(results: list[Result]) -> str:
    """NOT IMPLEMENTED, one block per function (not one per check): its message and its checks."""
    per: dict = {}
    for r in results:
        if r.status == NOT_IMPLEMENTED:
            per.setdefault(r.adapter, []).append(r)
    blocks = []
    for fn, rs in per.items():
        msg = rs[0].error.removeprefix(f"{fn}: ")
        other = msg.split(":")[0]
        if other != fn and other.startswith("run_"):          # its checks call that function first
            msg = f"its checks call {other} first, which is not written yet: {msg.removeprefix(other + ': ')}"
        blocks.append(f"=== NOT IMPLEMENTED {fn} ({len(rs)} check{'s' * (len(rs) > 1)}: {', '.join(r.name for r in rs)})\n"
                      f"  {msg}")
    return "\n\n".join(blocks)


def missing_line(results: list[Result]) -> str:
    """All MISSING rows folded into one line: how many checks, which functions."""
    fns = list(dict.fromkeys(r.adapter for r in results if r.status == MISSING))
    n = sum(r.status == MISSING for r in results)
    if not n:
        return ""
    return textwrap.fill(f"{n} check{'s' * (n > 1)} skipped (MISSING): the file defines no {', '.join(fns)}", 100,
                         subsequent_indent="  ")


def _list(names=None) -> str:
    """The checks (those `names` lists, default all): name, function, lesson, then the property."""
    checks = [CHECKS[n] for n in (names or CHECKS)]
    width = max(len(c.name) for c in checks)
    fn_width = max(len(c.adapter) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.name.ljust(width)}  {c.adapter.ljust(fn_width)}  {c.lesson}")
        lines.append(_indent(textwrap.fill(c.description, 88), " " * (width + 2)))
    return "\n".join(lines)


def _verify_golden(candidate: str, against, only=None) -> int:
    """`minift verify --golden DIR`: per run_* function, how many golden cases match; the first few failures."""
    try:
        rows = golden.verify(candidate, against or golden.GOLDEN_DIR, only)
    except ValueError as e:
        print(f"minift verify: error: {e}", file=sys.stderr)
        return 2
    per: dict = {}
    for r in rows:
        per.setdefault(r["adapter"], []).append(r)
    table = [("function", "cases", "passed", "failed", "missing")]
    for name, rs in per.items():
        table.append((name, str(len(rs)), *(str(sum(r["status"] == s for r in rs)) for s in ("PASS", "FAIL", "MISSING"))))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print(f"golden cases: {against or golden.GOLDEN_DIR}; outputs under test: {candidate}")
    print("\n".join(lines))
    bad = [r for r in rows if r["status"] == "FAIL"]                # failures shown; missing cases counted
    absent = [name for name, rs in per.items() if all(r["status"] == "MISSING" for r in rs)]
    print(f"\n{len(rows)} cases: {len(rows) - len(bad) - sum(r['status'] == 'MISSING' for r in rows)} passed, "
          f"{len(bad)} failed, {sum(r['status'] == 'MISSING' for r in rows)} missing")
    if absent:
        print(textwrap.fill(f"no outputs at all for: {', '.join(absent)}", 100, subsequent_indent="  "))
    for r in bad[:20]:
        print(f"\n=== {r['status']} {r['id']}\n{_indent(r['error'])}")
    if len(bad) > 20:
        print(f"\n... and {len(bad) - 20} more failures (--only NAME shows one function's or check's)")
    partial = [name for name, rs in per.items() if name not in absent and any(r["status"] == "MISSING" for r in rs)]
    passed = any(r["status"] == "PASS" for r in rows)
    return 1 if bad or partial or not passed or (only and absent) else 0    # as --impl: an absent function fails only if named


def verify_main(argv=None) -> int:
    """The `minift verify` command; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="minift verify",
        description="Check an implementation of the run_* functions against minift's property checks.")
    parser.add_argument("--impl", metavar="FILE",
                        help="Python file defining run_* functions (default: minift's reference functions)")
    parser.add_argument("--only", metavar="NAME[,NAME]", action="append",
                        help="run only these checks (check names, run_* function names or lesson markers)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--golden", metavar="DIR",
                        help="compare the outputs another implementation wrote to DIR (index.json + "
                             "tensors.safetensors, see minift/conformance/golden.py) with data/golden/")
    parser.add_argument("--against", metavar="DIR", default=None,
                        help="with --golden: the reference folder (default: data/golden/)")
    parser.add_argument("--check-timeout", type=seconds_arg, default=None, metavar="S",
                        help="seconds one check may run (default: no limit); past it the check fails, with the "
                             "call it was stopped in, and the others still run")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:                      # --help, or a usage error argparse already printed
        return int(e.code or 0)

    only = None if not args.only else [n for part in args.only for n in part.split(",")]
    if args.golden and (args.impl or args.check_timeout is not None):
        print("minift verify: error: --golden compares a folder of outputs already written; --impl and "
              "--check-timeout apply to the property checks (to run a Python file on the golden inputs: "
              "minift golden --impl FILE --out DIR, then minift verify --golden DIR)", file=sys.stderr)
        return 2
    if args.against and not args.golden:
        print("minift verify: error: --against applies with --golden DIR", file=sys.stderr)
        return 2
    try:
        names = select(only)
        if args.list:
            print(_list(names if only else None))
            return 0
        if args.golden:
            return _verify_golden(args.golden, args.against, only)
        register_profiles()
        if os.environ.get("CI"):
            from hypothesis import settings
            settings.load_profile("ci")
        if args.impl:
            impl = load_impl(args.impl)
        else:
            impl = reference
    except ValueError as e:
        print(f"minift verify: error: {e}", file=sys.stderr)
        return 2

    results = run_checks(impl, names, args.check_timeout)
    named = set(names) if only else set()      # what --only asked for must be there
    print(f"implementation: {args.impl or 'minift reference functions (minift/conformance/lesson*.py)'}")
    blocks = [failure_text(r) for r in results if r.status == FAIL]
    blocks += [stubs_text(results)] if any(r.status == NOT_IMPLEMENTED for r in results) else []
    absent: dict = {}                           # what --only named and the file lacks, one line per function
    for r in results:
        if r.status == MISSING and r.name in named:
            absent.setdefault(r.adapter, []).append(r.name)
    blocks += [f"=== MISSING {fn} (named by --only): the file defines no {fn}; {len(ns)} check{'s' * (len(ns) > 1)} "
               f"not run: {', '.join(ns)}" for fn, ns in absent.items()]
    for b in blocks:                            # failures first
        print("\n" + b)
    ran = [r for r in results if r.status != MISSING]
    if ran:
        print("\n" + _table(ran))
    if missing_line(results):
        print("\n" + missing_line(results))
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, NOT_IMPLEMENTED, MISSING)}
    print(f"\n{len(results)} checks: {counts[PASS]} passed, {counts[FAIL]} failed, "
          f"{counts[NOT_IMPLEMENTED]} not implemented, {counts[MISSING]} missing (skipped)")
    print(legend(results))
    missing_named = [r.name for r in results if r.status == MISSING and r.name in named]
    failed = counts[FAIL] + counts[NOT_IMPLEMENTED] + len(missing_named)
    return 1 if failed else 0
