"""Lesson 09: random masking: train a fixed random 1% (or 0.001%) of the weights, against LoRA.

Prints, top to bottom:

  1. the mask: one random draw of k = ⌊density · N + ½⌋ entries over the q and v rows of every
     block's fused c_attn (N = 131,072 weights), how the k entries fall per layer, and what a
     density too small for one entry does (a ValueError);
  2. NER (`TokenClassifier`, the task, seed and head init of lessons 05 and 06; 80 steps x 16) with
     random masking at densities 6.25% (LoRA r=4's trainable count), 1%, 0.1% and 0.001% (and
     0.01% with --sweep),
     each at its picked learning rate, against LoRA r=4 on W_q, W_v and head-only transfer, in ONE
     table: trainable parameters, val and test entity F1, how far the weights moved, train time;
  3. the learning-rate note: val F1 of LoRA r=4 and of the 1% mask at two rates (1e-2, 1e-1):
     sparser masks want larger rates (and survive them);
  4. only the masked entries ever change: after training, W0's other entries are bit-identical;
  5. the adapter file is the sparse delta (indices + values): its size against the density;
  6. merging W0[idx] += v: merged vs unmerged outputs, unmerge gives W0 back bit for bit,
     disable_adapters gives the base model.
  With --sweep, before part 2: every density and head-only at six rates (1e-3 .. 3e-1), LoRA at
  three, picked on val F1 (part 2 then reuses those runs). --sweep-seeds K: every rate at seeds
  0..K-1, picked on their mean val F1.
  With --seeds K, at the end: part 2's methods again with seeds 0..K-1 (head and LoRA init, the
  mask's positions, data order), at their rates, and the spread of val and test F1.

    python lessons/09_random_masking/walkthrough.py            # or: minift run 09
    python lessons/09_random_masking/walkthrough.py --fast     # the seconds-long version the tests run
    python lessons/09_random_masking/walkthrough.py --sweep    # re-pick every lr on val (39 runs, about 4 CPU-minutes)
    python lessons/09_random_masking/walkthrough.py --sweep --sweep-seeds 3   # ... on the mean over seeds 0, 1, 2
    python lessons/09_random_masking/walkthrough.py --seeds 5  # + the seed spread (3.3x the default run's time)

Everything it uses lives in the library (minift/peft/masking.py, minift/peft/lora.py,
minift/peft/common.py, minift/peft/io.py, minift/heads.py, minift/train.py; the train-and-measure
bench: minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 86
FAST_SECONDS = 11

import os
import tempfile

import torch

from minift import course, world
from minift.heads import ner_splits
from minift.peft.common import disable_adapters
from minift.peft.io import save_adapter
from minift.peft.lora import LoRAConfig, lora_layers
from minift.peft.masking import (MaskingConfig, apply_masking, masked_count, masked_layers, merge_masking,
                                 unmerge_masking)
from minift.peft.selective import SelectiveConfig
from minift.pretrain import BASE_DIR, load_base
from minift.train import to_device
from minift.report import header, table

parser = course.parser(__doc__)
course.add_sweep(parser, "pick every method's lr on the val split first (39 runs, about 4 CPU-minutes)")
course.add_seeds(parser, "part 2's methods", "head and LoRA init, the mask, data order", "val/test F1",
                 "K=5: 3.3x the default run's time")
args = course.start("09", parser)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told); the Bench builds its models there too

DENSITIES = (0.0625, 0.01, 0.001, 0.0001, 0.00001)
MASK = {f"mask {100 * d:g}% q,v": d for d in DENSITIES}
METHODS = {"head-only": SelectiveConfig(patterns=()),                      # the body frozen
           "LoRA r=4 q,v": LoRAConfig(r=4),                                # lesson 05's recipe
           **{name: MaskingConfig(density=d) for name, d in MASK.items()}}  # q, v rows of c_attn, seed 0
# Peak lr per method, picked on the val split by `--sweep` at this budget (best val F1; ties within
# 0.005 go to the smaller rate).
GRID = {m: (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1) for m in ["head-only", *MASK]}
GRID["LoRA r=4 q,v"] = (3e-3, 1e-2, 3e-2)
LR = {"head-only": 3e-2, "LoRA r=4 q,v": 1e-2, "mask 6.25% q,v": 3e-2, "mask 1% q,v": 3e-2,
      "mask 0.1% q,v": 3e-2, "mask 0.01% q,v": 3e-2, "mask 0.001% q,v": 3e-2}
SHOWN = [m for m in METHODS if args.sweep or m != "mask 0.01% q,v"]     # part 2; 0.01%: --sweep only
SLICE = ("LoRA r=4 q,v", "mask 1% q,v")                                  # part 3
SLICE_LRS = (1e-2, 1e-1)                                                # LoRA's pick, and a rate it does not survive
STEPS, BATCH = (3, 8) if FAST else (80, 16)
N_EVAL = 16 if FAST else None
BLOCK = 128

base, tok = load_base(device=DEV)
ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL)   # examples, encodings, train items
W0 = {n: p.detach().clone() for n, p in base.named_parameters()}
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; val "
      f"({len(ner['val'])}) and test ({len(ner['test'])}) name only people never tagged in training. Every run: "
      f"{STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, seed 0, the same head init.")


def moved(clf):
    """‖W - W0‖_F over the body (how far training moved the frozen-shape weights)."""
    sq = 0.0
    for _, m in masked_layers(clf):
        sq += float((m.mask_values.detach().double() ** 2).sum())
    for _, mod in lora_layers(clf):
        sq += float((mod.delta_weight().detach().double() ** 2).sum())
    return sq ** 0.5


# the bench (minift/method_bench.py): a fresh TokenClassifier per method (the same head and LoRA A init as
# lesson 05; the mask has its own generator, seed 0), the same data and steps
bench = course.Bench(METHODS, tok, (ner, items, train_items), steps=STEPS, batch=BATCH, dev="val",
                     warmup_steps=max(1, STEPS // 10), width=18)
col, fresh = bench.col, bench.fresh

# ==============================================================================================
header("1. The mask: k random entries of the q and v rows of every c_attn")
probe = fresh("mask 1% q,v")
layers = masked_layers(probe)
N = sum(m.allowed_rows.numel() * m.in_features for _, m in layers)
print(f"{layers[0][1].__class__.__name__}({layers[0][1].extra_repr()})   <- {layers[0][0]}")
rows = []
for d in DENSITIES:
    k = masked_count(N, d)
    per = [m.k for _, m in masked_layers(fresh(f"mask {100 * d:g}% q,v"))]
    rows.append((f"{100 * d:g}%", f"{k:,}", " + ".join(str(c) for c in per), f"{k / base.num_parameters():.4%}"))
table(("density", "k = trainable values", "per block (h.0 + h.1 + h.2 + h.3)", "of the whole body"), rows)
idx = layers[0][1].mask_indices.long()
print(f"N = {N:,} maskable weights (q and v rows, 4 blocks x 2 x 128 x 128). One draw without replacement over all "
      f"of them, so each block gets about k / 4. In h.0 at 1%: rows used {sorted(set((idx // 128).tolist()))[:3]} "
      f"... all in q (0..127) or v (256..383): {bool(((idx // 128 < 128) | (idx // 128 >= 256)).all())}")
try:
    apply_masking(fresh("head-only"), MaskingConfig(density=1e-6))
except ValueError as e:
    print(f"density 1e-6: ValueError: {e}")
del probe

# ==============================================================================================
if args.sweep:
    header("learning-rate sweep: picked on val F1 (ties within 0.005: the smaller lr)" + course.sweep_note(args, "val"))
    bench.sweep(METHODS, GRID, LR, columns=("final loss", "F1", ("|ΔW|_F", lambda r: f"{moved(r['model']):.2f}")),
                keep=lambda r: (r["method"], r["lr"]) in [(m, lr) for m in SLICE for lr in SLICE_LRS],
                seeds=course.sweep_seeds(args))

# ==============================================================================================
header(f"2. Random masking vs LoRA r=4 vs head-only: NER, {STEPS} steps x batch {BATCH}")
results = [bench.run(m, LR[m]) for m in SHOWN]
lora, head = bench.done[("LoRA r=4 q,v", LR["LoRA r=4 q,v"])], bench.done[("head-only", LR["head-only"])]
print()
rows = []
for r in results:
    extra = r["rep"]["trainable"] - head["rep"]["trainable"]
    rows.append((r["method"], f"{r['lr']:g}", f"{r['rep']['trainable']:,}", f"{extra:,}", f"{r['f1']['val']:.3f}",
                 f"{r['f1']['test']:.3f}", f"{r['f1']['test'] - head['f1']['test']:+.3f}",
                 f"{r['f1']['test'] - lora['f1']['test']:+.3f}", f"{moved(r['model']):.2f}", f"{r['time']:.1f}s"))
table(("method", "lr", "trainable", "body", "val F1", "test F1", "vs head", "vs LoRA", "|ΔW|_F", "time"), rows)
print(f"'trainable' counts the task head ({head['rep']['trainable']:,} = K (C + 1), K = 9 tags) in every row; 'body' is "
      f"what the method adds to it (masking: k values; LoRA r=4 on W_q, W_v: 2 r (C + C) x 4 blocks). 'vs head', "
      f"'vs LoRA': test F1 minus head-only's and LoRA r=4's. |ΔW|_F: the Frobenius norm of the body's weight change. "
      f"'time': training seconds, ratios within this run are fair.")
same = bench.done[("mask 6.25% q,v", LR["mask 6.25% q,v"])]
print(f"time per step, masking 6.25% / LoRA r=4: {same['time'] / lora['time']:.2f}x")

# ==============================================================================================
header("3. The learning-rate note: the best rate grows as the mask gets sparser")
rows = []
for m in SLICE:
    rs = [bench.run(m, lr, quiet=True) for lr in SLICE_LRS]
    rows.append((m, *[f"{r['f1']['val']:.3f}" for r in rs], f"{max(rs, key=lambda r: r['f1']['val'])['lr']:g}"))
table(("method", *[f"val F1 @ lr {lr:g}" for lr in SLICE_LRS], "best of these"), rows)
print("With AdamW every trainable value moves about lr per step whatever its gradient's size, so a few values "
      "have to move far (large lr) to change the output as much as many values moving a little.")

# ==============================================================================================
header("4. Only the masked entries ever change")
r1 = bench.done[("mask 1% q,v", LR["mask 1% q,v"])]
changed, off_mask, k_total = 0, 0, 0
for name, m in masked_layers(r1["model"]):
    W, W_base = m.effective_weight().detach().reshape(-1), W0[name.removeprefix("body.") + ".weight"].reshape(-1)
    diff = (W != W_base).nonzero().squeeze(1)
    changed += diff.numel()
    off_mask += int((~torch.isin(diff, m.mask_indices.long())).sum())
    k_total += m.k
frozen_same = all(torch.equal(p.detach(), W0[n.removeprefix("body.")]) for n, p in r1["model"].named_parameters()
                  if n.removeprefix("body.") in W0)
print(f"mask 1% after {STEPS} steps at lr {r1['lr']:g}: {changed:,} of the {N:,} q/v weights differ from W0 "
      f"(k = {k_total:,}); changed outside the mask: {off_mask}; every frozen tensor of the body (W0 included) "
      f"bit-identical to the base: {frozen_same}")

# ==============================================================================================
header("5. The adapter file is the sparse delta: indices + values (+ the task head)")
tmp = tempfile.TemporaryDirectory()
rows, sizes = [], {}
for name in [m for m in SHOWN if m != "head-only"]:
    r = bench.done[(name, LR[name])]
    d = os.path.join(tmp.name, name.replace(" ", "_").replace("%", "pct").replace(",", ""))
    save_adapter(r["model"], d)
    sizes[name] = os.path.getsize(os.path.join(d, "adapter.safetensors"))
for name in [m for m in SHOWN if m != "head-only"]:
    r = bench.done[(name, LR[name])]
    body = r["rep"]["trainable"] - head["rep"]["trainable"]
    rows.append((name, f"{body:,}", f"{sizes[name]:,} B", f"{sizes[name] / 1024:.1f} KiB"))
table(("adapter", "body values", "adapter.safetensors", ""), rows)
k_big, k_small = masked_count(N, DENSITIES[0]), masked_count(N, DENSITIES[1])
per_entry = (sizes["mask 6.25% q,v"] - sizes["mask 1% q,v"]) / (k_big - k_small)
print(f"between 6.25% and 1%: {per_entry:.2f} bytes per masked entry (an int32 position + a float32 value); the "
      f"rest is the task head ({head['rep']['trainable']:,} x 4 bytes) and the safetensors header. LoRA r=4 stores its "
      f"dense A and B. The base model: {os.path.getsize(BASE_DIR / 'model.safetensors') / 1024 ** 2:.1f} MiB.")
tmp.cleanup()

# ==============================================================================================
header("6. Merging: W0[idx] += v, and back")
clf = r1["model"]
batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["val"]]), DEV)
mask = batch["attention_mask"].bool()
layer = masked_layers(clf)[0][1]
W_before = layer.weight.detach().clone()
with torch.no_grad():
    y = clf(batch["idx"], attention_mask=batch["attention_mask"]).logits
    merge_masking(clf)
    y_merged = clf(batch["idx"], attention_mask=batch["attention_mask"]).logits
    unmerge_masking(clf)
    exact = torch.equal(layer.weight, W_before)
    with disable_adapters(clf):
        lm_off = clf.body(batch["idx"], attention_mask=batch["attention_mask"]).logits
    lm_base = base(batch["idx"], attention_mask=batch["attention_mask"]).logits
print(f"val logits, merged vs unmerged: max |diff| = {float((y_merged - y)[mask].abs().max()):.2e} (logits up to "
      f"{float(y[mask].abs().max()):.1f}); unmerge restores W0 bit for bit: {exact}; inside disable_adapters the "
      f"body's logits equal the base model's bit for bit: {torch.equal(lm_off, lm_base)}")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "7. Seed spread: part 2's methods and rates",
                                  "head and LoRA init, the mask, data order"):
    bench.seed_spread(SHOWN, LR, seeds, {r["method"]: r for r in results})

print(f"\ntotal: {course.elapsed():.1f}s wall ({torch.get_num_threads()} thread; wall grows when "
      f"other jobs share the cores)")
