"""Lesson 01: pretraining, and continued pretraining on a new domain.

Prints, top to bottom:

  1. pretraining from scratch: a tiny GPT (2 layers, n_embd 64, context 128, the shipped
     tokenizer) trained with `minift.train.train` on TinyWorld's corpus; its loss curve with
     validation perplexity, greedy samples before and after, and a comparison with a uniform
     model and with the shipped base model;
  2. continued pretraining (unsupervised full fine-tuning) of the shipped base model on the
     second domain (word problems, recipes, notices): perplexity on the new domain falls,
     perplexity on the original corpus rises and closed-book facts are forgotten; samples in
     each domain's style before and after.

    python lessons/01_pretraining/walkthrough.py            # or: minift run 01
    python lessons/01_pretraining/walkthrough.py --fast     # the seconds-long version the tests run
    python lessons/01_pretraining/walkthrough.py --replay 0.25   # mix original text into part 2

Everything it uses lives in the library (minift/train.py, minift/model.py, minift/tasks.py,
minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 91    # CPU seconds on the 2-core EPYC VM the READMEs are measured on
FAST_SECONDS = 15

import random
import time

import torch

from minift import course, figures, world
from minift.checkpoint import load_json
from minift.model import GPT, GPTConfig
from minift.pretrain import (BASE_DIR, base_metrics, fact_accuracy, fact_probes, forgetting_probe, load_base,
                             probe_subset)
from minift.tasks import LMDataset, perplexity
from minift.train import TrainConfig, evaluate_nll, train
from minift.report import header, table
from minift.validate import count_arg, rate_arg, share_arg

parser = course.parser(__doc__)
parser.add_argument("--replay", type=share_arg, default=0.0, metavar="R",
                    help="part 2: share R of the training windows drawn from the original corpus "
                         "(0 = pure domain 2; try 0.25 to see forgetting shrink)")
parser.add_argument("--cpt-lr", type=rate_arg, default=1e-3, help="part 2: peak learning rate")
parser.add_argument("--cpt-steps", type=count_arg, default=None, help="part 2: optimizer steps")
args = course.start("01", parser)         # the base-model check, one thread, the clock: minift/course.py
FAST, DEV = args.fast, args.device         # DEV: --device (cpu unless told), where every model lives
# budgets: (default, --fast)
TINY_STEPS, TINY_EVAL_EVERY = (100, 20) if not FAST else (6, 3)
TINY_BATCH = 16 if not FAST else 4
VAL_WINDOWS = 32 if not FAST else 4            # fixed validation windows per perplexity
N_PROBES = 72 if not FAST else 12              # closed-book fact probes (a fixed subset)
N_FORGET = 16 if not FAST else 2               # original-domain windows of minift.pretrain.forgetting_probe
CPT_STEPS = args.cpt_steps or (100 if not FAST else 4)
CPT_EVAL_EVERY = max(1, CPT_STEPS // (5 if not FAST else 2))


def greedy(model, tok, prompt, n=14):
    """The greedy continuation of `prompt` (stops at end-of-text)."""
    idx = torch.tensor([tok.encode(prompt)], device=DEV)
    out = model.generate(idx, n if not FAST else 6, eos_token_id=tok.eos_id)     # --fast: 6 new tokens
    return tok.decode(out[0].tolist(), skip_special_tokens=True).replace("\n", " / ")


def val_ppl(model, data):
    """Perplexity over the fixed validation windows: exp(token-weighted mean NLL)."""
    return perplexity(evaluate_nll(model, data, batch_size=16))


# ==============================================================================================
base, tok = load_base(device=DEV)
V = tok.vocab_size
recorded = base_metrics()
base_recipe = load_json(str(BASE_DIR / "config.json")).get("recipe", {})
W = world.get_world()
p, q = W.people[0], W.people[1]
probes = probe_subset(N_PROBES)            # person i, relation i mod 6: the subset every lesson uses
t0 = time.perf_counter()
train_texts = world.pretrain_corpus("train")
val_texts = world.pretrain_corpus("val")
if FAST:
    train_texts = train_texts[:1500]
print(f"TinyWorld: {len(train_texts):,} training documents ({sum(map(len, train_texts)):,} characters), "
      f"{len(val_texts):,} validation documents; tokenizer of {V} tokens (data/base/tokenizer.json). "
      f"Built in {time.perf_counter() - t0:.1f}s.")
print(f"Fact probes: a fixed {N_PROBES} of the {len(fact_probes())} cloze prompts (minift.pretrain.probe_subset), e.g. "
      f"{probes[0][0]!r} -> {probes[0][1]!r}")

# ==============================================================================================
header("1. Pretraining from scratch: next-token prediction on TinyWorld's corpus")

t1 = time.perf_counter()
cfg = GPTConfig(vocab_size=V, block_size=128, n_layer=2, n_head=4, n_embd=64)
torch.manual_seed(0)
tiny = GPT(cfg).to(DEV)                    # drawn on the CPU (same numbers on every device), then moved
data = LMDataset(tok, train_texts, cfg.block_size)
val = [LMDataset(tok, val_texts, cfg.block_size)[i] for i in range(VAL_WINDOWS)]    # fixed windows
tc = TrainConfig(steps=TINY_STEPS, batch_size=TINY_BATCH, lr=3e-3, min_lr_ratio=0.1, warmup_steps=TINY_STEPS // 10,
                 weight_decay=0.1, eval_every=TINY_EVAL_EVERY, seed=0, progress=False, desc="tiny")
print(f"model: {cfg}\n{tiny.num_parameters():,} parameters (the shipped base: {base.num_parameters():,})")
print(f"data: {len(data):,} windows of {cfg.block_size} tokens; {tc.steps} steps x batch {tc.batch_size} = "
      f"{tc.steps * tc.batch_size * cfg.block_size:,} tokens seen ({tc.steps * tc.batch_size / len(data):.2f} epochs)")
print(f"optimizer: AdamW, lr {tc.lr} with {tc.warmup_steps} warmup steps, cosine to {tc.lr * tc.min_lr_ratio:g}, "
      f"weight decay {tc.weight_decay}, clip {tc.grad_clip}; validation: {VAL_WINDOWS} fixed windows")

prompts = [f"{p.name} lives in", f"{q.name} has a pet", "Once upon a time,"]
before = {pr: greedy(tiny, tok, pr) for pr in prompts}
ppl0 = val_ppl(tiny, val)
history = train(tiny, data, tc, eval_fn=lambda m: {"ppl": val_ppl(m, val)})
rows = [("0", "-", "-", f"{ppl0:.1f}")]
for h in history:
    if "eval_ppl" in h:
        rows.append((str(h["step"]), f"{h['lr']:.1e}", f"{h['loss']:.3f}", f"{h['eval_ppl']:.2f}"))
print(f"\nloss curve (train loss = that step's batch, nats/token; val ppl = exp(mean NLL) on {VAL_WINDOWS} windows):")
table(("step", "lr", "train loss", "val ppl"), rows)
t_tiny = time.perf_counter() - t1
print(f"trained in {history[-1]['time']:.1f}s, evaluations included ({tc.steps / history[-1]['time']:.1f} steps/s, "
      f"{history[-1]['tokens'] / history[-1]['time']:,.0f} tokens/s)")

print("\ngreedy samples, before -> after pretraining:")
for pr in prompts:
    print(f"  {pr!r}\n     step 0:   {before[pr]!r}\n     step {tc.steps}: {greedy(tiny, tok, pr)!r}")

acc_tiny = fact_accuracy(tiny, tok, probes)
ppl_base_here = val_ppl(base, val)                    # the same windows the tiny model was scored on
acc_base_here = fact_accuracy(base, tok, probes)
print("\nwhere that leaves the tiny model (same validation windows and fact probes for every row):")
table(("model", "params", "train steps", "val ppl", f"facts ({N_PROBES})"), [
    ("uniform over the vocabulary", "0", "-", f"{float(V):.0f}", "-"),
    ("tiny GPT, random init", f"{tiny.num_parameters():,}", "0", f"{ppl0:.1f}", "-"),
    ("tiny GPT, trained here", f"{tiny.num_parameters():,}", str(tc.steps), f"{val_ppl(tiny, val):.2f}", f"{acc_tiny:.1%}"),
    ("shipped base (data/base)", f"{base.num_parameters():,}", str(base_recipe.get("steps", "?")),
     f"{ppl_base_here:.2f}", f"{acc_base_here:.1%}"),
])
if recorded:
    print(f"(recorded in data/base/config.json when `minift pretrain` built the base: val ppl "
          f"{recorded['val_ppl']:.3f} on the whole val corpus, fact accuracy {recorded['fact_accuracy']:.1%} "
          f"on all {recorded.get('n_fact_probes', '?')} probes, {recorded.get('train_seconds', '?')}s)")
print(f"A random init is about as unsure as the uniform model (ppl ~ V = {V}); {tc.steps} steps bring it "
      f"to the corpus' templates, but recalling facts needs the base model's longer run.")
print(f"part 1: {t_tiny:.1f}s", flush=True)

# ==============================================================================================
header("2. Continued pretraining of the base model on a new domain (and forgetting)")

t2 = time.perf_counter()
model, _ = load_base(device=DEV)            # a fresh copy of the base: it will be changed in place
model.train()
T = model.config.block_size
d2_train, d2_val_texts = world.domain2_corpus("train"), world.domain2_corpus("val")
d2 = LMDataset(tok, d2_train, T)
d2_val = [LMDataset(tok, d2_val_texts, 128)[i] for i in range(N_FORGET)]   # windows of 128, like forgetting_probe's
items = [d2[i] for i in range(len(d2))]
n_replay = round(len(items) * args.replay / (1 - args.replay))
if n_replay:
    orig = LMDataset(tok, train_texts, T)
    pick = random.Random(1).sample(range(len(orig)), min(n_replay, len(orig)))
    items += [orig[i] for i in pick]
print(f"domain 2: {len(d2_train):,} documents ({sum(map(len, d2_train)):,} characters) -> {len(d2):,} windows "
      f"of {T} tokens; e.g.\n  {d2_train[0][:160]!r}...")
if n_replay:
    print(f"replay: + {len(items) - len(d2):,} windows of the original corpus ({args.replay:.0%} of the mix)")
cc = TrainConfig(steps=CPT_STEPS, batch_size=4, lr=args.cpt_lr, min_lr_ratio=0.1, warmup_steps=max(1, CPT_STEPS // 15),
                 weight_decay=0.1, eval_every=CPT_EVAL_EVERY, seed=0, progress=False, desc="continued")
print(f"full fine-tuning of all {model.num_parameters():,} parameters with the pretraining objective: {cc.steps} "
      f"steps x batch {cc.batch_size}, lr {cc.lr:g} (the base's recipe peaked at 3e-3), cosine to {cc.lr * cc.min_lr_ratio:g} "
      f"({cc.steps * cc.batch_size / len(items):.2f} epochs)")
print(f"measured every {CPT_EVAL_EVERY} steps: perplexity on {len(d2_val)} domain-2 val windows of 128 tokens, and "
      f"minift.pretrain.forgetting_probe: perplexity on {N_FORGET} original val windows of 128 tokens and "
      f"closed-book recall on the {N_PROBES} fact probes")

d2_prompts = [f"Problem: {p.name} had 12 apples.", "Recipe: plum cake\n", f"Notice to the people of {p.home}:\n"]
orig_prompts = [f"{p.name} lives in", f"{q.name} works as"]
samples_before = {pr: greedy(model, tok, pr, 24) for pr in d2_prompts + orig_prompts}


def measure(m):
    f = forgetting_probe(m, tok, n_windows=N_FORGET, n_facts=N_PROBES)
    return {"d2": val_ppl(m, d2_val), "orig": f["pretrain_ppl"], "facts": f["fact_accuracy"]}


m0 = measure(model)
hist = train(model, items, cc, eval_fn=measure)
rows = [("0 (base)", "-", "-", f"{m0['d2']:.2f}", f"{m0['orig']:.3f}", f"{m0['facts']:.1%}")]
for h in hist:
    if "eval_d2" in h:
        rows.append((str(h["step"]), f"{h['lr']:.1e}", f"{h['loss']:.3f}", f"{h['eval_d2']:.2f}",
                     f"{h['eval_orig']:.3f}", f"{h['eval_facts']:.1%}"))
print()
table(("step", "lr", "train loss", "domain-2 ppl", "original ppl", f"facts ({N_PROBES})"), rows)
last = hist[-1]
print(f"\nafter {cc.steps} steps ({last['time']:.1f}s of training and evaluation): domain-2 perplexity {m0['d2']:.2f} -> "
      f"{last['eval_d2']:.2f} (learned); original perplexity {m0['orig']:.3f} -> {last['eval_orig']:.3f} "
      f"(x{last['eval_orig'] / m0['orig']:.2f}: forgotten); fact recall {m0['facts']:.1%} -> {last['eval_facts']:.1%}")

if args.figures:                           # --figures: both curves as a picture (minift/figures.py)
    figures.pretraining_curves(history, ppl0, V, hist, m0, figures.target("01", "loss_curves.png", FAST))

print("\ngreedy samples in each domain's style, base -> after continued pretraining:")
for pr in d2_prompts + orig_prompts:
    print(f"  {pr!r}\n     base:  {samples_before[pr]!r}\n     after: {greedy(model, tok, pr, 24)!r}")
print(f"part 2: {time.perf_counter() - t2:.1f}s")
print(f"\ntotal: {course.elapsed():.1f}s wall, {time.process_time():.1f}s CPU "
      f"({torch.get_num_threads()} threads; wall grows when other jobs share the cores){course.memory_note()}")
