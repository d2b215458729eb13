"""Plain-text output shared by the lessons and the benchmarks: a section banner and an aligned
table. Kept here so that every walkthrough prints the same way and none re-defines it."""
from __future__ import annotations

from typing import Sequence


def header(title: str, width: int = 88) -> None:
    """A section banner: a rule, the title, a rule."""
    print(f"\n{'=' * width}\n{title}\n{'=' * width}", flush=True)


def format_table(headers: Sequence, rows: Sequence[Sequence]) -> str:
    """Rows as an aligned text table: the first column left-aligned, the others right-aligned,
    a dashed rule under the headers. Cells are printed with str()."""
    if any(len(r) != len(headers) for r in rows):
        bad = next(r for r in rows if len(r) != len(headers))
        raise ValueError(f"format_table: a row has {len(bad)} cells, the headers {len(headers)}: {tuple(bad)!r}")
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r):
        return "  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def table(headers: Sequence, rows: Sequence[Sequence]) -> None:
    """Print format_table(headers, rows)."""
    print(format_table(headers, rows), flush=True)
