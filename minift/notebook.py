"""`minift notebook NN`: a lesson as a Jupyter notebook, to open locally or in a hosted notebook.

The notebook holds, in order:

  1. the lesson's README.md as markdown cells, one per heading (a `#` line inside a fenced code
     block is not a heading), with its figures inline: every `![caption](name.png)` of a PNG
     beside the README is carried in the cell as an attachment, so the notebook needs no file
     next to it;
  2. a setup cell: it finds the clone the notebook sits in (walking up from the working
     directory: the repository root, the lesson's folder, notebooks/ all work; else an installed
     minift's own clone), puts it first on sys.path, moves there (the walkthrough reads data/
     relative to it), and sets `__file__` and `sys.argv` as `python walkthrough.py` would (add
     "--fast" or "--figures" to sys.argv there);
  3. walkthrough.py as code cells, cut only between top-level statements: at its section rules
     (`# ====...`) and around its top-level functions and classes. The module docstring is
     assigned to `__doc__` (the walkthrough's parser reads its first line).

It is nbformat 4.5 JSON written with json (no nbformat dependency): cells with ids, code cells
without outputs. Regenerate it rather than edit it: the lesson's files are the source.
"""
from __future__ import annotations

import ast
import base64
import json
import re
from pathlib import Path

NBFORMAT, NBFORMAT_MINOR = 4, 5
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python", "codemirror_mode": {"name": "ipython", "version": 3},
                      "file_extension": ".py", "mimetype": "text/x-python", "nbconvert_exporter": "python",
                      "pygments_lexer": "ipython3"},
}
HEADING = re.compile(r"#{1,6}\s")
FENCE = re.compile(r"\s*(```|~~~)")
RULE = re.compile(r"#\s*={10,}\s*$")                     # a walkthrough's section rule
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")

SETUP = '''# Setup: run this notebook from anywhere inside a clone of minift (the repository root, the lesson's
# folder, notebooks/), with or without `pip install -e .` (installing it gives the `minift` command too).
import os
import sys
from pathlib import Path

ROOT = next((d for d in (Path.cwd(), *Path.cwd().parents) if (d / "minift" / "__init__.py").is_file()
             and (d / "lessons").is_dir()), None)
if ROOT is None:                            # not inside the clone: an editable install knows where it is
    try:
        import minift
        ROOT = Path(minift.__file__).resolve().parent.parent
    except ImportError:
        ROOT = Path.cwd()
    if not (ROOT / "lessons").is_dir():
        raise RuntimeError("open this notebook inside a clone of minift (git clone, then pip install -e .)")
sys.path.insert(0, str(ROOT))               # minift importable without installing it
os.chdir(ROOT)                              # the walkthrough reads data/ relative to the repository
__file__ = str(ROOT / "lessons" / "{lesson}" / "walkthrough.py")
sys.argv = [__file__]                       # its flags: append "--fast" (seconds), "--figures" (the PNGs)'''


def _lines(text: str) -> list[str]:
    """A cell's source as nbformat stores it: lines, each ending in a newline but the last."""
    lines = text.split("\n")
    return [x + "\n" for x in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _trim(lines: list[str]) -> str:
    """The lines joined, without the blank lines at either end."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(lines)


def markdown_cells(readme: str, folder: Path) -> list[dict]:
    """The README cut at its headings (outside fenced code), each part a markdown cell; the PNGs
    it embeds from `folder` travel as attachments."""
    parts, cur, fenced = [], [], False
    for line in readme.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        if HEADING.match(line) and not fenced and cur:
            parts.append(cur)
            cur = []
        cur.append(line)
    parts.append(cur)
    cells = []
    for part in parts:
        text = _trim(part)
        if not text:
            continue
        cell = {"cell_type": "markdown", "metadata": {}, "source": text}
        attachments = {}
        for caption, name in IMAGE.findall(text):
            png = folder / name
            if "/" not in name and png.is_file():
                attachments[name] = {"image/png": base64.b64encode(png.read_bytes()).decode("ascii")}
                text = text.replace(f"![{caption}]({name})", f"![{caption}](attachment:{name})")
        if attachments:
            cell["source"], cell["attachments"] = text, attachments
        cells.append(cell)
    return cells


def code_cells(source: str) -> list[str]:
    """walkthrough.py cut between top-level statements: at each section rule (the rule line
    itself dropped), and before and after each run of top-level functions and classes (with the
    comment lines right above them). The module docstring becomes `__doc__ = ...`, a cell of its own."""
    lines = source.split("\n")
    body = ast.parse(source).body
    starts = {}                                          # first line (0-based) of each top-level statement -> node
    for node in body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        starts[first] = node
    inside = set()
    for first, node in starts.items():
        inside.update(range(first, node.end_lineno))
    cuts, drop = set(), set()
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        first = body[0].lineno - 1
        lines[first] = "__doc__ = " + lines[first]              # the same literal, now a name the code reads
        cuts.add(body[0].end_lineno)
    for i, line in enumerate(lines):
        if i not in inside and RULE.match(line):
            cuts.add(i)
            drop.add(i)
    is_def = lambda n: isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ordered = sorted(starts.items())
    for k, (first, node) in enumerate(ordered):
        if k > 0 and is_def(node) != is_def(ordered[k - 1][1]):     # a run of definitions starts or ends
            while first > 0 and first - 1 not in inside and lines[first - 1].startswith("#") \
                    and not RULE.match(lines[first - 1]):
                first -= 1                                          # with the comment right above it
            cuts.add(first)
    cells, cur = [], []
    for i, line in enumerate(lines):
        if i in cuts and cur:
            cells.append(cur)
            cur = []
        if i not in drop:
            cur.append(line)
    cells.append(cur)
    return [t for t in (_trim(c) for c in cells) if t]


def build(folder) -> dict:
    """The notebook (a dict, nbformat 4.5) of the lesson in `folder` (lessons/NN_name)."""
    folder = Path(folder)
    readme, walk = folder / "README.md", folder / "walkthrough.py"
    if not (readme.is_file() and walk.is_file()):
        raise ValueError(f"folder={str(folder)!r} must be a lesson folder with README.md and walkthrough.py")
    intro = (f"*A notebook of `lessons/{folder.name}`, written by `minift notebook {folder.name[:2]}`: the lesson's "
             f"README.md, then its walkthrough.py cut into cells. Run the setup cell first, then the cells in order "
             f"(as `python lessons/{folder.name}/walkthrough.py` would). Regenerate it rather than edit it.*")
    cells = [{"cell_type": "markdown", "metadata": {}, "source": intro}]
    cells += markdown_cells(readme.read_text(encoding="utf-8"), folder)
    cells.append({"cell_type": "markdown", "metadata": {}, "source": "## The walkthrough, cell by cell\n\n"
                  "The code of `walkthrough.py`, top to bottom; the first cell finds the repository and sets the "
                  "walkthrough's arguments."})
    code = [SETUP.replace("{lesson}", folder.name)] + code_cells(walk.read_text(encoding="utf-8"))
    cells += [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c} for c in code]
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i:03d}"                        # unique, and the same from one run to the next
        c["source"] = _lines(c["source"])
    return {"cells": cells, "metadata": METADATA, "nbformat": NBFORMAT, "nbformat_minor": NBFORMAT_MINOR}


def write(folder, out) -> Path:
    """Write the notebook of the lesson in `folder` to the file `out` (folders made as needed)."""
    nb = build(folder)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
