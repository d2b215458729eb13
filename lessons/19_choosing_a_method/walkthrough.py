"""Lesson 19: choosing a method: every method of the course on one task, one table, the course's claims checked.

Prints, top to bottom:

  1. one NER model per method of lessons 02-12 (`TokenClassifier` on the shipped base; the same data,
     steps, batch, seed and head init; each method with the recipe and learning rate its own lesson
     picked), then TWO tables with one row per method:
       cost:    trainable parameters (count, share of the model), the memory of one training step
                (measured, minift.memory.step_memory), training CPU time (and its ratio to full
                fine-tuning's), forward CPU time unmerged and merged as ratios to the base model's;
       quality: val and test entity F1 (and test F1 as a share of full fine-tuning's), forgetting on
                the pretraining domain (forgetting_probe: perplexity and fact accuracy, adapter on);
  2. the same methods on a LLaMA-7B-shaped model (meta device, no memory): trainable parameters, the
     reduction against full fine-tuning, and the predicted memory of a training step; then LoRA's
     count on a GPT-3-175B shape at ranks 1, 2, 4, 8;
  3. the course's claims, each checked against parts 1-2: PEFT forgets less; LoRA cuts trainable
     parameters by > 10,000x at scale; QLoRA fits big models on one GPU; DPO is cheaper than PPO;
  4. the PEFT taxonomy (minift/taxonomy.py): each method's class (selective, reparameterization,
     additive) and what the class predicts (it merges into the base and then costs the base's FLOPs,
     or it cannot and keeps its extra cost), against what each trained model does.

    python lessons/19_choosing_a_method/walkthrough.py           # or: minift run 19 (one seed, 80 steps x 8)
    python lessons/19_choosing_a_method/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/19_choosing_a_method/walkthrough.py --full    # longer than any lesson: 150 steps x 32, seeds 0, 1, 2

Everything it uses lives in the library (minift/peft/*, minift/quant/qlora.py, minift/heads.py,
minift/train.py, minift/pretrain.py, minift/memory.py; the train-and-measure bench:
minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 85
FAST_SECONDS = 13

import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from minift import course, world
from minift.heads import ner_splits
from minift.memory import PRESETS, estimate, step_memory
from minift.model import GPT
from minift.peft.adapters import AdapterConfig
from minift.peft.common import count_adapter_parameters, disable_adapters
from minift.peft.io import apply_config
from minift.peft.lora import LoRAConfig, lora_parameter_count
from minift.peft.masking import MaskingConfig, masked_count
from minift.peft.prefix import PrefixConfig
from minift.peft.prompt import PromptConfig
from minift.peft.reft import ReFTConfig, reft_parameter_count
from minift.peft.selective import SelectiveConfig
from minift.pretrain import forgetting_probe, load_base
from minift.quant import ops
from minift.quant.qlora import QLoRAConfig
from minift.taxonomy import CONSEQUENCES, family, merge_into_base
from minift.report import header, table
from minift.tasks import LMDataset
from minift.train import to_device

parser = course.parser(__doc__)
parser.add_argument("--full", action="store_true", help="a longer budget than any lesson's: 150 steps x 32, "
                                                        "seeds 0, 1, 2, and the LLaMA-65B prediction (not with --fast)")
args = course.start("19", parser, kernel=True)     # the C++ kernel loaded (built once) before any timed row
if args.fast and args.full:
    parser.error("argument --full: not allowed with argument --fast")
FAST, FULL, DEV = args.fast, args.full, args.device   # DEV: --device (cpu unless told); the Bench builds there too
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)
cpu_start = time.process_time()

# ---- every method, with its own lesson's recipe ---------------------------------------------------
# name: (lesson, config, peak lr). Configs and rates are the ones each lesson picked on its dev/val
# split at its own budget, 80-100 steps x batch 8-16 (their --sweep tables); a task head trains in every row.
M = {
    "full": ("02/05", None, 1e-3),                                               # lesson 05's sweep
    "head-only": ("04", SelectiveConfig(patterns=()), 3e-2),
    "BitFit": ("04", SelectiveConfig(param_types=["bias"]), 1e-2),
    "LoRA r=4 q,v": ("05", LoRAConfig(r=4), 1e-2),
    "DoRA r=4 q,v": ("05", LoRAConfig(r=4, use_dora=True), 1e-2),
    "series adapter (Houlsby) m=7": ("06", AdapterConfig(kind="series", placement="houlsby", bottleneck=7), 1e-2),
    "parallel adapter m=15": ("06", AdapterConfig(kind="parallel", bottleneck=15), 1e-2),
    "prefix P=10 (MLP)": ("07", PrefixConfig(n_prefix=10), 1e-2),
    "prompt n=16 (vocab)": ("08", PromptConfig(n_tokens=16, init="vocab"), 1e-1),
    "random mask 1% q,v": ("09", MaskingConfig(density=0.01), 3e-2),
    "LoReFT r=4": ("10", ReFTConfig(r=4, positions="all"), 1e-2),
    "QLoRA NF4 r=4 q,v": ("12", QLoRAConfig(r=4, quant="nf4"), 1e-2),
}
if FAST:   # the smoke test: every code path (merged, unmerged, the base's shape, NF4), not all twelve methods
    M = {m: M[m] for m in ("full", "head-only", "LoRA r=4 q,v", "series adapter (Houlsby) m=7", "prompt n=16 (vocab)",
                           "random mask 1% q,v", "QLoRA NF4 r=4 q,v")}
PEFT = [m for m in M if m != "full"]
# The PEFT class of each method (minift/taxonomy.py): selective, reparameterization or additive.
# Full fine-tuning trains every parameter: not a PEFT method, listed as "-".
FAMILY = {m: "-" if cfg is None else family(cfg) for m, (_, cfg, _) in M.items()}
SAME_AS_BASE = ("full", "head-only", "BitFit")          # the base's architecture: nothing to merge
STEPS, BATCH = (3, 8) if FAST else (150, 32) if FULL else (80, 8)
SEEDS = (0, 1, 2) if FULL else (0,)
N_EVAL = 16 if FAST else None
PROBE = dict(n_windows=2, n_facts=4) if FAST else dict(n_windows=8, n_facts=72)
TIMING_ROUNDS = 1 if FAST else 3
MEM_B, MEM_T = (4, 8) if FAST else (32, 32)             # the step whose memory is measured
BLOCK = 128


def mib(n):
    return f"{n / 2 ** 20:.2f}"


base, tok = load_base(device=DEV)
ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL)   # examples, encodings, train items
before = forgetting_probe(base, tok, **PROBE)
N_ALL = base.num_parameters()


def before_training(clf):
    """What the bench measures on the fresh model: all its parameters (base + method + head; QLoRA's
    NF4 weights counted as the parameters they hold) and one training step's memory of the body as a
    language model, the method applied."""
    n_total = N_ALL + count_adapter_parameters(clf) + clf.head.weight.numel() + clf.head.bias.numel()
    return {"total": n_total, "mem": step_memory(clf.body, MEM_B, MEM_T)}


# the bench (minift/method_bench.py): a fresh TokenClassifier per method, the same head init, data and steps;
# train time as CPU seconds (one thread, not inflated by other jobs); forgetting with the adapter on
bench = course.Bench({m: cfg for m, (_, cfg, _) in M.items()}, tok, (ner, items, train_items), steps=STEPS,
                     batch=BATCH, dev="val", warmup_steps=max(1, STEPS // 10), probe=PROBE, width=29,
                     cpu_time=True, on_fresh=before_training)
col, fresh = bench.col, bench.fresh
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences, val "
      f"{len(ner['val'])}, test {len(ner['test'])}. Every run: {STEPS} steps x batch {BATCH}, AdamW, warmup + "
      f"cosine, the same head init, seed{'s' if len(SEEDS) > 1 else ''} {', '.join(map(str, SEEDS))}"
      + ("" if FULL or FAST else " (the lessons picked their rates at 80-100 steps x 8-16; --full: 150 x 32)") + ".")
print(f"base model: {N_ALL:,} parameters; before fine-tuning: pretraining perplexity {before['pretrain_ppl']:.3f}, "
      f"fact accuracy {before['fact_accuracy']:.1%} ({PROBE['n_facts']} probes)")

# ==============================================================================================
header(f"1. Every method on NER: {STEPS} steps x batch {BATCH}, each with its own lesson's recipe")
results, spread = {}, {}
for m in M:
    # seed s moves the head init, the data order and the method's own draws (a mask, a prompt's init)
    runs = [bench.train_and_measure(m, M[m][2], seed=s) for s in SEEDS]
    r = results[m] = runs[0]
    spread[m] = [x["f1"]["test"] for x in runs]
    for x in runs[1:]:
        x.pop("model")
    bench.report(r)

# ---- inference: forward CPU time of each trained classifier, unmerged and merged, vs the base ----
# 64 val sentences, eval mode, no grad; rounds interleaved over the models, fastest kept.
tbatch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["val"][:64]]), DEV)
timed = {"base": fresh("head-only"), **{m: results[m]["model"] for m in M if m not in SAME_AS_BASE}}
merge_err, merged_ok = {}, {}
with torch.no_grad():
    for m in [m for m in M if m not in SAME_AS_BASE]:
        merged = copy.deepcopy(results[m]["model"])
        try:
            merge_into_base(merged)          # W = W0 + s B A, W0 + scatter(idx, v); QLoRA's c_attn to float
        except ValueError:                   # additive: nothing to fold the update into
            merged_ok[m] = False
            continue
        merged_ok[m] = True
        timed[m + " merged"] = merged.eval()
        un = results[m]["model"].eval()(tbatch["idx"], attention_mask=tbatch["attention_mask"]).logits
        mg = merged(tbatch["idx"], attention_mask=tbatch["attention_mask"]).logits
        merge_err[m] = (mg - un)[tbatch["attention_mask"].bool()].abs().max().item()
best = course.forward_cpu_seconds(timed, tbatch, TIMING_ROUNDS)
fwd = {k: v / best["base"] for k, v in best.items()}

full = results["full"]
rows = []
for m, r in results.items():
    mem = r["mem"]
    un = "= base" if m in SAME_AS_BASE else f"{fwd[m]:.2f}x"
    mg = "= base" if m in SAME_AS_BASE else f"{fwd[m + ' merged']:.2f}x" if merged_ok[m] else "cannot"
    n = r["rep"]["trainable"]
    rows.append((m, M[m][0], f"{r['lr']:g}", f"{n:,}", f"{n / r['total']:.2%}",
                 mib(mem["weights"]), mib(mem["gradients"] + mem["optimizer"]), mib(mem["activations"]),
                 mib(mem["total"]), f"{r['cpu']:.1f}s", f"{r['cpu'] / full['cpu']:.2f}x", un, mg))
print()
table(("method", "lesson", "lr", "trainable", "share", "weights", "grads+AdamW", "activ.", "step MiB",
       f"train {CLOCK}", "vs full", "forward", "merged"), rows)
print(f"trainable: what AdamW updates, the task head (1,161 = 9 tags x (C + 1)) included; share: of all the "
      f"classifier's parameters (base + method + head; QLoRA's NF4 weights counted as the parameters they hold). "
      f"Memory (MiB): one training step of the body as a language model with the method applied, batch "
      f"{MEM_B} x {MEM_T}, float32 (minift.memory.step_memory: weights and buffers, gradients, two AdamW moments, "
      f"what autograd saves); head-only trains nothing in the body, so its body saves no activations. train {CLOCK}: "
      f"seconds of {CLOCK} time in train(). forward: the trained classifier's forward {CLOCK} time on 64 val "
      f"sentences / the base "
      f"classifier's ({best['base'] * 1e3:.1f} ms, fastest of {TIMING_ROUNDS} interleaved rounds); merged: after "
      f"merging the update into the weights (adapters, prefixes, prompts and LoReFT interventions cannot be merged).")
print("max |logits merged - unmerged| over real tokens: " + ", ".join(f"{m} {e:.1e}" for m, e in merge_err.items())
      + " (QLoRA: c_attn merged to float, the other layers stay NF4)")

# ---- the base back? each body with its method switched off, on pretraining text, vs the base ----
lm_val = LMDataset(tok, world.pretrain_corpus("val"), BLOCK)
lm_batch = torch.stack([lm_val[i]["idx"] for i in range(4)]).to(DEV)  # (4, 128)
with torch.no_grad():
    want = base(lm_batch).logits
    for m, r in results.items():
        with disable_adapters(r["model"].body):
            r["off"] = torch.equal(r["model"].body(lm_batch).logits, want)

print()
rows = []
for m, r in results.items():
    a = r["after"]
    seeds = "" if len(SEEDS) == 1 else f"{statistics.mean(spread[m]):.3f} ({min(spread[m]):.3f}-{max(spread[m]):.3f})"
    rows.append((m, f"{r['f1']['val']:.3f}", f"{r['f1']['test']:.3f}",
                 f"{r['f1']['test'] / full['f1']['test']:.1%}" if full["f1"]["test"] >= 0.05 else "n/a",
                 *((seeds,) if len(SEEDS) > 1 else ()),
                 f"{before['pretrain_ppl']:.2f} -> {a['pretrain_ppl']:.2f}",
                 f"{before['fact_accuracy']:.0%} -> {a['fact_accuracy']:.0%}", "yes" if r["off"] else "no"))
table(("method", "val F1", "test F1", "of full", *(("test F1 mean (range), 3 seeds",) if len(SEEDS) > 1 else ()),
       "pretrain ppl", "facts", "off = base"), rows)
print(f"entity F1 (seed {SEEDS[0]}); of full: test F1 / full fine-tuning's. pretrain ppl, facts: the body as a "
      f"language model with the method left on (forgetting_probe: {PROBE['n_windows']} windows of the pretraining "
      f"validation text, {PROBE['n_facts']} closed-book fact probes), before -> after fine-tuning. off = base: inside "
      f"`with disable_adapters(body):` the LM logits on 4 x {BLOCK} pretraining tokens equal the shipped base's, bit "
      f"for bit (full and BitFit changed the base weights; QLoRA's base is the NF4 copy).")

# ==============================================================================================
BIG, B7 = ("base" if FAST else "llama-7b"), 1            # --fast: the shipped model's shape (meta models are slow)
cfg7 = base.config if FAST else PRESETS[BIG]
T7 = min(512, cfg7.block_size)
header(f"2. The same methods on a {BIG}-shaped model (meta device: shapes only), bf16, batch {B7} x {T7}")
C7, L7 = cfg7.n_embd, cfg7.n_layer
t0 = time.perf_counter()
pred = {"full": estimate(cfg7, "full", batch=B7, seq=T7),
        "LoRA r=4 q,v": estimate(cfg7, "lora", batch=B7, seq=T7, r=4),
        "QLoRA NF4 r=4 q,v": estimate(cfg7, "qlora", batch=B7, seq=T7, r=4, quant="nf4")}
N7 = pred["full"]["parameters"]
counts = {"head-only": (0, "an LM has no task head: nothing trains"),
          "BitFit": (0, "LLaMA has no bias terms (bias=False): BitFit trains nothing"),
          # masking and LoReFT draw or orthonormalise real numbers at init: not on the meta device
          "random mask 1% q,v": (masked_count(L7 * 2 * C7 * C7, 0.01), "counted from the shapes"),
          "LoReFT r=4": (L7 * reft_parameter_count(C7, 4), "counted from the shapes")}
for m in PEFT:
    if m in pred or m in counts or FAST:                # --fast: the three estimates only
        continue
    with torch.device("meta"):
        lm = GPT(cfg7).to(torch.bfloat16)
    pred[m] = step_memory(apply_config(lm, M[m][1]), B7, T7)
    del lm
rows = []
for m in M:
    if m in pred:
        e = pred[m]
        gb = lambda k: f"{e[k] / 2 ** 30:.1f}"                                  # noqa: E731
        rows.append((m, f"{e['trainable']:,}", f"{N7 / e['trainable']:,.0f}x", gb("weights"),
                     f"{(e['gradients'] + e['optimizer']) / 2 ** 30:.2f}", gb("activations"), gb("total"), ""))
    elif m in counts:
        n, why = counts[m]
        rows.append((m, f"{n:,}", f"{N7 / n:,.0f}x" if n else "-", "-", "-", "-", "-", why))
table((f"{BIG} shape", "trainable", "fewer than full", "weights GiB", "grads+AdamW GiB", "activ. GiB", "total GiB",
       "note"), rows)
print(f"{N7:,} parameters (GPT-2 layout with {'the base model' if FAST else 'LLaMA-7B'}'s shapes: n_layer {L7}, n_embd {C7}, vocab "
      f"{cfg7.vocab_size}); weights and gradients bf16, AdamW moments fp32; QLoRA: every frozen linear weight "
      f"in NF4 + double quantization. minift.memory.estimate (full, LoRA, QLoRA) and step_memory on the meta "
      f"model with apply_config (the others), {time.perf_counter() - t0:.0f}s.")

G3_NAME = "base" if FAST else "GPT-3-175B"                # --fast: the shipped model's shape, as above
g3 = base.config if FAST else PRESETS["gpt3-175b"]
with torch.device("meta"):
    n175 = GPT(g3).num_parameters()
rows = [(f"r = {r}", f"{g3.n_layer * 2 * lora_parameter_count(g3.n_embd, g3.n_embd, r):,}",
         f"{n175 / (g3.n_layer * 2 * lora_parameter_count(g3.n_embd, g3.n_embd, r)):,.0f}x",
         f"{L7 * 2 * lora_parameter_count(C7, C7, r):,}",
         f"{N7 / (L7 * 2 * lora_parameter_count(C7, C7, r)):,.0f}x") for r in (1, 2, 4, 8)]
table(("LoRA on W_q, W_v", f"{G3_NAME} trainable", "fewer than full", f"{BIG} trainable", "fewer than full"), rows)
print(f"{G3_NAME} shape: {n175:,} parameters (n_layer {g3.n_layer}, n_embd {g3.n_embd}); LoRA trains 2 r (C + C) "
      f"per block on W_q and W_v.")

if FULL:
    t0 = time.perf_counter()
    big = PRESETS["llama-65b"]
    f65 = estimate(big, "full", batch=1, seq=512)
    q65 = estimate(big, "qlora", batch=1, seq=512, r=64, qkv=None, checkpointing=True,
                   targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    print(f"LLaMA-65B shape, batch 1 x 512, bf16: full fine-tuning {f65['total'] / 2 ** 30:.1f} GiB; QLoRA NF4+DQ r=64 "
          f"on every linear layer with checkpointing {q65['total'] / 2 ** 30:.1f} GiB "
          f"({time.perf_counter() - t0:.0f}s on the meta device)")

# ==============================================================================================
header("3. The course's claims, checked against the tables above")
fa = full["after"]
print(f"(a) 'PEFT forgets less than full fine-tuning'. Full fine-tuning: pretrain ppl {fa['pretrain_ppl']:.2f}, "
      f"facts {fa['fact_accuracy']:.0%} (before: {before['pretrain_ppl']:.2f}, {before['fact_accuracy']:.0%}).")
less = []
for m in PEFT:
    a = results[m]["after"]
    ok = a["pretrain_ppl"] < fa["pretrain_ppl"] and a["fact_accuracy"] > fa["fact_accuracy"]
    less.append(ok)
    course.verdict(f"    {m:<29} ppl {a['pretrain_ppl']:>7.2f}, facts {a['fact_accuracy']:>4.0%}: "
                   f"{'forgets less (both)' if ok else 'does NOT forget less on both'}")
off = [m for m in PEFT if results[m]["off"]]
changed = ", ".join(m for m in PEFT if m not in off)
course.verdict(f"    -> {sum(less)} of {len(less)} PEFT methods forget less on both measures, with the adapter on.")
print(f"    Switched off, {len(off)} of the PEFT methods give the base back bit for bit ({changed}: not).")

lora = results["LoRA r=4 q,v"]
print(f"(b) 'LoRA reduces trainable parameters by > 10,000x at scale'. LoRA r=4 on W_q, W_v: here "
      f"{lora['n_adapter']:,} of {N_ALL:,} ({N_ALL / lora['n_adapter']:,.0f}x fewer, the task head aside); {BIG} "
      f"{N7 / pred['LoRA r=4 q,v']['trainable']:,.0f}x; {G3_NAME} "
      f"{n175 / (g3.n_layer * 2 * lora_parameter_count(g3.n_embd, g3.n_embd, 4)):,.0f}x (r=1: "
      f"{n175 / (g3.n_layer * 2 * lora_parameter_count(g3.n_embd, g3.n_embd, 1)):,.0f}x). The ratio grows with C: "
      f"(12 C^2 L) / (4 r C L) = 3 C / r.")

q, lo = results["QLoRA NF4 r=4 q,v"], results["LoRA r=4 q,v"]
p7 = {m: pred[m]["total"] / 2 ** 30 for m in ("full", "LoRA r=4 q,v", "QLoRA NF4 r=4 q,v")}
print(f"(c) 'QLoRA fits big models on one GPU'. Predicted for {BIG} at batch {B7} x {T7}: full fine-tuning "
      f"{p7['full']:.1f} GiB, LoRA {p7['LoRA r=4 q,v']:.1f} GiB, QLoRA {p7['QLoRA NF4 r=4 q,v']:.1f} GiB "
      f"(a 24 GiB GPU: full {'fits' if p7['full'] <= 24 else 'does not fit'}, LoRA "
      f"{'fits' if p7['LoRA r=4 q,v'] <= 24 else 'does not fit'}, QLoRA "
      f"{'fits' if p7['QLoRA NF4 r=4 q,v'] <= 24 else 'does not fit'}). Here, measured: QLoRA's weights "
      f"{mib(q['mem']['weights'])} MiB vs LoRA's {mib(lo['mem']['weights'])} MiB, but the step is "
      f"{mib(q['mem']['total'])} vs {mib(lo['mem']['total'])} MiB: activations dominate a 1M-parameter model; "
      f"test F1 {q['f1']['test']:.3f} vs {lo['f1']['test']:.3f}; training {q['cpu'] / lo['cpu']:.2f}x LoRA's "
      f"{CLOCK} time.")
print("(d) 'DPO is cheaper than PPO': not a fine-tuning method of this table (it needs preference pairs, not NER "
      "tags); lessons 14 (RLHF with PPO) and 15 (DPO) measure it on TinyWorld's preference task.")

# ==============================================================================================
header("4. The PEFT taxonomy: what each class predicts, against what each method does")
print("selective: train a subset of the base's own parameters; reparameterization: train a compact form of a "
      "weight update, W = W0 + f(θ); additive: add modules or tokens the base does not have (minift/taxonomy.py).")


def flops(model):
    """Multiply-adds x 2 of one forward on the 64 timing sentences, counted by torch's FlopCounterMode
    (matmuls and attention): deterministic, unlike a time. NF4 layers take the PyTorch path while counting
    (the C++ kernel's work is invisible to the counter): dequantize, then the same matmul as a float layer."""
    with ops.reference_path("counting FLOPs"), torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(tbatch["idx"], attention_mask=tbatch["attention_mask"])
    return fc.get_total_flops()


f_base = flops(timed["base"])
rows, agree = [], []
for m in PEFT:
    c = CONSEQUENCES[FAMILY[m]]
    merges = m in SAME_AS_BASE or merged_ok[m]
    f_un = f_base if m in SAME_AS_BASE else flops(results[m]["model"])
    f_after = f_base if m in SAME_AS_BASE else flops(timed[m + " merged"]) if merges else f_un
    # holds: it merges exactly when predicted, and then costs the base's FLOPs exactly; or, refused,
    # keeps more FLOPs than the base
    ok = merges == c.mergeable and (f_after == f_base if merges else f_after > f_base)
    agree.append(ok)
    rows.append((m, FAMILY[m], "yes" if c.mergeable else "no", "= base" if m in SAME_AS_BASE else "yes" if merges
                 else "refused", f"{f_un / f_base:.3f}x", f"{f_after / f_base:.3f}x"))
table(("method", "class", "predicted: merges", "measured: merges", "FLOPs as trained", "FLOPs after merging"), rows)
print(f"FLOPs: one forward of the classifier on the 64 val sentences (the base classifier: {f_base / 1e9:.3f} GFLOP), "
      f"counted by torch.utils.flop_counter; 'after merging' is the model as it is served: merged where the method "
      f"merges, as trained where it cannot. Predicted for every class: merging (selective, reparameterization) gives "
      f"the base's cost exactly; an additive method cannot merge and keeps its extra modules or tokens.")
course.verdict(f"    -> the class predicts mergeability and the served cost for {sum(agree)} of {len(agree)} methods"
               + ("" if all(agree) else ": not for " + ", ".join(m for m, a in zip(PEFT, agree) if not a)))

print(f"\ndone in {course.elapsed():.0f}s wall, {time.process_time() - cpu_start:.0f}s CPU{course.memory_note()}")
