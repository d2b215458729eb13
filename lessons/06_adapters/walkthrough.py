"""Lesson 06: bottleneck adapters, series (Houlsby, Pfeiffer) and parallel, against LoRA at one budget.

Prints, top to bottom:

  1. where each adapter sits in a GPT-2 block: the modules `apply_adapters` wraps and the block's
     module tree for Houlsby series, Pfeiffer series and parallel adapters (and LoRA on q, v for
     comparison); the bottleneck h + s f(h W_down) W_up; the parameter count of each at the
     matched budget; and the check that every adapted model equals the base exactly at step 0
     (W_up = 0);
  2. one NER model per method (`TokenClassifier` on the shipped base, same data, steps, batch,
     seed and head initialisation; each method's lr picked on the dev split), then ONE table:
     method | adapter parameters | trainable (adapter + head) | share | dev F1 | test F1 | train
     time | forward time vs the base | the body as a language model with the adapter left on;
     then what "forgetting" means when the base never moves: the base tensors after training vs
     the shipped file, `disable_adapters` vs the base model's outputs, and LoRA merged;
  3. what limits the adapters: a bottleneck sweep for the Pfeiffer adapter (m = 1 and 64 next to
     part 2's m), and the same adapter with the token embeddings trainable too.
  With --seeds K, at the end: part 2 again with seeds 0..K-1, and the spread of the F1 scores.
  With --sweep, before part 2: the learning-rate sweep behind part 2's rates (~4 minutes).

    python lessons/06_adapters/walkthrough.py           # or: minift run 06
    python lessons/06_adapters/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/06_adapters/walkthrough.py --sweep   # re-pick every lr from {1e-3, 3e-3, 1e-2, 3e-2}
    python lessons/06_adapters/walkthrough.py --sweep --sweep-seeds 3   # ... on the mean over seeds 0, 1, 2
                                                        # (head-only: {1e-2, 3e-2, 1e-1, 3e-1})

Everything it uses lives in the library (minift/peft/adapters.py, minift/peft/lora.py,
minift/peft/common.py, minift/peft/io.py, minift/heads.py, minift/train.py, minift/pretrain.py;
the train-and-measure bench: minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 101   # CPU seconds on the 2-core EPYC VM the READMEs are measured on
FAST_SECONDS = 11

import copy
import os
import tempfile

import torch

from minift import course, world
from minift.heads import ner_splits
from minift.peft.adapters import AdapterConfig, adapter_parameter_count, adapters_state_dict, apply_adapters
from minift.peft.common import count_adapter_parameters, disable_adapters
from minift.peft.io import save_adapter
from minift.peft.lora import LoRAConfig, apply_lora, lora_parameter_count, merge_lora
from minift.peft.selective import SelectiveConfig
from minift.pretrain import forgetting_probe, load_base
from minift.tasks import LMDataset
from minift.train import to_device
from minift.report import header, table

parser = course.parser(__doc__)
course.add_sweep(parser, "sweep every method's lr over {1e-3, 3e-3, 1e-2, 3e-2} (head-only: {1e-2, 3e-2, 1e-1, "
                         "3e-1}) on the dev split first (about 4 minutes)")
course.add_seeds(parser, "part 2's methods", "head and adapter init, data order", "dev/test F1",
                 "K=5: 2.4x the default run's time")
args = course.start("06", parser)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told); the Bench builds its models there too
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)

base, tok = load_base(device=DEV)
C, L = base.config.n_embd, base.config.n_layer

# ---- the matched budget -----------------------------------------------------------------------
# LoRA as in its paper: W_q and W_v of every block (two slices of GPT-2's fused c_attn), rank 8:
# 2 L r (C + C) parameters. Each adapter gets the bottleneck m whose count comes closest to it.
LORA = LoRAConfig(r=8, alpha=16, targets=("attn.c_attn",), qkv=("q", "v"))
BUDGET = L * len(LORA.qkv) * lora_parameter_count(C, C, LORA.r)
PER_BLOCK = {"houlsby": 2, "pfeiffer": 1, "parallel": 1}          # adapters per block


def closest_m(n_per_block):
    return min(range(1, C + 1), key=lambda m: (abs(L * n_per_block * adapter_parameter_count(C, m) - BUDGET), m))


M = {k: closest_m(n) for k, n in PER_BLOCK.items()}
METHODS = {                                                        # what trains; a task head always does
    "full": None,
    "head-only": SelectiveConfig(patterns=()),
    "series Houlsby": AdapterConfig(kind="series", placement="houlsby", bottleneck=M["houlsby"]),
    "series Pfeiffer": AdapterConfig(kind="series", placement="pfeiffer", bottleneck=M["pfeiffer"]),
    "parallel": AdapterConfig(kind="parallel", bottleneck=M["parallel"]),
    "LoRA q,v": LORA,
}
PEFT = ["series Houlsby", "series Pfeiffer", "parallel", "LoRA q,v"]
# Peak lr per method, picked on the dev split from GRID by `--sweep` (best dev F1; ties within
# 0.005 go to the smaller lr). head-only's grid reaches one step past its pick on both sides; its
# pick, 1e-1, is lesson 05's (the same run: data, steps, batch, seed, head init).
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
GRID = {m: LRS for m in METHODS}
GRID["head-only"] = (1e-2, 3e-2, 1e-1, 3e-1)
LR = {"full": 1e-3, "head-only": 1e-1, "series Houlsby": 1e-2, "series Pfeiffer": 1e-2, "parallel": 1e-2,
      "LoRA q,v": 1e-2}
STEPS, BATCH = (2, 4) if FAST else (100, 8)
N_EVAL = 16 if FAST else None
PROBE = dict(n_windows=1, n_facts=6) if FAST else dict(n_windows=16, n_facts=72)
SWEEP_M = () if FAST else (1, 64)
TIMING_ROUNDS = 1 if FAST else 20
BLOCK = 128

ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL, dev_key="dev")   # examples, encodings, train items
# the bench (minift/method_bench.py): a fresh TokenClassifier per method, the same head init, data and steps
bench = course.Bench(METHODS, tok, (ner, items, train_items), steps=STEPS, batch=BATCH, width=16)
col, fresh = bench.col, bench.fresh
lm_val = LMDataset(tok, world.pretrain_corpus("val"), BLOCK)
lm_batch = torch.stack([lm_val[i]["idx"] for i in range(4)]).to(DEV)   # (4, 128) pretraining text
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; "
      f"dev = the val split ({len(ner['dev'])} sentences), test = the test split ({len(ner['test'])}). Both name "
      f"only people never tagged in training (known to the body from pretraining); towns, pets and foods are "
      f"closed sets shared by all splits.")

# ==============================================================================================
header("1. Where each adapter sits in a GPT-2 block (n_embd C = %d, %d blocks)" % (C, L))


def tree(module, indent="  "):
    """The module tree of one block: names, types, Linear shapes; adapter modules marked."""
    for name, m in module.named_children():
        if isinstance(m, torch.nn.Dropout):
            continue
        kind = type(m).__name__
        if isinstance(m, torch.nn.Linear):
            kind += f" ({m.in_features} -> {m.out_features})"
        elif hasattr(m, "weight") and getattr(m, "weight") is not None and m.weight.dim() == 2 and \
                kind not in ("LayerNorm",):
            kind += f" ({m.weight.shape[1]} -> {m.weight.shape[0]})"
        if kind.startswith(("SeriesAdapter", "ParallelAdapter", "LoRALinear", "Bottleneck")):
            kind += "   <- new"
        extra = m.extra_repr() if kind.startswith(("Bottleneck", "LoRALinear")) else ""
        print(f"{indent}{name:<8} {kind}" + (f"   [{extra}]" if extra else ""))
        if not isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm)):
            tree(m, indent + "  ")


FLOW = {
    "series Houlsby": "a = x + Adapter(Attn(LN1(x)));   y = a + Adapter(MLP(LN2(a)))     Adapter(h) = h + s f(h Wd) Wu",
    "series Pfeiffer": "a = x + Attn(LN1(x));            y = a + Adapter(MLP(LN2(a)))     (after the MLP only)",
    "parallel": "a = x + Attn(LN1(x));            y = a + MLP(u) + s f(u Wd) Wu,   u = LN2(a)  (beside the MLP)",
    "LoRA q,v": "q = u (W_q + s B_q A_q)^T, v = u (W_v + s B_v A_v)^T, u = LN1(x); k, proj and MLP untouched",
}
adapted = {}                                                       # method -> the adapted body (reused below)
for method in PEFT:
    body, _ = load_base(device=DEV)
    cfg = METHODS[method]
    names = apply_adapters(body, cfg) if isinstance(cfg, AdapterConfig) else apply_lora(body, cfg)
    adapted[method] = body
    n = count_adapter_parameters(body)
    what = f"m = {cfg.bottleneck}, f = {cfg.activation}, s = {cfg.scaling:g}" if isinstance(cfg, AdapterConfig) \
        else f"r = {cfg.r}, alpha = {cfg.alpha:g} (s = {cfg.scaling:g}), slices {'+'.join(cfg.qkv)} of c_attn"
    print(f"\n{method}: {what}.  {FLOW[method]}")
    print(f"  wraps {len(names)} modules: {', '.join(names[:2])}{', ...' if len(names) > 2 else ''}")
    print("  block 0 after apply:")
    tree(body.transformer.h[0], "    ")
    if isinstance(cfg, AdapterConfig):
        per = adapter_parameter_count(C, cfg.bottleneck)
        print("  new tensors in block 0: " + ", ".join(
            f"{k.split('h.0.')[1]} {tuple(v.shape)}" for k, v in adapters_state_dict(body).items() if ".h.0." in k))
        print(f"  parameters: {len(names)} adapters x (2 C m + m + C = {per:,}) = {n:,}")
    else:
        print(f"  parameters: {L} blocks x {len(cfg.qkv)} slices x r (C + C) = {n:,}")

print(f"\nthe matched budget: LoRA r = {LORA.r} on W_q, W_v = {BUDGET:,} parameters; each adapter takes the "
      f"bottleneck m whose count comes closest:")
rows = []
for method in PEFT:
    cfg = METHODS[method]
    n = count_adapter_parameters(adapted[method])
    rows.append((method, f"m = {cfg.bottleneck}" if isinstance(cfg, AdapterConfig) else f"r = {cfg.r}", f"{n:,}",
                 f"{n / BUDGET - 1:+.1%}"))
table(("method", "size", "parameters", "vs LoRA"), rows)

print("\nstep 0: W_up = 0 (LoRA: B = 0), so the adapted classifier IS the base classifier (same head init):")
ref = fresh("head-only").eval()
batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["dev"][:32]]), DEV)
with torch.no_grad():
    want = ref(batch["idx"], attention_mask=batch["attention_mask"]).logits
    for method in PEFT:
        got = fresh(method).eval()(batch["idx"], attention_mask=batch["attention_mask"]).logits
        print(f"  {method:<16} logits identical to the base: {torch.equal(got, want)}   "
              f"max |difference| = {(got - want).abs().max().item():.1e}")

# ==============================================================================================
if args.sweep:
    header(f"learning-rate sweep: every method at lr in {LRS} (head-only: {GRID['head-only']}), {STEPS} steps "
           f"x batch {BATCH}, picked on dev" + course.sweep_note(args))
    bench.sweep(METHODS, GRID, LR, seeds=course.sweep_seeds(args))  # keeps the picked models only

header(f"2. One NER model per method, at a matched budget: {STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, "
       f"seed 0")
before = None if FAST else forgetting_probe(base, tok, **PROBE)     # --fast skips the LM probes
results = {m: bench.run(m, LR[m]) for m in METHODS}

# ---- inference cost: forward time of each trained classifier vs the plain base classifier ------
# Same batch (64 dev sentences), eval mode, no grad, CPU time (a GPU: synchronized wall time), rounds
# interleaved, fastest kept (course.forward_cpu_seconds).
tbatch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["dev"][:64]]), DEV)
lora_merged = copy.deepcopy(results["LoRA q,v"]["model"])
merge_lora(lora_merged)                                           # W = W0 + s B A, in place
timed = {"base": fresh("full"), **{m: results[m]["model"] for m in PEFT}, "LoRA q,v merged": lora_merged}
best_t = course.forward_cpu_seconds(timed, tbatch, TIMING_ROUNDS)
with torch.no_grad():
    un = results["LoRA q,v"]["model"](tbatch["idx"], attention_mask=tbatch["attention_mask"]).logits
    mg = lora_merged(tbatch["idx"], attention_mask=tbatch["attention_mask"]).logits
ratio = {k: v / best_t["base"] for k, v in best_t.items()}

# ---- the body as a language model, adapter on and off -----------------------------------------
def probe(body):
    """The body as a language model; --fast skips it (its columns read n/a)."""
    return None if FAST else forgetting_probe(body, tok, **PROBE)


def arrow(p, key, fmt):
    """before -> after of one probe number."""
    return "n/a" if p is None else f"{before[key]:{fmt}} -> {p[key]:{fmt}}"


for m, r in results.items():
    body = r["model"].body
    r["probe_on"] = probe(body)                                       # full: the fine-tuned body
    if m in PEFT:
        with disable_adapters(body):
            r["probe_off"] = probe(body)

print()
rows = []
for m, r in results.items():
    rep, a = r["rep"], r["probe_on"]
    fwd = f"{ratio[m]:.2f}x" if m in ratio else "= base"
    rows.append((m, f"{r['lr']:g}", f"{r['n_adapter']:,}" if m in PEFT else "-", f"{rep['trainable']:,}",
                 f"{rep['share']:.2%}", f"{r['f1']['dev']:.3f}", f"{r['f1']['test']:.3f}", f"{r['time']:.1f}s",
                 fwd, arrow(a, "pretrain_ppl", ".2f"), arrow(a, "fact_accuracy", ".0%")))
table(("method", "lr", "adapter", "trainable", "share", "dev F1", "test F1", "train time", "forward",
       "pretrain ppl (on)", "facts (on)"), rows)
head = results["head-only"]["rep"]["trainable"]
print(f"trainable = adapter + the task head ({head:,} = 9 tags x (C + 1)), which trains in every method. share = "
      f"trainable / all parameters of the model (adapters included). forward = the trained classifier's forward "
      f"{CLOCK} time on 64 dev sentences / the base classifier's (fastest of {TIMING_ROUNDS} interleaved rounds: "
      f"{best_t['base'] * 1e3:.1f} ms). (on) = the body as a language model, with the adapter left in "
      f"(full: the fine-tuned body).")
print(f"LoRA merged (W = W0 + s B A, merge_lora): forward {ratio['LoRA q,v merged']:.2f}x the base, max |logits "
      f"merged - unmerged| = {(mg - un).abs().max().item():.1e}. Adapters cannot merge: f sits between W_down "
      f"and W_up.")
full = results["full"]
print("train time vs full fine-tuning: " + ", ".join(f"{m} {results[m]['time'] / full['time']:.2f}x" for m in PEFT)
      + ": backpropagation still runs through every frozen block below the lowest adapter.")

sizes = {}
with tempfile.TemporaryDirectory() as d:
    for m in PEFT:
        save_adapter(results[m]["model"], os.path.join(d, m))
        sizes[m] = sum(os.path.getsize(os.path.join(d, m, f)) for f in os.listdir(os.path.join(d, m)))
print("a task on disk (save_adapter: adapter + head tensors, safetensors + JSON): "
      + ", ".join(f"{m} {course.kib(s)}" for m, s in sizes.items())
      + f"; the whole fine-tuned model is {course.kib(4 * full['rep']['params'])} of fp32 weights.")

print("\nWhat forgetting means when the base never moves (the same checks for every adapter method):")
shipped = load_base(device=DEV)[0].state_dict()
rows = []
with torch.no_grad():
    want = base(lm_batch).logits
    for m in PEFT:
        body = results[m]["model"].body
        sd = body.state_dict()
        same = all(k in sd and torch.equal(sd[k], v) for k, v in shipped.items())
        with disable_adapters(body):
            off = torch.equal(body(lm_batch).logits, want)
        on = (body(lm_batch).logits - want).abs().max().item()
        p = results[m]["probe_off"]
        rows.append((m, f"{same} ({len(shipped)} tensors)", str(off), f"{on:.2f}",
                     "n/a" if p is None else f"{p['pretrain_ppl']:.2f}, {p['fact_accuracy']:.0%}"))
table(("method", "base tensors == shipped file", "disable_adapters == base", "max |LM logit change| (on)",
       "ppl, facts (off)"), rows)
print((f"before fine-tuning: pretrain ppl {before['pretrain_ppl']:.2f}, facts {before['fact_accuracy']:.0%} "
       f"({PROBE['n_facts']} probes)" if before else "before fine-tuning: n/a (--fast)")
      + f". LM logits on 4 x {BLOCK} tokens of pretraining text; (off) = inside `with disable_adapters(body):`.")

# ---- where the remaining dev errors are --------------------------------------------------------
print("\nThe commonest dev errors, word tags (gold -> predicted), and how many words each method gets wrong:")
for m, r in results.items():
    errs = bench.tag_errors(r["pred"]["dev"])
    print(f"  {m:<16} {sum(errs.values()):>3} wrong: " + (", ".join(f"{g} -> {p} {n}" for (g, p), n in
                                                               errs.most_common(3)) or "none"))
pf = results["series Pfeiffer"]
e, pp = next(((e, pp) for e, pp in zip(ner["dev"], pf["pred"]["dev"]) if pp != e["tags"]), (None, None))
if e is not None:
    print("  e.g. series Pfeiffer: " + " ".join(f"{w}/{p}" + (f"(gold {g})" if g != p else "")
                                               for w, g, p in zip(e["tokens"], e["tags"], pp)))
# I-PER words are surnames. The label sits on a word's first BPE piece; what does the body know of it?
corpus = " ".join(world.pretrain_corpus("train"))
surnames = sorted({w for e in ner["dev"] for w, g in zip(e["tokens"], e["tags"]) if g == "I-PER"})
print(f"  the {len(surnames)} surnames (I-PER words) of the dev split, as BPE pieces, and how often each word "
      f"occurs in the pretraining corpus:\n    " + ", ".join(f"{w} {[tok.decode([i]) for i in tok.encode(' ' + w)]} "
                                                f"{corpus.count(' ' + w)}x" for w in surnames[:6])
      + (", ..." if len(surnames) > 6 else ""))

# ==============================================================================================
header(f"3. What limits the adapters? series Pfeiffer at lr {LR['series Pfeiffer']:g}: bottleneck m in "
       f"{sorted(SWEEP_M + (M['pfeiffer'],))}, then m = {M['pfeiffer']} with the token embeddings trainable too")
rows = []
sweep = {M["pfeiffer"]: results["series Pfeiffer"]}
for m in SWEEP_M:
    cfg = AdapterConfig(kind="series", placement="pfeiffer", bottleneck=m)
    sweep[m] = bench.train_and_measure(f"Pfeiffer m={m}", LR["series Pfeiffer"], cfg=cfg)
for m in sorted(sweep):
    r = sweep[m]
    rows.append((f"m = {m}", f"{r['n_adapter']:,}", f"{r['rep']['trainable']:,}", f"{r['rep']['share']:.2%}",
                 f"{r['loss'][1]:.3f}", f"{r['f1']['dev']:.3f}", f"{r['f1']['test']:.3f}", f"{r['time']:.1f}s"))
# the same adapter, plus the token embedding table (tied to the LM head): no longer "the base is untouched"
emb = bench.train_and_measure("Pfeiffer + wte", LR["series Pfeiffer"], cfg=METHODS["series Pfeiffer"],
                        unfreeze=("transformer.wte.",))
rows.append((f"m = {M['pfeiffer']} + wte", f"{emb['n_adapter']:,}", f"{emb['rep']['trainable']:,}",
             f"{emb['rep']['share']:.2%}", f"{emb['loss'][1]:.3f}", f"{emb['f1']['dev']:.3f}",
             f"{emb['f1']['test']:.3f}", f"{emb['time']:.1f}s"))
table(("series Pfeiffer", "adapter", "trainable", "share", "final loss", "dev F1", "test F1", "train time"), rows)
errs = bench.tag_errors(emb["pred"]["dev"])
print(f"with wte trainable: {sum(errs.values())} wrong dev words" + (": " + ", ".join(
    f"{g} -> {p} {n}" for (g, p), n in errs.most_common(3)) if errs else "") + ".")

print(f"\nreference: head-only dev F1 {results['head-only']['f1']['dev']:.3f}, full fine-tuning "
      f"{full['f1']['dev']:.3f}. Total time {course.elapsed():.0f}s.")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "4. Seed spread: part 2's methods and rates",
                                  "head and adapter init, data order"):
    bench.seed_spread(METHODS, LR, seeds, results)
    print(f"Total time {course.elapsed():.0f}s.")
