"""Lesson 05: LoRA: low-rank updates, rank vs full fine-tuning, merging, one base with many adapters.

Prints, top to bottom:

  1. the low-rank idea: NER fully fine-tuned, then the singular values of its weight change
     ΔW = W - W0 for a few matrices: the share of ΔW's energy (Σσ²) in the top r directions,
     beside a random matrix of the same shape;
  2. LoRA on the same task (`TokenClassifier`, same data, steps, batch and seed) at r = 1, 4, 16
     on W_q and W_v (the q and v slices of GPT-2's fused c_attn), at r = 4 on every linear layer,
     and DoRA at r = 4, against full fine-tuning (also with the embeddings frozen) and head-only
     transfer, in ONE table: trainable parameters (the task head included) and their share of full
     fine-tuning's, val and test entity F1, train time, forgetting (the body's pretraining
     perplexity and fact accuracy, measured with the adapter on); then the lesson's quality target
     row by row, and the commonest val errors of four of the methods;
  3. what the same ranks cost on a GPT-3-175B-shaped model, built on the meta device (no memory):
     trainable counts for r = 1, 2, 4, 8 on W_q, W_v, as in the LoRA paper's tables;
  4. merging for inference: merged vs unmerged outputs (max abs difference), unmerge gives W0
     back, and inference time unmerged / merged / a plain model, as ratios measured in one run;
  5. one base, two task adapters (all entities / people only) written by `save_adapter`, swapped
     at run time with `load_adapter`; `disable_adapters` gives the base back, bit for bit.
  With --sweep, before part 2: the learning-rate sweep behind the lr column (every method at three
  or four rates, picked on the val split; part 2 then reuses those runs). With --sweep-seeds K too,
  every rate is trained at seeds 0..K-1 and picked on the mean val F1.
  With --seeds K, at the end: part 2's methods again with seeds 0..K-1 (head and LoRA init, data
  order), at their rates, and the spread of val and test F1.

    python lessons/05_lora/walkthrough.py            # or: minift run 05
    python lessons/05_lora/walkthrough.py --fast     # the seconds-long version the tests run
    python lessons/05_lora/walkthrough.py --sweep    # re-pick every lr on val (about 3.5 minutes)
    python lessons/05_lora/walkthrough.py --sweep --sweep-seeds 3   # ... on the mean over seeds 0, 1, 2
    python lessons/05_lora/walkthrough.py --seeds 5  # + the seed spread (3.7x the default run's time)

Everything it uses lives in the library (minift/peft/lora.py, minift/peft/common.py,
minift/peft/io.py, minift/heads.py, minift/train.py, minift/pretrain.py; the train-and-measure
bench: minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 100    # CPU seconds on the 2-core EPYC VM the READMEs are measured on
FAST_SECONDS = 12

import copy
import os
import statistics
import tempfile
import time

import torch

from minift import course, figures, world
from minift.heads import TokenClassifier, encode_ner, ner_splits
from minift.model import GPT, GPTConfig
from minift.peft.common import disable_adapters, remove_adapters
from minift.peft.io import load_adapter, save_adapter
from minift.peft.lora import (LoRAConfig, apply_lora, lora_parameter_count, lora_report, merge_and_unload,
                              merge_lora, unmerge_lora)
from minift.peft.selective import SelectiveConfig
from minift.pretrain import BASE_DIR, forgetting_probe, load_base
from minift.tasks import entity_f1
from minift.train import to_device
from minift.report import header, table

parser = course.parser(__doc__)
course.add_sweep(parser, "pick every method's lr on the val split first (three or four rates each, about 3.5 minutes)")
course.add_seeds(parser, "part 2's methods", "head and LoRA init, data order", "val/test F1",
                 "K=5: 3.7x the default run's time")
args = course.start("05", parser)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told); the Bench builds its models there too

ALL_LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# What each method trains. A task head (head.*) trains in every one of them.
METHODS = {
    "full": None,                                                       # every weight
    "full, frozen embeddings": SelectiveConfig(components=["attention", "mlp", "layernorm"]),  # all but wte, wpe
    "head-only": SelectiveConfig(patterns=()),                          # the body frozen
    "LoRA r=1 q,v": LoRAConfig(r=1),                                    # the LoRA paper's W_q, W_v
    "LoRA r=4 q,v": LoRAConfig(r=4),
    "LoRA r=16 q,v": LoRAConfig(r=16),
    "LoRA r=4 all linear": LoRAConfig(r=4, targets=ALL_LINEAR, qkv=None),  # c_attn whole, c_proj, c_fc, mlp.c_proj
    "DoRA r=4 q,v": LoRAConfig(r=4, use_dora=True),
}
# Every LoRA row keeps the default alpha = 16 for every rank (the LoRA paper fixes alpha too): s = alpha / r.
# Peak lr per method, picked on the val split by `--sweep` (best val F1; ties within 0.005 go to
# the smaller rate). LoRA wants a larger rate than full fine-tuning: B starts at 0 and the update
# is s B A, so it has further to go in the same 100 steps.
# Each grid reaches one step past its pick on both sides, so no pick sits at an edge of its grid.
GRID = {m: (3e-3, 1e-2, 3e-2) for m in METHODS}
GRID["full"] = (3e-4, 1e-3, 3e-3)
GRID["full, frozen embeddings"] = (3e-4, 1e-3, 3e-3, 1e-2)
GRID["head-only"] = (1e-2, 3e-2, 1e-1, 3e-1)
GRID["LoRA r=4 all linear"] = (1e-3, 3e-3, 1e-2, 3e-2)
LR = {"full": 1e-3, "full, frozen embeddings": 3e-3, "head-only": 1e-1, "LoRA r=1 q,v": 1e-2,
      "LoRA r=4 q,v": 1e-2, "LoRA r=16 q,v": 1e-2, "LoRA r=4 all linear": 3e-3, "DoRA r=4 q,v": 1e-2}
STEPS, BATCH = (2, 4) if FAST else (100, 8)
N_EVAL = 16 if FAST else None
PROBE = dict(n_windows=1, n_facts=6) if FAST else dict(n_windows=16, n_facts=72)
RUN_PROBE = None if FAST else PROBE   # --fast skips the probe after each run (its columns read n/a)
BLOCK = 128

base, tok = load_base(device=DEV)
before = forgetting_probe(base, tok, **PROBE)
ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL)   # examples, encodings, train items
# the bench (minift/method_bench.py): a fresh TokenClassifier per method, the same head init, data and steps
bench = course.Bench(METHODS, tok, (ner, items, train_items), steps=STEPS, batch=BATCH, dev="val",
                     warmup_steps=max(1, STEPS // 10), probe=RUN_PROBE, width=24)
col, f1_on = bench.col, bench.predict
C = base.config.n_embd
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; val "
      f"({len(ner['val'])}) and test ({len(ner['test'])}) name only people never tagged in training. Every run: "
      f"{STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, seed 0, the same head init.")
print(f"base body before fine-tuning: pretraining perplexity {before['pretrain_ppl']:.3f}, fact accuracy "
      f"{before['fact_accuracy']:.1%} ({PROBE['n_facts']} probes)")


# ==============================================================================================
if args.sweep:
    header("learning-rate sweep: every method at three or four rates, picked on val F1 (ties within 0.005: smaller lr)"
           + course.sweep_note(args, "val"))
    bench.sweep(METHODS, GRID, LR, columns=("F1", "forgetting") if RUN_PROBE else ("F1",),      # keeps the picked models only
                seeds=course.sweep_seeds(args))

# ==============================================================================================
header("1. The low-rank idea: how many directions does full fine-tuning's ΔW use?")

full = bench.run("full", LR["full"])
W_full = dict(full["model"].body.named_parameters())
W_base = dict(base.named_parameters())


def energy(M, ranks):
    s = torch.linalg.svdvals(M.double())
    e = (s ** 2).cumsum(0) / (s ** 2).sum()
    return [float(e[r - 1]) for r in ranks], s


RANKS = (1, 4, 16)
MATRICES = (("h.0.attn.c_attn", "W_q"), ("h.0.attn.c_attn", "W_v"), ("h.3.attn.c_attn", "W_q"),
            ("h.3.attn.c_attn", "W_v"), ("h.3.mlp.c_fc", None), ("wte", None))
gen = torch.Generator().manual_seed(0)
rows = []
for module, part in MATRICES:
    name = f"transformer.{module}.weight"
    W0 = W_base[name].detach()                                      # (out, in)
    dW = W_full[name].detach() - W0
    if part is not None:                                            # the q or v rows of the fused c_attn
        k = "qkv".index(part[-1])
        W0, dW = W0[k * C:(k + 1) * C], dW[k * C:(k + 1) * C]       # (C, C)
    e, s = energy(dW, RANKS)
    e_rand, _ = energy(torch.randn(dW.shape, generator=gen, dtype=torch.float64), RANKS)
    rows.append((f"{module} {part or ''}".strip(), f"{tuple(dW.shape)}", f"{float(dW.norm() / W0.norm()):.2f}",
                 *[f"{x:.0%}" for x in e], f"{e_rand[1]:.0%}"))
table(("matrix", "shape", "|ΔW|/|W0|", *[f"top-{r} energy" for r in RANKS], "random top-4"), rows)
print(f"ΔW = W_full - W0 after full fine-tuning (lr {LR['full']:g}); top-r energy = Σ_(i<=r) σ_i² / Σ σ_i², the share "
      f"of ΔW's squared Frobenius norm that the best rank-r matrix keeps (Eckart-Young). 'random': a Gaussian "
      f"matrix of the same shape.")

# ==============================================================================================
header(f"2. LoRA at several ranks vs full fine-tuning: NER, {STEPS} steps x batch {BATCH}")
results = [bench.run(m, LR[m]) for m in METHODS]
print("\nwhat trains (the first tensors of each):")
for r in results:
    names = [n for n, p in r["model"].named_parameters() if p.requires_grad]
    print(f"  {r['method']:<24} {len(names):>3} tensors: {', '.join(n.removeprefix('body.') for n in names[:2])}"
          + (", ..." if len(names) > 2 else ""))

n_full, f_full = full["rep"]["trainable"], full["f1"]["test"]
quality = {r["method"]: r for r in results}


def rel(r):
    """Test F1 as a share of full fine-tuning's (n/a while full fine-tuning has not learned the task: --fast)."""
    return f"{r['f1']['test'] / f_full:.1%}" if f_full >= 0.05 else "n/a"


def forgot(r, key, fmt):
    """The body's probe number before -> after training (n/a in --fast, which skips the probe)."""
    return f"{before[key]:{fmt}} -> {r['after'][key]:{fmt}}" if "after" in r else "n/a"


print()
rows = []
for r in results:
    rep = r["rep"]
    rows.append((r["method"], f"{r['lr']:g}", f"{rep['trainable']:,}", f"{rep['trainable'] / n_full:.2%}",
                 f"{r['f1']['val']:.3f}", f"{r['f1']['test']:.3f}", rel(r), f"{r['time']:.1f}s",
                 forgot(r, "pretrain_ppl", ".2f"), forgot(r, "fact_accuracy", ".0%")))
table(("method", "lr", "trainable", "of full", "val F1", "test F1", "of full", "time", "pretrain ppl", "facts"), rows)
head = quality["head-only"]["rep"]["trainable"]
print(f"'of full': trainable parameters, then test F1, as a share of full fine-tuning's. 'trainable' counts the task "
      f"head ({head:,} = K (C + 1), K = 9 tags) in every row; LoRA on W_q, W_v adds 2 r (C + C) = "
      f"{2 * lora_parameter_count(C, C, 1):,} r per block, x {base.config.n_layer} blocks. Forgetting: the body with "
      f"the adapter on (merged, it is the same model).")
print("\nThe lesson's target: LoRA at a small rank reaches >= 95% of full fine-tuning's score with < 2% of its "
      "trainable parameters, and forgets less.")
for r in results:
    if "LoRA" in r["method"] or "DoRA" in r["method"]:
        small = r["rep"]["trainable"] < 0.02 * n_full
        good = f_full >= 0.05 and r["f1"]["test"] >= 0.95 * f_full
        a, fa = r.get("after"), full.get("after")
        less = a is not None and a["pretrain_ppl"] < fa["pretrain_ppl"] and a["fact_accuracy"] > fa["fact_accuracy"]
        course.verdict(f"  {r['method']:<20} < 2% of full's trainable: {'yes' if small else 'no '} | test F1 >= 95% of full's: "
              f"{'yes' if good else 'no '} ({rel(r)}) | forgets less (ppl and facts): {'yes' if less else 'no '} -> "
              f"{'holds' if small and good and less else 'fails'}")

print("\nWhere the points go: word-tag errors on val (word: gold -> predicted), the commonest five")
for m in ("full", "full, frozen embeddings", "LoRA r=4 q,v", "LoRA r=4 all linear"):
    err = bench.tag_errors(quality[m]["pred"]["val"], words=True)
    print(f"  {m:<24} {sum(err.values()):>3} errors: "
          + ", ".join(f"{w}: {g} -> {p} ({n})" for (w, g, p), n in err.most_common(5)))
surnames = sorted({w for e in ner["train"] for w, t in zip(e["tokens"], e["tags"]) if t == "I-PER"})
corpus = " ".join(world.pretrain_corpus("train"))
print(f"the surnames (every I-PER word: {', '.join(surnames)}) occur in the pretraining corpus "
      f"{sum(corpus.count(w) for w in surnames)} times; ' {surnames[-1]}' is tokenized as "
      f"{[tok.decode([i]) for i in tok.encode(' ' + surnames[-1])]}, and its tag sits on the first piece.")

if args.figures:                           # --figures: the curves and spectra as pictures (minift/figures.py)
    figures.loss_curves({r["method"]: r["curve"] for r in results}, figures.target("05", "loss_curves.png", FAST),
                        title=f"NER training loss, {STEPS} steps x batch {BATCH} (each method at its lr)")
    spectra = ("full", "LoRA r=1 q,v", "LoRA r=4 q,v", "LoRA r=16 q,v", "LoRA r=4 all linear")
    figures.lora_spectra(figures.delta_spectra(base, {m: quality[m]["model"].body for m in spectra}, MATRICES[:2]),
                         figures.target("05", "update_spectra.png", FAST))

# ==============================================================================================
header("3. The same ranks on a GPT-3-175B-shaped model (meta device: shapes only, no memory)")
big_cfg = GPTConfig(vocab_size=50257, block_size=2048, n_layer=2 if FAST else 96, n_head=96, n_embd=12288)
# (--fast builds 2 of the 96 blocks: building on the meta device still costs seconds of Python per block)
t0 = time.perf_counter()
with torch.device("meta"):
    big = GPT(big_cfg)
n_big = big.num_parameters()
print(f"GPTConfig(n_layer={big_cfg.n_layer}, n_head=96, n_embd=12288, vocab_size=50257, block_size=2048): {n_big:,} parameters "
      f"(embedding tied to the output layer; built in {time.perf_counter() - t0:.1f}s, no weight allocated)")
rows = []
for r in (1, 2, 4, 8):
    apply_lora(big, LoRAConfig(r=r))                            # W_q and W_v of every block
    n = sum(p.numel() for p in big.parameters() if p.requires_grad)
    by_formula = sum(row["lora"] for row in lora_report(big))
    rows.append((r, f"{n:,}", f"{by_formula:,}", f"{n / 1e6:.1f}M", f"{n / n_big:.4%}", f"{n_big / n:,.0f}x",
                 f"{2 * n / 1e6:.1f} MB"))
    remove_adapters(big)
table(("r", "trainable", "Σ r (in + out)", "rounded", "share", "full / LoRA", "fp16 file"), rows)
print(f"per block: W_q and W_v are ({big_cfg.n_embd}, {big_cfg.n_embd}), so LoRA adds 2 r (12288 + 12288) = 49,152 r; "
      f"x {big_cfg.n_layer} blocks = {49152 * big_cfg.n_layer:,} r. Full fine-tuning's training state in fp32 (weights, gradients, AdamW's two moments: "
      f"16 bytes a parameter) would be {16 * n_big / 1e12:.2f} TB; the frozen weights alone in fp16 are "
      f"{2 * n_big / 1e9:.0f} GB.")
del big

# ==============================================================================================
header("4. Merging: W = W0 + s B A, and inference costs nothing extra")
clf4 = quality["LoRA r=4 q,v"]["model"]
layer = clf4.body.transformer.h[0].attn.c_attn
batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["val"]]), DEV)
W0 = layer.weight.detach().clone()
with torch.no_grad():
    y_unmerged = clf4(batch["idx"], attention_mask=batch["attention_mask"]).logits
    merge_lora(clf4)
    y_merged = clf4(batch["idx"], attention_mask=batch["attention_mask"]).logits
    f1_merged = f1_on(clf4, "val")[0]
    unmerge_lora(clf4)
    W_back = layer.weight.detach().clone()
    y_again = clf4(batch["idx"], attention_mask=batch["attention_mask"]).logits
mask = batch["attention_mask"].bool()
print(f"{layer.__class__.__name__}({layer.extra_repr()})")
print(f"val logits, merged vs unmerged: max |diff| = {float((y_merged - y_unmerged)[mask].abs().max()):.2e} (float32 "
      f"rounding; logits up to {float(y_unmerged[mask].abs().max()):.1f}), same predicted tag at "
      f"{float((y_merged.argmax(-1) == y_unmerged.argmax(-1))[mask].float().mean()):.2%} of tokens, val F1 "
      f"{f1_merged:.3f} merged vs {quality['LoRA r=4 q,v']['f1']['val']:.3f} unmerged")
print(f"unmerge: max |W - W0| = {float((W_back - W0).abs().max()):.2e} (W0 back up to float32 rounding); unmerged "
      f"logits after the round trip vs before: max |diff| = {float((y_again - y_unmerged)[mask].abs().max()):.2e}")

plain = merge_and_unload(copy.deepcopy(clf4))                   # plain nn.Linear again: the base architecture
merged = copy.deepcopy(clf4)
merge_lora(merged)
models = {"unmerged LoRA": clf4, "merged LoRA": merged, "plain (merge_and_unload)": plain}
reps = 3 if FAST else 7
times = {k: [] for k in models}
tb = to_device(col([{"idx": it["idx"]} for it in items["val"][:64]]), DEV)   # 64 val sentences
with torch.no_grad():
    for m in models.values():                                   # warm-up
        m(tb["idx"], attention_mask=tb["attention_mask"])
    for _ in range(reps):                                      # interleaved, so load changes hit all three
        for k, m in models.items():
            course.sync()                                       # a GPU's queued work is done (no-op on the CPU)
            t0 = time.perf_counter()
            m(tb["idx"], attention_mask=tb["attention_mask"])
            course.sync()
            times[k].append(time.perf_counter() - t0)
med = {k: statistics.median(v) for k, v in times.items()}
table(("model", "forward, median", "vs plain"),
      [(k, f"{1000 * med[k]:.1f} ms", f"{med[k] / med['plain (merge_and_unload)']:.2f}x") for k in models])
print(f"one forward over the first {tb['idx'].shape[0]} val sentences ({tuple(tb['idx'].shape)} tokens), median of "
      f"{reps} rounds; the unmerged layer computes W0 x + s B (A x) on the side, the merged one only W x.")
del merged, plain

# ==============================================================================================
header("5. One base, several task adapters, swapped at run time")
people = [{"tokens": e["tokens"], "tags": [t if t.endswith("PER") else "O" for t in e["tags"]]} for e in ner["train"]]
people_items = [{"idx": it["idx"], "labels": it["labels"]} for it in encode_ner(tok, people, world.NER_TAGS, BLOCK)]
gold_people = [[t if t.endswith("PER") else "O" for t in e["tags"]] for e in ner["val"]]
print(f"task B, 'people only' (e.g. to redact names): the same sentences with every tag but B-PER/I-PER set to O. "
      f"Its adapter: LoRA r=4 q,v, lr {LR['LoRA r=4 q,v']:g}, {STEPS} steps (the task A recipe, not tuned again).")
res_b = bench.train_and_measure("LoRA r=4 q,v", LR["LoRA r=4 q,v"], data=people_items)
trained = {"A: all entities": quality["LoRA r=4 q,v"], "B: people only": res_b}
tmp = tempfile.TemporaryDirectory()
dirs = {}
for k, r in trained.items():
    dirs[k] = os.path.join(tmp.name, k.split(":")[0])
    save_adapter(r["model"], dirs[k])                           # LoRA A, B (+ the head): what was trained
size = {k: os.path.getsize(os.path.join(d, "adapter.safetensors")) for k, d in dirs.items()}
print(f"adapter files: {', '.join(f'{k}: {size[k] / 1024:.1f} KiB' for k in dirs)} (LoRA A, B and the task head), "
      f"vs {os.path.getsize(BASE_DIR / 'model.safetensors') / 1024 ** 2:.1f} MiB for the base model itself")

body, _ = load_base(device=DEV)                                 # the ONE base model, loaded once
model = TokenClassifier(body, len(world.NER_TAGS)).to(DEV)
probe = to_device(col([{"idx": it["idx"]} for it in items["val"][:16]]), DEV)
with torch.no_grad():
    lm_base = body(probe["idx"], attention_mask=probe["attention_mask"]).logits.clone()
ex = next((i for i, e in enumerate(ner["val"]) if {"B-PER", "B-LOC"} <= set(e["tags"]) and
           any(t.endswith(("FOOD", "ANIMAL")) for t in e["tags"])), 0)   # a sentence with all kinds
rows, tagged = [], []
for k in ("A: all entities", "B: people only", "A: all entities"):
    t0 = time.perf_counter()
    load_adapter(model, dirs[k])                                # 1st call applies LoRA; later calls swap tensors
    course.sync()
    ms = 1000 * (time.perf_counter() - t0)
    f1_a, pred = f1_on(model, "val")
    f1_b = entity_f1(pred, gold_people)["f1"]
    with torch.no_grad():
        lm = body(probe["idx"], attention_mask=probe["attention_mask"]).logits
    rows.append((k, f"{ms:.0f} ms", f"{f1_a:.3f}", f"{f1_b:.3f}", str(pred == trained[k]["pred"]["val"]),
                 f"{float((lm - lm_base).abs().max()):.2f}"))
    tagged.append((k, pred[ex]))
table(("adapter loaded", "load", "val F1, task A", "val F1, task B", "= trained model", "body logits vs base"), rows)
print("'= trained model': every val tag equals the one the model predicted right after training. 'body logits vs "
      "base': max |diff| of the body's language-model logits on 16 val sentences.")
with disable_adapters(model), torch.no_grad():
    lm_off = body(probe["idx"], attention_mask=probe["attention_mask"]).logits
print(f"inside `with disable_adapters(model)`: body logits bit-identical to the base model: "
      f"{torch.equal(lm_off, lm_base)}")
print(f"\n{' '.join(ner['val'][ex]['tokens'])}")
for k, p in tagged[:2]:
    print(f"  {k:<16} " + ", ".join(f"{w}/{t}" for w, t in zip(ner["val"][ex]["tokens"], p) if t != "O"))
tmp.cleanup()

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "6. Seed spread: part 2's methods and rates",
                                  "head and LoRA init, data order"):
    bench.seed_spread(METHODS, LR, seeds, quality)

print(f"\ntotal: {course.elapsed():.1f}s wall ({torch.get_num_threads()} thread; wall grows when "
      f"other jobs share the cores)")
