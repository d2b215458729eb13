"""The course's figures: the curves, spectra and distributions a learner would rather look at than read.

A lesson draws them when run with `--figures` (every walkthrough's parser has the flag,
minift/course.py), from numbers its run has just measured:

    python lessons/05_lora/walkthrough.py --figures          # writes lessons/05_lora/*.png
    python lessons/05_lora/walkthrough.py --fast --figures   # a smoke test: into a temporary folder

and the hook in the walkthrough is two lines:

    if args.figures:
        figures.loss_curves({r["method"]: r["curve"] for r in results}, figures.target("05", "loss_curves.png", FAST))

The figures, by lesson (each drawn by `python lessons/NN_name/walkthrough.py --figures`):

    00  attention.png       attention_maps       two heads of the base model on a TinyWorld sentence
    01  loss_curves.png     pretraining_curves   pretraining loss (train, val); continued pretraining ppl
    05  loss_curves.png     loss_curves          the NER training loss of every method compared
    05  update_spectra.png  lora_spectra         singular values of ΔW: full fine-tuning vs LoRA's s B A
    12  nf4_code.png        nf4_code             the 16 NF4 values over the normal density and real weights
    15  dpo_curves.png      dpo_curves           DPO's loss, margin and log-prob drift over steps
    20  scaling_fits.png    scaling_fits         the sweep's points and the fitted law, log-log

A default run writes beside the lesson's README (the committed PNGs, embedded in it); a --fast run,
whose numbers mean nothing, writes into <tmp>/minift-figures/NN_name/ so it never replaces them.

Plotting uses matplotlib, an optional extra (`pip install -e ".[plots]"`). It is imported inside the
drawing functions only, through its object-oriented API (a `Figure`, no pyplot, no global backend),
so `import minift` never loads it and a notebook's own plotting is left alone. Without it,
`--figures` prints one line and the lesson prints what it always prints.

PNGs are small (~100 dpi) and written without a date or version in their metadata, so the same
numbers give the same bytes.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import math
import tempfile
from pathlib import Path

import torch

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"
INSTALL = 'pip install -e ".[plots]"'
DPI = 100


# ---- the flag and where figures go ------------------------------------------------------------

def available() -> bool:
    """True when matplotlib can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):                     # a broken install, or one set to None in sys.modules
        return False


class FiguresFlag(argparse.Action):
    """`--figures`: True when matplotlib is there; otherwise one line saying how to get it, and False,
    so that the lesson's `if args.figures:` hooks are skipped and it prints what it always prints."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        ok = available()
        if not ok:
            print(f"--figures: matplotlib is not installed, so no figures are drawn; install the plots extra "
                  f"with `{INSTALL}`", flush=True)
        setattr(namespace, self.dest, ok)


def lesson_dir(lesson: str) -> Path:
    """The folder lessons/NN_name of lesson NN."""
    found = sorted(LESSONS_DIR.glob(f"{str(lesson).zfill(2)}_*"))
    if not found:
        raise ValueError(f"lesson={lesson!r}: no folder lessons/{str(lesson).zfill(2)}_* in {LESSONS_DIR}")
    return found[0]


def target(lesson: str, name: str, fast: bool) -> Path:
    """Where figure `name` of lesson NN goes: beside the README on a default run, and into
    <tmp>/minift-figures/NN_name/ on a --fast run (a smoke test must not replace the committed figure)."""
    if not name.endswith(".png"):
        raise ValueError(f"name={name!r} must be a .png file name")
    d = lesson_dir(lesson)
    if fast:
        d = Path(tempfile.gettempdir()) / "minift-figures" / d.name
        d.mkdir(parents=True, exist_ok=True)
    return d / name


def _figure(w: float, h: float, ncols: int = 1):
    """A matplotlib Figure (no pyplot) of w x h inches with ncols axes side by side."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path) -> Path:
    """Write the PNG, in 256 colours and without date or version metadata (small, and the same
    numbers give the same bytes), and say where."""
    from PIL import Image                                   # Pillow: a dependency of matplotlib
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    img = Image.open(buf).convert("RGB").quantize(256, method=0, dither=0)     # median cut, no dithering
    img.save(path, format="png", optimize=True)
    try:
        shown = path.resolve().relative_to(LESSONS_DIR.parent)
    except ValueError:
        shown = path
    print(f"figure: {shown} ({path.stat().st_size / 1024:.0f} KiB)", flush=True)
    return path


def _smooth(y: list, k: int) -> list:
    """Trailing moving average over k points (the first points average what there is)."""
    out, s = [], 0.0
    for i, v in enumerate(y):
        s += v - (y[i - k] if i >= k else 0.0)
        out.append(s / min(i + 1, k))
    return out


def _log_y(ax) -> None:
    """A log y axis labelled with plain numbers (0.3, 0.4, 0.6), not powers of ten; call it after
    plotting. Over more than a decade only the powers of ten are labelled."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g") if hi / lo < 10 else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _cpu64(t: torch.Tensor) -> torch.Tensor:
    """t as float64 on the CPU, where matplotlib reads it (a --device cuda run hands over GPU tensors)."""
    return t.detach().to("cpu", torch.float64)


def _values(t) -> list:
    return [float(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


# ---- lesson 00: attention ---------------------------------------------------------------------

def attention_maps(maps: dict, labels: list, path) -> Path:
    """Attention probabilities of some heads on one sentence: {title: (T, T) tensor}, rows are
    queries, columns keys; the masked future is left blank. labels: the T tokens as text."""
    T = len(labels)
    fig, axes = _figure(4.2 * len(maps), 4.4, len(maps))
    for ax, (title, w) in zip(axes, maps.items()):
        w = _cpu64(w).clone()                                                         # (T, T)
        if tuple(w.shape) != (T, T):
            raise ValueError(f"attention_maps: {title!r} is {tuple(w.shape)}, expected ({T}, {T}) for {T} labels")
        w[torch.ones(T, T, dtype=torch.bool).triu(1)] = float("nan")                # the future: blank
        im = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(T), labels, fontsize=7)
        ax.set_xlabel("key (attended to)")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("query")
    fig.colorbar(im, ax=axes, shrink=0.7, label="attention probability")
    return _save(fig, path)


# ---- loss curves: lessons 01, 05 --------------------------------------------------------------

def pretraining_curves(tiny: list, tiny_ppl0: float, vocab_size: int, cpt: list, cpt_start: dict, path) -> Path:
    """Lesson 01. Left: pretraining from scratch, the train loss of every step (history of
    minift.train.train) and the validation loss log(ppl) at each evaluation (`eval_ppl`), from the
    random init's (tiny_ppl0) down, beside the uniform model's log V. Right: continued pretraining,
    perplexity on the new domain (`eval_d2`) and on the original corpus (`eval_orig`) from the base's
    (cpt_start: {"d2", "orig"})."""
    fig, (a, b) = _figure(10, 3.8, 2)
    a.plot([h["step"] for h in tiny], [h["loss"] for h in tiny], lw=0.8, color="tab:blue", alpha=0.5,
           label="train loss (each step's batch)")
    ev = [(0, math.log(tiny_ppl0))] + [(h["step"], math.log(h["eval_ppl"])) for h in tiny if "eval_ppl" in h]
    a.plot(*zip(*ev), "o-", color="tab:orange", label="validation loss = log(val ppl)")
    a.axhline(math.log(vocab_size), ls=":", color="gray", label=f"uniform over {vocab_size} tokens: log V")
    a.set(xlabel="optimizer step", ylabel="nats / token", title="1. pretraining a tiny GPT from scratch")
    a.legend(fontsize=8)
    steps = [0] + [h["step"] for h in cpt if "eval_d2" in h]
    for key, name, c in (("d2", "new domain (learned)", "tab:green"),
                         ("orig", "original corpus (forgotten)", "tab:red")):
        b.plot(steps, [cpt_start[key]] + [h[f"eval_{key}"] for h in cpt if "eval_d2" in h], "o-", color=c, label=name)
    b.set_yscale("log")
    b.set(xlabel="optimizer step", ylabel="validation perplexity (log scale)",
          title="2. continued pretraining of the base on domain 2")
    b.legend(fontsize=8)
    return _save(fig, path)


def loss_curves(curves: dict, path, title: str = "training loss", smooth: int = 10) -> Path:
    """Training loss over steps of several runs, {name: [loss per step]}: the raw batch losses
    faint, a trailing moving average of `smooth` steps drawn over them."""
    fig, (ax,) = _figure(7.5, 4.2)
    for i, (name, y) in enumerate(curves.items()):
        y, c = _values(y), f"C{i % 10}"
        ax.plot(range(1, len(y) + 1), y, lw=0.6, alpha=0.25, color=c)
        ax.plot(range(1, len(y) + 1), _smooth(y, smooth), lw=1.6, color=c, label=name)
    _log_y(ax)
    ax.set(xlabel="optimizer step", ylabel="train loss (log scale)", title=title)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


# ---- lesson 05: the spectrum of the update ----------------------------------------------------

def update_spectrum(W0: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Singular values of the update ΔW = W - W0, in float64, largest first."""
    if W0.shape != W.shape:
        raise ValueError(f"update_spectrum: W0 {tuple(W0.shape)} and W {tuple(W.shape)} must have the same shape")
    return torch.linalg.svdvals(_cpu64(W) - _cpu64(W0))


def delta_spectra(base, bodies: dict, matrices, seed: int = 0) -> dict:
    """The panels of `lora_spectra`: for each (module, part) of `matrices` (e.g. ("h.0.attn.c_attn",
    "W_q"): the q rows of the fused c_attn; part None: the whole matrix), the singular values of
    ΔW = W - W0 of every fine-tuned body of `bodies` ({name: GPT}, LoRA merged into a copy, the
    body itself unchanged) against the base, and of a Gaussian matrix of the same shape."""
    import copy
    from .peft.lora import merge_and_unload
    C = base.config.n_embd
    W0 = dict(base.named_parameters())
    merged = {k: dict(merge_and_unload(copy.deepcopy(b)).named_parameters()) for k, b in bodies.items()}
    gen = torch.Generator().manual_seed(seed)
    panels = {}
    for module, part in matrices:
        name, rows = f"transformer.{module}.weight", slice(None)
        if part is not None:                                            # the q, k or v rows of c_attn
            k = "qkv".index(part[-1])
            rows = slice(k * C, (k + 1) * C)
        spectra = {run: update_spectrum(W0[name][rows], W[name][rows]) for run, W in merged.items()}
        spectra["random Gaussian"] = torch.linalg.svdvals(
            torch.randn(W0[name][rows].shape, generator=gen, dtype=torch.float64))
        panels[f"{module} {part or ''}".strip()] = spectra
    return panels


def lora_spectra(panels: dict, path, top: int = 48) -> Path:
    """One panel per matrix, {title: {run: singular values of its ΔW}}: σ_i / σ_1 for the first
    `top` directions on a log axis. A rank-r LoRA update has r non-zero values, then float noise."""
    fig, axes = _figure(5.0 * len(panels), 4.0, len(panels))
    for ax, (title, runs) in zip(axes, panels.items()):
        for i, (name, s) in enumerate(runs.items()):
            s = _values(s)[:top]
            y = [max(v / s[0], 1e-6) for v in s]                              # σ_i / σ_1, floored for the log axis
            ax.plot(range(1, len(y) + 1), y, ".-" if "random" not in name else ":", lw=1.2, ms=3,
                    color="gray" if "random" in name else f"C{i % 10}", label=name)
        ax.set_yscale("log")
        ax.set_ylim(1e-6 / 2, 2)
        ax.set(xlabel="direction i (by singular value)", ylabel="σ_i / σ_1 of ΔW (log scale)", title=title)
        ax.legend(fontsize=7)
    return _save(fig, path)


# ---- lesson 12: the NF4 code ------------------------------------------------------------------

def nf4_code(codes: dict, offset: float, weights: torch.Tensor, path, block_size: int = 64) -> Path:
    """The 16 values of NF4 over the normal density they are quantiles of, and over the real
    weights they must represent. codes: {"nf4": values, "fp4": ..., "int4": ...} in [-1, 1];
    offset: NF4's δ', so that NF4 value q_i is Φ⁻¹(p_i) / Φ⁻¹(δ'). Drawn in code units x = w / absmax:
    the density of z / c for z ~ N(0, 1), c = Φ⁻¹(δ'), is c φ(c x); the histogram is of `weights`
    divided by the absmax of their block of `block_size`."""
    c = float(torch.special.ndtri(torch.tensor(offset, dtype=torch.float64)))       # Φ⁻¹(δ')
    w = _cpu64(weights).reshape(-1)
    w = w[: w.numel() // block_size * block_size].view(-1, block_size)              # (blocks, 64)
    x = (w / w.abs().amax(1, keepdim=True)).reshape(-1)                             # in [-1, 1]
    fig, (ax,) = _figure(7.5, 4.0)
    ax.hist(x.numpy(), bins=120, range=(-1, 1), density=True, color="tab:blue", alpha=0.3,
            label=f"the base's linear weights / their block's absmax ({block_size})")
    grid = torch.linspace(-1.05, 1.05, 421, dtype=torch.float64)
    dens = c * torch.exp(-0.5 * (c * grid) ** 2) / math.sqrt(2 * math.pi)          # c φ(c x)
    ax.plot(grid.numpy(), dens.numpy(), color="tab:blue", lw=1.5,
            label=f"N(0, 1) in code units: c φ(c x), c = {c:.3f}")
    q = _values(codes["nf4"])
    top = float(dens.max())
    ax.vlines(q, 0, [float(c * math.exp(-0.5 * (c * v) ** 2) / math.sqrt(2 * math.pi)) for v in q],
              color="tab:red", lw=1.2)
    ax.plot(q, [0] * len(q), "o", color="tab:red", ms=5, label="NF4: the 16 values (quantiles of N(0, 1))")
    for k, (name, color) in enumerate((("fp4", "tab:green"), ("int4", "tab:purple"))):
        if name in codes:
            y = -(0.08 + 0.08 * k) * top
            v = sorted(set(_values(codes[name])))
            ax.plot(v, [y] * len(v), "|", color=color, ms=10, mew=1.5, label=f"{name.upper()} values, for contrast")
    ax.axhline(0, color="black", lw=0.5)
    ax.set(xlabel="value in code units (w / block absmax)", ylabel="density", xlim=(-1.08, 1.08),
           title="the NF4 code over the normal density")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


# ---- lesson 15: DPO over its steps ------------------------------------------------------------

def dpo_curves(runs: dict, path, smooth: int = 5) -> Path:
    """DPO-style runs, {name: (history of minift.align.dpo.train_dpo, β)}. Per step of the train
    batch: the loss; the margin h = (r_w - r_l) / β, r = β (log π - log π_ref); and the drift of
    log π of the chosen (r_w / β, solid) and the rejected answers (r_l / β, dashed) from π_ref.
    Moving average of `smooth` steps."""
    fig, axes = _figure(13.5, 4.0, 3)
    for i, (name, (hist, beta)) in enumerate(runs.items()):
        c, steps = f"C{i % 10}", [h["step"] for h in hist]
        axes[0].plot(steps, _smooth([h["loss"] for h in hist], smooth), color=c, label=name)
        axes[1].plot(steps, _smooth([h["reward_margin"] / beta for h in hist], smooth), color=c, label=name)
        axes[2].plot(steps, _smooth([h["chosen_reward"] / beta for h in hist], smooth), color=c,
                     label=f"{name}: chosen")
        axes[2].plot(steps, _smooth([h["rejected_reward"] / beta for h in hist], smooth), "--", color=c)
    axes[0].axhline(math.log(2), ls=":", color="gray", label="log 2 (π = π_ref)")
    axes[0].set(xlabel="step", ylabel="train loss", title="loss")
    axes[1].axhline(0, color="black", lw=0.5)
    axes[1].set(xlabel="step", ylabel="h (nats)", title="margin h = Δ log π(y_w) − Δ log π(y_l)")
    axes[2].axhline(0, color="black", lw=0.5)
    axes[2].set(xlabel="step", ylabel="log π − log π_ref (nats)",
                title="drift: chosen (solid), rejected (dashed)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"on each step's training batch, moving average of {smooth} steps; IPO's are per token", fontsize=9)
    return _save(fig, path)


# ---- lesson 20: the scaling fits --------------------------------------------------------------

def scaling_fits(loss: dict, fits: dict, X: dict, data_sizes, path) -> Path:
    """One panel per method: test loss against fine-tuning data D_f (log-log), a point per cell
    (loss: {(size, method, D_f): L}) and a colour per model size (X: {size: non-embedding
    parameters}), with the fitted law L = A X^-α D^-β + E (fits: {method: {A, alpha, beta, E}})
    drawn through them."""
    from .scaling import predict_loss
    methods = list(dict.fromkeys(m for _, m, _ in loss))
    fig, axes = _figure(4.2 * len(methods), 3.8, len(methods))
    d = torch.logspace(math.log10(min(data_sizes) / 1.3), math.log10(max(data_sizes) * 1.3), 60, dtype=torch.float64)
    for ax, m in zip(axes, methods):
        for i, s in enumerate(X):
            pts = sorted((n, L) for (s2, m2, n), L in loss.items() if s2 == s and m2 == m)
            if pts:
                ax.plot(*zip(*pts), "o", color=f"C{i}", label=f"{s} (X = {X[s]:,})")
            if m in fits:
                ax.plot(d.numpy(), predict_loss(fits[m], X[s], d).numpy(), "-", lw=1, color=f"C{i}")
        ax.set_xscale("log")
        _log_y(ax)
        f = fits.get(m)
        sub = f"\nfit: α = {f['alpha']:.2f}, β = {f['beta']:.2f}, E = {f['E']:.2f}" if f else ""
        ax.set(xlabel="fine-tuning examples D_f (log)", ylabel="test loss, nats/token (log)", title=f"{m}{sub}")
        ax.legend(fontsize=7)
    return _save(fig, path)


# ---- lesson 15: the reward-KL frontier of sentiment control --------------------------------------

def reward_kl_frontier(methods: dict, path, target: float = None) -> Path:
    """{method: [(KL, reward, label), ...]}: each method's points (one per β or KL coefficient), joined in
    order of KL, on axes KL from π_ref (nats per completion) and mean reward; `target` as a dotted line."""
    fig, (ax,) = _figure(6.0, 4.2, 1)
    for i, (name, pts) in enumerate(methods.items()):
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i % 10}", label=name)
        for kl, r, label in pts:
            ax.annotate(label, (kl, r), textcoords="offset points", xytext=(4, -10), fontsize=7, color=f"C{i % 10}")
    if target is not None:
        ax.axhline(target, ls=":", color="gray", label=f"target {target:g}")
    ax.set(xlabel="KL(π ‖ π_ref), nats per completion (fresh samples)", ylabel="mean reward p(positive)",
           title="sentiment control: reward against KL")
    ax.legend(fontsize=7)
    return _save(fig, path)
