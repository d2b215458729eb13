"""Lesson 20: scaling, how fine-tuning data, model size and method interact.

Prints, top to bottom:

  1. the three base models: one pretraining recipe at three widths/depths (data/sizes/tiny,
     data/sizes/small, data/base), their sizes, and what pretraining gave each;
  2. the sweep: summarization, fine-tuning data D_f in {48, 150, 480, 1500} (1.5 orders of
     magnitude) x the three models x {full fine-tuning, LoRA, prompt tuning}, and where its
     results are cached (data/scaling/sweep.json, shipped);
  3. two cells (full fine-tuning, LoRA) fine-tuned again now, beside their cached numbers (the cache is a record of runs
     of this code, not numbers typed in);
  4. the table: test loss per method, model size and data size;
  5. the fit of the paper's multiplicative law L = A X^-α D^-β + E for each method, its error on
     the points fitted and on held-out points, and which factor matters more at this scale;
  6. the curves as a text plot, and the best method at each model and data size;
  7. the pretraining-data axis: the tiny shape pretrained for 375, 750 and 3000 steps (0.77M to
     6.1M tokens seen), fine-tuned by the same sweep (seed 0, cached in data/scaling/pretrain_axis.json),
     and the same law fitted with X = pretraining tokens, beside the model-size axis's exponent.

    python lessons/20_scaling/walkthrough.py            # or: minift run 20 (the cache + 2 cells run again)
    python lessons/20_scaling/walkthrough.py --report   # the cache only: tables, fit, plot (seconds)
    python lessons/20_scaling/walkthrough.py --full     # run every cell the cache lacks (see README)
    python lessons/20_scaling/walkthrough.py --probe    # + the learning-rate probe (18 more cells)
    python lessons/20_scaling/walkthrough.py --pretrain-axis   # part 7's missing cells, then one again
    python lessons/20_scaling/walkthrough.py --fast     # a 2x1x2 corner (LoRA), 3 steps a cell (the tests)

Everything it uses lives in the library (minift/scaling.py, minift/pretrain.py, minift/peft/).
"""
EXPECTED_SECONDS = 87
FAST_SECONDS = 13

import os
import sys
import tempfile
import time
from pathlib import Path

from minift import course, figures
from minift.checkpoint import load_json
from minift.pretrain import DATA_DIR, PRETRAIN_AMOUNTS, SEQ_LEN, SIZES, load_base, pretraining_tokens, size_dir
from minift.report import ascii_plot, header, table
from minift.scaling import (METHODS, Cache, equivalent_factor, finetune_cell, fit_scaling_law,
                            non_embedding_parameters, predict_loss, recipe_fingerprint, steps_for, sweep)

parser = course.parser(__doc__, "a 2x1x2 corner (tiny and small, LoRA, 48 and 150 examples), 3 steps a cell, "
                                 "in a temporary cache")
parser.add_argument("--report", action="store_true", help="print from the cache only; run nothing")
parser.add_argument("--full", action="store_true", help="run every cell missing from the cache")
parser.add_argument("--probe", action="store_true", help="first, the learning-rate probe behind METHODS' rates "
                    "(3 rates x 3 methods x 2 cells: 18 cells of the sweep's recipe)")
parser.add_argument("--seeds", type=course.seed_list, default="0,1,2", help="comma-separated seeds of the sweep (default 0,1,2: the shipped cache)")
parser.add_argument("--cache", default=str(DATA_DIR / "scaling" / "sweep.json"), help="the cache file")
parser.add_argument("--pretrain-axis", action="store_true", help="part 7: run its cells missing from the cache (the "
                    "tiny shape pretrained 375 and 750 steps x 3 methods x 4 D_f, seed 0), then one of them again "
                    "(--fast: 2 cells of 3 steps, in a temporary cache)")
parser.add_argument("--axis-cache", default=str(DATA_DIR / "scaling" / "pretrain_axis.json"),
                    help="part 7's cache file")
args = course.start("20", parser, needs_base=False)      # one thread, the clock; its models are data/sizes/
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told), where every model lives
if DEV.type != "cpu" and args.pretrain_axis and args.axis_cache == parser.get_default("axis_cache"):
    sys.exit(f"--pretrain-axis --device {DEV}: the cells would be written into the shipped cache {args.axis_cache}, "
             f"which holds CPU runs (the README's numbers); give another file with --axis-cache PATH")
if DEV.type != "cpu" and args.full and args.cache == parser.get_default("cache"):
    sys.exit(f"--full --device {DEV}: the cells would be written into the shipped cache {args.cache}, which holds "
             f"CPU runs (the README's numbers); give another file with --cache PATH")


def load(size):
    """A pretrained size (data/sizes/, or data/base/ for "base") and the tokenizer, on DEV."""
    return load_base(size_dir(size), device=DEV)


SIZE_NAMES = ("tiny", "small") if FAST else tuple(SIZES)
METHOD_NAMES = ("lora",) if FAST else tuple(METHODS)
DATA_SIZES = (48, 150) if FAST else (48, 150, 480, 1500)
SEEDS = (0,) if FAST else args.seeds
LIVE = [("tiny", m, DATA_SIZES[0], SEEDS[0])                   # cheap cells, run again: full and LoRA (--fast: LoRA)
        for m in (METHOD_NAMES if FAST else ("full", "lora"))]
FAST_RUN = dict(steps=3, n_val=8, n_test=16)            # --fast: seconds, not a measurement

# ==============================================================================================
header("1. Three base models, one pretraining recipe")
rows, X_of = [], {}
for s in SIZE_NAMES:
    model, _ = load(s)
    cfg, meta = model.config, load_json(os.path.join(size_dir(s), "config.json"))
    X_of[s] = non_embedding_parameters(model)
    met = meta.get("metrics", {})
    rows.append((s, f"{cfg.n_layer} x {cfg.n_embd}", f"{cfg.n_head}", f"{model.num_parameters():,}", f"{X_of[s]:,}",
                 f"{met.get('val_ppl', float('nan')):.3f}", f"{met.get('fact_accuracy', float('nan')):.1%}",
                 f"{met.get('train_seconds', float('nan')):.0f}s"))
table(("size", "layers x width", "heads", "parameters", "X (non-embedding)", "val ppl", "facts recalled",
       "pretraining"), rows)
r = meta.get("recipe", {})
print(f"Each: the shipped tokenizer, {r.get('steps')} steps x {r.get('batch_size')} windows of 256 tokens of "
      f"TinyWorld's corpus, AdamW lr {r.get('lr')} with warmup and cosine decay, seed {r.get('seed')} "
      f"(`minift pretrain --size NAME`). Only the shape differs. X = 12 L C^2 + biases and norms: the "
      f"paper's model-size axis, without the embeddings (Kaplan et al.'s convention).")

# ==============================================================================================
def shown(path) -> str:
    """A cache's path as printed: relative to the repository when it lies inside it (the same in every clone)."""
    root = Path(__file__).resolve().parents[2]
    full = Path(path).resolve()
    return str(full.relative_to(root)) if full.is_relative_to(root) else str(path)


header("2. The sweep: data size x model size x method")
for name in METHOD_NAMES:
    m = METHODS[name]
    print(f"  {name:<7} {type(m.config).__name__ if m.config is not None else 'every weight'}"
          f"{'' if m.config is None else ' ' + repr(m.config)[len(type(m.config).__name__):][:60] + '...'}  lr {m.lr:g}")
print(f"Task: summarization (one sentence from three). D_f = {', '.join(map(str, DATA_SIZES))} training examples "
      f"(nested: each set holds the smaller ones). Every run: {steps_for(1)} steps of batch 16 (the same compute at every "
      f"D_f: {', '.join(f'{steps_for(n) * 16 / n:.1f}' for n in DATA_SIZES)} passes over the data). The validation loss "
      f"(96 examples) is measured every {steps_for(1) // 10} steps; the reported test loss (nats per summary token, 200 "
      f"test examples) is the one at the best of them: early stopping.")
if FAST:
    scratch = tempfile.TemporaryDirectory(prefix="minift-scaling-")        # removed when the run ends
    cache_path = os.path.join(scratch.name, "sweep.json")
    print(f"--fast: {len(SIZE_NAMES)} x {len(METHOD_NAMES)} x {len(DATA_SIZES)} cells of {FAST_RUN['steps']} steps, "
          f"in a temporary cache {cache_path}: a check that the pipeline runs, not a measurement.")
else:
    cache_path = args.cache
cache = Cache(cache_path, recipe_fingerprint(SIZE_NAMES))
cells = [(s, m, n, seed) for s in SIZE_NAMES for m in METHOD_NAMES for n in DATA_SIZES for seed in SEEDS]
missing = [c for c in cells if cache.get(*c) is None]
print(f"cache {shown(cache_path)}: {len(cells) - len(missing)} of {len(cells)} cells (recipe fingerprint {cache.fingerprint})")

run = (lambda *c: finetune_cell(*c, load=load, **FAST_RUN)) if FAST else (lambda *c: finetune_cell(*c, load=load))
if FAST or args.full:
    t0 = time.perf_counter()
    results = sweep(SIZE_NAMES, METHOD_NAMES, DATA_SIZES, SEEDS, cache, run=run)
    print(f"ran {len(missing)} missing cells in {time.perf_counter() - t0:.0f}s")
else:
    results = sweep(SIZE_NAMES, METHOD_NAMES, DATA_SIZES, SEEDS, cache, only_cached=True)
    if missing:
        print(f"{len(missing)} cells are missing (e.g. {'/'.join(map(str, missing[0]))}): the tables below leave them "
              f"out. `python lessons/20_scaling/walkthrough.py --full` runs them "
              f"(36 cells per seed, 200 steps each: part 3's cells show what one costs on this machine).")

if args.probe:
    header("2b. The learning-rate probe: validation loss at three rates per method")
    PROBE_LRS = {"full": (3e-4, 1e-3, 3e-3), "lora": (3e-3, 1e-2, 3e-2), "prompt": (3e-2, 1e-1, 3e-1)}
    PROBE_CELLS = (("base", 150), ("tiny", 480))                 # the largest model on little data, and vice versa
    rows = []
    for m, lrs in PROBE_LRS.items():
        for lr in lrs:
            v = [finetune_cell(s, m, n, lr=lr, load=load)["val_nll"] for s, n in PROBE_CELLS]
            rows.append((m, f"{lr:g}", *[f"{x:.4f}" for x in v], f"{sum(v) / len(v):.4f}",
                         "<- METHODS" if lr == METHODS[m].lr else ""))
    table(("method", "lr", *[f"val {s} D_f={n}" for s, n in PROBE_CELLS], "mean", ""), rows)
    print("METHODS keeps, per method, the rate with the lowest mean (ties within 0.01 to the smaller rate).")

# ==============================================================================================
header(f"3. The cache is a record: {len(LIVE)} cells fine-tuned again now")
if args.report:
    print("--report: skipped (nothing is run).")
else:
    rows = []
    for c in LIVE:
        cached = cache.get(*c)
        c0 = course.clock()                                      # CPU seconds (GPU wall on a GPU)
        now = run(*c)
        secs = course.clock() - c0                               # training and its evaluations
        rows.append(("/".join(map(str, c[:3])), f"{now['test_nll']:.4f}",
                     f"{cached['test_nll']:.4f}" if cached else "-",
                     f"{abs(now['test_nll'] - cached['test_nll']):.1e}" if cached else "-",
                     f"{secs:.1f}s"))
    table(("size/method/D_f", "test loss now", "cached", "|difference|", f"{course.clock_name()} time"), rows)
    print("Same code, seed and thread count give the same numbers; another CPU, a GPU or another torch version may "
          "differ in the last digits (floating-point sums in another order).")

by = {(r["size"], r["method"], r["n_train"]): [] for r in results}
for r in results:
    by[(r["size"], r["method"], r["n_train"])].append(r["test_nll"])
loss = {k: sum(v) / len(v) for k, v in by.items()}               # mean over seeds
spread = {k: (max(v) - min(v)) / 2 for k, v in by.items()}        # half the range over seeds

# ==============================================================================================
header("4. Test loss after fine-tuning (nats per summary token; lower is better)")
rows = []
for m in METHOD_NAMES:
    for s in SIZE_NAMES:
        rows.append((m, s, *[f"{loss[(s, m, n)]:.3f} ±{spread[(s, m, n)]:.3f}" if (s, m, n) in loss else "-"
                             for n in DATA_SIZES]))
table(("method", "size", *[f"D_f={n}" for n in DATA_SIZES]), rows)
n_seeds = sorted({r["seed"] for r in results})
print(f"mean over seeds {', '.join(map(str, n_seeds))} ± half the range between them (a seed draws the training "
      f"subset, the batch order and LoRA's A; the prompt starts from the same 16 token embeddings at every seed).")
trainable = {r["method"]: {} for r in results}
for r in results:
    trainable[r["method"]][r["size"]] = r["trainable"]
print("trainable parameters: " + "; ".join(f"{m} " + ", ".join(f"{s} {trainable[m][s]:,}" for s in SIZE_NAMES
                                                                 if s in trainable[m]) for m in trainable))

# ==============================================================================================
header("5. The multiplicative law, one fit per method: L = A X^-α D_f^-β + E")
def fit_and_hold_out(m: str, pts: list):
    """The law fitted to (X, D_f, L) points, and Δh: fitted again without the largest D_f, the mean
    |L̂ - L| on those cells ("-" when too few remain). None (said why) when the points cannot pin it."""
    if len(pts) < 4 or len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
        print(f"{m}: too few cells to fit ({len(pts)})")
        return None
    held = [p for p in pts if p[1] == max(DATA_SIZES)]              # refit without the largest D_f, predict it
    rest = [p for p in pts if p[1] != max(DATA_SIZES)]
    dh = "-"
    if len({p[1] for p in rest}) >= 2 and len(rest) >= 4:
        g = fit_scaling_law(*zip(*rest))
        dh = f"{sum(abs(float(predict_loss(g, x, n)) - y) for x, n, y in held) / len(held):.3f}"
    return fit_scaling_law(*zip(*pts)), dh


fits, rows = {}, []
for m in METHOD_NAMES:
    pts = [(X_of[s], n, loss[(s, m, n)]) for s in SIZE_NAMES for n in DATA_SIZES if (s, m, n) in loss]
    if (out := fit_and_hold_out(m, pts)) is None:
        continue
    f, dh = out
    fits[m] = f
    rows.append((m, f"{f['A']:.3g}", f"{f['alpha']:.3f}", f"{f['beta']:.3f}", f"{f['E']:.3f}", f"{f['mad']:.3f}", dh))
table(("method", "A", "α (model)", "β (data)", "E", "Δe (fitted)", "Δh (held out)"), rows)
print(f"Δe: mean |L̂ - L| over the {len(SIZE_NAMES) * len(DATA_SIZES)} cells fitted. Δh: fit again without "
      f"D_f = {max(DATA_SIZES)}, then predict those cells (the paper's check that the law extrapolates).")
if fits:
    xr, dr = max(X_of.values()) / min(X_of.values()), max(DATA_SIZES) / min(DATA_SIZES)
    rows = [(m, f"{2 ** -f['alpha']:.3f}", f"{2 ** -f['beta']:.3f}", f"{xr ** -f['alpha']:.3f}", f"{dr ** -f['beta']:.3f}",
             "model" if f["alpha"] > f["beta"] else "data")
            for m, f in fits.items()]
    table(("method", "x2 model", "x2 data", f"x{xr:.0f} model (the sweep's range)", f"x{dr:.0f} data (the sweep's range)",
           "per doubling, more from"), rows)
    print("Each column: the factor by which the reducible loss L - E shrinks. Multiplicative means this factor is "
          "the same at every point of the other axis.")

print("\nWithout the law, from the table: what the largest model gains over the smallest at each D_f, and "
      "what the largest D_f gains over the smallest at each model size (negative: lower loss, better).")
lo_s, hi_s, lo_d, hi_d = SIZE_NAMES[0], SIZE_NAMES[-1], DATA_SIZES[0], DATA_SIZES[-1]
rows = []
for m in METHOD_NAMES:
    rows.append((m, *[f"{loss[(hi_s, m, n)] - loss[(lo_s, m, n)]:+.3f}" if (hi_s, m, n) in loss and (lo_s, m, n) in loss
                      else "-" for n in DATA_SIZES],
                 *[f"{loss[(s, m, hi_d)] - loss[(s, m, lo_d)]:+.3f}" if (s, m, hi_d) in loss and (s, m, lo_d) in loss
                   else "-" for s in SIZE_NAMES]))
table(("method", *[f"{lo_s}->{hi_s} at D_f={n}" for n in DATA_SIZES], *[f"{lo_d}->{hi_d} at {s}" for s in SIZE_NAMES]),
      rows)

# ==============================================================================================
header("6. The curves, and the best method where")
for m in METHOD_NAMES:                                           # one plot per method, one curve per size
    series = {f"{i + 1} {s}": [(n, loss[(s, m, n)]) for n in DATA_SIZES if (s, m, n) in loss]
              for i, s in enumerate(SIZE_NAMES)}
    series = {k: v for k, v in series.items() if v}
    if series:
        print(f"{m}:")
        print(ascii_plot(series, height=10, xlabel="D_f", ylabel="test loss"))
if args.figures:                           # --figures: the points and the fits, log-log (minift/figures.py)
    figures.scaling_fits(loss, fits, X_of, DATA_SIZES, figures.target("20", "scaling_fits.png", FAST))
rows = []
for s in SIZE_NAMES:
    row = [s]
    for n in DATA_SIZES:
        have = {m: loss[(s, m, n)] for m in METHOD_NAMES if (s, m, n) in loss}
        row.append(min(have, key=have.get) if have else "-")
    rows.append(tuple(row))
table(("size", *[f"best at D_f={n}" for n in DATA_SIZES]), rows)

# ==============================================================================================
header("7. The pretraining-data axis: one shape, pretrained on less text")
AXIS = (*PRETRAIN_AMOUNTS, "tiny")            # the tiny shape after 375, 750 and 3000 steps of RECIPE
NEW = AXIS[:1] if FAST else AXIS[:-1]         # pretrained for this axis; "tiny" (3000 steps) is part 1's
SHOWN = (*NEW, "tiny")                        # --fast: the first amount only
AXIS_SEEDS = (0,)                             # one seed: the model-size axis's seeds show the noise (part 4)
absent = [s for s in SHOWN if not (size_dir(s) / "model.safetensors").is_file()]
if FAST and not args.pretrain_axis:
    print("--fast: skipped (`--fast --pretrain-axis` runs its smoke test).")
elif absent:
    print(f"skipped: no checkpoint {size_dir(absent[0])}; build it with `minift pretrain --size tiny --steps "
          f"{PRETRAIN_AMOUNTS.get(absent[0], ('tiny', 3000))[1]} --out {size_dir(absent[0])}`.")
else:
    from minift import world
    from minift.tasks import LMDataset
    P_of, rows, passes = {}, [], []
    _, tok = load("tiny")
    corpus_windows = len(LMDataset(tok, world.pretrain_corpus("train"), SEQ_LEN))     # RECIPE's windows
    for s in SHOWN:
        meta = load_json(os.path.join(size_dir(s), "config.json"))
        P_of[s], met = pretraining_tokens(size_dir(s)), meta.get("metrics", {})
        steps = meta["recipe"]["steps"]
        passes.append(steps * meta["recipe"]["batch_size"] / corpus_windows)
        rows.append((s, f"{steps}", f"{P_of[s] / 1e6:.2f}M", f"{passes[-1]:.1f}",
                     f"{met.get('val_ppl', float('nan')):.3f}", f"{met.get('fact_accuracy', float('nan')):.1%}"))
    table(("model", "pretraining steps", "P (tokens seen)", "passes over the corpus", "val ppl", "facts recalled"), rows)
    print(f"The tiny shape (2 x 64), RECIPE's batch, warmup, peak rate and seed; the cosine decays over each run's own "
          f"steps (`minift pretrain --size tiny --steps N --out data/sizes/tiny_N`). The corpus is {corpus_windows:,} "
          f"windows of {SEQ_LEN} tokens, so fewer steps means fewer tokens seen, not less unique text: every model "
          f"passed over all of it at least {min(passes):.1f} times. P = steps x 8 x 256 is the paper's pretraining-data axis.")

    if FAST:
        axis_path = os.path.join(scratch.name, "pretrain_axis.json")
    else:
        axis_path = args.axis_cache
    axis_cache = Cache(axis_path, recipe_fingerprint(NEW))
    axis_cells = [(s, m, n, seed) for s in NEW for m in METHOD_NAMES for n in DATA_SIZES for seed in AXIS_SEEDS]
    todo = [c for c in axis_cells if axis_cache.get(*c) is None]
    print(f"cache {shown(axis_path)}: {len(axis_cells) - len(todo)} of {len(axis_cells)} cells (recipe fingerprint "
          f"{axis_cache.fingerprint}); the 3000-step row is the tiny model's seed-0 cells of part 4's cache.")
    if args.pretrain_axis and todo:                              # fill the cache, one method at a time
        t0 = course.clock()
        for m in METHOD_NAMES:
            sweep(NEW, (m,), DATA_SIZES, AXIS_SEEDS, axis_cache, run=run)
        print(f"ran {len(todo)} cells in {course.clock() - t0:.0f}s ({course.clock_name()})")
    if args.pretrain_axis and not todo:                          # all cached: one cell again, the cache is a record
        c = (NEW[0], "lora", DATA_SIZES[0], AXIS_SEEDS[0])
        c0 = course.clock()
        now = run(*c)
        secs = course.clock() - c0
        table(("size/method/D_f", "test loss now", "cached", "|difference|", f"{course.clock_name()} time"),
              [("/".join(map(str, c[:3])), f"{now['test_nll']:.4f}", f"{axis_cache.get(*c)['test_nll']:.4f}",
                f"{abs(now['test_nll'] - axis_cache.get(*c)['test_nll']):.1e}", f"{secs:.1f}s")])
    axis = sweep(NEW, METHOD_NAMES, DATA_SIZES, AXIS_SEEDS, axis_cache, only_cached=True)
    if todo and not args.pretrain_axis:
        print(f"{len(todo)} cells are not cached: `python lessons/20_scaling/walkthrough.py --pretrain-axis` runs "
              f"them (one cell costs about what part 3's do).")
    lp = {(r["size"], r["method"], r["n_train"]): r["test_nll"] for r in axis}
    for m in METHOD_NAMES:                                       # the 3000-step row: part 4's tiny cells, seed 0
        for n in DATA_SIZES:
            hit = cache.get("tiny", m, n, AXIS_SEEDS[0])
            if hit is not None:
                lp[("tiny", m, n)] = hit["test_nll"]

    rows = [(m, s, f"{P_of[s] / 1e6:.2f}M", *[f"{lp[(s, m, n)]:.3f}" if (s, m, n) in lp else "-" for n in DATA_SIZES])
            for m in METHOD_NAMES for s in SHOWN]
    table(("method", "model", "P", *[f"D_f={n}" for n in DATA_SIZES]), rows)
    sp = [spread[("tiny", m, n)] for m in METHOD_NAMES for n in DATA_SIZES if ("tiny", m, n) in spread]
    print("Test loss after fine-tuning (nats per summary token), seed 0." + (
        f" For scale, part 4's ± on the tiny model ({len(n_seeds)} seeds) is {min(sp):.3f} to {max(sp):.3f}."
        if sp and len(n_seeds) > 1 else ""))

    pfits, rows = {}, []
    for m in METHOD_NAMES:
        pts = [(P_of[s], n, lp[(s, m, n)]) for s in SHOWN for n in DATA_SIZES if (s, m, n) in lp]
        if (out := fit_and_hold_out(m, pts)) is None:
            continue
        f, dh = out
        pfits[m] = f
        am = fits[m]["alpha"] if m in fits else None
        q = (equivalent_factor(am, f["alpha"]) if am is not None and am > 0 and f["alpha"] > 0 else None)
        rows.append((m, f"{f['A']:.3g}", f"{f['alpha']:.3f}", f"{f['beta']:.3f}", f"{f['E']:.3f}", f"{f['mad']:.3f}", dh,
                     f"{2 ** -f['alpha']:.3f}", "-" if am is None else f"{am:.3f}",
                     "-" if am is None else f"{2 ** -am:.3f}", "-" if q is None else f"x{q:.3g}"))
    table(("method", "A", "α_p (pretraining)", "β (data)", "E", "Δe", "Δh", "x2 P", "α (model, part 5)", "x2 model",
           "x2 model = P times"), rows)
    print(f"L = A P^-α_p D_f^-β + E, fitted to the {len(SHOWN) * len(DATA_SIZES)} cells of each method (Δh: fit without "
          f"D_f = {max(DATA_SIZES)}, predict it). x2: the factor by which L - E shrinks when P (or the model) doubles; "
          f"both double the pretraining compute (~6 x parameters x tokens), so they compare per FLOP. Last column: how "
          f"many times more pretraining tokens shrink L - E as much as a twice larger model, 2^(α/α_p) "
          f"(`equivalent_factor`; only where both exponents are > 0).")
    lo, hi = SHOWN[0], SHOWN[-1]
    rows = [(m, *[f"{lp[(hi, m, n)] - lp[(lo, m, n)]:+.3f}" if (hi, m, n) in lp and (lo, m, n) in lp else "-"
                  for n in DATA_SIZES]) for m in METHOD_NAMES]
    table(("method", *[f"{lo}->{hi} at D_f={n}" for n in DATA_SIZES]), rows)
    print(f"Without the law: what {P_of[hi] // P_of[lo]}x the pretraining tokens gains at each D_f (negative: better).")
    pairs = [(loss[(lo_s, m, n)] - loss[(hi_s, m, n)], lp[(lo, m, n)] - lp[(hi, m, n)]) for m in METHOD_NAMES
             for n in DATA_SIZES if {(lo_s, m, n), (hi_s, m, n)} <= set(loss) and {(lo, m, n), (hi, m, n)} <= set(lp)]
    if pairs:                                                    # the paper's finding 2, read off the two tables
        wins = sum(dm > dp for dm, dp in pairs)
        course.verdict(f"Finding 2, a larger model helps fine-tuning more than more pretraining data: the model's "
                       f"x{X_of[hi_s] / X_of[lo_s]:.0f} ({lo_s}->{hi_s}) gains more than the tokens' x{P_of[hi] // P_of[lo]} "
                       f"at {wins} of {len(pairs)} (method, D_f) points -> {'holds' if wins > len(pairs) / 2 else 'does not hold here'}")

print(f"\ntotal: {course.elapsed():.1f}s")
