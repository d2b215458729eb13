"""What every walkthrough shares: its arguments, the base-model check, the clock, and the
fine-tune-and-measure bench of the method lessons.

A walkthrough (`lessons/NN_name/walkthrough.py`) is a story told top to bottom; this module holds
the scaffolding around the story, so that each lesson keeps only its own part. It lives in the
package because `python lessons/NN_name/walkthrough.py` puts only the lesson's folder on sys.path.

The preamble. Every walkthrough starts the same way:

    EXPECTED_SECONDS = 100      # literals: `minift lessons` and the tests read them from the source
    FAST_SECONDS = 10

    from minift import course

    parser = course.parser(__doc__)                     # --fast, and the title as the description
    parser.add_argument("--sweep", action="store_true", help="...")   # the lesson's own flags
    args = course.start("05", parser)                   # parse, check the base model, 1 thread, clock
    FAST, DEV = args.fast, args.device                  # DEV: a torch.device, cpu unless --device says

`course.elapsed()` is then the wall time since `start` (the lessons' "total" line).

The device. `--device cpu|cuda|cuda:N` (default cpu: the READMEs quote CPU runs) says where the
walkthrough puts every model it builds or loads (`load_base(device=DEV)`, `GPT(cfg).to(DEV)`) and
every tensor it builds by hand; the library's loops (train, evaluation, generation, the Bench) move
their batches to the model's device themselves. `course.device()` is the same device for code that
has no `args`. A time on a GPU is wall time after `torch.cuda.synchronize()` (`course.clock`, `course.sync`);
what only a CPU can measure (CPU seconds) says so, or is skipped with the reason.

Honest --fast. A --fast run is a smoke test: `start` prints FAST_NOTE as its first line and, at
exit, as its last (`end`), and `course.verdict(text)` prints a judgement of a claim ("holds",
"fails", "met") only in a default run: tiny budgets cannot judge anything. The README quotes the
default run. `start(..., kernel=True)` loads the C++ extension (building it once, with a notice)
before anything is timed, so the build never lands inside a measured row.

The bench. Lessons 04-10 and 19 ask one question of many methods: fine-tune the shipped base as a
NER tagger (`TokenClassifier`) with the same data, steps, batch, seed and head initialisation,
change only the method (what trains, what is added), and measure. `Bench` is that experiment:

    bench = course.Bench(METHODS, tok, ner_splits(tok, 128, N_EVAL, dev_key="dev"), steps=150, batch=32)
    r = bench.run("LoRA r=4 q,v", 3e-3)     # trained once per (method, lr), measured, printed on one line
    r["f1"]["dev"], r["rep"]["trainable"], r["time"], r["model"]

`bench.sweep(...)` is the `--sweep` that picks each method's rate on dev; `bench.seed_spread` --seeds."""
from __future__ import annotations

import argparse
import ast
import atexit
import dataclasses
import inspect
import os
import re
import sys
import time
from collections import Counter
from typing import Callable, Optional

import torch

from . import figures, world
from .heads import TokenClassifier, classifier_loss, predict_tags
from .peft.common import count_adapter_parameters
from .peft.io import apply_config
from .peft.selective import trainable_report
from .pretrain import BASE_DIR, forgetting_probe, load_base
from .report import KERNELS_ENV, header, kernels_note, kib, per_seed, seed_table, table
from .tasks import collate_fn, entity_f1
from .train import TrainConfig, model_device, to_device, train

FAST_HELP = "tiny budgets and eval slices (seconds)"
FAST_NOTE = ("--fast: a smoke test with tiny budgets; its numbers mean nothing. "
             "The README quotes the default run: minift run {lesson}")
_t_start: Optional[float] = None
_fast = False                   # this run is --fast: no verdicts (`verdict`)
_note_due: Optional[str] = None  # the lesson whose bottom FAST_NOTE `end` still owes
_device = torch.device("cpu")   # --device, set by `start` (`device()`)


DEVICE_HELP = "where models and tensors live: cpu (default: the READMEs' numbers), cuda or cuda:N"


# ---- the preamble -----------------------------------------------------------------------------

def parser(doc: str, fast_help: str = FAST_HELP) -> argparse.ArgumentParser:
    """The walkthrough's argument parser: its docstring's first line as the description, and
    --fast (the seconds-long smoke test the tests run). The lesson adds its own flags to it."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--fast", action="store_true", help=fast_help)
    p.add_argument("--figures", action=figures.FiguresFlag, help="also draw the lesson's figures (PNG, matplotlib: "
                   f"{figures.INSTALL}); beside the README, or with --fast into a temporary folder")
    p.add_argument("--device", default="cpu", type=device_name, help=DEVICE_HELP)
    return p


def device_name(text: str) -> str:
    """--device's spelling check (argparse `type`): cpu, cuda or cuda:N. Whether torch can use
    it is `resolve_device`'s question, asked by `start`."""
    t = text.strip().lower()
    if t == "cpu" or t == "cuda" or re.fullmatch(r"cuda:\d+", t):
        return t
    raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N")


def add_seeds(p: argparse.ArgumentParser, what: str, draws: str, scores: str, cost: str = "") -> None:
    """--seeds K: at the end of the run, retrain `what` with seeds 0..K-1 (`draws`: what a seed
    redraws) and print the spread of `scores` ("val/test F1"); `cost` says what K seeds cost. K is
    checked by `seed_count`; the section itself opens with `seeds_section`."""
    p.add_argument("--seeds", type=seed_count, default=1, metavar="K",
                   help=f"at the end, retrain {what} with seeds 0..K-1 ({draws}) and print the spread of "
                        f"{scores}{f' ({cost})' if cost else ''}; 1, the default, trains seed 0 alone")


def seed_count(text: str) -> int:
    """--seeds' check (argparse `type`): a whole number of seeds, 1 or more."""
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seeds: 1 or more (seeds 0..K-1)")
    return k


def seed_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of seeds (argparse `type`): distinct whole numbers, 0 or more."""
    try:
        seeds = tuple(int(t) for t in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds: distinct whole numbers 0 or more, "
                                         f"comma-separated (e.g. 0,1,2)")
    return seeds


def seeds_section(k: int, title: str, draws: str = "") -> list[int]:
    """The seeds 0..k-1 of a --seeds section, after its header: "`title`, seeds [0, .., k-1]
    (`draws`)". [] and no header when k is 1: seed 0 is the lesson's own run."""
    if k < 2:
        return []
    seeds = list(range(k))
    header(f"{title}, seeds {seeds}" + (f" ({draws})" if draws else ""))
    return seeds


def resolve_device(text: str) -> torch.device:
    """The torch.device of --device `text`, or ValueError with one line that names the flag when
    this torch cannot use it (no CUDA build, no GPU visible, index out of range)."""
    dev = torch.device(device_name(text))
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build: torch.version.cuda is None; install a CUDA build of torch"
               if torch.version.cuda is None else
               f"this torch is built for CUDA {torch.version.cuda} but sees no GPU: check nvidia-smi and "
               f"CUDA_VISIBLE_DEVICES")
        raise ValueError(f"--device {text}: torch.cuda.is_available() is False ({why})")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise ValueError(f"--device {text}: there {'is' if n == 1 else 'are'} {n} GPU{'s' * (n != 1)} "
                         f"(cuda:0..cuda:{n - 1})")
    return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)


def device() -> torch.device:
    """The walkthrough's device (--device; cpu before `start`)."""
    return _device


def base_model_error(lesson: str) -> Optional[str]:
    """Why lesson `lesson` cannot run (the shipped base model is missing), or None."""
    if (BASE_DIR / "model.safetensors").is_file():
        return None
    return (f"lesson {lesson} needs the base model in {BASE_DIR}/; it is shipped with minift "
            f"(or rebuild it with `minift pretrain`).")


def start(lesson: str, p: argparse.ArgumentParser | str, *, needs_base: bool = True, kernel: bool = False,
          argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse the arguments (`p`: a parser from `parser`, or a docstring for one with --fast only),
    exit with a one-line message when the base model is missing, run torch on one thread, and
    start the clock of `elapsed`. With --fast, print FAST_NOTE now and again at exit (`end`).
    --device: args.device becomes a torch.device (also `device()`); one torch cannot use is one
    line on stderr and exit status 2, like argparse's errors; on a GPU its name is printed once.
    kernel: load the C++ extension now (see `load_kernel`). Returns the parsed arguments."""
    global _t_start, _fast, _note_due, _device
    args = (parser(p) if isinstance(p, str) else p).parse_args(argv)
    try:
        _device = resolve_device(getattr(args, "device", None) or "cpu")
    except ValueError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    args.device = _device
    if needs_base and (msg := base_model_error(lesson)):
        sys.exit(msg)
    torch.set_num_threads(1)        # tiny matrices: one thread is as fast, and fair on a shared machine (CPU side)
    _fast = bool(getattr(args, "fast", False))
    if _fast:
        print(FAST_NOTE.format(lesson=lesson), flush=True)
        atexit.unregister(end)                  # registered once, however often start runs
        atexit.register(end)
        _note_due = lesson
    note = kernels_note(torch.backends.cpu.get_cpu_capability(), lesson, os.environ.get(KERNELS_ENV))
    if note and not _fast and _device.type == "cpu":
        print(note, flush=True)
    if _device.type == "cuda":
        torch.cuda.set_device(_device)          # plain "cuda" tensors (library defaults) land on this GPU too
        print(f"device: {_device} ({torch.cuda.get_device_name(_device)}): the models and tensors live there; "
              f"its times are wall seconds ('GPU wall': read after torch.cuda.synchronize())", flush=True)
    if kernel:
        load_kernel()
    _t_start = time.perf_counter()
    return args


def end() -> None:
    """The last line of a --fast run: FAST_NOTE again (once; `start` registers this at exit)."""
    global _note_due
    if _note_due is not None:
        print(FAST_NOTE.format(lesson=_note_due), flush=True)
        _note_due = None


def verdict(text: str) -> None:
    """Print a judgement of a claim or target ("... -> holds", "met: NO") in a default run only:
    a --fast run's budgets are too small for its numbers to judge anything."""
    if not _fast:
        print(text, flush=True)


def load_kernel() -> str:
    """Load the C++ extension of minift.quant.ops now (the first time ever, it is built: ~40 s,
    announced by the loader), so that no timed section pays for it. Returns the kernel path."""
    from .quant import ops
    ops.extension()
    return ops.backend()


def _literal(text: str):
    """A command-line value as Python: 0.25, 3, (1, 4), None, true/false; anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_starter(namespace: dict, argv: Optional[list] = None):
    """`python lessons/NN_x/exercise.py try_<what> [value ...] [name=value ...]`: call the exercise's
    starter `try_<what>` with those arguments (each read as a Python literal, else a string), e.g.
    `try_ppo 0.1 20`, `try_forgetting replay=0.25`, `try_lora_targets attn.c_attn mlp.c_fc`. One torch
    thread, as in the walkthroughs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    starters = sorted(n for n, f in namespace.items() if n.startswith("try_") and callable(f))
    if not argv or argv[0] not in starters:
        usage = "\n".join(f"  {n}{inspect.signature(namespace[n])}" for n in starters)
        raise SystemExit(f"usage: python {sys.argv[0]} try_<what> [value ...] [name=value ...]; the starters:\n{usage}")
    args = [_literal(a) for a in argv[1:] if "=" not in a]
    kwargs = {k: _literal(v) for k, v in (a.split("=", 1) for a in argv[1:] if "=" in a)}
    torch.set_num_threads(1)        # as `start` does: the walkthrough's numbers, and fair on a shared machine
    return namespace[argv[0]](*args, **kwargs)


def elapsed() -> float:
    """Wall seconds since `start` (it grows when other jobs share the cores)."""
    if _t_start is None:
        raise RuntimeError("course.elapsed() before course.start(...): the clock starts there")
    return time.perf_counter() - _t_start


# ---- measuring helpers ------------------------------------------------------------------------

def sync(dev=None) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU): a CUDA call returns before it is done,
    so a clock read after it without this times the launch, not the work."""
    dev = torch.device(dev) if dev is not None else _device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def clock(dev=None) -> float:
    """The course's stopwatch: this process's CPU seconds on the CPU (time.process_time: one torch
    thread, so CPU time is the work, and other jobs on a shared machine do not inflate it), wall
    seconds after a synchronize on a GPU (the CPU only queues the work there)."""
    dev = torch.device(dev) if dev is not None else _device
    if dev.type == "cuda":
        sync(dev)
        return time.perf_counter()
    return time.process_time()


def clock_name(dev=None) -> str:
    """What `clock` measures on `dev`: "CPU" or "GPU wall" (for the label of a printed time)."""
    dev = torch.device(dev) if dev is not None else _device
    return "GPU wall" if dev.type == "cuda" else "CPU"


def memory_note(dev=None) -> str:
    """On a GPU, the peak memory torch allocated on it so far (torch.cuda.max_memory_allocated),
    as ", peak GPU memory X"; on the CPU an empty string."""
    dev = torch.device(dev) if dev is not None else _device
    return f", peak GPU memory {kib(torch.cuda.max_memory_allocated(dev))}" if dev.type == "cuda" else ""


def forward_cpu_seconds(models: dict, batch: dict, rounds: int) -> dict:
    """The fastest forward time of each model on `batch` (eval mode, no grad), in seconds.

    One warm-up pass each, then `rounds` rounds interleaved over the models, so that a change of
    load hits all of them alike. Measured by `clock` on the models' device: on the CPU this
    process's CPU time (one torch thread, so CPU time is the work), which other jobs on a shared
    machine do not inflate as they do wall time; on a GPU wall time with a synchronize before each
    reading (`clock_name` says which). The batch is moved to each model's device. Leaves every
    model in eval mode."""
    best = {k: float("inf") for k in models}
    with torch.no_grad():
        on = {}
        for k, m in models.items():
            dev = model_device(m)
            on[k] = dev, to_device(batch, dev)
            m.eval()(on[k][1]["idx"], attention_mask=on[k][1]["attention_mask"])          # warm up
        for _ in range(rounds):
            for k, m in models.items():
                dev, b = on[k]
                t0 = clock(dev)
                m(b["idx"], attention_mask=b["attention_mask"])
                best[k] = min(best[k], clock(dev) - t0)
    return best


# ---- the bench --------------------------------------------------------------------------------

def _pick(runs: list, k: int) -> float:
    """The sweep's pick on each run's mean dev F1 over its first k seeds: the best, ties within 0.005 -> the smaller lr."""
    score = {r["lr"]: sum(r["dev_seeds"][:k]) / k for r in runs}
    return min(lr for lr, x in score.items() if x >= max(score.values()) - 0.005)


class Bench:
    """One NER model per method, on a fresh copy of the base, trained and measured alike.

    methods: name -> method config (anything `apply` takes; None = full fine-tuning).
    data: (examples, items, train_items) as `minift.heads.ner_splits` returns them, with the
        held-out split under `dev` ("val" or "dev") and "test".
    steps, batch, warmup_steps: the TrainConfig of every run (warmup None: TrainConfig's default).
    probe: forgetting_probe's size; when given, every run also measures the body as a language
        model after training (`r["after"]`, with the method left on).
    width: the method column of the one-line report; cpu_time: report `clock` seconds (CPU seconds
        on the CPU, synchronized wall seconds on a GPU), not the training loop's wall time.
    device: where the models live (default: the walkthrough's --device, `device()`).
    apply(model, cfg): applies a config (default: minift.peft.io.apply_config).
    on_fresh(clf) -> dict: extra measurements of the fresh model, before training.
    """

    def __init__(self, methods: dict, tok, data, *, steps: int, batch: int, dev: str = "dev",
                 warmup_steps: Optional[int] = None, probe: Optional[dict] = None, width: int = 16,
                 cpu_time: bool = False, apply: Callable = apply_config, on_fresh: Optional[Callable] = None,
                 device=None):
        self.methods, self.tok = methods, tok
        self.ner, self.items, self.train_items = data
        if dev not in self.ner or "test" not in self.ner:
            raise ValueError(f"Bench: data must hold the splits {dev!r} and 'test', got {sorted(self.ner)}")
        self.steps, self.batch, self.dev, self.warmup_steps = steps, batch, dev, warmup_steps
        self.probe, self.width, self.cpu_time = probe, width, cpu_time
        self.apply, self.on_fresh = apply, on_fresh
        self.device = torch.device(device) if device is not None else _device
        self.col = collate_fn(tok.pad_id)
        self.done: dict = {}                                    # (method, lr) -> result: reused across parts

    def fresh(self, method: str, seed: int = 0, cfg=None) -> TokenClassifier:
        """A TokenClassifier on a fresh copy of the base with `method` (or `cfg`, as given) applied.
        The seed is set before the head is built, so every method starts from the same head (and
        draws its own new tensors, LoRA's A, a prefix, a prompt, after it); a method whose config
        has a seed of its own gets it moved by `seed` too (`reseeded`)."""
        torch.manual_seed(seed)
        body, _ = load_base(device=self.device)
        clf = TokenClassifier(body, len(world.NER_TAGS)).to(self.device)      # the head too, wherever it was drawn
        return self.apply(clf, self.reseeded(method, seed) if cfg is None else cfg)

    def predict(self, clf, split: str) -> tuple[float, list]:
        """Entity F1 on `split` and the predicted tags."""
        pred = predict_tags(clf, self.items[split], self.col, world.NER_TAGS)
        return entity_f1(pred, [e["tags"] for e in self.ner[split]])["f1"], pred

    def tag_errors(self, pred: list, split: Optional[str] = None, words: bool = False) -> Counter:
        """The wrong word tags: (gold, predicted) -> count, or (word, gold, predicted) with words."""
        exs = self.ner[split or self.dev]
        if words:
            return Counter((w, g, p) for e, pp in zip(exs, pred) for w, g, p in zip(e["tokens"], e["tags"], pp)
                           if g != p)
        return Counter((g, p) for e, pp in zip(exs, pred) for g, p in zip(e["tags"], pp) if g != p)

    def train_and_measure(self, method: str, lr: float, *, seed: int = 0, cfg=None, data=None,
                          unfreeze: tuple = ()) -> dict:
        """Train one classifier (`cfg` overrides the method's config; `data` the training items;
        `unfreeze`: parameter names made trainable after apply) and measure it: trainable
        parameters (`rep`, the task head included), method parameters (`n_adapter`), loss at the
        first and last step, F1 and tags on the dev and test splits, train wall and `clock` seconds,
        and, with a probe, the body's forgetting."""
        clf = self.fresh(method, seed, cfg)
        for n, p in clf.named_parameters():
            if any(u in n for u in unfreeze):
                p.requires_grad = True
        r = dict(method=method, lr=lr, rep=trainable_report(clf)["total"], n_adapter=count_adapter_parameters(clf))
        if self.on_fresh is not None:
            r.update(self.on_fresh(clf))
        tc = TrainConfig(steps=self.steps, batch_size=self.batch, lr=lr, warmup_steps=self.warmup_steps, seed=seed,
                         progress=False, desc=method)
        c0 = clock(self.device)
        hist = train(clf, data or self.train_items, tc, loss_fn=classifier_loss, collate_fn=self.col)
        r["cpu"] = clock(self.device) - c0                                  # CPU seconds; synchronized wall on a GPU
        r["f1"], r["pred"] = {}, {}
        for s in (self.dev, "test"):
            r["f1"][s], r["pred"][s] = self.predict(clf, s)
        if self.probe is not None:
            r["after"] = forgetting_probe(clf.body, self.tok, **self.probe)    # with the method on (unmerged)
        r.update(model=clf, time=hist[-1]["time"], loss=(hist[0]["loss"], hist[-1]["loss"]),
                 curve=[h["loss"] for h in hist])                     # the loss of every step (--figures)
        return r

    def run(self, method: str, lr: float, quiet: bool = False) -> dict:
        """train_and_measure(method, lr), once: a second call (the table after --sweep) reuses it.
        Unless quiet, prints one line: losses, F1 and train time."""
        if (method, lr) not in self.done:
            self.done[(method, lr)] = self.train_and_measure(method, lr)
        r = self.done[(method, lr)]
        if not quiet:
            self.report(r)
        return r

    def report(self, r: dict) -> None:
        """One line for a run: its loss at the first and last step, F1 and train time."""
        took = f"{r['cpu']:.1f}s {clock_name(self.device)}" if self.cpu_time else f"{r['time']:.1f}s"
        print(f"{r['method']:<{self.width}} lr {r['lr']:g}: loss {r['loss'][0]:.3f} -> {r['loss'][1]:.3f}, {self.dev} "
              f"F1 {r['f1'][self.dev]:.3f}, test F1 {r['f1']['test']:.3f}, {took}", flush=True)

    def sweep(self, methods, grid, lr: Optional[dict] = None, columns=("final loss", "F1"),
              keep: Callable = lambda r: False, progress: bool = True, seeds=(0,)) -> dict:
        """The learning-rate sweep: every method at every rate of `grid` (one tuple, or a tuple per
        method), picked on dev F1, ties within 0.005 going to the smaller rate. With `lr`, the
        picks are written into it and the models of the other runs are dropped (memory) unless
        keep(run). Prints a table: method, lr, the `columns` ("final loss", "F1": dev and test,
        "forgetting": the probe's ppl and facts, or (title, fn(run) -> str)), picked. Returns the picks.
        seeds (0, 1, ..): each rate at every seed, picked on the mean dev F1 ("seed 0": seed 0's pick)."""
        cols = []
        for c in columns:
            if c == "final loss":
                cols.append(("final loss", lambda r: f"{r['loss'][1]:.3f}"))
            elif c == "F1":
                cols += [(f"{self.dev} F1", lambda r: f"{r['f1'][self.dev]:.3f}"),
                         ("test F1", lambda r: f"{r['f1']['test']:.3f}")]
            elif c == "forgetting":
                cols += [("pretrain ppl", lambda r: f"{r['after']['pretrain_ppl']:.2f}"),
                         ("facts", lambda r: f"{r['after']['fact_accuracy']:.0%}")]
            else:
                cols.append(c)
        if len(seeds) > 1:
            cols += [(f"{self.dev} F1 per seed", lambda r: per_seed(r["dev_seeds"])[0]),
                     ("mean", lambda r: per_seed(r["dev_seeds"])[1])]
        rows, picks = [], {}
        for method in methods:
            runs = [self.run(method, x, quiet=True) for x in (grid[method] if isinstance(grid, dict) else grid)]
            for r in runs:                               # the other seeds' runs: their dev F1 only
                r["dev_seeds"] = [r["f1"][self.dev]] + [self.train_and_measure(method, r["lr"], seed=sd)["f1"][self.dev]
                                                        for sd in seeds[1:]]
            first, picks[method] = _pick(runs, 1), _pick(runs, len(seeds))
            for r in runs:
                rows.append((method, f"{r['lr']:g}", *(fn(r) for _, fn in cols), "<-" if r["lr"] == picks[method] else "",
                             *(("<-" if r["lr"] == first else "",) if len(seeds) > 1 else ())))
            if lr is not None:
                lr[method] = picks[method]
                for r in runs:
                    if r["lr"] != picks[method] and not keep(r):
                        r["model"] = None
            if progress:
                print(f"  {method}: done", flush=True)
        table(("method", "lr", *(t for t, _ in cols), "picked", *(("seed 0",) if len(seeds) > 1 else ())), rows)
        return picks

    def reseeded(self, method: str, seed: int):
        """The method's config for a run with `seed` (what `fresh` applies): a config that draws from
        a generator of its own (a mask's positions, a prompt's random or vocabulary init) gets its
        seed moved by `seed` too, so that seed 0 is the lesson's run and every other seed draws
        anew. Others: unchanged."""
        cfg = self.methods[method]
        if dataclasses.is_dataclass(cfg) and "seed" in {f.name for f in dataclasses.fields(cfg)}:
            return dataclasses.replace(cfg, seed=cfg.seed + seed)
        return cfg

    def seed_spread(self, methods, lr: dict, seeds, results: dict) -> dict:
        """--seeds: each method again with seeds 1.. (head init, the method's own draws, data order),
        beside results[method] (seed 0); prints dev and test F1 per seed, their mean and the dev range.
        Returns method -> its runs, seed by seed."""
        spread = {}
        for m in methods:
            spread[m] = [results[m]] + [self.train_and_measure(m, lr[m], seed=sd) for sd in seeds[1:]]
            print(f"  {m}: done", flush=True)
        seed_table([(m, lr[m], [r["f1"][self.dev] for r in runs], [r["f1"]["test"] for r in runs])
                    for m, runs in spread.items()], self.dev)
        return spread
