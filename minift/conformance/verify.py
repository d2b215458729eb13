"""`minift verify`: run the conformance checks against an implementation and print a report.

    minift verify                          # minift's own reference adapters
    minift verify --impl my_impl.py        # any file defining run_* functions
    minift verify --impl FILE --only softmax_stable_large,run_gelu
    minift verify --list
    minift verify --golden DIR             # outputs another implementation wrote for data/golden/'s inputs

Exit status: 0 when every selected check passes, 1 when one fails or is not implemented (or an
adapter named by --only is missing), 2 on a usage error (unknown check, missing file, a file that
cannot be imported: a one-line message names the file and the line).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import textwrap
import traceback
from types import ModuleType

from .checks import CHECKS, FAIL, MISSING, NOT_IMPLEMENTED, PASS, Result, run_checks, select


class ImplImportError(ValueError):
    """The --impl file exists but importing it failed (syntax error, missing module, ...)."""


def _where(e: Exception, full: str) -> str:
    """`line 3: SyntaxError: invalid syntax`: the line of the file (or the deepest frame in it)."""
    if isinstance(e, SyntaxError) and e.lineno is not None:
        return f"line {e.lineno}: SyntaxError: {e.msg}"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == full]
    at = f"line {frames[-1].lineno}: " if frames else ""
    text = f"{type(e).__name__}: {e}".rstrip(": ")
    return at + text.splitlines()[0] if text else at + type(e).__name__


def load_impl(path) -> ModuleType:
    """Import the Python file at `path` as a module holding run_* functions.

    Raises ValueError when the file does not exist, is not a .py file, or defines no run_* function,
    and ImplImportError (a ValueError) with a one-line message naming the file and the line when
    importing it fails.
    The file's folder is on sys.path while it is imported, so it may import its neighbours.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.isfile(path):
        raise ValueError(f"--impl {path!r}: no such file; expected a Python file defining run_* functions")
    if not path.endswith(".py"):
        raise ValueError(f"--impl {path!r}: expected a .py file defining run_* functions")
    full = os.path.abspath(path)
    name = "minift_impl_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise ValueError(f"--impl {path!r}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(full)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:                   # a syntax error, a missing module, a crash at import time
        sys.modules.pop(name, None)
        raise ImplImportError(f"--impl {path}: cannot import it: {_where(e, full)}") from e
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    found = [n for n in vars(module) if n.startswith("run_") and callable(getattr(module, n))]
    if not found:
        wanted = ", ".join(sorted({c.adapter for c in CHECKS.values()}))
        raise ValueError(f"--impl {path!r} defines no run_* function; expected some of: {wanted}")
    return module


def _table(results: list[Result]) -> str:
    rows = [("check", "adapter", "status", "time")]
    rows += [(r.name, r.adapter, r.status, f"{r.seconds:.2f}s") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _indent(text: str, prefix: str = "    ") -> str:
    return textwrap.indent(text.rstrip(), prefix)


def _list() -> str:
    width = max(len(n) for n in CHECKS)
    lines = []
    for c in CHECKS.values():
        lines.append(f"{c.name.ljust(width)}  {c.adapter:<22}{c.lesson}")
        lines.append(_indent(textwrap.fill(c.description, 88), " " * (width + 2)))
    return "\n".join(lines)


def _verify_golden(candidate: str, against) -> int:
    """`minift verify --golden DIR`: per adapter, how many golden cases match; the first few failures."""
    from . import golden
    try:
        rows = golden.verify(candidate, against or golden.GOLDEN_DIR)
    except ValueError as e:
        print(f"minift verify: error: {e}", file=sys.stderr)
        return 2
    per: dict = {}
    for r in rows:
        per.setdefault(r["adapter"], []).append(r)
    table = [("adapter", "cases", "passed", "failed", "missing")]
    for name, rs in per.items():
        table.append((name, str(len(rs)), *(str(sum(r["status"] == s for r in rs)) for s in ("PASS", "FAIL", "MISSING"))))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print(f"golden cases: {against or golden.GOLDEN_DIR}; outputs under test: {candidate}")
    print("\n".join(lines))
    bad = [r for r in rows if r["status"] != "PASS"]
    print(f"\n{len(rows)} cases: {len(rows) - len(bad)} passed, {sum(r['status'] == 'FAIL' for r in rows)} failed, "
          f"{sum(r['status'] == 'MISSING' for r in rows)} missing")
    for r in bad[:20]:
        print(f"\n=== {r['status']} {r['id']}\n{_indent(r['error'])}")
    if len(bad) > 20:
        print(f"\n... and {len(bad) - 20} more")
    return 1 if bad else 0


def verify_main(argv=None) -> int:
    """The `minift verify` command; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="minift verify",
        description="Check an implementation of the run_* adapters against minift's property checks.")
    parser.add_argument("--impl", metavar="FILE",
                        help="Python file defining run_* functions (default: minift's reference adapters)")
    parser.add_argument("--only", metavar="NAME[,NAME]", action="append",
                        help="run only these checks (check names, run_* adapter names or lesson markers)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--golden", metavar="DIR",
                        help="compare the outputs another implementation wrote to DIR (index.json + "
                             "tensors.safetensors, see minift/conformance/golden.py) with data/golden/")
    parser.add_argument("--against", metavar="DIR", default=None,
                        help="with --golden: the reference folder (default: data/golden/)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:                      # --help, or a usage error argparse already printed
        return int(e.code or 0)

    if args.list:
        print(_list())
        return 0
    if args.golden:
        return _verify_golden(args.golden, args.against)
    only = None if not args.only else [n for part in args.only for n in part.split(",")]
    try:
        names = select(only)
        from .strategies import register_profiles
        register_profiles()
        if os.environ.get("CI"):
            from hypothesis import settings
            settings.load_profile("ci")
        if args.impl:
            impl = load_impl(args.impl)
        else:
            from . import adapters as impl
    except ValueError as e:
        print(f"minift verify: error: {e}", file=sys.stderr)
        return 2

    results = run_checks(impl, names)
    named = set(names) if only else set()      # what --only asked for must be there
    print(f"implementation: {args.impl or 'minift reference adapters (minift/conformance/adapters.py)'}")
    print(_table(results))
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, NOT_IMPLEMENTED, MISSING)}
    print(f"\n{len(results)} checks: {counts[PASS]} passed, {counts[FAIL]} failed, "
          f"{counts[NOT_IMPLEMENTED]} not implemented, {counts[MISSING]} missing (skipped)")

    for r in results:
        if r.status != FAIL:
            continue
        print(f"\n=== FAIL {r.name} ({r.adapter}, {r.lesson})")
        print(f"  property: {r.description}")
        print("  error:")
        print(_indent(r.error))
        print("  counterexample:")
        print(_indent(r.counterexample or "(none recorded: the failure came before any example ran)"))
    missing_named = [r.name for r in results if r.status == MISSING and r.name in named]
    for r in results:
        if r.status == MISSING and r.name in named:
            print(f"\nMISSING {r.name}: {r.error} (named by --only)")
    failed = counts[FAIL] + counts[NOT_IMPLEMENTED] + len(missing_named)
    return 1 if failed else 0
