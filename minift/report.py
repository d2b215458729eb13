"""Plain-text output shared by the lessons and the benchmarks: a section banner, an aligned table
and the seed-spread table. Kept here so that every walkthrough prints the same way and none re-defines it. Also where the
READMEs' numbers were measured: the machine and torch's CPU kernels."""
from __future__ import annotations

from typing import Optional, Sequence

# Where every README's numbers and times were measured.
REFERENCE_MACHINE = "a 2-core 2.0 GHz AMD EPYC VM"
# torch picks its CPU kernels by what the CPU offers (torch.backends.cpu.get_cpu_capability()). Kernels of
# another width sum in another order, so a trained result moves in its last digits and, over hundreds of
# steps, sometimes further. The READMEs were measured with the AVX2 kernels; ATEN_CPU_CAPABILITY=avx2 gives
# them on a CPU that has AVX-512 too (torch reads it once, as it starts: `minift run` sets it).
REFERENCE_KERNELS = "AVX2"
KERNELS_ENV = "ATEN_CPU_CAPABILITY"
# (Not MKL_CBWR=AVX2 for MKL's matrix products: on the AMD CPU the READMEs were checked on, it changed
# lessons 10 and 14, which reproduce without it.)


def kernels_to_reproduce(capability: str) -> Optional[str]:
    """The ATEN_CPU_CAPABILITY value that gives the READMEs' kernels where torch runs `capability` ones, or
    None: they are the READMEs' already (AVX2), or there is nothing narrower to step down to (no AVX2)."""
    return REFERENCE_KERNELS.lower() if capability == "AVX512" else None


def kernels_note(capability: str, lesson: str, chosen: Optional[str] = None) -> Optional[str]:
    """What a default run on the CPU says first (`course.start`) when torch's CPU kernels are not the
    READMEs' (REFERENCE_KERNELS); None when they are. chosen: ATEN_CPU_CAPABILITY as set in the environment."""
    if capability == REFERENCE_KERNELS:
        return None
    if chosen is not None:
        how = f" ({KERNELS_ENV}={chosen} is set.)"
    elif want := kernels_to_reproduce(capability):
        how = (f" `minift run {lesson}` runs it on the {REFERENCE_KERNELS} kernels ({KERNELS_ENV}={want}, "
               f"which torch reads as it starts).")
    else:
        how = ""
    kind = "generic (no AVX2)" if capability == "DEFAULT" else capability     # DEFAULT: an ARM CPU, an old x86
    return (f"note: torch runs its {kind} CPU kernels here; the README's numbers come from its "
            f"{REFERENCE_KERNELS} kernels, so trained results can differ slightly from them.{how}")


def kib(n: int) -> str:
    """A byte count as KiB, or MiB from 1 MiB on."""
    return f"{n / 1024:,.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:,.2f} MiB"


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


def per_seed(xs, fmt: str = ".3f", spread: bool = False) -> list[str]:
    """One score's cells in a seed table: each seed's value, their mean, and with `spread` their range
    (max - min, unsigned), all in `fmt`."""
    return [" ".join(format(x, fmt) for x in xs), format(sum(xs) / len(xs), fmt)] + \
        ([format(max(xs) - min(xs), fmt.lstrip("+"))] if spread else [])


def seed_table(rows, dev: str = "dev", metric: str = "F1") -> None:
    """The seed-spread table: rows of (method, lr, `dev` score per seed, test score per seed) ->
    each seed's score, the mean and the `dev` range (max - min). `metric` names the score (F1,
    accuracy, ...); an lr that is not a number (a string: "-", "1e-3/3e-4") is printed as given."""
    cells = [(m, lr if isinstance(lr, str) else f"{lr:g}", *per_seed(d, spread=True), *per_seed(t)) for m, lr, d, t in rows]
    table(("method", "lr", f"{dev} {metric} per seed", "mean", "range", f"test {metric} per seed", "mean"), cells)


def ascii_plot(series: dict, width: int = 56, height: int = 14, logx: bool = True, logy: bool = True,
               xlabel: str = "x", ylabel: str = "y") -> str:
    """Curves as text: series {label: [(x, y), ...]}, each drawn with its label's first character
    (so give the series distinct first characters); '*' where two series share a cell. Log axes by
    default, with the axis range printed at the corners."""
    import math
    pts = [(x, y) for s in series.values() for x, y in s]
    if not pts:
        raise ValueError("ascii_plot: no points")
    if (logx and any(x <= 0 for x, _ in pts)) or (logy and any(y <= 0 for _, y in pts)):
        raise ValueError("ascii_plot: log axes need x > 0 and y > 0")
    fx, fy = (math.log10 if logx else float), (math.log10 if logy else float)
    x0, x1 = min(fx(x) for x, _ in pts), max(fx(x) for x, _ in pts)
    y0, y1 = min(fy(y) for _, y in pts), max(fy(y) for _, y in pts)
    grid = [[" "] * width for _ in range(height)]
    for label, s in series.items():
        for x, y in s:
            c = round((fx(x) - x0) / ((x1 - x0) or 1) * (width - 1))
            r = height - 1 - round((fy(y) - y0) / ((y1 - y0) or 1) * (height - 1))
            grid[r][c] = label[0] if grid[r][c] in (" ", label[0]) else "*"
    top, bottom = f"{max(y for _, y in pts):.3g}", f"{min(y for _, y in pts):.3g}"
    pad = max(len(top), len(bottom))
    lines = [(top if i == 0 else bottom if i == height - 1 else "").rjust(pad) + " |" + "".join(row)
             for i, row in enumerate(grid)]
    lines.append(" " * pad + " +" + "-" * width)
    lo, hi = f"{min(x for x, _ in pts):.3g}", f"{max(x for x, _ in pts):.3g}"
    lines.append(" " * (pad + 2) + lo + hi.rjust(width - len(lo)))
    scale = f"{'log ' if logx else ''}{xlabel} ->   {'log ' if logy else ''}{ylabel} ^   " + \
        "   ".join(f"{k[0]} = {k[2:] if k[1:2] == ' ' else k}" for k in series)
    lines.append(" " * (pad + 2) + scale)
    return "\n".join(lines)
