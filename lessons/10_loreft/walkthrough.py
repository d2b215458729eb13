"""Lesson 10: LoReFT, a low-rank edit of the hidden representations, against LoRA at a matched tiny budget.

Prints, top to bottom:

  1. what `apply_reft` adds to a GPT-2 block (a child module and a hook on the block's output,
     no weight replaced), Φ(h) = h + Rᵀ(W h + b − R h), the parameter count r (2C + 1) per layer
     against LoRA's on W_q, W_v, and the check that LoReFT at W = R, b = 0 is the base exactly;
  2. one NER model per method (`TokenClassifier` on the shipped base, the task, seed and head
     initialisation of lessons 05 and 06, lesson 09's 80 steps x 16; LoReFT edits every position of
     every block):
     full fine-tuning, head-only, LoRA q,v at r = 2 and LoReFT at r = 4 (the matched budget), and
     LoReFT at r = 1 and r = 16: dev/test F1, train time against LoRA's, and the forward time against
     the base's (timed for LoRA and LoReFT r=4 only; full and head-only keep the base's forward);
  3. the geometry after training: ‖R Rᵀ − I‖ per layer, how far the subspace turned, and the edit
     h' − h measured on dev sentences: its part outside the row space of R (0 up to rounding) and
     the share of its energy in r directions, next to the same measure for LoRA's change of a
     block's output;
  4. positions: a prompt-position config (first 2, last 2 real tokens) on left- and right-padded
     rows (one shorter than 2 + 2), and what a generation step edits.
  With --sweep, before part 2: the lr sweep behind part 2's rates (8 runs, 6 more than the default run:
  part 2 reuses the two it picks).
  With --seeds K, at the end: the matched pair again with seeds 0..K-1, and the spread of F1.

    python lessons/10_loreft/walkthrough.py           # or: minift run 10
    python lessons/10_loreft/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/10_loreft/walkthrough.py --sweep   # re-pick LoRA's and LoReFT's lr on dev
    python lessons/10_loreft/walkthrough.py --sweep --sweep-seeds 3   # ... on the mean over seeds 0, 1, 2

Everything it uses lives in the library (minift/peft/reft.py, minift/peft/lora.py,
minift/peft/common.py, minift/heads.py, minift/train.py, minift/pretrain.py; the
train-and-measure bench: minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 67
FAST_SECONDS = 10

import torch

from minift import course, world
from minift.heads import ner_splits
from minift.model import build_attention_mask
from minift.peft.common import count_adapter_parameters, disable_adapters
from minift.peft.lora import LoRAConfig, lora_parameter_count
from minift.peft.reft import ReFTConfig, orthonormality_error, reft_layers, reft_parameter_count
from minift.peft.selective import SelectiveConfig
from minift.peft.io import apply_config
from minift.pretrain import load_base
from minift.train import to_device
from minift.report import header, table

parser = course.parser(__doc__)
course.add_sweep(parser, "sweep LoRA's and LoReFT's lr over {1e-3, 3e-3, 1e-2, 3e-2} on the dev split first")
course.add_seeds(parser, "LoRA q,v r=2 and LoReFT r=4", "head and adapter init, data order", "dev/test F1",
                 "K=5: 1.9x the default run's time")
args = course.start("10", parser)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told); the Bench builds its models there too
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)

base, tok = load_base(device=DEV)
C, L = base.config.n_embd, base.config.n_layer

# ---- the matched budget -----------------------------------------------------------------------
# LoReFT at rank 4 on the output of every block costs L r (2C + 1); LoRA on W_q and W_v of every
# block costs 2 L r (C + C): rank 2 is the closest (4,112 vs 4,096).
REFT = ReFTConfig(r=4, positions="all")
LORA = LoRAConfig(r=2, alpha=16, targets=("attn.c_attn",), qkv=("q", "v"))
METHODS = {                                                        # what trains; a task head always does
    "full": None,
    "head-only": SelectiveConfig(patterns=()),
    "LoRA q,v r=2": LORA,
    "LoReFT r=4": REFT,
    "LoReFT r=1": ReFTConfig(r=1, positions="all"),
    "LoReFT r=16": ReFTConfig(r=16, positions="all"),
}
if FAST:                                                           # the tests only need the matched pair
    METHODS = {k: v for k, v in METHODS.items() if k not in ("LoReFT r=1", "LoReFT r=16")}
# Peak lr per method, picked on the dev split from LRS by `--sweep` (best dev F1; ties within
# 0.005 go to the smaller lr); full takes 1e-3 and head-only 3e-2, lesson 09's pick at this budget (not swept
# here); r=1 and r=16 reuse r=4's.
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
LR = {"full": 1e-3, "head-only": 3e-2, "LoRA q,v r=2": 1e-2, "LoReFT r=4": 1e-2, "LoReFT r=1": 1e-2,
      "LoReFT r=16": 1e-2}
SWEPT = ("LoRA q,v r=2", "LoReFT r=4")
STEPS, BATCH = (4, 8) if FAST else (80, 16)
N_EVAL = 16 if FAST else None
TIMING_ROUNDS = 3 if FAST else 20
BLOCK = 128

ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL, dev_key="dev")   # examples, encodings, train items
# the bench (minift/method_bench.py): a fresh TokenClassifier per method, the same head init, data and steps
bench = course.Bench(METHODS, tok, (ner, items, train_items), steps=STEPS, batch=BATCH, width=13,
                     cpu_time=True)                         # train times: CPU seconds (GPU: synchronized wall)
col, fresh = bench.col, bench.fresh
dev_batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["dev"][:64]]), DEV)
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; dev = the "
      f"val split ({len(ner['dev'])}), test = the test split ({len(ner['test'])}); as in lessons 05 and 06.")

# ==============================================================================================
header(f"1. What LoReFT adds to a GPT-2 block (n_embd C = {C}, {L} blocks): no weight is replaced")
body = apply_config(load_base(device=DEV)[0], REFT)
blk = body.transformer.h[0]
print("Φ(h) = h + Rᵀ (W h + b − R h) on the output h of a block, at the chosen positions;  R Rᵀ = I  (R = "
      "Gram–Schmidt of the trainable R_raw)")
print("block 0 after apply_reft:")
for name, m in blk.named_children():
    print(f"    {name:<6} {type(m).__name__}" + (f"   <- new   [{m.extra_repr()}]" if name == "reft" else ""))
print(f"    forward hooks on the block: {[h.__name__ for h in blk._forward_hooks.values()]};  pre-hooks on the GPT: "
      f"{[h.__name__ for h in body._forward_pre_hooks.values()]}")
print("  new tensors in block 0: " + ", ".join(f"{n} {tuple(p.shape)}" for n, p in blk.reft.named_parameters()))
n_reft, n_lora = count_adapter_parameters(body), count_adapter_parameters(apply_config(load_base(device=DEV)[0], LORA))
print(f"  parameters: {L} layers x r (2C + 1) = {L} x {reft_parameter_count(C, REFT.r)} = {n_reft:,};   LoRA q,v at "
      f"r = {LORA.r}: {L} blocks x 2 slices x r (C + C) = {L * 2 * lora_parameter_count(C, C, LORA.r):,}  "
      f"({n_reft / n_lora - 1:+.1%})")

print("\nstep 0: W = R, b = 0 (LoRA: B = 0), so the adapted classifier IS the base classifier (same head init):")
ref = fresh("head-only").eval()
with torch.no_grad():
    want = ref(dev_batch["idx"], attention_mask=dev_batch["attention_mask"]).logits
    for method in ("LoRA q,v r=2", "LoReFT r=4"):
        got = fresh(method).eval()(dev_batch["idx"], attention_mask=dev_batch["attention_mask"]).logits
        print(f"  {method:<13} logits identical to the base: {torch.equal(got, want)}   max |difference| = "
              f"{(got - want).abs().max().item():.1e}")

# ==============================================================================================
if args.sweep:
    header(f"learning-rate sweep: {', '.join(SWEPT)} at lr in {LRS}, {STEPS} steps x batch {BATCH}, picked on dev"
           + course.sweep_note(args))
    bench.sweep(SWEPT, LRS, LR, progress=False, seeds=course.sweep_seeds(args))
    for m in METHODS:
        if m.startswith("LoReFT r=") and m != "LoReFT r=4":
            LR[m] = LR["LoReFT r=4"]

header(f"2. One NER model per method: {STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, seed 0; LoReFT on "
       f"every position of every block")
results = {m: bench.run(m, LR[m]) for m in METHODS if not (FAST and m == "full")}      # --fast: no full FT run

# forward CPU time (GPU: synchronized wall) of each trained classifier vs the base, rounds interleaved, fastest kept
TIMED = ("LoRA q,v r=2", "LoReFT r=4")                              # the matched pair
SAME_FORWARD = ("full", "head-only")                                # the base's forward, other weights
timed = {"base": fresh("full"), **{m: results[m]["model"] for m in TIMED}}
best_t = course.forward_cpu_seconds(timed, dev_batch, TIMING_ROUNDS)

print()
rows = []
lora_t = results["LoRA q,v r=2"]["cpu"]
for m, r in results.items():
    fwd = f"{best_t[m] / best_t['base']:.2f}x" if m in best_t else "= base" if m in SAME_FORWARD else "-"
    rows.append((m, f"{r['lr']:g}", f"{r['n_adapter']:,}" if m not in ("full", "head-only") else "-",
                 f"{r['rep']['trainable']:,}", f"{r['rep']['trainable'] / r['rep']['params']:.2%}",
                 f"{r['loss'][1]:.3f}", f"{r['f1']['dev']:.3f}", f"{r['f1']['test']:.3f}", f"{r['cpu']:.1f}s",
                 f"{r['cpu'] / lora_t:.2f}x", fwd))
table(("method", "lr", "adapter", "trainable", "share", "final loss", "dev F1", "test F1", "train time",
       "vs LoRA", "forward"), rows)
head = results["head-only"]["rep"]["trainable"]
print(f"trainable = adapter + the task head ({head:,} = 9 tags x (C + 1)). train time: {CLOCK} seconds of the "
      f"training loop; vs LoRA = train time / LoRA q,v r=2's (same run). forward = the trained classifier's forward {CLOCK} time on 64 dev sentences / the base "
      f"classifier's (fastest of {TIMING_ROUNDS} interleaved rounds: {best_t['base'] * 1e3:.1f} ms), timed for "
      f"{' and '.join(TIMED)} only: '= base' = the base's forward with other weights ({' and '.join(SAME_FORWARD)}), "
      f"'-' = not timed.")
print("\nThe commonest dev errors, word tags (gold -> predicted), and how many words each method gets wrong:")
for m, r in results.items():
    errs = bench.tag_errors(r["pred"]["dev"])
    print(f"  {m:<13} {sum(errs.values()):>3} wrong: " + (", ".join(f"{g} -> {p} {n}" for (g, p), n in
                                                            errs.most_common(3)) or "none"))

# ==============================================================================================
header("3. The geometry after training (LoReFT r=4): R stays orthonormal, and the edit lives in its row space")
clf = results["LoReFT r=4"]["model"].eval()
init = fresh("LoReFT r=4")                                          # the same seed: R at step 0
R0 = {n.removeprefix("body."): m.R.detach().double() for n, m in reft_layers(init)}
gpt = clf.body
idx, am = dev_batch["idx"], dev_batch["attention_mask"]
real = am.bool()                                                    # (B, T): the real tokens
mask4 = build_attention_mask(am, idx.shape[1])                      # what GPT.forward gives a block
with torch.no_grad():
    hs = gpt(idx, attention_mask=am, output_hidden_states=True).hidden_states
rows = []
for i, (name, m) in enumerate(reft_layers(gpt)):
    block = gpt.transformer.h[i]
    with torch.no_grad():
        with disable_adapters(gpt):
            h = block(hs[i], mask4)[0]                              # the block's output, before the edit
        h2 = block(hs[i], mask4)[0]                                 # ... and after (positions: this batch)
    same = torch.equal(h2, hs[i + 1]) if i + 1 < L else "(ln_f)"
    R = m.R.detach().double()
    d = (h2 - h)[real].double()                                     # (N, C): the edit at every real token
    resid = (d - d @ R.T @ R).norm() / d.norm()                     # part outside the row space of R
    s = torch.linalg.svdvals(d)
    share = (s[:m.r] ** 2).sum() / (s ** 2).sum()                   # energy in the top r directions
    cosines = torch.linalg.svdvals(R0[name] @ R.T).clamp(max=1)     # principal angles, step 0 -> trained
    angle = torch.rad2deg(torch.arccos(cosines)).max()
    rows.append((f"block {i}", f"{(R @ R.T - torch.eye(m.r, dtype=torch.float64, device=DEV)).abs().max():.1e}",
                 f"{angle:.1f}°", f"{(m.W.detach().double() - R).norm():.2f}",
                 f"{(d.norm(dim=1) / h[real].double().norm(dim=1)).mean():.3f}", f"{resid:.1e}",
                 f"{share:.6f}", str(int((s > 1e-6 * s[0]).sum())), str(same)))
table(("layer", "max|R Rᵀ − I|", "R turned by", "‖W − R‖", "‖h' − h‖/‖h‖", "outside span(R)",
       "energy in r dirs", "rank", "h' = model's"), rows)
print(f"orthonormality_error(model) = {orthonormality_error(gpt):.1e} after {STEPS} AdamW steps: R is recomputed "
      f"from R_raw by Gram–Schmidt at every forward, so it cannot drift. 'R turned by' = the largest principal "
      f"angle between R at step 0 and after training: the subspace itself is learned. 'outside span(R)' = "
      f"‖(h' − h) − (h' − h) Rᵀ R‖ / ‖h' − h‖ over {int(real.sum())} real dev tokens; rank = singular values of "
      f"h' − h above 1e-6 of the largest. \"h' = model's\" = True when h' computed here equals, bit for bit, the "
      f"hidden state the model's own forward passes to the next block; the last block's cannot be compared, since "
      f"the model's last hidden state is after ln_f ('(ln_f)').")

lo = results["LoRA q,v r=2"]["model"].eval().body
with torch.no_grad():
    hs = lo(idx, attention_mask=am, output_hidden_states=True).hidden_states
rows = []
for i in range(L):
    block = lo.transformer.h[i]
    with torch.no_grad():
        with disable_adapters(lo):
            h = block(hs[i], mask4)[0]
        h2 = block(hs[i], mask4)[0]
    d = (h2 - h)[real].double()
    s = torch.linalg.svdvals(d)
    rows.append((f"block {i}", f"{(d.norm(dim=1) / h[real].double().norm(dim=1)).mean():.3f}",
                 f"{(s[:REFT.r] ** 2).sum() / (s ** 2).sum():.3f}", f"{(s[:16] ** 2).sum() / (s ** 2).sum():.3f}",
                 str(int((s > 1e-6 * s[0]).sum()))))
print("\nLoRA q,v r=2, the same measure: the change of each block's output (LoRA on - off, on the same input):")
table(("layer", "‖Δh‖/‖h‖", "energy in 4 dirs", "in 16 dirs", "rank"), rows)
print("LoRA's ΔW has rank 2 per matrix, but the change it causes in the residual stream passes through softmax, "
      "c_proj and the MLP's GELU: it is not confined to a small subspace. LoReFT's edit is, by construction.")

# ==============================================================================================
header("4. Positions: first 2 and last 2 real prompt tokens (positions='prompt'), edited at the last block")
pcfg = ReFTConfig(r=4, layers=[-1], positions="prompt", first=2, last=2, init="random")
pm = apply_config(load_base(device=DEV)[0], pcfg).eval()                            # init="random": W != R, a real edit
sents = ["Mara fed the cat.", "Ivo walked to Brookby with a friend.", "Tea."]
rows_ids = [tok.encode(s) for s in sents]
T = max(len(r) for r in rows_ids)
print("X = edited (final hidden state differs from the base), o = real token left alone, . = padding")
for side in ("left", "right"):
    ids = torch.full((len(rows_ids), T), tok.pad_id, device=DEV)
    am2 = torch.zeros(len(rows_ids), T, dtype=torch.long, device=DEV)
    for b, r in enumerate(rows_ids):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[b, sl], am2[b, sl] = torch.tensor(r), 1
    with torch.no_grad():
        h = pm(ids, attention_mask=am2, output_hidden_states=True).hidden_states[-1]
        with disable_adapters(pm):
            h0 = pm(ids, attention_mask=am2, output_hidden_states=True).hidden_states[-1]
    moved = (h != h0).any(-1)
    print(f"  {side}-padded:")
    for b, s in enumerate(sents):
        marks = "".join("." if not am2[b, t] else ("X" if moved[b, t] else "o") for t in range(T))
        print(f"    {marks}   {len(rows_ids[b])} tokens: {s!r}")
print("  the rule: the first min(2, n) and the last min(2, n) real tokens, each edited once; 'Tea.' has "
      f"{len(rows_ids[2])} tokens < 2 + 2, so every one is edited.")

prompt = torch.tensor([rows_ids[1]], device=DEV)
layer = reft_layers(pm)[0][1]
with torch.no_grad():
    out = pm(prompt, use_cache=True)
    edits = [int(layer.where.sum())]
    seq, past = prompt, out.past_kv
    for _ in range(3):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        out = pm(nxt, past_kv=past)
        past = out.past_kv
        edits.append(int(layer.where.sum()))
    gen = pm.generate(prompt, 3)
print(f"\ngeneration (KV cache): positions edited per call = {edits} (the prompt call, then 3 generation steps); "
      f"generate() gives the same tokens: {torch.equal(gen[0], seq[0, prompt.shape[1]:])}. The prompt's edits reach "
      f"new tokens through the cached keys and values; generated tokens are not edited (positions='all' edits "
      f"them too).")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "5. Seed spread: the matched pair at part 2's rates",
                                  "head and adapter init, data order"):
    bench.seed_spread(SWEPT, LR, seeds, results)

print(f"\nTotal time {course.elapsed():.0f}s.")
