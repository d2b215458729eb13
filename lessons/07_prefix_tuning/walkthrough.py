"""Lesson 07: prefix tuning, trained keys and values in every layer, against LoRA on the same NER task.

Prints, top to bottom:

  1. what `apply_prefix` attaches (a PrefixEncoder on the body, fed in through GPT.forward's
     `prefix_kv` by a forward hook), its tensors and counts while training (P' and the MLP) and
     folded for inference (P L 2 C), and three exact facts on the shipped base: a length-0 prefix
     is the base model; a prefix made of the base model's own keys/values for real tokens is
     attention to those tokens (with the real tokens' positions restarting at 0); cached
     generation with a prefix equals the uncached forward;
  2. one NER model per method (`TokenClassifier` on the shipped base; the data, 100 steps x 8,
     seed and head initialisation of lessons 05/06): head-only, LoRA r = 4 on q, v, prefix
     tuning with and without the reparameterisation, and three prefix lengths; ONE table: trainable
     share, loss at step 0, dev/test F1, train time vs LoRA, forward time vs the base; then the
     reparameterised prefix folded (its F1, its size), and the trained model with its prefix
     switched off;
  3. what the model "sees": the share of attention each block puts on the prefix, before and after
     training, and where the trained prefix's keys sit relative to the real tokens' keys.
  With --sweep, before part 2: the learning-rate sweep behind the prefix rows' rates (~4 minutes).
  With --seeds K, at the end: part 2 again with seeds 0..K-1, and the spread of the F1 scores.
  With --generation, on its own (instead of parts 1-3): part 5, the paper's kind of task. Prefix tuning,
  LoRA and full fine-tuning trained alike on table-to-text (TinyWorld records, E2E-style) and on
  summarization; ROUGE-L and exact match of greedy generations on the test split (~4 minutes).

    python lessons/07_prefix_tuning/walkthrough.py           # or: minift run 07
    python lessons/07_prefix_tuning/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/07_prefix_tuning/walkthrough.py --sweep   # re-pick the prefix lrs (3e-3 .. 1e-1; no MLP: .. 3e-1)
    python lessons/07_prefix_tuning/walkthrough.py --sweep --sweep-seeds 3   # ... on the mean over seeds 0, 1, 2
    python lessons/07_prefix_tuning/walkthrough.py --generation   # part 5 alone: prefix vs LoRA vs full on generation

Everything it uses lives in the library (minift/peft/prefix.py, minift/peft/lora.py,
minift/peft/common.py, minift/heads.py, minift/train.py, minift/pretrain.py; the
train-and-measure bench: minift/method_bench.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 75    # CPU seconds on the 2-core EPYC VM the READMEs are measured on
FAST_SECONDS = 10

import copy

import torch

from minift import course, world
from minift.heads import ner_splits, predict_tags
from minift.peft.common import count_adapter_parameters, disable_adapters
from minift.peft.lora import LoRAConfig
from minift.peft.prefix import (PrefixConfig, fold_prefix, prefix_attention_mass,
                                prefix_parameter_count, prefix_state_dict)
from minift.peft.selective import SelectiveConfig
from minift.peft.io import apply_config
from minift.pretrain import load_base
from minift.train import to_device
from minift.report import header, table
from minift.tasks import entity_f1

parser = course.parser(__doc__)
course.add_sweep(parser, "sweep the prefix rows' lr over {3e-3, 1e-2, 3e-2, 1e-1} (the no-MLP rows: + 3e-1) on the "
                         "dev split first (about 4 minutes)")
course.add_seeds(parser, "part 2's methods", "head and prefix init, data order", "dev/test F1",
                 "K=5: 2.8x the default run's time")
parser.add_argument("--generation", action="store_true",
                    help="part 5 alone: prefix tuning, LoRA and full fine-tuning on table-to-text and summarization, "
                         "scored by ROUGE-L and exact match of greedy generations (about 4 minutes)")
args = course.start("07", parser)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told); the Bench builds its models there too
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)

base, tok = load_base(device=DEV)
C, L, H, D = base.config.n_embd, base.config.n_layer, base.config.n_head, base.config.head_dim
P = 10
INIT_TEXT = " ".join(" ".join(e["tokens"]) for e in world.task("ner", "train")[:2])
INIT_IDS = tok.encode(" " + INIT_TEXT)[:P]                          # the first P tokens of the training text
METHODS = {                                                        # what trains; a task head always does
    "head-only": SelectiveConfig(patterns=()),
    "LoRA r=4 q,v": LoRAConfig(r=4, alpha=8, targets=("attn.c_attn",), qkv=("q", "v")),
    f"prefix P={P}": PrefixConfig(n_prefix=P),                    # reparameterised: the paper's method
    f"prefix P={P}, no MLP": PrefixConfig(n_prefix=P, reparam=False),
    f"prefix P={P}, no MLP, init": PrefixConfig(n_prefix=P, reparam=False, init_ids=INIT_IDS),
    "prefix P=1": PrefixConfig(n_prefix=1),
    "prefix P=32": PrefixConfig(n_prefix=32),
}
PREFIX = [m for m in METHODS if m.startswith("prefix")]
# Peak lr per method, picked on the dev split (best dev F1; ties within 0.005 go to the smaller lr).
# head-only and LoRA r=4 q,v: lesson 05's picks, 1e-1 and 1e-2 (head-only is the same run as
# lesson 05's: data, steps, batch, seed, head init); the prefix rows: `--sweep` (printed in the README).
# Each grid reaches one step past its pick (as in lesson 05): the no-MLP rows pick 1e-1, so theirs goes to 3e-1.
LRS = (3e-3, 1e-2, 3e-2, 1e-1)
GRID = {m: LRS for m in PREFIX}
GRID[f"prefix P={P}, no MLP"] = GRID[f"prefix P={P}, no MLP, init"] = LRS + (3e-1,)
LR = {"head-only": 1e-1, "LoRA r=4 q,v": 1e-2, f"prefix P={P}": 1e-2, f"prefix P={P}, no MLP": 1e-1,
      f"prefix P={P}, no MLP, init": 1e-1, "prefix P=1": 1e-2, "prefix P=32": 3e-2}
STEPS, BATCH = (2, 4) if FAST else (100, 8)
N_EVAL = 16 if FAST else None
TIMING_ROUNDS = 1 if FAST else 20
BLOCK = 128

# ==============================================================================================
# Part 5 (--generation, on its own): the paper's own kind of task. Li & Liang trained prefixes for
# GPT-2 on table-to-text (E2E, WebNLG, DART) and BART on summarization (XSUM). Here: TinyWorld records
# -> text (minift/evals.py: table_to_text_examples) and TinyWorld's summarization, each method trained
# on the same pairs with the loss on the response (minift/align/sft.py), scored on greedy generations.
if args.generation:
    from minift.align.sft import SFTConfig, train_sft
    from minift.evals import generate_responses, table_to_text_examples, table_to_text_pairs
    from minift.tasks import exact_match, rouge_l, sft_pairs
    from minift.train import TrainConfig
    GEN_STEPS, GEN_BATCH, N_GEN, GEN_TOKENS = (2, 4, 4, 12) if FAST else (150, 8, 200, 64)
    GEN_TASKS = {"table-to-text": table_to_text_pairs, "summarization": lambda s: sft_pairs("summarization", s)}
    GEN_METHODS = {f"prefix P={P}": (METHODS[f"prefix P={P}"], LR[f"prefix P={P}"]),     # part 2's prefix and rate
                   "LoRA r=4 q,v": (METHODS["LoRA r=4 q,v"], LR["LoRA r=4 q,v"]),       # lesson 05's recipe
                   "full fine-tuning": (None, 3e-4)}                                     # lesson 20's full rate
    header(f"5. Generation: table-to-text and summarization, {GEN_STEPS} steps x batch {GEN_BATCH}, seed 0, "
           f"greedy decoding on {N_GEN} test examples")
    n_all = sum(q.numel() for q in base.parameters())
    rows, outs, scores = [], {}, {}
    for task, pairs_of in GEN_TASKS.items():
        train_pairs, test_pairs = pairs_of("train"), pairs_of("test")[:N_GEN]
        prompt, gold = test_pairs[0]
        print(f"{task}: {len(train_pairs)} training pairs; test example 0:\n  prompt:   {prompt!r}\n  response: {gold!r}")
        for m, (cfg, lr) in GEN_METHODS.items():
            torch.manual_seed(0)                                    # the method's init (LoRA's A, the prefix)
            model = apply_config(load_base(device=DEV)[0], cfg)
            if cfg is None:                                         # full fine-tuning: every weight trains
                for q in model.parameters():
                    q.requires_grad_(True)
            n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
            t0 = course.clock()
            hist = train_sft(model, train_pairs, SFTConfig(), TrainConfig(
                steps=GEN_STEPS, batch_size=GEN_BATCH, lr=lr, seed=0, progress=False, desc=f"{task}/{m}"), tok=tok)
            t_train = course.clock() - t0
            got = generate_responses(model, tok, [p for p, _ in test_pairs], max_new_tokens=GEN_TOKENS)
            r = torch.tensor([rouge_l(g, want) for g, (_, want) in zip(got, test_pairs)], dtype=torch.float64)
            em = sum(exact_match(g, want) for g, (_, want) in zip(got, test_pairs)) / len(test_pairs)
            outs[task, m], scores[task, m] = got, r.mean().item()
            rows.append((task, m, f"{lr:g}", f"{n_train:,}", f"{n_train / n_all:.2%}", f"{hist[-1]['loss']:.3f}",
                         f"{r.mean():.3f}", f"{r.std() / len(r) ** 0.5:.3f}", f"{em:.3f}", f"{t_train:.1f}s"))
    print()
    table(("task", "method", "lr", "trained", "share", "final loss", "ROUGE-L", "+- s.e.", "exact match",
           f"train {CLOCK}"), rows)
    print(f"trained = the parameters that get gradients (the prefix: P' and its MLP, {prefix_parameter_count(L, C, P):,} "
          f"numbers once folded); share = trained / the model's {n_all:,}. ROUGE-L = mean LCS F-measure over words "
          f"(tasks.rouge_l), s.e. = its standard error over the {N_GEN} test examples; exact match after lowercasing "
          f"and dropping punctuation at the ends (tasks.exact_match). Test records and documents are about people no "
          f"training pair names. Rates: the prefix's from part 2's sweep, LoRA's from lessons 05 and 20, full "
          f"fine-tuning's from lesson 20 (picked on summarization).")
    for task in GEN_TASKS:
        print(f"\n{task}, greedy generations for test examples 0 and 1 (gold first):")
        for i in (0, 1):
            print(f"  gold              {GEN_TASKS[task]('test')[i][1]!r}")
            for m in GEN_METHODS:
                print(f"  {m:<17} {outs[task, m][i]!r}")
    # where the table-to-text points go: which sentences of the text are the record's, and which are not
    import re
    MARK = {"home": " lives in ", "job": " works as ", "pet": " has a pet ", "food": "'s favourite food is ",
            "object": " owns ", "friend": " are friends"}                  # world.CANONICAL's sentences
    split_s = lambda text: [x for x in re.split(r"(?<=[.!?])\s+", text.strip()) if x]
    exs = table_to_text_examples("test")[:N_GEN]
    rows = []
    for m in GEN_METHODS:
        n_got = n_gold = hit_p = hit_r = extra = rep = 0
        for ex, got in zip(exs, outs["table-to-text", m]):
            g, o, rels = split_s(ex["text"]), split_s(got), {r for r, _ in ex["fields"][1:]}
            n_got, n_gold = n_got + len(o), n_gold + len(g)
            hit_p, hit_r = hit_p + sum(x in g for x in o), hit_r + sum(x in o for x in g)
            extra += any(k in x for x in o for r, k in MARK.items() if r not in rels)
            rep += len(set(o)) < len(o)
        rows.append((m, f"{n_got / len(exs):.2f}", f"{hit_p / max(n_got, 1):.3f}", f"{hit_r / n_gold:.3f}",
                     f"{extra / len(exs):.3f}", f"{rep / len(exs):.3f}"))
    print(f"\ntable-to-text, sentence by sentence ({N_GEN} test records, {n_gold / len(exs):.2f} gold sentences each):")
    table(("method", "sentences", "precision", "recall", "states a field not in the record", "repeats a sentence"), rows)
    print("precision = generated sentences that are sentences of the gold text; recall = gold sentences generated; "
          "'states a field not in the record': outputs with a sentence about a relation the record leaves out (the "
          "body knows every person's facts from pretraining); both last columns are shares of the outputs.")
    for task in GEN_TASKS:
        pre, lo, full = (scores[task, m] for m in GEN_METHODS)
        course.verdict(f"{task}: prefix ROUGE-L {pre:.3f} vs full fine-tuning {full:.3f} ({pre - full:+.3f}) and LoRA "
                       f"{lo:.3f} ({pre - lo:+.3f})")
    print(f"\nlesson 07 --generation ran in {course.elapsed():.0f}s")
    raise SystemExit(0)

ner, items, train_items = ner_splits(tok, BLOCK, N_EVAL, dev_key="dev")   # examples, encodings, train items
# the bench (minift/method_bench.py): a fresh TokenClassifier per method, the same head init (the seed is
# set before the head is built; the prefix is drawn after it), data and steps
bench = course.Bench(METHODS, tok, (ner, items, train_items), steps=STEPS, batch=BATCH, width=26)
col, fresh = bench.col, bench.fresh
dev_batch = to_device(col([{"idx": it["idx"], "labels": it["labels"]} for it in items["dev"][:64]]), DEV)
print(f"'init': the prefix starts at the base model's own keys/values of the tokens {tok.decode(INIT_IDS)!r} "
      f"(the first {P} tokens of the training text; the paper initialises with real words' activations)")
print(f"task: NER (BIO tags over {', '.join(world.NER_TYPES)}), {len(ner['train'])} training sentences; "
      f"dev = the val split ({len(ner['dev'])} sentences), test = the test split ({len(ner['test'])}), "
      f"as in lessons 05 and 06.")

# ==============================================================================================
header(f"1. What apply_prefix attaches (C = {C}, {L} blocks, {H} heads of D = {D}), and three exact facts")
clf = fresh(f"prefix P={P}")
enc = clf.body.prefix
print(f"apply_prefix(TokenClassifier, PrefixConfig(n_prefix={P})) adapts {clf.peft_methods[0]['modules']}:")
print(f"  body.prefix = {type(enc).__name__}({enc.extra_repr()}), and a forward pre-hook on the body that calls "
      f"GPT.forward(..., prefix_kv=body.prefix())")
for n, t in prefix_state_dict(clf).items():
    print(f"  {n:<26} {str(tuple(t.shape)):<12} trainable")
kv = enc()
print(f"  body.prefix() = {len(kv)} pairs (K_l, V_l), each {tuple(kv[0][0].shape)} = (1, H, P, D): the rows of "
      f"P_theta = MLP(P'_theta) (P, L 2 C = {L * 2 * C}) cut into blocks, keys/values and heads")
cfg = METHODS[f"prefix P={P}"]
n_rep = prefix_parameter_count(L, C, P, True, cfg.embed_dim, cfg.hidden)
n_plain = prefix_parameter_count(L, C, P)
lora = apply_config(load_base(device=DEV)[0], METHODS["LoRA r=4 q,v"])
print(f"parameters: training P' ({P} x {C}) + W_1 ({cfg.hidden} x {C}) + b_1 + W_2 ({L * 2 * C} x {cfg.hidden}) + b_2 "
      f"= {n_rep:,}; folded for inference P L 2 C = {n_plain:,}; LoRA r=4 on q, v: {count_adapter_parameters(lora):,}")

g = torch.Generator().manual_seed(0)
x = torch.randint(0, base.config.vocab_size, (4, 12), generator=g).to(DEV)             # 4 sentences of 12 tokens
p = torch.tensor([tok.encode(" Hovan walked to Brookby with a pony")], device=DEV)      # real tokens for a prefix
with torch.no_grad():
    want = base(x).logits
    empty = tuple((torch.zeros(1, H, 0, D, device=DEV),) * 2 for _ in range(L))
    d0 = (base(x, prefix_kv=empty).logits - want).abs().max().item()
    cache = base(p, use_cache=True).past_kv                                            # keys/values at 0..P-1
    Pp, T = p.shape[1], x.shape[1]
    got = base(x, prefix_kv=cache).logits
    wte, wpe = base.transformer.wte.weight, base.transformer.wpe.weight
    ids = torch.cat([p.expand(4, -1), x], 1)
    ar = lambda n: torch.arange(n, device=DEV)                                        # positions 0..n-1
    emb = wte[ids] + wpe[torch.cat([ar(Pp), ar(T)])] - wpe[ar(Pp + T)]
    d1 = (got - base(inputs_embeds=emb).logits[:, Pp:]).abs().max().item()
    d1b = (got - base(ids).logits[:, Pp:]).abs().max().item()
    lm = apply_config(load_base(device=DEV)[0], PrefixConfig(n_prefix=P))
    prompt = torch.tensor([tok.encode("Hovan walked")], device=DEV)
    g_cache, g_full = lm.generate(prompt, 20), lm.generate(prompt, 20, use_cache=False)
print(f"(a) a length-0 prefix (P = 0 keys/values through prefix_kv) vs the base: max |logit difference| = {d0:.1e}")
print(f"(b) the base's own keys/values of {Pp} real tokens as the prefix == the base on [those tokens ; x] with x at "
      f"positions 0..{T - 1}: max |diff| = {d1:.1e}; vs the plain concatenation (x at positions {Pp}..{Pp + T - 1}): "
      f"{d1b:.2f}. The prefix adds keys and values, not positions.")
print(f"(c) greedy generation, 20 tokens, random prefix P = {P}: KV cache == uncached forward: "
      f"{torch.equal(g_cache, g_full)} (the cache holds the real tokens; the prefix is supplied again at every step)")

# ==============================================================================================
if args.sweep:
    header(f"learning-rate sweep: the prefix rows at lr in {LRS} (no MLP: + 3e-1), {STEPS} steps x batch {BATCH}, "
           f"picked on dev" + course.sweep_note(args))
    bench.sweep(PREFIX, GRID, LR, seeds=course.sweep_seeds(args))  # keeps the picked models only

header(f"2. One NER model per method: {STEPS} steps x batch {BATCH}, AdamW, warmup + cosine, seed 0")
results = {m: bench.run(m, LR[m]) for m in METHODS}

# forward CPU time of each trained classifier vs the plain base classifier (64 dev sentences, eval,
# no grad; this process's CPU time, rounds interleaved, fastest kept), as in lesson 06
main = results[f"prefix P={P}"]
folded = copy.deepcopy(main["model"])
fold_prefix(folded)
timed = {"base": fresh("head-only"), **{m: r["model"] for m, r in results.items() if m != "head-only"},
         f"prefix P={P} folded": folded}
best_t = course.forward_cpu_seconds(timed, dev_batch, TIMING_ROUNDS)
ratio = {k: v / best_t["base"] for k, v in best_t.items()}

print()
rows = []
t_lora = results["LoRA r=4 q,v"]["time"]
for m, r in results.items():
    rep = r["rep"]
    rows.append((m, f"{r['lr']:g}", f"{r['n_adapter']:,}" if m != "head-only" else "-", f"{rep['trainable']:,}", f"{rep['share']:.2%}",
                 f"{r['loss'][0]:.3f}", f"{r['f1']['dev']:.3f}", f"{r['f1']['test']:.3f}",
                 f"{r['time'] / t_lora:.2f}x", f"{ratio[m]:.2f}x" if m in ratio else "= base"))
table(("method", "lr", "method params", "trainable", "share", "loss step 0", "dev F1", "test F1",
       "train time", "forward"), rows)
head = results["head-only"]["rep"]["trainable"]
print(f"trainable = the method's parameters + the task head ({head:,} = 9 tags x (C + 1)), which trains in every "
      f"row. share = trainable / all parameters of the model. train time = wall time / LoRA's ({t_lora:.1f}s). "
      f"forward = {CLOCK} time on 64 dev sentences / the base classifier's ({best_t['base'] * 1e3:.1f} ms, fastest of "
      f"{TIMING_ROUNDS} interleaved rounds).")

with torch.no_grad():
    a = main["model"](dev_batch["idx"], attention_mask=dev_batch["attention_mask"]).logits
    b = folded(dev_batch["idx"], attention_mask=dev_batch["attention_mask"]).logits
f1_fold = entity_f1(predict_tags(folded, items["test"], col, world.NER_TAGS), [e["tags"] for e in ner["test"]])["f1"]
print(f"\nfolded (fold_prefix: P_theta = MLP(P'_theta) evaluated once, the MLP dropped): "
      f"{count_adapter_parameters(folded):,} prefix numbers instead of {main['n_adapter']:,}; max |logits folded - unfolded| = "
      f"{(a - b).abs().max().item():.1e}; test F1 {f1_fold:.3f} (unfolded {main['f1']['test']:.3f}); forward "
      f"{ratio[f'prefix P={P} folded']:.2f}x the base.")
with disable_adapters(main["model"]):
    pred_off = predict_tags(main["model"], items["dev"], col, world.NER_TAGS)
f1_off = entity_f1(pred_off, [e["tags"] for e in ner["dev"]])["f1"]
print(f"the trained prefix P={P} model with its prefix switched off (disable_adapters; its head stays): dev F1 "
      f"{f1_off:.3f} (on: {main['f1']['dev']:.3f}; head-only trained alone: {results['head-only']['f1']['dev']:.3f})")

# ==============================================================================================
header("3. What the model sees: the share of attention on the prefix, per block (mean over heads and real tokens)")
rows = []
for m in PREFIX:
    before = prefix_attention_mass(fresh(m).eval().body, dev_batch["idx"], dev_batch["attention_mask"])
    after = prefix_attention_mass(results[m]["model"].body, dev_batch["idx"], dev_batch["attention_mask"])
    rows.append((m, *(f"{before[i].mean():.2f} -> {after[i].mean():.2f}" for i in range(L)),
                 f"{after.min():.2f} .. {after.max():.2f}"))
table(("method", *(f"block {i}" for i in range(L)), "heads after (min .. max)"), rows)
T_mean = dev_batch["attention_mask"].sum(1).float().mean().item()
print(f"(at init -> after training; dev sentences of {T_mean:.1f} real tokens on average, so a query sees about "
      f"{T_mean / 2:.1f} real keys. An untrained P = {P} prefix already takes the share in the 'at init' column: unlike "
      f"LoRA's B = 0, a prefix is never a no-op at step 0.)")


def block_qk(gpt, hidden, i):
    """Queries and keys of block i's real tokens from its input hidden states: (B, H, T, D) each."""
    blk = gpt.transformer.h[i]
    q, k, _ = blk.attn.c_attn(blk.ln_1(hidden[i])).split(C, dim=2)
    return (t.view(*t.shape[:2], H, D).transpose(1, 2) for t in (q, k))


am = dev_batch["attention_mask"].bool()
T = am.shape[1]
seen = torch.ones(T, T, dtype=torch.bool, device=DEV).tril()[None, None] & am[:, None, :, None] & am[:, None, None, :]
trained, at_init = main["model"].body, fresh(f"prefix P={P}").eval().body
rows = []
with torch.no_grad():
    hid = base(dev_batch["idx"], attention_mask=dev_batch["attention_mask"], output_hidden_states=True).hidden_states
    for i, ((pk0, _), (pk, _)) in enumerate(zip(at_init.prefix(), trained.prefix())):
        q, k = block_qk(base, hid, i)                                                   # the base's own
        s = (q @ k.transpose(-2, -1) / D ** 0.5)[seen.expand(-1, H, -1, -1)]              # real scores
        kr = k.transpose(1, 2)[am]                                                      # (N real, H, D)
        cos = torch.nn.functional.cosine_similarity(pk[0].transpose(0, 1)[:, None], kr[None], dim=-1)  # (P, N, H)
        rows.append((f"block {i}", f"{(s < 0).float().mean():.0%}", f"{s.median():+.2f}",
                     f"{kr.norm(dim=-1).mean():.2f}", f"{pk0.norm(dim=-1).mean():.2f}", f"{pk.norm(dim=-1).mean():.2f}",
                     f"{cos.max(1).values.mean():.2f}"))
table(("base model", "real scores < 0", "median score", "|k| real", "|k| prefix init", "|k| prefix trained",
       "max cos to a real key"), rows)
print(f"scores = q_t . k_s / sqrt(D) over the real (query, key) pairs with s <= t of 64 dev sentences, in the base "
      f"model. A prefix key near 0 scores about 0 and so outweighs every real key that scores below 0. |k| = mean key "
      f"norm per head (prefix P={P}: at init, and trained). max cos: each trained prefix key's best cosine match among "
      f"the real keys, averaged; near 1 would mean the prefix imitates tokens the body already knows.")

if seeds := course.seeds_section(args.seeds, "4. Seed spread: part 2's methods and rates",
                                  "head and prefix init, data order"):
    bench.seed_spread(METHODS, LR, seeds, results)

print(f"\nlesson 07 ran in {course.elapsed():.0f}s")
