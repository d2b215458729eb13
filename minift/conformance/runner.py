"""Which implementation the checks grade, and the run over the selected checks.

    run_checks()                                   every check, against minift's reference functions
    run_checks("lessons/05_lora/exercise.py", only="lesson05")    a file's run_* functions
    run_checks(module_or_object, only="run_softmax")               anything with run_* attributes

`load_impl(path)` imports a Python file as a module of run_* functions, with a one-line error that
names the file and the line when importing it fails.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import os
import sys
import textwrap
import traceback
from types import ModuleType

from . import reference
from .harness import CHECKS, FAIL, NOT_IMPLEMENTED, Result, run_check, select


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


def load_impl(path, need_run: bool = True) -> ModuleType:
    """Import the Python file at `path` as a module holding run_* functions.

    Raises ValueError when the file does not exist, is not a .py file, or (with `need_run`) defines no
    run_* function, and ImplImportError (a ValueError) with a one-line message naming the file and the
    line when importing it fails, or when it calls sys.exit while being imported.
    The file's folder is on sys.path while it is imported, so it may import its neighbours.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.isdir(path):
        raise ValueError(f"--impl {path!r} is a folder; expected a Python file defining run_* functions")
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
    except SystemExit as e:                  # sys.exit() at module level: the file's mistake, not ours to exit on
        sys.modules.pop(name, None)
        raise ImplImportError(f"--impl {path}: cannot import it: {_where(e, full)} (it calls sys.exit while "
                              f"being imported)") from None
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    found = [n for n in vars(module) if n.startswith("run_") and callable(getattr(module, n))]
    if not found and need_run:
        wanted = ", ".join(sorted({c.adapter for c in CHECKS.values()}))
        raise ValueError(f"--impl {path!r} defines no run_* function; expected some of: {wanted}")
    return module


def run_checks(impl=None, only=None, seconds=None) -> list[Result]:
    """Run the checks (all, or those `select(only)` names) against `impl`.

    impl: a module/object with run_* attributes, a path to a Python file (see `load_impl`), or
    None for minift's reference functions. seconds: each check's time limit (`run_check`), so that
    one endless loop costs its own checks only.
    """
    if impl is None:
        impl = reference
    elif isinstance(impl, (str, bytes)) or hasattr(impl, "__fspath__"):
        impl = load_impl(impl)
    results = [run_check(CHECKS[name], impl, seconds) for name in select(only)]
    return attach_follows(impl, results)


def attach_follows(impl, results: list[Result]) -> list[Result]:
    """Mark each FAIL whose function calls another of impl's run_* functions that fails (or is a stub)."""
    failing = {r.adapter for r in results if r.status in (FAIL, NOT_IMPLEMENTED)}
    for r in results:
        if r.status == FAIL:                   # what it calls, and the other functions its check calls itself
            others = calls_of(impl, r.adapter) | set(CHECKS[r.name].runs if r.name in CHECKS else ())
            r.follows = tuple(sorted((others & failing) - {r.adapter}))
    return results


def calls_of(impl, name: str) -> set[str]:
    """The run_* functions of `impl` that its `name` calls, directly or through its other functions
    (read from the source, so it costs no run): a block that fails only because the student's own
    LayerNorm fails can be told so."""
    seen, todo = set(), [name]
    while todo:
        fn = getattr(impl, todo.pop(), None)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        except (TypeError, OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            called = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if called and called.startswith("run_") and called != name and called not in seen \
                    and callable(getattr(impl, called, None)):
                seen.add(called)
                todo.append(called)
    return seen
