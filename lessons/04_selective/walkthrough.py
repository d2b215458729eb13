"""Lesson 04: selective fine-tuning: BitFit, last layers, attention, MLP, LayerNorm, embeddings vs full.

Prints, top to bottom:

  1. what each method trains: the selection (`minift.peft.selective`) as parameter names, and
     the per-component accounting `format_report(trainable_report(model))` for BitFit;
  2. one NER model per method (`TokenClassifier` on the shipped base, same data, steps, batch and
     seed; each method with its own learning rate, picked on the dev split), then ONE table:
     method | trainable parameters | share | trainable weights + gradients + AdamW state |
     dev entity F1 (held-out training sentences) | test entity F1 (people never tagged in
     training) | train time | forgetting (the body's pretraining perplexity and fact accuracy,
     before -> after); then each method's commonest dev errors;
  with --sweep, before part 2: the learning-rate sweep behind those choices, every method at
  every rate (part 2 then uses the rates the sweep picked, and reuses its runs).

    python lessons/04_selective/walkthrough.py           # or: minift run 04
    python lessons/04_selective/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/04_selective/walkthrough.py --sweep   # re-pick every lr from {1e-3, 3e-3, 1e-2} (~3 min)

Everything it uses lives in the library (minift/peft/selective.py, minift/heads.py,
minift/train.py, minift/tasks.py, minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 50
FAST_SECONDS = 8

import argparse
import sys
import time
from collections import Counter

import torch

from minift import world
from minift.heads import TokenClassifier, classifier_loss, encode_ner, predict_tags
from minift.peft.selective import SelectiveConfig, apply_selective, bitfit, format_report, trainable_report
from minift.pretrain import BASE_DIR, forgetting_probe, load_base
from minift.tasks import collate_fn, entity_f1
from minift.train import TrainConfig, train
from minift.report import header, table

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--fast", action="store_true", help="tiny budgets and eval slices (seconds)")
parser.add_argument("--sweep", action="store_true", help="sweep every method's lr over {1e-3, 3e-3, 1e-2} "
                                                         "on the dev split first (about 3 minutes)")
args = parser.parse_args()
FAST = args.fast

if not (BASE_DIR / "model.safetensors").is_file():
    sys.exit(f"lesson 04 needs the base model in {BASE_DIR}/; it is shipped with minift "
             f"(or rebuild it with `minift pretrain`).")

torch.set_num_threads(1)        # tiny matrices: one thread is as fast, and fair on a shared machine

# What each method trains. A task head (head.*) trains in every one of them.
METHODS = {
    "full": None,                                              # everything
    "head-only": SelectiveConfig(patterns=()),                 # transfer: a frozen feature extractor
    "BitFit": "bitfit",                                        # every bias (Ben Zaken et al., 2022)
    "last 2 blocks": SelectiveConfig(layers=[-2, -1]),
    "attention": SelectiveConfig(components=["attention"]),    # c_attn + c_proj of every block
    "MLP": SelectiveConfig(components=["mlp"]),                # c_fc + c_proj of every block
    "LayerNorm": SelectiveConfig(components=["layernorm"]),    # ln_1, ln_2, ln_f gains and biases
    "embeddings": SelectiveConfig(components=["embeddings"]),  # wte (tied to lm_head) + wpe
}
# Peak lr per method, picked on the dev split from LRS by `--sweep` (best dev F1; ties within
# 0.005 go to the smaller lr). The methods that train few parameters want the largest rate.
LRS = (1e-3, 3e-3, 1e-2)
LR = {"full": 1e-3, "head-only": 1e-2, "BitFit": 3e-3, "last 2 blocks": 3e-3, "attention": 1e-3,
      "MLP": 1e-3, "LayerNorm": 1e-2, "embeddings": 1e-3}
STEPS, BATCH = (10, 32) if FAST else (150, 32)
N_EVAL = 60 if FAST else None
PROBE = dict(n_windows=4, n_facts=24) if FAST else dict(n_windows=16, n_facts=72)
BLOCK = 128
t_start = time.perf_counter()


def kib(n):
    return f"{n / 1024:,.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:,.2f} MiB"


def cut(xs):
    return xs[:N_EVAL] if N_EVAL else xs


def fresh(method):
    """A TokenClassifier on a fresh copy of the base, with `method`'s selection applied."""
    torch.manual_seed(0)                                        # the same head init for every method
    body, _ = load_base()
    clf = TokenClassifier(body, len(world.NER_TAGS))
    sel = METHODS[method]
    if sel == "bitfit":
        bitfit(clf)
    elif sel is not None:
        apply_selective(clf, sel)
    return clf


base, tok = load_base()
col = collate_fn(tok.pad_id)
before = forgetting_probe(base, tok, **PROBE)
ner_all = world.task("ner", "train")
ner = {"train": ner_all[:-200], "dev": cut(ner_all[-200:]), "test": cut(world.task("ner", "test"))}
items = {s: encode_ner(tok, v, world.NER_TAGS, BLOCK) for s, v in ner.items()}
train_items = [{"idx": it["idx"], "labels": it["labels"]} for it in items["train"]]
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; "
      f"dev = {len(ner['dev'])} held-out training sentences (entities seen in training), test = "
      f"{len(ner['test'])} sentences naming people never tagged in training (the body knows them from "
      f"pretraining); towns, pets and foods come from closed sets shared by all splits.")
print(f"base body before fine-tuning: pretraining perplexity {before['pretrain_ppl']:.3f}, fact accuracy "
      f"{before['fact_accuracy']:.1%} ({PROBE['n_facts']} probes)")

# ==============================================================================================
header("1. What each method trains")

for method in METHODS:
    clf = fresh(method)
    names = [n for n, p in clf.named_parameters() if p.requires_grad]
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
    print(f"{method:<14} {shown}")
print("\nformat_report(trainable_report(model)) for BitFit (weights, grads and AdamW's two fp32 moments "
      "count the trainable tensors only; the frozen weights are still in memory for the forward pass):")
print(format_report(trainable_report(fresh("BitFit"))))


done = {}                                                       # (method, lr) -> result: --sweep reuses its runs


def run(method, lr, quiet=False):
    if (method, lr) in done:
        r = done[(method, lr)]
    else:
        r = done[(method, lr)] = train_and_measure(method, lr)
    if not quiet:
        print(f"{method:<14} lr {lr:g}: loss {r['loss'][0]:.3f} -> {r['loss'][1]:.3f}, dev F1 {r['f1']['dev']:.3f}, "
              f"test F1 {r['f1']['test']:.3f}, {r['time']:.1f}s", flush=True)
    return r


def train_and_measure(method, lr):
    clf = fresh(method)
    rep = trainable_report(clf)["total"]
    cfg = TrainConfig(steps=STEPS, batch_size=BATCH, lr=lr, warmup_steps=max(1, STEPS // 10), seed=0,
                      progress=False, desc=method)
    hist = train(clf, train_items, cfg, loss_fn=classifier_loss, collate_fn=col)
    pred = {s: predict_tags(clf, items[s], col, world.NER_TAGS) for s in ("dev", "test")}
    f1 = {s: entity_f1(pred[s], [e["tags"] for e in ner[s]])["f1"] for s in pred}
    errs = Counter((g, p) for e, pp in zip(ner["dev"], pred["dev"]) for g, p in zip(e["tags"], pp) if g != p)
    after = forgetting_probe(clf.body, tok, **PROBE)
    return dict(method=method, lr=lr, rep=rep, f1=f1, time=hist[-1]["time"], after=after, errs=errs,
                loss=(hist[0]["loss"], hist[-1]["loss"]))


# ==============================================================================================
if args.sweep:
    header(f"learning-rate sweep: every method at lr in {LRS}, {STEPS} steps x batch {BATCH}")
    rows = []
    for method in METHODS:
        runs = [run(method, lr, quiet=True) for lr in LRS]
        best = max(r["f1"]["dev"] for r in runs)
        LR[method] = min(r["lr"] for r in runs if r["f1"]["dev"] >= best - 0.005)
        for r in runs:
            rows.append((method, f"{r['lr']:g}", f"{r['f1']['dev']:.3f}", f"{r['f1']['test']:.3f}",
                         f"{r['after']['pretrain_ppl']:.2f}", f"{r['after']['fact_accuracy']:.0%}",
                         "<-" if r["lr"] == LR[method] else ""))
        print(f"  {method}: done", flush=True)
    table(("method", "lr", "dev F1", "test F1", "pretrain ppl", "facts", "picked"), rows)

header(f"2. One NER model per method: {STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, seed 0")
results = [run(m, LR[m]) for m in METHODS]

print()
rows = []
for r in results:
    rep, a = r["rep"], r["after"]
    mem = rep["trainable_bytes"] + rep["grad_bytes"] + rep["optimizer_bytes"]
    rows.append((r["method"], f"{r['lr']:g}", f"{rep['trainable']:,}", f"{rep['share']:.2%}", kib(mem),
                 f"{r['f1']['dev']:.3f}", f"{r['f1']['test']:.3f}", f"{r['time']:.1f}s",
                 f"{before['pretrain_ppl']:.2f} -> {a['pretrain_ppl']:.2f}",
                 f"{before['fact_accuracy']:.0%} -> {a['fact_accuracy']:.0%}"))
table(("method", "lr", "trainable", "share", "train memory", "dev F1", "test F1", "time", "pretrain ppl",
       "facts"), rows)
print("train memory = trainable weights + their gradients + AdamW's two moments (fp32). dev: held-out "
      "training sentences (seen entities); test: people never tagged in training.")

n_iper = sum(t == "I-PER" for e in ner["dev"] for t in e["tags"])
print(f"\ndev word-tag errors per method, the commonest (gold -> predicted); dev has {n_iper} I-PER words, the "
      f"surnames of two-word names ('Drana Reed'):")
for r in results:
    print(f"  {r['method']:<14} {sum(r['errs'].values()):>3}: " + ", ".join(
        f"{g} -> {p}: {n}" for (g, p), n in r["errs"].most_common(3)))

full = results[0]
by = {r["method"]: r for r in results}
print(f"\nBitFit trains {by['BitFit']['rep']['trainable'] / full['rep']['trainable']:.2%} of what full fine-tuning "
      f"trains and reaches dev F1 {by['BitFit']['f1']['dev']:.3f} vs {full['f1']['dev']:.3f}; its body's "
      f"pretraining perplexity goes {before['pretrain_ppl']:.2f} -> {by['BitFit']['after']['pretrain_ppl']:.2f} "
      f"vs {full['after']['pretrain_ppl']:.2f} for full fine-tuning.")
order = sorted(results, key=lambda r: r["rep"]["trainable"])
print("ordered by trainable parameters: " + ", ".join(
    f"{r['method']} ({r['rep']['trainable']:,}: ppl {r['after']['pretrain_ppl']:.2f})" for r in order))
print(f"\ntotal: {time.perf_counter() - t_start:.1f}s wall ({torch.get_num_threads()} thread; wall grows when "
      f"other jobs share the cores)")
