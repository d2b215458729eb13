"""Lesson 17: distillation: a 5x smaller student learns NER from a fine-tuned teacher.

Prints, top to bottom:

  1. the teacher: the base GPT fully fine-tuned for NER (as in lesson 05), its val and test
     entity F1, and how confident it is on its own training sentences (the soft targets);
  2. the student: GPTConfig(n_layer=2, n_head=2, n_embd=64), parameters and speed against the
     teacher, measured in this run (a forward over the val sentences, and a training step);
  3. one table, every student with the same init, data order, steps and seed: trained WITHOUT the
     teacher (the baseline), with Hinton's soft targets (forward KL, T = 2, alpha = 0.5), with the
     soft term on every real token instead of the labelled ones, with reverse KL and with
     JSD(beta = 0.5); then with a transfer set (pretraining sentences tagged by the teacher:
     sequence-level distillation, and soft targets on it); the baseline again from the teacher's
     embeddings projected to the student's width (init_from_teacher); and a control, Hinton's loss
     with one-hot gold logits in place of the teacher's;
  4. the quality target, row by row, and where the points go (the commonest val errors).
  With --more, at the end: the transfer set without the sentences that name val/test people, and
  the baseline and forward-KL students from a second init seed.
  With --seeds K, at the end (part 6): part 3's students again with seeds 0..K-1 (student body and
  head init, data order; the same teacher and transfer set), their val and test F1 per seed.

    python lessons/17_distillation/walkthrough.py           # or: minift run 17
    python lessons/17_distillation/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/17_distillation/walkthrough.py --more    # + part 5 (about 40 s more CPU)
    python lessons/17_distillation/walkthrough.py --seeds 5 # + part 6, five seeds (2.8x the default run's CPU)

Everything it uses lives in the library (minift/align/distill.py, minift/heads.py, minift/train.py,
minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 88
FAST_SECONDS = 12

import copy
import statistics
import time
from collections import Counter

import torch

from minift import course, world
from minift.align.distill import (DistillConfig, collate_with_teacher, init_from_teacher, train_student,
                                  with_teacher_logits)
from minift.evals import transfer_set
from minift.heads import TokenClassifier, classifier_loss, ner_splits, predict_tags
from minift.model import GPT, GPTConfig
from minift.pretrain import load_base
from minift.report import header, table
from minift.tasks import IGNORE_INDEX, collate_fn, entity_f1
from minift.train import TrainConfig, to_device, train

parser = course.parser(__doc__)
parser.add_argument("--more", action="store_true", help="also: the transfer set without the held-out names, "
                                                        "and a second student seed (about 40 s more CPU)")
course.add_seeds(parser, "part 3's students", "student body and head init, data order", "val/test F1",
                 "K=5: 2.8x the default run's time")
args = course.start("17", parser)         # the base-model check, one thread, the clock: minift/course.py
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told), where every model lives

BLOCK, BATCH = 128, 32
TEACHER_STEPS, TEACHER_LR = (2, 3e-4) if FAST else (100, 3e-4)       # full fine-tuning as in lesson 05, at lr 3e-4
STUDENT_STEPS, STUDENT_LR = (2, 3e-3) if FAST else (80, 3e-3)
N_EVAL = 16 if FAST else None
N_TRANSFER = 16 if FAST else 1000
STUDENT = dict(n_layer=2, n_head=2, n_embd=64)
KD = DistillConfig(alpha=0.5, temperature=2.0, divergence="forward", mask="labels")   # Hinton's recipe

base, tok = load_base(device=DEV)
col = collate_fn(tok.pad_id)
col_t = collate_with_teacher(col)
ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL)
if FAST:
    train_items = train_items[:STUDENT_STEPS * BATCH]         # --fast: only the sentences 2 steps read
K = len(world.NER_TAGS)


def f1_on(clf, split):
    pred = predict_tags(clf, items[split], col, world.NER_TAGS)
    return entity_f1(pred, [e["tags"] for e in ner[split]])["f1"], pred


# ==============================================================================================
header(f"1. The teacher: the base GPT fully fine-tuned for NER, {TEACHER_STEPS} steps x batch {BATCH}")
torch.manual_seed(0)
teacher = TokenClassifier(copy.deepcopy(base), K).to(DEV)
hist_t = train(teacher, train_items, TrainConfig(steps=TEACHER_STEPS, batch_size=BATCH, lr=TEACHER_LR,
                                                 warmup_steps=max(1, TEACHER_STEPS // 10), seed=0, progress=False,
                                                 desc="teacher"), loss_fn=classifier_loss, collate_fn=col)
teacher.eval()
t_f1 = {s: f1_on(teacher, s) for s in ("val", "test")}
print(f"task: NER (BIO over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; val "
      f"({len(ner['val'])}) and test ({len(ner['test'])}) name only people never tagged in training (known to the "
      f"base from pretraining). Teacher: val F1 {t_f1['val'][0]:.3f}, test F1 {t_f1['test'][0]:.3f}, "
      f"{hist_t[-1]['time']:.1f}s.")

cached = with_teacher_logits(teacher, train_items, col)            # offline distillation: one teacher pass
rows = []
lab = torch.cat([it["labels"] for it in cached])
logit = torch.cat([it["teacher_logits"] for it in cached])
keep = lab != IGNORE_INDEX
for T in (1.0, 2.0, 4.0):
    p = torch.softmax(logit[keep] / T, -1)                          # (n labelled tokens, K)
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1)
    rows.append((f"T = {T:g}", f"{p.gather(1, lab[keep, None]).mean():.3f}", f"{p.max(-1).values.mean():.3f}",
                 f"{ent.mean():.3f}", f"{(1 - p.max(-1).values).mean():.4f}"))
table(("soft targets", "p(gold)", "p(top)", "entropy (nats)", "mass off the top tag"), rows)
wrong = int((logit[keep].argmax(-1) != lab[keep]).sum())
print(f"over the {int(keep.sum()):,} labelled training tokens (each word's first token). The teacher's argmax differs "
      f"from the gold tag at {wrong} of them, so sequence-level distillation on the labelled set (train on the "
      f"teacher's outputs) is the hard-label baseline{' exactly' if wrong == 0 else ' up to those tokens'}. "
      f"log K = {torch.log(torch.tensor(float(K))):.3f} nats for K = {K} tags.")

# ==============================================================================================
header("2. The student: 2 layers of width 64 against the teacher's 4 of width 128")
scfg = GPTConfig(vocab_size=base.config.vocab_size, block_size=BLOCK, **STUDENT)


def fresh_student(init: str, seed: int = 1, head: int = 0):
    """The same student every time: the body drawn with `seed`, the head with `head` (by default 1 and 0: the head
    gets the teacher's head init)."""
    torch.manual_seed(seed)
    body = GPT(scfg).to(DEV)                         # drawn on the CPU (the same numbers on every device), moved
    kept = init_from_teacher(body, base) if init == "projected" else None
    torch.manual_seed(head)
    return TokenClassifier(body, K).to(DEV), kept


def n_params(clf):
    return sum(p.numel() for p in clf.parameters())


probe, kept = fresh_student("projected")
n_t, n_s = n_params(teacher), n_params(probe)
rows = [("teacher", f"{base.config.n_layer} x {base.config.n_embd}", f"{n_t:,}", "100%"),
        ("student", f"{scfg.n_layer} x {scfg.n_embd}", f"{n_s:,}", f"{n_s / n_t:.1%}")]
table(("model", "layers x width", "parameters", "of teacher"), rows)
print(f"parameters include the tag head ({K} x (C + 1)); the token table alone is {base.config.vocab_size} x C, "
      f"{base.config.vocab_size * base.config.n_embd:,} of the teacher's and {base.config.vocab_size * scfg.n_embd:,} "
      f"of the student's. 'projected' init: the teacher's token and position tables times the top-{scfg.n_embd} "
      f"principal directions of its token table, which keep {kept:.1%} of its variance.")

val_batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["val"]]), DEV)
n_tok = int(val_batch["attention_mask"].sum())


@torch.no_grad()
def forward_ms(model):
    course.sync()                                                   # a GPU's queued work is done (no-op on the CPU)
    t0 = time.perf_counter()
    model(val_batch["idx"], attention_mask=val_batch["attention_mask"])
    course.sync()
    return 1000 * (time.perf_counter() - t0)


times = {"teacher": [], "student": []}
for _ in range(1 if FAST else 5):                                  # interleaved: the same load for both
    times["teacher"].append(forward_ms(teacher))
    times["student"].append(forward_ms(probe))
med = {k: statistics.median(v) for k, v in times.items()}
print(f"forward over the {len(items['val'])} val sentences {tuple(val_batch['idx'].shape)} ({n_tok:,} real tokens), "
      f"median of {len(times['teacher'])} interleaved rounds: teacher {med['teacher']:.1f} ms, student "
      f"{med['student']:.1f} ms -> the student is {med['teacher'] / med['student']:.1f}x faster "
      f"({n_tok / med['student'] * 1000:,.0f} vs {n_tok / med['teacher'] * 1000:,.0f} tokens/s)")

# ==============================================================================================
header(f"3. Students: the same init, data order, {STUDENT_STEPS} steps x batch {BATCH}, lr {STUDENT_LR:g}, seed 0")
t0 = time.perf_counter()
transfer = transfer_set(teacher, tok, col, n=N_TRANSFER)           # pretraining sentences, tagged by the teacher
transfer_c = with_teacher_logits(teacher, transfer, col)
n_tr_ent = sum(1 for it in transfer for y in it["labels"].tolist() if y != IGNORE_INDEX and world.NER_TAGS[y] != "O")
test_names = sorted({w for e in ner["test"] for w, g in zip(e["tokens"], e["tags"]) if g == "B-PER"})


def words_of(its):
    return {w for it in its for w in tok.decode(it["idx"].tolist()).split()}


in_transfer, in_train = (sum(n in words_of(its) for n in test_names) for its in (transfer, train_items))
print(f"transfer set: {len(transfer):,} sentences of the pretraining corpus (train split), tagged by the teacher "
      f"({n_tr_ent:,} non-O tags), built in {time.perf_counter() - t0:.1f}s: unlabelled text the teacher read in "
      f"pretraining. {in_transfer} of the {len(test_names)} first names that the test split tags B-PER occur in it "
      f"(in the labelled training set: {in_train}).")

RUNS = [  # (name, init, teacher signal, data, DistillConfig or None for cross-entropy on the items' labels)
    ("no teacher (baseline)", "random", "none", "labelled", None),
    ("soft, forward KL", "random", "KL(p‖q), T=2, α=.5", "labelled", KD),
    ("soft, every real token", "random", "KL(p‖q), mask=real", "labelled", DistillConfig(0.5, 2.0, mask="real")),
    ("soft, reverse KL", "random", "KL(q‖p), T=2, α=.5", "labelled", DistillConfig(0.5, 2.0, "reverse")),
    ("soft, JSD β=.5", "random", "JSD(.5), T=2, α=.5", "labelled", DistillConfig(0.5, 2.0, "jsd", 0.5)),
    ("sequence-level + transfer", "random", "teacher's tags", "+ transfer", None),
    ("soft + transfer", "random", "KL(p‖q), T=2, α=.5", "+ transfer", KD),
    ("no teacher, projected init", "projected", "none", "labelled", None),
    ("control: gold as soft targets", "random", "8·onehot(gold), T=2", "labelled", KD),
]
# the control: Hinton's loss with the teacher replaced by logits 8 at the gold tag and 0 elsewhere: soft targets
# about as confident as the teacher's (p(gold) = 0.997 at T = 1) that carry no dark knowledge at all
onehot = [{**it, "teacher_logits": torch.zeros_like(it["teacher_logits"]).index_put_(
    (torch.nonzero(it["labels"] != IGNORE_INDEX).flatten(), it["labels"][it["labels"] != IGNORE_INDEX]),
    torch.tensor(8.0))} for it in cached]
DATA = {("labelled", False): train_items, ("labelled", True): cached,
        ("+ transfer", False): train_items + transfer, ("+ transfer", True): cached + transfer_c}


def run_student(name, init, signal, data, kd, d, seed=1, sd=0):
    """Train one student on the items d (cross-entropy if kd is None, else distillation from cached logits).
    seed: the body's init; sd (--seeds): moves the body's seed, the head's and the data order's all at once."""
    student, _ = fresh_student(init, seed + sd, sd)
    tc = TrainConfig(steps=STUDENT_STEPS, batch_size=BATCH, lr=STUDENT_LR, warmup_steps=max(1, STUDENT_STEPS // 10),
                     seed=sd, progress=False, desc=name)
    if kd is None:
        hist = train(student, d, tc, loss_fn=classifier_loss, collate_fn=col)
    else:                                                          # cached teacher logits: no teacher forward
        hist = train_student(student, d, kd, tc, collate_fn=col_t)
    f1 = {s: f1_on(student, s) for s in ("val", "test")}
    print(f"{name:<30} val F1 {f1['val'][0]:.3f}, test F1 {f1['test'][0]:.3f}, {hist[-1]['time']:.1f}s"
          + (f" (seed {sd})" if sd else ""), flush=True)
    return dict(name=name, init=init, signal=signal, data=data, f1=f1, time=hist[-1]["time"], n=len(d))


def data_of(name, data, kd):
    return onehot if name.startswith("control") else DATA[(data, kd is not None)]


results = [run_student(name, init, signal, data, kd, data_of(name, data, kd))
           for name, init, signal, data, kd in RUNS]

ms_t = 1000 * hist_t[-1]["time"] / TEACHER_STEPS
base_run = results[0]
ms_s = 1000 * base_run["time"] / STUDENT_STEPS
print()
rows = [("teacher", "base", "(gold labels)", "labelled", f"{n_t:,}", "100%", f"{t_f1['val'][0]:.3f}",
         f"{t_f1['test'][0]:.3f}", "100%")]
ft = t_f1["test"][0]
for r in results:
    rows.append((r["name"], r["init"], r["signal"], r["data"], f"{n_s:,}", f"{n_s / n_t:.1%}", f"{r['f1']['val'][0]:.3f}",
                 f"{r['f1']['test'][0]:.3f}", f"{r['f1']['test'][0] / ft:.1%}" if ft >= 0.05 else "n/a"))
table(("model", "init", "teacher signal", "data", "params", "of teacher", "val F1", "test F1", "of teacher"), rows)
print(f"'labelled': the {len(train_items):,} NER training sentences (gold tags; soft rows add the teacher's "
      f"distribution at each word's first token); '+ transfer': those plus the {len(transfer):,} teacher-tagged "
      f"pretraining sentences. α T² KL(p‖q) + (1 - α) CE, p = softmax(t/T), q = softmax(s/T). One training step "
      f"(batch {BATCH}, cross-entropy): teacher {ms_t:.0f} ms, student {ms_s:.0f} ms ({ms_t / ms_s:.1f}x); "
      f"the soft rows read cached teacher logits, so they cost the student's step only.")

# ==============================================================================================
header("4. The quality target, and where the points go")
print(f"target: the student recovers >= 90% of the teacher's test F1 ({ft:.3f}) at <= 1/4 of its parameters "
      f"({n_s / n_t:.1%} here) and beats the same student trained without the teacher "
      f"(same init, data, steps: test F1 {base_run['f1']['test'][0]:.3f}).")
for r in results[1:]:
    if r["signal"] == "none" or r["name"].startswith("control"):
        continue
    same = next(b for b in results if b["signal"] == "none" and b["init"] == r["init"])
    share = r["f1"]["test"][0] / ft if ft >= 0.05 else 0.0
    beats = r["f1"]["test"][0] > same["f1"]["test"][0]
    course.verdict(f"  {r['name']:<30} {share:6.1%} of the teacher: {'yes' if share >= 0.9 else 'no '} | beats its no-teacher "
          f"twin ({same['f1']['test'][0]:.3f}): {'yes' if beats else 'no '} -> {'holds' if share >= 0.9 and beats else 'fails'}")


def errors(pred, split="val"):
    return Counter((w, g, p) for e, pp in zip(ner[split], pred) for w, g, p in zip(e["tokens"], e["tags"], pp) if g != p)


print("\nword-tag errors on val (word: gold -> predicted), the commonest five")
for label, pred in [("teacher", t_f1["val"][1])] + [(r["name"], r["f1"]["val"][1]) for r in results
                                                    if r["name"] in ("no teacher (baseline)", "soft, forward KL",
                                                                     "soft + transfer", "no teacher, projected init",
                                                                     "control: gold as soft targets")]:
    err = errors(pred)
    print(f"  {label:<30} {sum(err.values()):>3} errors: "
          + ", ".join(f"{w}: {g} -> {p} ({n})" for (w, g, p), n in err.most_common(5)))

# ==============================================================================================
if args.more:
    header("5. (--more) Why the transfer set works, and a second student seed")
    held = [p.name for s in ("val", "test") for p in world.get_world().people_in(s)]
    filtered = transfer_set(teacher, tok, col, n=N_TRANSFER, exclude=held)
    n_names = sum(n in words_of(filtered) for n in test_names)
    print(f"transfer set without the {len(held)} val and test people: {len(filtered):,} other pretraining sentences "
          f"(the next ones in the same shuffled order); {n_names} of the {len(test_names)} test first names in it.")
    more = [run_student("seq-level + transfer w/o names", "random", "teacher's tags", "+ filtered", None,
                        train_items + filtered),
            run_student("soft + transfer w/o names", "random", "KL(p‖q), T=2, α=.5", "+ filtered", KD,
                        cached + with_teacher_logits(teacher, filtered, col)),
            run_student("no teacher, student seed 2", "random", "none", "labelled", None, train_items, seed=2),
            run_student("soft, forward KL, seed 2", "random", "KL(p‖q), T=2, α=.5", "labelled", KD, cached, seed=2)]
    print()
    table(("model", "init", "teacher signal", "data", "val F1", "test F1", "of teacher"),
          [(r["name"], r["init"], r["signal"], r["data"], f"{r['f1']['val'][0]:.3f}", f"{r['f1']['test'][0]:.3f}",
            f"{r['f1']['test'][0] / ft:.1%}" if ft >= 0.05 else "n/a") for r in more])
    print("'w/o names': the transfer set with every sentence that names a val or test person left out. 'seed 2': "
          "the student body drawn with seed 2 instead of 1 (the head and the data order unchanged).")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "6. Seed spread: part 3's students",
                                 "student body and head init, data order; the same teacher and transfer set"):
    spread = []
    for r0, (name, init, signal, data, kd) in zip(results, RUNS):
        runs = [r0] + [run_student(name, init, signal, data, kd, data_of(name, data, kd), sd=sd) for sd in seeds[1:]]
        spread.append((name, STUDENT_LR, [r["f1"]["val"][0] for r in runs], [r["f1"]["test"][0] for r in runs]))
    print()
    course.seed_table(spread, "val")
    print(f"seed s: the student body drawn with seed 1 + s, the head with seed s, the batches with seed s (seed 0 is "
          f"part 3's run). The teacher's test F1 is {ft:.3f}; 90% of it is {0.9 * ft:.3f}.")
print(f"\ntotal {course.elapsed():.0f}s")
