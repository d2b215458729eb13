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
  every rate of its grid (GRID; part 2 then uses the rates the sweep picked, and reuses its runs).
  With --seeds K, at the end: part 2's methods again with seeds 0..K-1 (head init, data order), at
  their rates, and the spread of dev and test F1.

    python lessons/04_selective/walkthrough.py           # or: minift run 04
    python lessons/04_selective/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/04_selective/walkthrough.py --sweep   # re-pick every lr from its GRID (~4.5 min)
    python lessons/04_selective/walkthrough.py --sweep --sweep-seeds 3   # ... on the mean over seeds 0, 1, 2
    python lessons/04_selective/walkthrough.py --seeds 5 # + the seed spread (4.6x the default run's time)

Everything it uses lives in the library (minift/peft/selective.py, minift/heads.py,
minift/train.py, minift/tasks.py, minift/pretrain.py; the train-and-measure bench of the method
lessons: minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 77     # CPU seconds on the 2-core EPYC VM the READMEs are measured on
FAST_SECONDS = 10

import torch

from minift import course, world
from minift.heads import encode_ner
from minift.peft.selective import SelectiveConfig, format_report, trainable_report
from minift.pretrain import forgetting_probe, load_base
from minift.report import header, table

parser = course.parser(__doc__)
course.add_sweep(parser, "sweep every method's lr over its grid ({1e-3, 3e-3, 1e-2}; {3e-3, 1e-2, 3e-2} for BitFit "
                         "and LayerNorm; {3e-3, 1e-2, 3e-2, 1e-1} for head-only) on the dev split first (about 4.5 "
                         "minutes of CPU)")
course.add_seeds(parser, "part 2's methods", "head init, data order", "dev/test F1", "K=5: 4.6x the default run's time")
args = course.start("04", parser)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told); the Bench builds its models there too

# What each method trains. A task head (head.*) trains in every one of them.
METHODS = {
    "full": None,                                              # everything
    "head-only": SelectiveConfig(patterns=()),                 # transfer: a frozen feature extractor
    "BitFit": SelectiveConfig(param_types=["bias"]),           # every bias (Ben Zaken et al., 2022): bitfit()
    "last 2 blocks": SelectiveConfig(layers=[-2, -1]),
    "attention": SelectiveConfig(components=["attention"]),    # c_attn + c_proj of every block
    "MLP": SelectiveConfig(components=["mlp"]),                # c_fc + c_proj of every block
    "LayerNorm": SelectiveConfig(components=["layernorm"]),    # ln_1, ln_2, ln_f gains and biases
    "embeddings": SelectiveConfig(components=["embeddings"]),  # wte (tied to lm_head) + wpe
}
# Peak lr per method, picked on the dev split from GRID by `--sweep` (best dev F1; ties within
# 0.005 go to the smaller lr). The methods that train few parameters want the largest rates, so
# their grids reach higher; each grid reaches past its pick (a pick at the top would not say
# whether a larger rate does better).
GRID = {m: (1e-3, 3e-3, 1e-2) for m in METHODS}
GRID["BitFit"] = GRID["LayerNorm"] = (3e-3, 1e-2, 3e-2)
GRID["head-only"] = (3e-3, 1e-2, 3e-2, 1e-1)
LR = {"full": 1e-3, "head-only": 3e-2, "BitFit": 1e-2, "last 2 blocks": 3e-3, "attention": 3e-3,
      "MLP": 1e-3, "LayerNorm": 1e-2, "embeddings": 3e-3}
STEPS, BATCH = (4, 4) if FAST else (100, 16)
N_EVAL = 20 if FAST else None
PROBE = dict(n_windows=2, n_facts=8) if FAST else dict(n_windows=16, n_facts=72)
BLOCK = 128


def cut(xs):
    return xs[:N_EVAL] if N_EVAL else xs


base, tok = load_base(device=DEV)
before = forgetting_probe(base, tok, **PROBE)
ner_all = world.task("ner", "train")
ner = {"train": ner_all[:-200] if not FAST else ner_all[:200], "dev": cut(ner_all[-200:]),   # --fast: 200 to train on
       "test": cut(world.task("ner", "test"))}
items = {s: encode_ner(tok, v, world.NER_TAGS, BLOCK) for s, v in ner.items()}
train_items = [{"idx": it["idx"], "labels": it["labels"]} for it in items["train"]]
# the bench (minift/method_bench.py): a fresh TokenClassifier per method, the same head init, data and steps
bench = course.Bench(METHODS, tok, (ner, items, train_items), steps=STEPS, batch=BATCH,
                     warmup_steps=max(1, STEPS // 10), probe=PROBE, width=14)
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; "
      f"dev = {len(ner['dev'])} held-out training sentences (entities seen in training), test = "
      f"{len(ner['test'])} sentences naming people never tagged in training (the body knows them from "
      f"pretraining); towns, pets and foods come from closed sets shared by all splits.")
print(f"base body before fine-tuning: pretraining perplexity {before['pretrain_ppl']:.3f}, fact accuracy "
      f"{before['fact_accuracy']:.1%} ({PROBE['n_facts']} probes)")

# ==============================================================================================
header("1. What each method trains")

for method in METHODS:
    clf = bench.fresh(method)
    names = [n for n, p in clf.named_parameters() if p.requires_grad]
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
    print(f"{method:<14} {shown}")
print("\nformat_report(trainable_report(model)) for BitFit (weights, grads and AdamW's two fp32 moments "
      "count the trainable tensors only; the frozen weights are still in memory for the forward pass):")
print(format_report(trainable_report(bench.fresh("BitFit"))))


# ==============================================================================================
if args.sweep:
    header(f"learning-rate sweep: every method at every rate of its grid, {STEPS} steps x batch {BATCH}"
           + course.sweep_note(args))
    bench.sweep(METHODS, GRID, LR, columns=("F1", "forgetting"), keep=lambda r: True, seeds=course.sweep_seeds(args))

header(f"2. One NER model per method: {STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, seed 0")
results = [bench.run(m, LR[m]) for m in METHODS]

print()
rows = []
for r in results:
    rep, a = r["rep"], r["after"]
    mem = rep["trainable_bytes"] + rep["grad_bytes"] + rep["optimizer_bytes"]
    rows.append((r["method"], f"{r['lr']:g}", f"{rep['trainable']:,}", f"{rep['share']:.2%}", course.kib(mem),
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
    errs = bench.tag_errors(r["pred"]["dev"])
    print(f"  {r['method']:<14} {sum(errs.values()):>3}: " + ", ".join(
        f"{g} -> {p}: {n}" for (g, p), n in errs.most_common(3)))

full = results[0]
by = {r["method"]: r for r in results}
print(f"\nBitFit trains {by['BitFit']['rep']['trainable'] / full['rep']['trainable']:.2%} of what full fine-tuning "
      f"trains and reaches dev F1 {by['BitFit']['f1']['dev']:.3f} vs {full['f1']['dev']:.3f}; its body's "
      f"pretraining perplexity goes {before['pretrain_ppl']:.2f} -> {by['BitFit']['after']['pretrain_ppl']:.2f} "
      f"vs {full['after']['pretrain_ppl']:.2f} for full fine-tuning.")
order = sorted(results, key=lambda r: r["rep"]["trainable"])
print("ordered by trainable parameters: " + ", ".join(
    f"{r['method']} ({r['rep']['trainable']:,}: ppl {r['after']['pretrain_ppl']:.2f})" for r in order))

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "3. Seed spread: part 2's methods and rates", "head init, data order"):
    bench.seed_spread(METHODS, LR, seeds, by)
print(f"\ntotal: {course.elapsed():.1f}s wall ({torch.get_num_threads()} thread; wall grows when "
      f"other jobs share the cores)")
