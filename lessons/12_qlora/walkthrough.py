"""Lesson 12: QLoRA and LoftQ: LoRA on a 4-bit base, and the memory it saves.

Prints, top to bottom:

  1. the NF4 code built from normal quantiles beside the paper's table, FP4 and int4, and their
     blockwise (64) error on normally distributed weights and on the base model's real weights;
  2. double quantization: bits per parameter counted from the stored tensors, and what it costs
     in error;
  3. QLoRA vs LoRA on NER (the task of lessons 05 and 06; the steps, batch, lr and seed of lesson 09's
     LoRA r=4 q,v run): LoRA on the
     float base, QLoRA on an int8 and on an NF4 base, and QLoRA-NF4 with LoftQ's initialisation;
     LoftQ's initial error ‖W - (Q + s B A)‖ against plain quantization's;
     (with --low-bits) the same QLoRA and LoftQ runs on NF3 and NF2 bases: where LoftQ's gains are claimed;
  4. merging: into float (exact) and back into NF4 (lossy), measured;
  5. the memory of a training step, measured here and predicted from the meta device, and the
     prediction for a LLaMA-65B-shaped model: 16-bit full fine-tuning vs QLoRA.
  With --seeds K, at the end: part 3's rows (and 3b's with --low-bits) again with seeds 0..K-1
  (head and LoRA init, data order), and the spread of val and test F1.

    python lessons/12_qlora/walkthrough.py          # or: minift run 12
    python lessons/12_qlora/walkthrough.py --fast   # tiny budgets, no 65B estimate (the tests)
    python lessons/12_qlora/walkthrough.py --low-bits   # also part 3b: 2 and 3 bits (four more runs)
    python lessons/12_qlora/walkthrough.py --seeds 5    # + the seed spread of part 3's rows (and 3b's)

Everything it uses lives in the library (minift/quant/nf4.py, minift/quant/qlora.py,
minift/memory.py, minift/peft/lora.py, minift/heads.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 94
FAST_SECONDS = 10

import copy
import time

import torch

from minift import course, figures, world
from minift.heads import TokenClassifier, classifier_loss, encode_ner, predict_tags
from minift.bench import memory_by_method
from minift.memory import PRESETS, estimate
from minift.peft.lora import LoRAConfig, LoRALinear, apply_lora
from minift.pretrain import load_base
from minift.quant.int8 import Int8Linear
from minift.quant.nf4 import CODES, NF4_OFFSET, NF4_PUBLISHED, bits_per_parameter, dequantize_nf4, nf_code, quantize_nf4
from minift.quant.ops import NF4Linear
from minift.quant.qlora import QLoRAConfig, QLoRALinear, apply_qlora, merge_to_float, merge_to_quantized
from minift.report import header, table
from minift.tasks import collate_fn, entity_f1
from minift.train import TrainConfig, to_device, train

# --fast, the base-model check, one thread, the clock: minift/course.py
parser = course.parser(__doc__, "tiny budgets and eval slices, no 65B estimate (seconds)")
parser.add_argument("--low-bits", action="store_true",
                    help="also part 3b: QLoRA and LoftQ on NF3 and NF2 bases (four more training runs)")
course.add_seeds(parser, "part 3's rows (and 3b's)", "head and LoRA init, data order", "val/test F1",
                 "K=5: 4.0x the --low-bits run's time")
args = course.start("12", parser, kernel=True)   # the C++ kernel loaded (built once) now: no timed row pays for it
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told), where every model lives
STEPS, BATCH, LR, R = (2, 8, 1e-2, 4) if FAST else (80, 16, 1e-2, 4)   # lesson 09's LoRA r=4 q,v run (its lr pick)
N_EVAL = 8 if FAST else None
LOFTQ_ITERS = 5

base, tok = load_base(device=DEV)
col = collate_fn(tok.pad_id)


def rel_err(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# ==============================================================================================
header("1. The NF4 code, and its error next to FP4 and int4")
code = nf_code(4)                                   # the construction; minift quantizes with the published table
print("NF4, built from quantiles of N(0, 1) (minift.quant.nf4.nf_code(4)), and the paper's table:")
print("  built:     " + " ".join(f"{v:+.4f}" for v in code.tolist()))
print("  published: " + " ".join(f"{v:+.4f}" for v in NF4_PUBLISHED))
print(f"  max |built - published| = {float((code - torch.tensor(NF4_PUBLISHED)).abs().max()):.1e} "
      f"(the paper's values are float32); 7 negative values, 0, 8 positive")
print("  FP4 (E2M1)/6: " + " ".join(f"{v:+.3f}" for v in CODES['fp4']().tolist()))
print("  int4 k/7:     " + " ".join(f"{v:+.3f}" for v in CODES['int4']().tolist()))
torch.manual_seed(0)
normal = torch.randn(256 if FAST else 1024, 1024) * 0.02
real = torch.cat([m.weight.detach().reshape(-1) for n, m in base.named_modules()
                  if isinstance(m, torch.nn.Linear) and n != "lm_head"])
rows = []
for name, w in (("N(0, 0.02²) weights", normal), ("base model's linear weights", real)):
    errs = {c: rel_err(dequantize_nf4(quantize_nf4(w, 64, code=c)), w) for c in ("nf4", "fp4", "int4")}
    rows.append((name, f"{w.numel():,}", *(f"{errs[c]:.4f}" for c in ("nf4", "fp4", "int4")),
                 f"{errs['int4'] / errs['nf4']:.2f}x"))
table(("weights (block 64, absmax)", "values", "NF4", "FP4", "int4", "int4 / NF4"), rows)
print("relative error ‖ŵ - w‖ / ‖w‖ of each 4-bit code, blockwise absmax with blocks of 64")
if args.figures:                           # --figures: the code over the density (minift/figures.py)
    figures.nf4_code({c: CODES[c]() for c in CODES}, NF4_OFFSET, real, figures.target("12", "nf4_code.png", FAST))

# ==============================================================================================
header("2. Double quantization: bits per parameter, from the stored tensors")
rows = []
for dq in (False, True):
    states = [quantize_nf4(m.weight, 64, dq) for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    n = sum(s.packed.numel() * 2 for s in states)
    stored = sum(t.numel() * t.element_size() for s in states for t in s.tensors().values())
    err = rel_err(torch.cat([dequantize_nf4(s).reshape(-1) for s in states]), real)
    rows.append(("NF4 + double quant" if dq else "NF4", f"{stored:,}", f"{8 * stored / n:.4f}",
                 f"{bits_per_parameter(states[0]):.4f}", f"{err:.5f}"))
table(("storage", "bytes (16 layers)", "bits / param", "one c_attn", "rel. error"), rows)
print("4 bits + the absmax per block of 64: 32/64 = 0.5 bits; double quantization stores it in 8 bits around its "
      "mean, with one fp32 scale per 256 blocks (and one fp32 mean per tensor): 8/64 + 32/(64·256) = 0.127 bits.")

# ==============================================================================================
header(f"3. QLoRA vs LoRA on NER: r = {R} on W_q, W_v, {STEPS} steps x {BATCH}, lr {LR:g}, seed 0")
ner = {s: world.task("ner", s) if s == "train" else world.task("ner", s)[:N_EVAL] for s in ("train", "val", "test")}
items = {s: encode_ner(tok, v, world.NER_TAGS, 128) for s, v in ner.items()}
train_items = [{"idx": it["idx"], "labels": it["labels"]} for it in items["train"]]
lcfg = dict(r=R, alpha=16.0, targets=("attn.c_attn",), qkv=("q", "v"))          # LoRAConfig(r=4): lesson 05
METHODS = {
    "LoRA (float base)": None,
    "QLoRA, int8 base": QLoRAConfig(quant="int8", **lcfg),
    "QLoRA, NF4 base": QLoRAConfig(quant="nf4", **lcfg),
    f"QLoRA, NF4 + LoftQ ({LOFTQ_ITERS} iters)": QLoRAConfig(quant="nf4", loftq_iters=LOFTQ_ITERS, **lcfg),
}


def fresh(cfg, seed=0):
    torch.manual_seed(seed)                                       # the same head and A init in every row
    body, _ = load_base(device=DEV)
    clf = TokenClassifier(body, len(world.NER_TAGS)).to(DEV)    # quantized below, on DEV
    if cfg is None:
        apply_lora(clf, LoRAConfig(**lcfg))
    else:
        apply_qlora(clf, cfg)
    return clf


def f1(clf, split):
    return entity_f1(predict_tags(clf, items[split], col, world.NER_TAGS), [e["tags"] for e in ner[split]])["f1"]


def base_bytes(clf):
    """Bytes of the frozen body's linear weights as stored: float weights, or codes + constants."""
    total = 0
    for n, m in clf.body.named_modules():                       # (a QLoRALinear's base_q is visited itself)
        if isinstance(m, (NF4Linear, Int8Linear)):
            total += sum(b.numel() * b.element_size() for b in m.buffers())
        elif (type(m) is LoRALinear or type(m) is torch.nn.Linear) and n != "lm_head":
            total += m.weight.numel() * m.weight.element_size()
    return total


done = {}                                                         # name -> (cfg, its seed-0 run)


def run(name, cfg, seed=0):
    """Train one row of the table (the same steps, head init and data for every row)."""
    clf = fresh(cfg, seed)
    init_err = None
    layers = [m for m in clf.modules() if isinstance(m, QLoRALinear)]
    if layers:
        W0 = {id(m): dict(base.named_modules())[n.removeprefix("body.")].weight.detach()
              for n, m in clf.named_modules() if isinstance(m, QLoRALinear)}
        with torch.no_grad():
            init_err = sum(float(torch.linalg.matrix_norm(W0[id(m)] - m.dequantized_weight() - m.delta_weight()))
                           for m in layers)
    tc = TrainConfig(steps=STEPS, batch_size=BATCH, lr=LR, seed=seed, progress=False, desc=name)
    hist = train(clf, train_items, tc, loss_fn=classifier_loss, collate_fn=col)
    r = dict(model=clf, val=f1(clf, "val"), test=f1(clf, "test"), time=hist[-1]["time"],
             trainable=sum(p.numel() for p in clf.parameters() if p.requires_grad),
             bytes=base_bytes(clf), init_err=init_err)
    print(f"{name:<30} val F1 {r['val']:.3f}, test F1 {r['test']:.3f}, {r['time']:.1f}s"
          + (f" (seed {seed})" if seed else ""), flush=True)
    if seed == 0:
        done[name] = (cfg, r)
    return r


results = {name: run(name, cfg) for name, cfg in METHODS.items()}
ref = results["LoRA (float base)"]
rows = [(n, f"{r['trainable']:,}", f"{r['bytes'] / 1024:,.0f} KiB", f"{r['val']:.3f}", f"{r['test']:.3f}",
         f"{r['test'] - ref['test']:+.3f}", f"{r['time']:.1f}s", f"{r['time'] / ref['time']:.2f}x",
         "-" if r["init_err"] is None else f"{r['init_err']:.3f}") for n, r in results.items()]
table(("method", "trainable", "linear weights", "val F1", "test F1", "vs LoRA", "train time", "vs LoRA",
       "Σ‖W - (Q + sBA)‖ at init"), rows)
print("linear weights: the 16 frozen linear layers as stored (float32, or codes + constants). trainable: LoRA's A, B "
      "and the task head. The last column sums ‖W0 - (dequant(W_q) + s B A)‖_F over the 4 adapted c_attn layers "
      "before training: plain QLoRA starts at the quantization error (B = 0), LoftQ lowers it.")
nf4 = next(m for m in results["QLoRA, NF4 base"]["model"].modules() if isinstance(m, QLoRALinear))
lq = next(m for m in results[f"QLoRA, NF4 + LoftQ ({LOFTQ_ITERS} iters)"]["model"].modules() if isinstance(m, QLoRALinear))
print(f"LoftQ on block 0's c_attn: ‖W - (Q_t + ΔW_t)‖_F for t = 0 (plain NF4) .. {LOFTQ_ITERS}: "
      + ", ".join(f"{e:.4f}" for e in lq.loftq_errors))

# ==============================================================================================
# Part 3b (--low-bits): LoftQ's claim is about low bit widths. At 2 bits a plain QLoRA start (B = 0)
# is the badly rounded base; LoftQ starts from Q + s B A fitted to W instead.
if args.low_bits:
    header(f"3b. Fewer bits: QLoRA vs LoftQ on NF4, NF3 and NF2 bases (the same r = {R} q, v runs)")
    low = {"nf4": {"QLoRA": results["QLoRA, NF4 base"], "LoftQ": results[f"QLoRA, NF4 + LoftQ ({LOFTQ_ITERS} iters)"]}}
    for q in ("nf3", "nf2"):
        low[q] = {"QLoRA": run(f"QLoRA, {q.upper()} base", QLoRAConfig(quant=q, **lcfg)),
                  "LoftQ": run(f"QLoRA, {q.upper()} + LoftQ ({LOFTQ_ITERS} iters)",
                               QLoRAConfig(quant=q, loftq_iters=LOFTQ_ITERS, **lcfg))}
    W_all = [m.weight.detach() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    rows = []
    for q, r in low.items():
        st = quantize_nf4(W_all[0], 64, True, q)
        q_err = rel_err(torch.cat([dequantize_nf4(quantize_nf4(w, 64, True, q)).reshape(-1) for w in W_all]),
                        torch.cat([w.reshape(-1) for w in W_all]))
        rows.append((q.upper(), f"{bits_per_parameter(st):.3f}", f"{q_err:.3f}", f"{r['QLoRA']['init_err']:.3f}",
                     f"{r['LoftQ']['init_err']:.3f}", f"{r['LoftQ']['init_err'] / r['QLoRA']['init_err']:.2f}",
                     f"{r['QLoRA']['val']:.3f} / {r['QLoRA']['test']:.3f}", f"{r['LoftQ']['val']:.3f} / {r['LoftQ']['test']:.3f}"))
    table(("code", "bits / weight", "‖W - Q‖ / ‖W‖, all 16", "Σ‖W - (Q+sBA)‖ QLoRA", "LoftQ", "LoftQ / QLoRA",
           "QLoRA val / test F1", "LoftQ val / test F1"), rows)
    print(f"bits / weight: measured from the stored tensors (double quantization on). ‖W - Q‖ / ‖W‖: the relative error "
          f"of all 16 linear layers quantized with that code. The Σ columns are part 3's: over the 4 adapted c_attn "
          f"layers at initialisation (QLoRA: B = 0). LoRA on the float base: val / test F1 "
          f"{ref['val']:.3f} / {ref['test']:.3f}.")

# ==============================================================================================
header("4. Merging into float (exact) and back into NF4 (lossy)")
clf = results["QLoRA, NF4 base"]["model"]
batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["val"][:64]]), DEV)
mask = batch["attention_mask"].bool()
with torch.no_grad():
    y = clf(batch["idx"], attention_mask=batch["attention_mask"]).logits
    cfg = METHODS["QLoRA, NF4 base"]
    names = [n for n, m in clf.named_modules() if isinstance(m, QLoRALinear)]
    to_float, to_nf4 = copy.deepcopy(clf), copy.deepcopy(clf)
    delta, step = [], []
    for n in names:
        layer = clf.get_submodule(n)
        parent, child = n.rsplit(".", 1)
        setattr(to_float.get_submodule(parent), child, merge_to_float(layer))
        setattr(to_nf4.get_submodule(parent), child, merge_to_quantized(layer, cfg))
        delta.append(float(layer.delta_weight().abs().mean()))
        W = layer.dequantized_weight()
        step.append(float(W.abs().reshape(-1, 64).amax(1).mean() * (code[1:] - code[:-1]).max() / 2))
    yf = to_float(batch["idx"], attention_mask=batch["attention_mask"]).logits
    yq = to_nf4(batch["idx"], attention_mask=batch["attention_mask"]).logits
print(f"merge into float: max |logits - unmerged| = {float((yf - y)[mask].abs().max()):.1e}, val F1 {f1(to_float, 'val'):.3f}")
print(f"merge into NF4:   max |logits - unmerged| = {float((yq - y)[mask].abs().max()):.1e}, val F1 {f1(to_nf4, 'val'):.3f} "
      f"(unmerged {results['QLoRA, NF4 base']['val']:.3f})")
print(f"why: the mean |s B A| entry is {sum(delta) / len(delta):.1e}, the mean half-step of the NF4 grid (largest gap / 2 "
      f"x block absmax) is {sum(step) / len(step):.1e}: re-quantizing W + s B A rounds most of the update away, and adds a "
      f"new rounding error of its own.")

# ==============================================================================================
header("5. The memory of a training step: measured here, predicted from the meta device")
B, T = (2, 32) if FAST else (16, 128)
rows = [(name, f"{real['trainable']:,}", *(f"{real[k] / 2 ** 20:.2f} ({pred[k] / 2 ** 20:.2f})"
                                           for k in ("weights", "gradients", "optimizer", "activations", "total")))
        for name, real, pred in memory_by_method(base.config, B, T, lcfg)]       # minift/bench.py
table(("method", "trainable", "weights", "grads", "AdamW", "activations", "total"), rows)
print(f"MiB, measured on the base-shaped language model at batch {B} x {T} in float32 (minift.memory.step_memory: "
      f"tensors held + what autograd saves), and in parentheses predicted on the meta device (minift.memory.estimate).")
if DEV.type == "cuda":                     # the table counts tensor bytes on the CPU; the GPU's own peak of parts 1-4:
    print(f"on {DEV}: torch.cuda.max_memory_allocated after parts 1-4 = "
          f"{course.kib(torch.cuda.max_memory_allocated(DEV))}")
if not FAST:
    big = PRESETS["llama-65b"]
    t0 = time.perf_counter()
    full = estimate(big, "full", batch=1, seq=512, dtype=torch.bfloat16)
    qlora = estimate(big, "qlora", batch=1, seq=512, dtype=torch.bfloat16, r=64, qkv=None, checkpointing=True,
                     targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    rows = [(n, f"{e['parameters'] / 1e9:.1f}B", f"{e['trainable'] / 1e6:,.0f}M",
             *(f"{e[k] / 1e9:.1f}" for k in ("weights", "gradients", "optimizer", "activations", "total")))
            for n, e in (("full fine-tuning, bf16", full), ("QLoRA NF4+DQ, r=64 all linear, checkpointing", qlora))]
    table(("LLaMA-65B shape, batch 1 x 512", "params", "trainable", "weights GB", "grads GB", "AdamW GB",
           "activations GB", "total GB"), rows)
    print(f"predicted on the meta device in {time.perf_counter() - t0:.0f}s: GPTConfig(n_layer=80, n_head=64, n_embd=8192, "
          f"vocab 32000) with GPT-2's 4d MLP (LLaMA's SwiGLU has the same count to within 1%). The QLoRA paper: "
          f"'from >780GB of GPU memory to <48GB' for 65B.")
    t0 = time.perf_counter()
    g3 = estimate(PRESETS["gpt3-175b"], "lora", batch=1, seq=1, dtype=torch.float16, r=4)   # W_q, W_v
    print(f"GPT-3-175B shape, LoRA r=4 on W_q, W_v (meta device, {time.perf_counter() - t0:.0f}s): {g3['trainable']:,} "
          f"trainable of {g3['parameters'] - g3['trainable']:,}; an fp16 checkpoint of them is "
          f"{2 * g3['trainable'] / 2 ** 20:.1f} MiB against {2 * (g3['parameters'] - g3['trainable']) / 1e9:.0f} GB for the "
          f"model (the LoRA paper: 'from 350GB to 35MB').")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, f"6. Seed spread: part 3's rows{' and 3b' if args.low_bits else ''}",
                                  "head and LoRA init, data order; LoftQ's A and B are a fit, the same at every seed"):
    spread = []
    for name, (cfg, r0) in done.items():
        runs = [r0] + [run(name, cfg, sd) for sd in seeds[1:]]
        for r in runs[1:]:
            del r["model"]
        spread.append((name, LR, [r["val"] for r in runs], [r["test"] for r in runs]))
    course.seed_table(spread, "val")

print(f"\ndone in {course.elapsed():.1f}s")
