"""Lesson 18: multitask and sequential fine-tuning: task mixtures, the score matrix, replay, per-task adapters.

Prints, top to bottom:

  1. mixture weights p_i ∝ min(n_i, K_cap)^(1/T) for TinyWorld's task sets: proportional (T = 1),
     T = 2, mT5's T = 3.3, equal (T = inf), T5's cap K_cap; then what the sampler actually draws;
  2. sequential full fine-tuning through three stages, domain text (word problems, recipes,
     notices) -> closed-book QA -> summarization, and the score matrix: every skill (the domain's
     NLL in nats per token, the pretraining text's perplexity, fact recall, QA exact match, summary ROUGE-L)
     before the first stage and after each one; what each stage's skill lost by the end;
  3. the same stages with replay: a fraction rho = 0.25 of every later stage's examples drawn
     from the earlier stages' data (same steps, same batch);
  4. per-task LoRA adapters: the base frozen, one adapter per stage saved to a file, each skill
     scored with its own adapter loaded: its row never moves; the base weights bit for bit;
  5. multitask vs single-task: one model trained on an equal mixture of the three sets for the
     three stages' steps together, vs one model per set, each from the base for its stage's steps.
  With --seeds K, at the end: parts 2, 3 and 5's full fine-tuning runs again with seeds 0..K-1 (the
  examples each stage draws and their order), and the spread of the scores parts 3 and 5 compare.

    python lessons/18_multitask_sequential/walkthrough.py          # or: minift run 18
    python lessons/18_multitask_sequential/walkthrough.py --fast   # the seconds-long version the tests run
    python lessons/18_multitask_sequential/walkthrough.py --seeds 5   # + the seed spread (3.5x the default run's time)

Everything it uses lives in the library (minift/align/multitask.py, minift/evals.py,
minift/peft/lora.py, minift/peft/io.py, minift/train.py, minift/pretrain.py); this file only
calls it and prints.
"""
EXPECTED_SECONDS = 105
FAST_SECONDS = 15

import copy
import hashlib
import math
import os
import tempfile
import time

from minift import course, world
from minift.align.multitask import (Column, MixtureConfig, MixtureDataset, Stage, forgetting, mixture_weights,
                                    run_stages, stage_matrix)
from minift.evals import evaluate_task, mixture
from minift.peft.common import remove_adapters
from minift.peft.lora import LoRAConfig
from minift.pretrain import fact_accuracy, load_base, probe_subset
from minift.report import header, table
from minift.tasks import LMDataset, SFTDataset, collate_fn, perplexity
from minift.train import evaluate_nll

parser = course.parser(__doc__)
course.add_seeds(parser, "parts 2, 3 and 5's full fine-tuning", "the examples each stage draws and their order",
                 "the scores parts 3 and 5 compare", "K=5: 3.5x the default run's time")
args = course.start("18", parser)       # --fast, the base-model check, one thread, the clock: minift/course.py
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told), where every model lives
# train time: CPU seconds on the CPU (what load does not inflate); on a GPU the stage's wall seconds (CPU time
# there is only the launching)
SECS, TIME = ("cpu_seconds", "CPU") if DEV.type == "cpu" else ("seconds", "wall")

STEPS = 1 if FAST else 40                   # optimizer steps of every stage (and of every single-task run)
BATCH = 4
LR = {"domain": 1e-3, "qa_closed": 1e-3, "summarization": 1e-3}   # full fine-tuning
LORA_LR = 1e-2                              # LoRA wants a larger rate (lesson 05's pick for W_q, W_v; not re-tuned here)
LORA = LoRAConfig(r=8, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), qkv=None)
REPLAY = 0.25
N_QA, N_SUM, N_WIN, N_FACTS = (4, 2, 2, 4) if FAST else (80, 30, 8, 72)
N_TRAIN = 100 if FAST else None             # training examples per task set (None: all of train)
N_DOCS = 100 if FAST else None              # domain-2 training documents (None: all)
DOMAIN_BLOCK = 64
SUM_TOKENS = 8 if FAST else 40             # the longest summary generated

base, tok = load_base(device=DEV)


def fresh_base():
    """The base model again, for the next run: loaded from its file (--fast: a copy, quicker)."""
    return copy.deepcopy(base) if FAST else load_base(device=DEV)[0]


T = base.config.block_size
col = collate_fn(tok.pad_id)

# ---- the data of the three stages ---------------------------------------------------------------
sets = {"domain": LMDataset(tok, world.domain2_corpus("train")[:N_DOCS], DOMAIN_BLOCK),
        "qa_closed": SFTDataset(tok, mixture(["qa_closed"], "train", N_TRAIN), T),
        "summarization": SFTDataset(tok, mixture(["summarization"], "train", N_TRAIN), T)}
dom_val = LMDataset(tok, world.domain2_corpus("val")[:100], DOMAIN_BLOCK)          # the first windows are enough
pre_val = LMDataset(tok, world.pretrain_corpus("val")[:100], DOMAIN_BLOCK)
dom_val = [dom_val[i] for i in range(N_WIN)]
pre_val = [pre_val[i] for i in range(N_WIN)]
qa_test = world.task("qa_closed", "test")[:N_QA]
sum_test = world.task("summarization", "test")[:N_SUM]
probes = probe_subset(N_FACTS)

COLUMNS = {
    "domain NLL": Column(lambda m: evaluate_nll(m, dom_val, batch_size=8), "domain", False),   # nats per token
    "pretrain ppl": Column(lambda m: perplexity(evaluate_nll(m, pre_val, batch_size=8)), None, False),
    "facts": Column(lambda m: fact_accuracy(m, tok, probes), None),
    "QA EM": Column(lambda m: evaluate_task(m, tok, "qa_closed", qa_test, max_new_tokens=12)["score"], "qa_closed"),
    "summary ROUGE-L": Column(lambda m: evaluate_task(m, tok, "summarization", sum_test,
                                                      max_new_tokens=SUM_TOKENS)["score"], "summarization"),
}


def stages(lr=None):
    return [Stage(n, sets[n], STEPS, lr or LR[n]) for n in ("domain", "qa_closed", "summarization")]


def fmt(name, v):
    return f"{v:.2f}" if name.endswith(("ppl", "NLL")) else f"{v:.3f}"


def show(run, title):
    rows = [(("before (base)" if r == "base" else f"after {k}. {r}"), *[fmt(c, sc[c]) for c in COLUMNS])
            for k, (r, sc) in enumerate(zip(run["rows"], run["scores"]))]
    table((title, *COLUMNS), rows)
    last = run["scores"][-1]
    lost = []
    for c, spec in COLUMNS.items():
        k = run["rows"].index(spec.stage) if spec.stage in run["rows"] else 0
        own = run["scores"][k][c]
        if k < len(run["rows"]) - 1:
            lost.append(f"{c} {fmt(c, own)} -> {fmt(c, last[c])}")
    f = forgetting(stage_matrix(run, COLUMNS)).tolist()                # one per stage but the last
    by_stage = {spec.stage: c for c, spec in COLUMNS.items()}
    named = [by_stage[s] for s in run["rows"][1:-1]]
    print("from right after its stage (base for the others) to the end: " + "; ".join(lost))
    print("forgetting f_j = max_(l<K-1) R[l, j] - R[K-1, j] over the stage columns: "
          + ", ".join(f"{c}{' (as -NLL)' if not COLUMNS[c].higher_is_better else ''} {x:.3f}" for c, x in zip(named, f))
          + f"; train {TIME} {sum(run[SECS]):.1f}s ({' + '.join(f'{s:.1f}' for s in run[SECS])})",
          flush=True)


print(f"stages, each {STEPS} steps x batch {BATCH} (AdamW, warmup + cosine, seed = stage index), loss: mean per "
      f"example: 1. domain: {len(sets['domain'])} windows of {DOMAIN_BLOCK} tokens of word problems, recipes and "
      f"notices; 2. qa_closed: {len(sets['qa_closed'])} questions; 3. summarization: {len(sets['summarization'])} "
      f"documents.\nscored on: domain val ({N_WIN} windows), pretraining val ({N_WIN} windows), {N_FACTS} fact cloze "
      f"probes, {N_QA} qa_closed test questions (people never asked about in training), {N_SUM} summarization test "
      f"documents.")

# ==============================================================================================
header("1. Mixing task sets: p_i ∝ min(n_i, K_cap)^(1/T)")
SETS = (("qa_closed", "summarization") if FAST          # --fast: the two sets already built
        else ("qa_closed", "qa_extractive", "instructions", "sentiment", "ner", "summarization", "paraphrase"))
sizes = {n: len(world.task(n, "train")) for n in SETS}
sizes["domain"] = len(sets["domain"])
sizes["ner (100 kept)"] = 100                                  # a low-resource set, to see the strategies differ
rules = [("proportional (T=1)", 1.0, None), ("T=2", 2.0, None), ("T=3.3 (mT5)", 1 / 0.3, None),
         ("equal (T=inf)", math.inf, None), ("T=1, K_cap=1000", 1.0, 1000)]
W = {r: mixture_weights(sizes, T_, cap) for r, T_, cap in rules}
table(("task set", "n_i", *[r for r, _, _ in rules]),
      [(n, f"{s:,}", *[f"{W[r][n]:.1%}" for r, _, _ in rules]) for n, s in sizes.items()])
small = "ner (100 kept)"
print(f"the smallest set ({small}) is {W[rules[0][0]][small]:.1%} of a proportional mixture and "
      f"{W['equal (T=inf)'][small]:.1%} of an equal one: over 10,000 draws, each of its examples is seen "
      f"{10000 * W[rules[0][0]][small] / 100:.1f} vs {10000 * W['equal (T=inf)'][small] / 100:.1f} times.")
three = {n: len(sets[n]) for n in sets}
mix = MixtureDataset(sets, MixtureConfig("equal").weights(three), 3 * STEPS * BATCH, seed=0)
cnt = mix.counts()
n_draw = len(mix)
print(f"\nthe sampler on the three stage sets, equal mixing, {n_draw} draws (the multitask run of part 5): "
      + ", ".join(f"{k} {v} (expected {n_draw / 3:.0f} ± {2 * math.sqrt(n_draw * (1 / 3) * (2 / 3)):.0f} at 2 sd)"
                  for k, v in cnt.items()))

# ==============================================================================================
header("2. Sequential full fine-tuning: domain -> closed-book QA -> summarization")
model = fresh_base()
plain = run_stages(model, stages(), COLUMNS, batch_size=BATCH, collate_fn=col, progress=False)
BASE = plain["scores"][0]                      # every later run starts from the same base: not measured again
show(plain, "full fine-tuning, in order")
del model

# ==============================================================================================
header(f"3. The same stages with replay: rho = {REPLAY:.0%} of each later stage's examples from the earlier stages")
model = fresh_base()
replay = run_stages(model, stages(), COLUMNS, batch_size=BATCH, replay=REPLAY, collate_fn=col, before=BASE,
                    progress=False)
show(replay, f"with replay rho={REPLAY}")
print("examples drawn per stage: " + "; ".join(", ".join(f"{k} {v}" for k, v in c.items()) for c in replay["counts"]))
del model

# ==============================================================================================
header("4. Per-task LoRA adapters: the base frozen, one adapter per stage, each skill scored with its own")


def digest(m):
    h = hashlib.sha256()
    for n, p in sorted(m.state_dict().items()):
        if "lora_" not in n:
            h.update(n.encode() + p.detach().cpu().contiguous().numpy().tobytes())   # (a GPU tensor has no .numpy())
    return h.hexdigest()[:16]


model = fresh_base()
before = digest(model)
with tempfile.TemporaryDirectory() as folder:
    ada = run_stages(model, stages(LORA_LR), COLUMNS, batch_size=BATCH, lora=LORA, folder=folder, collate_fn=col,
                     before=BASE, progress=False)
    kib = {s: os.path.getsize(os.path.join(p, "adapter.safetensors")) / 1024 for s, p in ada["adapters"].items()}
remove_adapters(model)
show(ada, f"LoRA r={LORA.r} per stage")
print("adapter files: " + ", ".join(f"{s} {v:.0f} KiB" for s, v in kib.items()) + f"; base weights after all three "
      f"stages bit-identical to before: {digest(model) == before}")
del model

# ==============================================================================================
header("5. Multitask vs single-task: one model on an equal mixture vs one model per set")
model = fresh_base()
multi = run_stages(model, [Stage("multitask", mix, 3 * STEPS, 1e-3)], COLUMNS, batch_size=BATCH, collate_fn=col,
                   before=BASE, progress=False)
del model
# single-task domain = stage 1 of part 2 (same start, data, steps and seed: the same run), reused
single = {"domain": (plain["scores"][1], plain[SECS][0])}
for st in stages()[1:]:
    model = fresh_base()
    r = run_stages(model, [st], COLUMNS, batch_size=BATCH, collate_fn=col, before=BASE, progress=False)
    single[st.name] = (r["scores"][-1], r[SECS][0])
    del model
rows = [("base", *[fmt(c, BASE[c]) for c in COLUMNS], "-")]
rows += [(f"single-task: {n}", *[fmt(c, sc[c]) for c in COLUMNS], f"{cpu:.1f}s") for n, (sc, cpu) in single.items()]
rows += [(f"multitask (equal mix, {3 * STEPS} steps)", *[fmt(c, multi["scores"][-1][c]) for c in COLUMNS],
          f"{multi[SECS][0]:.1f}s")]
rows += [("sequential, end of part 2", *[fmt(c, plain["scores"][-1][c]) for c in COLUMNS],
          f"{sum(plain[SECS]):.1f}s")]
rows += [("sequential + replay, end of part 3", *[fmt(c, replay["scores"][-1][c]) for c in COLUMNS],
          f"{sum(replay[SECS]):.1f}s")]
rows += [("per-task LoRA, each with its adapter", *[fmt(c, ada["scores"][-1][c]) for c in COLUMNS],
          f"{sum(ada[SECS]):.1f}s")]
table(("model", *COLUMNS, f"train {TIME}"), rows)
print("single-task: domain is stage 1 of part 2 (the same run: same start, data, steps and seed).")
print(f"same total steps: the multitask model trains {3 * STEPS} steps, the three single-task models {STEPS} each; "
      f"with equal mixing it also sees each set {STEPS * BATCH} times in expectation "
      f"({', '.join(f'{k} {v}' for k, v in cnt.items())} drawn).")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "6. Seed spread: parts 3 and 5's comparisons",
                                 "the examples each stage draws and their order; nothing is initialised"):
    def scores(plain, replay, multi, single):
        """The rows the spread compares: {model: its scores}."""
        return {"single-task: domain": plain[1], **{f"single-task: {n}": single[n] for n in single},
                "multitask": multi, "sequential, after stage 2": plain[2],
                "sequential + replay, after stage 2": replay[2], "sequential, end": plain[3],
                "sequential + replay, end": replay[3]}

    def rerun(seed):
        """Parts 2, 3 and 5 (not 4) with `seed`: the mixture's draws and every stage's data order redrawn."""
        def go(st, **kw):
            return run_stages(fresh_base(), st, COLUMNS, batch_size=BATCH, collate_fn=col, before=BASE, seed=seed,
                              progress=False, **kw)["scores"]
        mix_s = MixtureDataset(sets, MixtureConfig("equal").weights(three), 3 * STEPS * BATCH, seed=seed)
        return scores(go(stages()), go(stages(), replay=REPLAY), go([Stage("multitask", mix_s, 3 * STEPS, 1e-3)])[-1],
                      {st.name: go([st])[-1] for st in stages()[1:]})

    single0 = {n: sc for n, (sc, _) in single.items() if n != "domain"}      # domain: part 2's stage 1, in scores
    runs = [scores(plain["scores"], replay["scores"], multi["scores"][-1], single0)]      # seed 0: the runs above
    runs += [rerun(s) for s in seeds[1:]]
    SEQ, REP = "sequential", "sequential + replay"
    PAIRS = {"multitask better than the single-task model": [
                 ("domain NLL", "single-task: domain", "multitask"), ("QA EM", "single-task: qa_closed", "multitask"),
                 ("summary ROUGE-L", "single-task: summarization", "multitask")],
             "replay better than none": [("QA EM", f"{SEQ}, after stage 2", f"{REP}, after stage 2"),
                                         ("QA EM", f"{SEQ}, end", f"{REP}, end"),
                                         ("summary ROUGE-L", f"{SEQ}, end", f"{REP}, end"),
                                         ("domain NLL", f"{SEQ}, end", f"{REP}, end")]}
    rows, ahead = [], []
    for claim, pairs in PAIRS.items():
        wins = []
        for c, a, b in pairs:
            for m in (a, b):
                v = [r[m][c] for r in runs]
                rows.append((m, c + (" (lower is better)" if not COLUMNS[c].higher_is_better else ""),
                             " ".join(fmt(c, x) for x in v), fmt(c, sum(v) / len(v)), fmt(c, max(v) - min(v))))
            sign = 1 if COLUMNS[c].higher_is_better else -1
            when = a.partition(", ")[2]                              # "after stage 2", "end" or none
            wins.append(f"{c}{f' ({when})' if when else ''} at {sum(sign * (r[b][c] - r[a][c]) > 0 for r in runs)} "
                        f"of {len(runs)}")
        ahead.append(f"{claim}: " + ", ".join(wins) + " seeds")
    table(("model", "score", f"per seed {seeds[0]}..{seeds[-1]}", "mean", "range"), rows)
    print("\n".join(ahead) + " (a tie is not better)")

print(f"\ntotal: {course.elapsed():.1f}s wall, {time.process_time():.1f}s CPU of this process")
