"""Lesson 16: contrastive sentence embeddings from the base GPT: InfoNCE, unsupervised vs supervised SimCSE.

Prints, top to bottom:

  1. the untrained embeddings, both poolings (mean over real tokens, last real token):
     paraphrase identification (cosine threshold tuned on val, accuracy on test), retrieval@1 on
     the `pairs` test split, and the mean cosine of paraphrases and of non-paraphrases;
  2. one encoder per recipe, trained in the same run from the same base with InfoNCE (τ = 0.05,
     in-batch negatives, last-token pooling): unsupervised SimCSE (dropout 0.1 as the only
     augmentation), supervised pairs without and with hard negatives (full fine-tuning, the base's
     dropout 0), and the hard-negative recipe with LoRA (--ablation: also with mean pooling, and
     with SimCSE's dropout 0.1); train CPU time against the supervised full fine-tuning run;
  3. where the paraphrase errors are: positives, near-copy negatives (the same words but one, or
     roles swapped) and the other negatives, before and after;
  4. the similarity histograms of test paraphrases vs non-paraphrases, before and after, as text;
  5. nearest neighbours of a few test sentences among the test positives, before and after.

  With --seeds K, at the end: part 2's recipes (--ablation's too) again with seeds 0..K-1 (LoRA
  init, dropout masks, data order), and the spread of val/test accuracy and of R@1 fact.

    python lessons/16_contrastive/walkthrough.py           # or: minift run 16
    python lessons/16_contrastive/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/16_contrastive/walkthrough.py --ablation   # + mean pooling and dropout 0.1 (trained)
    python lessons/16_contrastive/walkthrough.py --seeds 5    # + the seed spread (4.1x the default run's time)

Everything it uses lives in the library (minift/align/contrastive.py, minift/peft/lora.py,
minift/train.py, minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 87
FAST_SECONDS = 12

from collections import Counter

import numpy as np
import torch

from minift import course, world
from minift.align.contrastive import ContrastiveConfig, embed_sentences, train_contrastive
from minift.evals import (PAIR_KINDS, cosine, evaluate_embeddings, fact_key, pair_kind, supervised_pairs,
                          unsupervised_sentences)
from minift.peft.lora import LoRAConfig, apply_lora
from minift.pretrain import load_base
from minift.report import header, per_seed, table
from minift.train import TrainConfig

parser = course.parser(__doc__, "a few steps per recipe (seconds)")
parser.add_argument("--ablation", action="store_true", help="also train the hard-negative recipe with mean pooling "
                                                            "and with dropout 0.1 (about 60 s more CPU)")
course.add_seeds(parser, "part 2's recipes", "LoRA init, dropout masks, data order",
                 "val/test accuracy and R@1 fact", "K=5: 4.1x the default run's time")
args = course.start("16", parser)         # the base-model check, one thread, the clock: minift/course.py
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told), where every model lives
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)

STEPS, BATCH = (2, 8) if FAST else (40, 48)
N_EVAL = 12 if FAST else None  # --fast: the first 12 examples of each evaluation split
TAU = 0.05
LORA = LoRAConfig(r=8, alpha=16, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), qkv=None)
SUP = supervised_pairs("train")
SUP_PLAIN = supervised_pairs("train", hard_negatives=False)
UNSUP = unsupervised_sentences("train")
# recipe: (items, peak lr, PEFT config or None for full fine-tuning, pooling, dropout while training).
# Unsupervised SimCSE needs dropout (0.1, SimCSE's): it is the augmentation. The base was pretrained
# with dropout 0.0, and the supervised recipes keep it (--ablation measures SimCSE's 0.1 there too).
RECIPES = {
    "SimCSE unsupervised": (UNSUP, 3e-4, None, "last", 0.1),
    "supervised, in-batch only": (SUP_PLAIN, 1e-3, None, "last", 0.0),
    "supervised + hard negatives": (SUP, 1e-3, None, "last", 0.0),
    "sup. + hard neg., LoRA": (SUP, 1e-2, LORA, "last", 0.0),
}
if args.ablation:
    RECIPES.update({"sup. + hard neg., mean pool": (SUP, 1e-3, None, "mean", 0.0),
                    "sup. + hard neg., dropout 0.1": (SUP, 1e-3, None, "last", 0.1)})
MAIN = "supervised + hard negatives"


def summary(r):
    sims, labels = r["test_sims"], r["test_labels"]
    return [f"{r['threshold']:.3f}", f"{r['val_acc']:.3f}", f"{r['test_acc']:.3f}", f"{r['retrieval_at_1']:.3f}",
            f"{r['retrieval_fact_at_1']:.3f}", f"{float(sims[labels == 1].mean()):.3f}",
            f"{float(sims[labels == 0].mean()):.3f}"]


METRICS = ["threshold", "val acc", "test acc", "R@1", "R@1 fact", "cos para", "cos non"]
para_test = world.task("paraphrase", "test")[:N_EVAL]
pairs_test = world.task("pairs", "test")[:N_EVAL]
facts = Counter(fact_key(p["anchor"]) for p in pairs_test)
n_fact = len(facts)
ceiling = float(np.mean([1 / facts[fact_key(p["anchor"])] for p in pairs_test]))   # R@1 of a pure fact encoder
print(f"training data (TinyWorld train split): {len(SUP)} supervised pairs ({len(world.task('pairs'))} `pairs` + "
      f"{len(SUP) - len(world.task('pairs'))} label-1 `paraphrase` pairs), {sum('negative' in x for x in SUP)} of them "
      f"with a hard negative (a label-0 paraphrase of the anchor); {len(UNSUP)} distinct sentences for unsupervised "
      f"SimCSE.\nevaluation: `paraphrase` val ({len(world.task('paraphrase', 'val')[:N_EVAL])} pairs, picks the "
      f"threshold) and "
      f"test ({len(para_test)} pairs, balanced); `pairs` test: {len(pairs_test)} anchors, each retrieving among "
      f"{len(pairs_test)} positives. Test sentences name only test-split people, never seen in training.")

# ==============================================================================================
header("1. The untrained base GPT as a sentence encoder: which pooling?")
base, tok = load_base(device=DEV)
before = {p: evaluate_embeddings(base, tok, p, limit=N_EVAL) for p in ("last", "mean")}
table(["pooling"] + METRICS, [[p] + summary(r) for p, r in before.items()])
print(f"R@1 = the anchor's nearest positive is its own; R@1 fact = it states the anchor's fact (the {len(pairs_test)} "
      f"test pairs cover {n_fact} facts, so several positives are right: an encoder that knows the fact but not the "
      f"phrasing expects R@1 = mean 1/(pairs of the fact) = {ceiling:.3f}). cos para / non = mean cosine of test "
      f"paraphrases / non-paraphrases. Training below uses last-token pooling (the default; --ablation: mean too).")

# ==============================================================================================
header(f"2. Contrastive training, InfoNCE τ = {TAU}: {STEPS} steps x {BATCH} pairs, seed 0, from the same base")


def train_recipe(name, seed=0):
    """One encoder of part 2, trained from a fresh copy of the base: (model, history, train seconds)."""
    items, lr, peft, pooling, dropout = RECIPES[name]
    torch.manual_seed(seed)
    model, _ = load_base(device=DEV)
    if peft is not None:
        apply_lora(model, peft)
    cfg = ContrastiveConfig(temperature=TAU, pooling=pooling, dropout=dropout)
    t0 = course.clock()                   # CPU time of this process: fairer than wall time on a shared machine
                                          # (on a GPU: wall time after a synchronize)
    hist = train_contrastive(model, items, cfg, TrainConfig(steps=STEPS, batch_size=BATCH, lr=lr, seed=seed,
                                                            progress=False, desc=name), tok=tok)
    took = course.clock() - t0
    print(f"  trained {name}: {took:.1f}s {CLOCK}" + (f" (seed {seed})" if seed else ""), flush=True)
    return model, hist, took


rows, results, models, seconds = [], {}, {}, {}
for name, (items, lr, peft, pooling, dropout) in RECIPES.items():
    model, hist, seconds[name] = train_recipe(name)
    results[name], models[name] = evaluate_embeddings(model, tok, pooling, limit=N_EVAL), model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows.append((name, trainable, lr, hist[-1]["loss"]))
table(["recipe", "trainable", "lr", "final loss", f"train {CLOCK} s", "vs main"] + METRICS,
      [[f"untrained ({p})", 0, "-", "-", "-", "-"] + summary(before[p]) for p in ("last", "mean")]
      + [[n, f"{k:,}", lr, f"{loss:.3f}", f"{seconds[n]:.1f}", f"{seconds[n] / seconds[MAIN]:.2f}x"]
         + summary(results[n]) for n, k, lr, loss in rows])
print(f"dropout while training: 0.1 for SimCSE unsupervised (its augmentation), else 0 unless named. full "
      f"fine-tuning trains all {base.num_parameters():,} parameters; LoRA r={LORA.r} on every linear layer of every "
      f"block. final loss = InfoNCE on the last batch (unsupervised: two dropout views of one sentence; supervised "
      f"with hard negatives: {BATCH} + up to {BATCH} candidates). vs main = train {CLOCK} time / that of '{MAIN}' "
      f"(same run).")

# ==============================================================================================
header("3. Which paraphrase pairs each encoder gets right (test split, its own val-tuned threshold)")


kinds = [pair_kind(ex) for ex in para_test]
groups = PAIR_KINDS
show = {"untrained (last)": before["last"], "untrained (mean)": before["mean"], **results}
krows = []
for name, r in show.items():
    right = ((r["test_sims"] > r["threshold"]).long() == r["test_labels"]).tolist()
    krows.append([name] + [f"{np.mean([ok for ok, k in zip(right, kinds) if k == g]):.3f}" for g in groups])
table(["encoder"] + [f"{g} ({kinds.count(g)})" for g in groups], krows)
print("near-copy negative: s2 has s1's words but one (a value changed in the same template), or exactly s1's words "
      "in another order (roles swapped). These are what embeddings that average words cannot separate.")

# ==============================================================================================
header("4. Cosine similarity of test pairs: paraphrases (P) vs non-paraphrases (N), before and after")


def histogram(r, bins=12):
    """Text bins over the upper 90% of this encoder's test cosines (the lowest tenth in one row)."""
    sims, labels = r["test_sims"].numpy(), r["test_labels"].numpy()
    lo, hi = float(np.quantile(sims, 0.1)), float(sims.max()) + 1e-9
    edges = np.concatenate([[float(sims.min())], np.linspace(lo, hi, bins + 1)])
    p, _ = np.histogram(sims[labels == 1], edges)
    n, _ = np.histogram(sims[labels == 0], edges)
    scale = max(1, max(p.max(), n.max()) / 30)
    for i in range(len(edges) - 1):
        mark = " <- threshold" if edges[i] <= r["threshold"] < edges[i + 1] else ""
        print(f"  [{edges[i]:7.4f}, {edges[i + 1]:7.4f})  P {p[i]:3d} {'#' * round(p[i] / scale):<30}  "
              f"N {n[i]:3d} {'=' * round(n[i] / scale):<30}{mark}")


for name in ("untrained (last)", MAIN):
    print(f"{name}:")
    histogram(show[name])

# ==============================================================================================
header("5. Nearest neighbours among the test positives (cosine), before and after")
positives = [p["positive"] for p in pairs_test]
queries = [0, 3, 7, 12] if not FAST else [0, 3]
for name, model in (("untrained (last)", base), (MAIN, models[MAIN])):
    keys = embed_sentences(model, tok, positives, "last")
    q = embed_sentences(model, tok, [pairs_test[i]["anchor"] for i in queries], "last")
    print(f"{name}:")
    for qi, e in zip(queries, q):
        sims = cosine(e[None].expand_as(keys), keys)
        top = sims.topk(3).indices.tolist()
        print(f"  {pairs_test[qi]['anchor']!r}")
        for j in top:
            ok = "same fact" if fact_key(positives[j]) == fact_key(pairs_test[qi]["anchor"]) else "other fact"
            print(f"      {float(sims[j]):.3f}  {ok:<10}  {positives[j]!r}")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "6. Seed spread: part 2's recipes",
                                 "LoRA init, dropout masks, data order; the same base"):
    runs = {}                                        # recipe -> its evaluations, seed 0 (part 2's) first
    for name, (items, lr, peft, pooling, dropout) in RECIPES.items():
        runs[name] = [results[name]] + [evaluate_embeddings(train_recipe(name, sd)[0], tok, pooling, limit=N_EVAL)
                                        for sd in seeds[1:]]
    course.seed_table([(n, RECIPES[n][1], [r["val_acc"] for r in rs], [r["test_acc"] for r in rs])
                       for n, rs in runs.items()], "val", "accuracy")

    table(["recipe", "R@1 fact per seed", "mean", "R@1 per seed", "mean"],
          [[n] + per_seed([r["retrieval_fact_at_1"] for r in rs]) + per_seed([r["retrieval_at_1"] for r in rs])
           for n, rs in runs.items()])
    print(f"(the untrained base: val / test accuracy {before['last']['val_acc']:.3f} / "
          f"{before['last']['test_acc']:.3f}, R@1 fact {before['last']['retrieval_fact_at_1']:.3f}: no seed)")

print(f"\ntotal {course.elapsed():.1f}s")
