"""The fine-tune-and-measure bench of the method lessons (04-10, 19): one NER tagger per method, on a
fresh copy of the shipped base, with the same data, steps, batch, seed and head initialisation;
only the method changes (what trains, what is added). `course` re-exports it as `course.Bench`:

    bench = course.Bench(METHODS, tok, ner_splits(tok, 128, N_EVAL, dev_key="dev"), steps=150, batch=32)
    r = bench.run("LoRA r=4 q,v", 3e-3)     # trained once per (method, lr), measured, printed on one line
    r["f1"]["dev"], r["rep"]["trainable"], r["time"], r["model"]

`bench.sweep(...)` is a lesson's --sweep, which picks each method's rate on the dev split (over
seeds 0..K-1 with --sweep-seeds K: `course.add_sweep`); `bench.seed_spread(...)` its --seeds."""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable, Optional

import torch

from . import measure, world
from .heads import TokenClassifier, classifier_loss, predict_tags
from .measure import clock, clock_name
from .peft.common import count_adapter_parameters
from .peft.io import apply_config
from .peft.selective import trainable_report
from .pretrain import forgetting_probe, load_base
from .report import per_seed, seed_table, table
from .tasks import collate_fn, entity_f1
from .train import TrainConfig, train


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
        self.device = torch.device(device) if device is not None else measure.device()
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
