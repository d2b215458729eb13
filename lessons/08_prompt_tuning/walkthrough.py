"""Lesson 08: prompt tuning, n learned soft-prompt vectors in front of a frozen GPT, against LoRA and the head alone.

Prints, top to bottom:

  1. what prompt tuning adds: P (n, C) fed through `inputs_embeds` in front of the tokens, the
     positions (P at 0 .. n-1, the real tokens shifted to n ..), the parameter count, and three
     exact checks on the shipped base: a length-0 prompt is the base model, a prompt initialised
     from a text's embeddings is that text typed in front, and `disable_adapters` gives the base back;
  2. NER (`TokenClassifier` on the shipped base, the data, steps, batch, seed and head
     initialisation of lessons 05 and 06): head-only, LoRA r=4 on W_q, W_v, and prompt tuning with
     n = 16 and the three initialisations (random, vocabulary, text), then two more prompt
     lengths with the vocabulary init (n = 1 and 4; --lengths 1 4 64 adds n = 64); ONE table:
     trainable | share | dev F1 | test F1 | train time and forward time as ratios (against LoRA
     and the base, measured in this run);
  3. what the model "sees": the nearest vocabulary tokens (cosine) of each learned prompt vector,
     before and after training, and how far the vectors moved.
  With --sweep, before part 2: the learning-rate sweep behind the prompts' rate (~1.5 more minutes
  of CPU); part 2 then uses its picks for the n = 16 rows (the shipped rates are the picks).
  With --sweep-seeds K too: every rate at seeds 0..K-1, picked on the mean dev F1.
  With --seeds K, at the end: head-only, LoRA and the n = 16 prompts again with seeds 0..K-1.
  With --lengths N [N ...]: the extra prompt lengths of part 2 (default 1 4).

    python lessons/08_prompt_tuning/walkthrough.py           # or: minift run 08
    python lessons/08_prompt_tuning/walkthrough.py --fast    # the seconds-long version the tests run

Everything it uses lives in the library (minift/peft/prompt.py, minift/peft/lora.py,
minift/peft/common.py, minift/heads.py, minift/train.py, minift/pretrain.py; the
train-and-measure bench: minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 64    # CPU seconds on the 2-core EPYC VM the READMEs are measured on
FAST_SECONDS = 9     # the same, for --fast

import torch

from minift import course, world
from minift.heads import ner_splits
from minift.peft.common import disable_adapters
from minift.peft.io import apply_config
from minift.peft.lora import LoRAConfig
from minift.peft.prompt import PromptConfig, apply_prompt, nearest_tokens, prepend_soft_prompt
from minift.peft.selective import SelectiveConfig
from minift.pretrain import load_base
from minift.train import to_device
from minift.report import header, table
from minift.validate import count_arg

parser = course.parser(__doc__)
course.add_sweep(parser, "pick the n = 16 prompts' lr from {1e-2, 3e-2, 1e-1, 3e-1} (vocab: + 1) on dev first")
course.add_seeds(parser, "head-only, LoRA and part 2's n = 16 prompts", "head init, the prompt's start, data order",
                 "dev/test F1", "K=5: 3.0x the default run's time")
parser.add_argument("--lengths", type=count_arg, nargs="+", default=[1, 4], metavar="N",
                    help="the extra prompt lengths of part 2 (vocabulary init); default 1 4 (64 costs ~20 s more)")
args = course.start("08", parser)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told); the Bench builds its models there too
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)

base, tok = load_base(device=DEV)
C, L, BS = base.config.n_embd, base.config.n_layer, base.config.block_size
TEXT = "Find the people, towns, pets and foods in each sentence."    # the "text" init: 20 tokens
N = 16                                                                # the prompt length of the init rows
LENGTHS = [n for n in ([4] if FAST else args.lengths) if n != N]   # more lengths, vocabulary init
METHODS = {
    "head-only": SelectiveConfig(patterns=()),
    "LoRA r=4 q,v": LoRAConfig(r=4),                                  # lesson 05's row
    f"prompt n={N} random": PromptConfig(n_tokens=N, init="random"),
    f"prompt n={N} vocab": PromptConfig(n_tokens=N, init="vocab"),
    f"prompt n={N} text": PromptConfig(n_tokens=N, init="text", init_text=TEXT),
    **{f"prompt n={n} vocab": PromptConfig(n_tokens=n, init="vocab") for n in LENGTHS},
}
PROMPTS = [m for m in METHODS if m.startswith("prompt")]
# Peak lr: head-only (1e-1) and LoRA (1e-2) as picked in lesson 05 (the same runs: data, steps,
# batch, seed, head init); the n = 16 prompts' from {1e-2, 3e-2, 1e-1, 3e-1} on dev F1 by --sweep
# (ties within 0.005 to the smaller rate; the grid reaches one step past the pick, as in lesson 05):
# 1e-1 for random and text, 3e-1 for vocab, and the other lengths take the vocabulary init's pick.
# A prompt vector moves by about lr per step under Adam, and the embeddings have std 0.18: the
# prompts want 10 to 30x LoRA's rate (Lester et al. use 0.3).
PROMPT_LRS = (1e-2, 3e-2, 1e-1, 3e-1)
GRID = {m: PROMPT_LRS for m in PROMPTS[:3]}
GRID[f"prompt n={N} vocab"] = PROMPT_LRS + (1.0,)                   # its pick, 3e-1, needs a step past it
LR = {"head-only": 1e-1, "LoRA r=4 q,v": 1e-2, **{m: 3e-1 for m in PROMPTS}}   # the vocabulary init's pick, every length
LR[f"prompt n={N} random"] = LR[f"prompt n={N} text"] = 1e-1                  # their own picks
STEPS, BATCH = (2, 4) if FAST else (100, 8)
N_EVAL = 16 if FAST else None
TIMING_ROUNDS = 2 if FAST else 10
BLOCK = 128


def apply(clf, cfg):
    """apply_config, and the tokenizer a text-initialised prompt needs."""
    if isinstance(cfg, PromptConfig):
        apply_prompt(clf, cfg, tokenizer=tok)
        return clf
    return apply_config(clf, cfg)


def piece(i):
    return repr(tok.decode([int(i)]))


ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL, dev_key="dev")   # examples, encodings, train items
# the bench (minift/method_bench.py): a fresh TokenClassifier per method, the same head init, data and steps;
# each prompt at init is kept (P0) for part 3; train time as CPU seconds
bench = course.Bench(METHODS, tok, (ner, items, train_items), steps=STEPS, batch=BATCH, width=20, cpu_time=True,
                     apply=apply, on_fresh=lambda clf: {"P0": clf.body.soft_prompt.prompt.detach().clone()
                                                        if hasattr(clf.body, "soft_prompt") else None})
col, fresh = bench.col, bench.fresh
lens = [len(it["idx"]) for it in train_items]
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences of "
      f"{min(lens)} to {max(lens)} tokens (mean {sum(lens) / len(lens):.1f}); dev = the val split "
      f"({len(ner['dev'])} sentences), test = the test split ({len(ner['test'])}).")

# ==============================================================================================
header(f"1. What prompt tuning adds: P (n, C = {C}) in front of the tokens, through inputs_embeds")
ids = tok.encode(TEXT)
print(f"X = [P ; W_te[idx]]  (B, n + T, C);  positions: P at 0 .. n-1, the real tokens at n .. n+T-1 "
      f"(so n + T <= block_size = {BS});\nlogits = GPT(X)[:, n:]: the n virtual positions are cut off "
      f"again, targets get n x -100 in front, so the loss and every metric see (B, T) as before.")
print(f"parameters: n C = {N} x {C} = {N * C:,} for n = {N} (LoRA r=4 on W_q, W_v: "
      f"{L} x 2 x 4 x (C + C) = {L * 2 * 4 * 2 * C:,}); the 9-tag head (1,161) trains in every row.")
print(f"text init: {TEXT!r} is {len(ids)} tokens; P_i = W_te[t_(i mod m)]: n = {N} takes the first {N} "
      f"({' '.join(piece(i) for i in ids[:N])});\n  n = 64 would repeat it {64 / len(ids):.1f} times (t_0 .. t_19 t_0 ..).")

batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["dev"][:16]]), DEV)
with torch.no_grad():
    want = base(batch["idx"], attention_mask=batch["attention_mask"]).logits
    x, mask, _ = prepend_soft_prompt(base.transformer.wte(batch["idx"]), torch.zeros(0, C, device=DEV),
                                     batch["attention_mask"])
    zero = base(inputs_embeds=x, attention_mask=mask).logits
    typed_idx = torch.cat([torch.tensor([ids[:N]] * len(batch["idx"]), device=DEV), batch["idx"]], dim=1)
    typed = base(typed_idx, attention_mask=torch.cat([torch.ones(len(typed_idx), N, dtype=torch.long, device=DEV),
                                                      batch["attention_mask"]], 1)).logits[:, N:]
    lm, _ = load_base(device=DEV)
    apply_prompt(lm, PromptConfig(n_tokens=N, init="text", init_text=TEXT), tokenizer=tok)
    prompted = lm(batch["idx"], attention_mask=batch["attention_mask"]).logits
    with disable_adapters(lm):
        off = lm(batch["idx"], attention_mask=batch["attention_mask"]).logits
real = batch["attention_mask"].bool()
print("\nchecks on 16 dev sentences, the shipped base as a language model:")
print(f"  length-0 prompt == the base:                        {torch.equal(zero, want)}   (the only no-op length)")
print(f"  text-init prompt == the text typed in front:        max |logit difference| at real tokens = "
      f"{(prompted - typed)[real].abs().max().item():.1e}")
print(f"  ... and it is NOT the base (the prompt is context): max |logit difference| = "
      f"{(prompted - want)[real].abs().max().item():.2f}")
print(f"  inside disable_adapters(model) == the base:         {torch.equal(off, want)}")

# ==============================================================================================
if args.sweep:
    header(f"learning-rate sweep: the n = {N} prompts at lr in {PROMPT_LRS} (vocab: {GRID[f'prompt n={N} vocab']}), "
           f"picked on dev F1" + course.sweep_note(args))
    bench.sweep(PROMPTS[:3], GRID, LR, seeds=course.sweep_seeds(args))  # the picks go into LR; the other runs are dropped
    for m in PROMPTS[3:]:                                       # the other lengths: the vocabulary init's pick
        LR[m] = LR[f"prompt n={N} vocab"]
    print(f"part 2 uses the picks; the other lengths take the vocabulary init's ({LR[f'prompt n={N} vocab']:g}).")

header(f"2. NER: {STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, seed 0, the same head init")
results = {m: bench.run(m, LR[m]) for m in METHODS}

# inference cost: the prompt makes every sequence n tokens longer. CPU time (a GPU: synchronized
# wall time) of one forward on 64
# dev sentences, eval mode, no grad, rounds interleaved over the models, fastest kept.
tb = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["dev"][:64]]), DEV)
timed = {"base": fresh("head-only"), **{m: results[m]["model"] for m in METHODS if m != "head-only"}}
best_t = course.forward_cpu_seconds(timed, tb, TIMING_ROUNDS)

print()
lora = results["LoRA r=4 q,v"]
rows = []
for m, r in results.items():
    rep = r["rep"]
    rows.append((m, f"{r['lr']:g}", f"{r['n_adapter']:,}" if m != "head-only" else "-", f"{rep['trainable']:,}",
                 f"{rep['share']:.2%}", f"{r['f1']['dev']:.3f}", f"{r['f1']['test']:.3f}",
                 f"{r['cpu'] / lora['cpu']:.2f}x", f"{best_t[m] / best_t['base']:.2f}x" if m in best_t else "= base"))
table(("method", "lr", "adapter", "trainable", "share", "dev F1", "test F1", "train time", "forward"), rows)
print(f"trainable = adapter + the task head (1,161). train time = {CLOCK} seconds of training / LoRA's "
      f"({lora['cpu']:.1f}s); forward = {CLOCK} time of one forward on 64 dev sentences / the base classifier's "
      f"(fastest of {TIMING_ROUNDS} interleaved rounds: {best_t['base'] * 1e3:.1f} ms). The sentences are "
      f"{sum(lens) / len(lens):.0f} tokens on average: a prompt of n = 16 doubles what every layer computes.")
head, best = results["head-only"]["f1"], max(PROMPTS, key=lambda m: results[m]["f1"]["dev"])
print("prompt tuning vs head-only: dev F1 " + ", ".join(f"{m.removeprefix('prompt ')} "
      f"{results[m]['f1']['dev'] - head['dev']:+.3f}" for m in PROMPTS) + f";  vs LoRA: best prompt ({best}) "
      f"{results[best]['f1']['dev'] - lora['f1']['dev']:+.3f} dev, {results[best]['f1']['test'] - lora['f1']['test']:+.3f} test.")
shipped = load_base(device=DEV)[0].state_dict()
same = all(all(torch.equal(results[m]["model"].body.state_dict()[k], v) for k, v in shipped.items()) for m in PROMPTS)
print(f"the body's {len(shipped)} tensors after training == the shipped file, for every prompt: {same}.")

# ==============================================================================================
header("3. What the model \"sees\": each prompt vector's nearest vocabulary tokens (cosine), before -> after")
wte = base.transformer.wte.weight
rows = []
for m in PROMPTS[:3]:
    r = results[m]
    P, P0 = r["model"].body.soft_prompt.prompt.detach(), r["P0"]
    c0, i0 = nearest_tokens(P0, wte, k=1)
    c1, i1 = nearest_tokens(P, wte, k=1)
    moved = torch.nn.functional.cosine_similarity(P.double(), P0.double(), dim=-1)
    rows.append((m, f"{c0[:, 0].mean():.2f}", f"{c1[:, 0].mean():.2f}", f"{(i0[:, 0] == i1[:, 0]).sum()} / {len(P)}",
                 f"{moved.mean():.2f}", f"{P0.norm(dim=-1).mean():.2f} -> {P.norm(dim=-1).mean():.2f}"))
table(("prompt", "best cos before", "best cos after", "nearest token kept", "cos(P, P at init)", "norm |P_i|"), rows)
print(f"(the embedding rows have norm {wte.norm(dim=-1).mean():.2f} on average; best cos = the cosine to the "
      f"nearest vocabulary row, averaged over the {N} vectors)")
# One direction of the embedding table holds most of the vocabulary: rows (almost) never seen in
# pretraining are tied to the output layer, so every step pushed them the same way ("do not predict
# me"). A prompt vector near that direction has hundreds of "nearest tokens" at cosine 0.98.
Wn = torch.nn.functional.normalize(wte.detach().double(), dim=-1)
mu = torch.nn.functional.normalize(wte.detach().double().mean(0), dim=0)
crowd = Wn @ mu > 0.95                                                # (V,) rows in the crowded direction
in_crowd = {m: int((torch.nn.functional.normalize(results[m]["P0"].double(), dim=-1) @ mu > 0.95).sum())
            for m in PROMPTS[:3]}
print(f"{int(crowd.sum())} of {len(crowd)} vocabulary rows lie within cosine 0.95 of ONE direction (the mean row): "
      f"tokens pretraining (almost) never predicted. Prompt vectors starting there: "
      + ", ".join(f"{m.removeprefix('prompt ')} {k} / {N}" for m, k in in_crowd.items()) + ".")
for m in (f"prompt n={N} text", f"prompt n={N} vocab"):
    r = results[m]
    P, P0 = r["model"].body.soft_prompt.prompt.detach(), r["P0"]
    _, i0 = nearest_tokens(P0, wte, k=1)
    c1, i1 = nearest_tokens(P, wte, k=3)
    print(f"\n{m}: vector i, its init token -> the 3 nearest tokens after training (cosine)")
    for i in range(len(P)):
        print(f"  {i:>2}  {piece(i0[i, 0]):<10} -> " + ", ".join(f"{piece(t)} {c:.2f}" for c, t in zip(c1[i], i1[i])))

print(f"\nTotal time {course.elapsed():.0f}s.")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, f"4. Seed spread: head-only, LoRA and the n = {N} prompts"):
    bench.seed_spread(["head-only", "LoRA r=4 q,v"] + PROMPTS[:3], LR, seeds, results)
    print(f"Total time {course.elapsed():.0f}s.")
