"""Lesson 03: instruction tuning, supervised fine-tuning with the loss on the response only.

Prints, top to bottom:

  1. the template: one Natural-Instructions-style example (definition, a positive and a negative
     example with reasons, the instance) in token space, with the loss mask: which tokens are
     trained;
  2. before: the base model's greedy responses to instructions of task types it will never be
     trained on (the test split of "instructions") and of seen types (val), and every metric
     (default run: the first 4 val and 15 test examples of each type and 25 of each other task;
     --long: the full splits);
  3. SFT: full fine-tuning on a multi-task mixture (instructions + closed-book QA + sentiment +
     summarization; --long: instructions + closed-book QA, 5x the steps), loss on response tokens
     only; then the same generations and metrics per task, and what it cost the language model
     (`forgetting_probe`, before -> after);
  4. why the loss mask matters (with --mask-ablation, or --long): the same run (same budget, same
     seed) with the loss on the prompt too (`SFTDataset(..., train_on_prompt=True)`), side by side;
     without it, the same per-task and per-type tables for base and SFT;
  5. (with --chat, on its own) chat: dialogues of 2-3 turns, the loss on the assistant's turns
     (minift/align/chat.py), and whether the tuned model reads the history;
  6. (with --plain, on its own) do the instructions matter? The same SFT run three times, the
     instruction examples written with their instructions, with the task name only, and with the
     input only (format_example(..., style=)), scored per seen and unseen type, each model prompted
     as it was trained and with the full instructions.

    python lessons/03_instruction_tuning/walkthrough.py          # or: minift run 03
    python lessons/03_instruction_tuning/walkthrough.py --fast   # the seconds-long version the tests run
    python lessons/03_instruction_tuning/walkthrough.py --mask-ablation   # + part 4's loss-on-the-prompt run
    python lessons/03_instruction_tuning/walkthrough.py --long   # minutes: the run that transfers to unseen types
    python lessons/03_instruction_tuning/walkthrough.py --chat   # part 5 alone: multi-turn chat (about 2 minutes)
    python lessons/03_instruction_tuning/walkthrough.py --plain  # part 6 alone: with vs without instructions (minutes)

Everything it uses lives in the library (minift/align/sft.py, minift/evals.py, minift/tasks.py,
minift/train.py, minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 120   # CPU seconds on the 2-core EPYC VM (measured under load)
FAST_SECONDS = 14

import random
import time
from collections import Counter, defaultdict

from minift import course, world
from minift.evals import TASK_METRIC, generate_responses, mixture, score
from minift.pretrain import forgetting_probe, load_base
from minift.tasks import IGNORE_INDEX, SFTDataset, collate_fn, exact_match, format_example
from minift.train import TrainConfig, evaluate_nll, train
from minift.report import header, table
from minift.validate import count_arg, rate_arg, seed_arg

parser = course.parser(__doc__)
parser.add_argument("--long", action="store_true",
                    help="1500 steps per run on instructions + closed-book QA only, evaluated on the full splits "
                         "(minutes): see the README")
parser.add_argument("--mask-ablation", action="store_true",
                    help="also train the same run with the loss on the prompt too (part 4; on with --long): "
                         "about as long again as the SFT run")
parser.add_argument("--steps", type=count_arg, default=None, help="optimizer steps of each SFT run")
parser.add_argument("--tasks", default=None,
                    help="the other tasks of the mixture, comma-separated (default qa_closed,sentiment,summarization; "
                         "--long: qa_closed)")
parser.add_argument("--lr", type=rate_arg, default=None, help="peak learning rate of each SFT run (default 1e-3; --long: 7e-4)")
parser.add_argument("--seed", type=seed_arg, default=0, help="training seed of both SFT runs (batch order)")
parser.add_argument("--chat", action="store_true",
                    help="part 5 alone: multi-turn chat fine-tuning on TinyWorld dialogues (about 2 minutes)")
parser.add_argument("--plain", action="store_true",
                    help="part 6 alone: the same SFT with the instructions, with the task name only and with the "
                         "input only, on seen and unseen types (minutes; with --long: the --long budget)")
args = course.start("03", parser)         # the base-model check, one thread, the clock: minift/course.py
FAST, DEV = args.fast, args.device         # DEV: --device (cpu unless told), where every model lives
STEPS = args.steps or (4 if FAST else 1500 if args.long else 300)
LR = args.lr or (7e-4 if args.long else 1e-3)
BATCH = 4
N_INSTRUCTIONS = None if not FAST else 100     # training examples of "instructions": None = all of train
N_OTHER = 300 if not FAST else 25              # ... and of each other task in the mixture
# Evaluation slices (most of the default run's time is greedy generation for them). --long keeps the
# full splits; the default run takes the first k examples of each instruction type, in split order.
N_EVAL = 6 if FAST else 100 if args.long else 25       # test examples of each other task
PER_TYPE_VAL = 1 if FAST else None if args.long else 4     # instructions val: 15 seen types (full: 10-20 each, 250)
PER_TYPE_TEST = 2 if FAST else None if args.long else 15   # instructions test: 3 unseen types (full: 70-80 each, 230)
SLACK = 4                                      # new tokens allowed beyond the longest gold response (EOS included)
PROBE = {} if not FAST else {"n_windows": 2, "n_facts": 6}     # forgetting_probe's size
OTHER_TASKS = tuple(t for t in (args.tasks or ("qa_closed" if args.long else "qa_closed,sentiment,summarization"))
                    .split(",") if t)
ECHO = ("<|prompt|>", "<|response|>", "Definition:", "Positive example", "Negative example", "Now do the task",
        "Input:", "Output:", "Reason:", "Question:", "Summarize in", "Is this review")   # pieces of the prompt format


def show(tok, ids):
    """Token ids as readable pieces: 'a|b|c', a newline as \\n."""
    return "|".join(repr(tok.decode([i]))[1:-1] for i in ids)


# ==============================================================================================
base, tok = load_base(device=DEV)
T = base.config.block_size
W = world.get_world()

# ==============================================================================================
# Part 5 (--chat, on its own): multi-turn chat. The same SFT loss over a conversation: every
# assistant turn is a response (minift/align/chat.py), <|endoftext|> ends a turn, and a later
# question says "she" where the first one named the person, so answering it needs the history.
if args.chat:
    import copy

    from minift.align.chat import encode_chat, last_turn_accuracy, reply, train_chat
    CHAT_STEPS, CHAT_BATCH, N_CHAT = (2, 4, 4) if FAST else (120, 16, 60)
    header(f"5. Chat: dialogues of 2-3 turns about one person, full fine-tuning, {CHAT_STEPS} steps x {CHAT_BATCH}, "
           f"lr 3e-4")
    dlg = {"train": world.task("dialogue", "train"), "val": world.task("dialogue", "val")[:N_CHAT]}
    ex = dlg["val"][0]
    ids, mask = encode_chat(tok, ex["turns"])
    print(f"{len(dlg['train'])} training dialogues. One val dialogue as the model sees it ({len(ids)} tokens; the loss "
          f"covers the {sum(mask)} marked ^):")
    print("  " + show(tok, ids))
    print("  " + "|".join(("^" if m else " ") * len(repr(tok.decode([i]))[1:-1]) for i, m in zip(ids, mask)))
    rows = [("base", last_turn_accuracy(base, tok, dlg["val"]), last_turn_accuracy(base, tok, dlg["val"], False), "-")]
    chat_models = {}
    for name, last_only in (("loss on every assistant turn", False), ("loss on the last turn only", True)):
        m = copy.deepcopy(base)
        for q in m.parameters():
            q.requires_grad_(True)
        t0 = course.clock()
        train_chat(m, dlg["train"], TrainConfig(steps=CHAT_STEPS, batch_size=CHAT_BATCH, lr=3e-4, seed=0,
                                                warmup_steps=max(1, CHAT_STEPS // 10), progress=False, desc="chat"),
                   tok=tok, last_turn_only=last_only)
        rows.append((name, last_turn_accuracy(m, tok, dlg["val"]), last_turn_accuracy(m, tok, dlg["val"], False),
                     f"{course.clock() - t0:.1f}s"))
        chat_models[name] = m
    table(("model", "last answer right, with the history", "without it", f"train + eval {course.clock_name()}"),
          [(n, f"{a:.2f}", f"{b:.2f}", t) for n, a, b, t in rows])
    print(f"last answer right: the fact the last question asks for is in the greedy reply, on {len(dlg['val'])} val "
          f"dialogues (people no training dialogue is about). 'without it': the last question alone, which says "
          f"only 'she' or 'he'.")
    print("\na conversation with the tuned model, each reply generated after the model's own earlier replies "
          "(it stops at its end-of-turn token):")
    history = []
    for turn in ex["turns"]:
        got = reply(chat_models["loss on every assistant turn"], tok, history, turn["user"])
        print(f"  user:      {turn['user']}\n  assistant: {got}")
        history.append({"user": turn["user"], "assistant": got})
    print(f"\ntotal: {course.elapsed():.1f}s")
    raise SystemExit(0)


def per_type(exs, k):
    """The first k examples of each instruction type, in the split's order (all of them if k is None)."""
    out, seen = [], Counter()
    for e in exs:
        seen[e["task"]] += 1
        if k is None or seen[e["task"]] <= k:
            out.append(e)
    return out


# ==============================================================================================
# Part 6 (--plain, on its own): do the instructions matter? The same examples, steps, lr and seed,
# with the prompt stripped (minift/tasks.py: format_example(..., style=)): "plain" keeps the input
# only (Natural Instructions' no-instruction baseline), "name" the task type's name and the input
# (FLAN's dataset-name ablation). Each model is then prompted as it was trained, and with the full
# instructions (FLAN's protocol: otherwise an unseen task is not even named).
if args.plain:
    P_STEPS = args.steps or (4 if FAST else 1500 if args.long else 400)
    P_LR = args.lr or (7e-4 if args.long else 1e-3)
    P_TASKS = tuple(t for t in (args.tasks or "qa_closed").split(",") if t)
    P_VAL, P_TEST, P_QA = (1, 1, 2) if FAST else (None, None, 100) if args.long else (8, 30, 50)
    STYLES = {"full": "instructions", "name": "task name", "plain": "input only"}
    header(f"6. Do the instructions matter? The same examples with the instructions, with the task name only, and "
           f"with the input only: {P_STEPS} steps x {BATCH}, lr {P_LR:g}, seed {args.seed}")
    ex = next(e for e in world.task("instructions", "train") if e["task"] == "town_of_person")
    for style, what in STYLES.items():
        p, r = format_example("instructions", ex, style=style)
        print(f"format_example('instructions', example, style={style!r}) ({what}): "
              f"{len(tok.encode_prompt(p))} prompt tokens, response {r!r}")
        print("    " + p.replace("\n", "\n    "))
    inst = world.task("instructions", "train")[:N_INSTRUCTIONS]
    others = [pair for t in P_TASKS for pair in mixture([t], "train", N_OTHER)]
    p_cfg = TrainConfig(steps=P_STEPS, batch_size=BATCH, lr=P_LR, min_lr_ratio=0.1, warmup_steps=max(1, P_STEPS // 10),
                        weight_decay=0.0, seed=args.seed, progress=False, desc="sft")
    print(f"\neach run: {len(inst):,} instruction examples in its style + the same {len(others)} of "
          f"{', '.join(P_TASKS) or 'nothing else'}; full fine-tuning, {P_STEPS} steps x {BATCH}, AdamW lr {P_LR:g} "
          f"(warmup {p_cfg.warmup_steps}, cosine to {P_LR * 0.1:g}), seed {args.seed}: the same examples in the same "
          f"order, only the instruction prompts differ.")
    p_val = per_type(world.task("instructions", "val"), P_VAL)
    p_test = per_type(world.task("instructions", "test"), P_TEST)
    p_qa = world.task("qa_closed", "test")[:P_QA]

    def answers(model, exs, style):
        """Greedy responses of model to the instruction examples exs, prompted in style; one batch per
        type, with max_new_tokens its longest gold response (with EOS) + SLACK."""
        out = [""] * len(exs)
        for k in dict.fromkeys(e["task"] for e in exs):
            idx = [i for i, e in enumerate(exs) if e["task"] == k]
            n_new = max(len(tok.encode(tok.response_text(exs[i]["output"]))) + 1 for i in idx) + SLACK
            got = generate_responses(model, tok, [format_example("instructions", exs[i], style=style)[0] for i in idx], n_new)
            for i, x in zip(idx, got):
                out[i] = x
        return out

    def p_measure(model, style):
        """Exact match per instruction type (seen: val; unseen: test) and on closed-book QA."""
        res = {}
        for exs in (p_val, p_test):
            for e, x in zip(exs, answers(model, exs, style)):
                res.setdefault(e["task"], []).append(exact_match(x, e["output"]))
        qa = generate_responses(model, tok, [format_example("qa_closed", e)[0] for e in p_qa], 8)
        return {"type": {k: sum(v) / len(v) for k, v in res.items()},
                "seen": sum(sum(v) for k, v in res.items() if k not in world.HELDOUT_INSTRUCTION_TYPES) / len(p_val),
                "unseen": sum(sum(v) for k, v in res.items() if k in world.HELDOUT_INSTRUCTION_TYPES) / len(p_test),
                "qa": score("qa_closed", qa, p_qa)}

    cols = [("base", "full", base, None)]
    for style in STYLES:
        pairs6 = [format_example("instructions", e, style=style) for e in inst] + others
        random.Random(0).shuffle(pairs6)                   # the same permutation for every style
        m, _ = load_base(device=DEV)
        t0 = course.clock()
        train(m, SFTDataset(tok, pairs6, T), p_cfg, collate_fn=collate_fn(tok.pad_id))
        print(f"  trained on {STYLES[style]}: {course.clock() - t0:.1f}s {course.clock_name()}", flush=True)
        cols += [(STYLES[style], s, m, style) for s in dict.fromkeys((style, "full"))]
    got = [p_measure(m, s) for _, s, m, _ in cols]
    heads = [f"{tr} / {STYLES[s]}" if tr != "base" else "base" for tr, s, _, _ in cols]
    print(f"\nexact match. Columns: trained on / prompted with. Seen types: the first {P_VAL or 'all'} val examples of "
          f"each of the 15 ({len(p_val)}); unseen: the first {P_TEST or 'all'} test examples of each of the 3 "
          f"({len(p_test)}); qa_closed: {len(p_qa)} test questions (the same prompt in every run).")
    types = sorted(got[0]["type"], key=lambda k: (k in world.HELDOUT_INSTRUCTION_TYPES, k))
    table(("", "n") + tuple(heads),
          [("seen types (val)", str(len(p_val))) + tuple(f"{g['seen']:.3f}" for g in got),
           ("unseen types (test)", str(len(p_test))) + tuple(f"{g['unseen']:.3f}" for g in got),
           ("qa_closed test", str(len(p_qa))) + tuple(f"{g['qa']:.3f}" for g in got)]
          + [(k + (" (unseen)" if k in world.HELDOUT_INSTRUCTION_TYPES else ""),
              str(sum(e["task"] == k for e in p_val + p_test))) + tuple(f"{g['type'][k]:.2f}" for g in got)
             for k in types])
    print("\none unseen and one seen example, each model prompted as it was trained:")
    for e in (next(e for e in p_test if e["task"] == "job_of_person"), next(e for e in p_val if e["task"] == "town_of_person")):
        print(f"  [{e['task']}] Input: {e['input']!r}  gold: {e['output']!r}")
        for h, (tr, s, m, own) in zip(heads, cols):
            if own in (None, s):
                print(f"      {h:<34} {answers(m, [e], s)[0][:60]!r}")
    by = {(own, s): g for (_, s, _, own), g in zip(cols, got)}            # (trained style, prompt style) -> scores
    full_, plain_ = by["full", "full"], max(by["plain", "plain"]["unseen"], by["plain", "full"]["unseen"])
    course.verdict(f"\nclaim (Mishra et al. 2022; Wei et al. 2022, sec. 4.3): the same examples transfer better to "
                   f"unseen task types with their instructions than without. Unseen types: instructions "
                   f"{full_['unseen']:.3f}, input only {plain_:.3f} (the better of its two prompts), base "
                   f"{got[0]['unseen']:.3f} -> {'holds' if full_['unseen'] > plain_ else 'does not hold'} at this budget")
    course.verdict(f"seen types, instructions {full_['seen']:.3f} vs input only {by['plain', 'plain']['seen']:.3f}: "
                   f"the instruction says which of the tasks that share an input is asked -> "
                   f"{'holds' if full_['seen'] > by['plain', 'plain']['seen'] else 'does not hold'}")
    print(f"\ntotal: {course.elapsed():.1f}s")
    raise SystemExit(0)


inst_val = per_type(world.task("instructions", "val"), PER_TYPE_VAL)
inst_test = per_type(world.task("instructions", "test"), PER_TYPE_TEST)
evals = {("instructions", "val"): inst_val, ("instructions", "test"): inst_test}
evals.update({(t, "test"): world.task(t, "test")[:N_EVAL] for t in OTHER_TASKS})
print(f"The base model: {base.num_parameters():,} parameters, context {T} tokens, trained only on TinyWorld's "
      f"plain text (lesson 01).")
print(f"Task types of 'instructions': {len(world.INSTRUCTION_TYPES)}; train/val hold "
      f"{len(world.INSTRUCTION_TYPES) - len(world.HELDOUT_INSTRUCTION_TYPES)}, test holds only the 3 never "
      f"trained on: {', '.join(world.HELDOUT_INSTRUCTION_TYPES)}.")

# ==============================================================================================
header("1. The template: an instruction example in token space, and its loss mask")

ex = next(e for e in world.task("instructions", "train") if e["task"] == "town_of_person")
prompt, response = format_example("instructions", ex)
print("format_example('instructions', example) -> (prompt, response). The prompt:\n")
print("    " + prompt.replace("\n", "\n    "))
print(f"\nthe response: {response!r}")
ids, mask = tok.encode_pair(prompt, response)
n_p = mask.index(1)
print(f"\ntok.encode_pair(prompt, response) -> {len(ids)} ids: <|prompt|> + {n_p - 2} prompt tokens + "
      f"<|response|>, then {len(ids) - n_p - 1} response token(s) + <|endoftext|>")
print(f"  first prompt tokens:  {show(tok, ids[:14])} ...")
print(f"  last prompt tokens:   ... {show(tok, ids[n_p - 8:n_p])}")
print(f"  response + EOS:       {show(tok, ids[n_p:])}")
item = SFTDataset(tok, [(prompt, response)], T)[0]
kept = (item["targets"] != IGNORE_INDEX).nonzero().flatten().tolist()
print(f"\nSFTDataset item: idx = ids[:-1] ({len(item['idx'])} tokens), targets = ids[1:] with -100 on the prompt.")
print(f"  {'pos':>4}  {'idx (read)':<16}{'target (predicted)':<22}loss?")
for t in list(range(n_p - 4, len(item["idx"]))):
    tgt = int(item["targets"][t])
    read = repr(tok.decode([int(item["idx"][t])]))[1:-1]
    want = repr(tok.decode([int(ids[t + 1])]))[1:-1]
    print(f"  {t:>4}  {read:<16}{want:<22}{'yes' if tgt != IGNORE_INDEX else 'no  (-100)'}")
print(f"  loss is taken on {len(kept)} of {len(item['targets'])} targets ({len(kept) / len(item['targets']):.1%}); "
      f"with train_on_prompt=True on all {len(item['targets'])}.")

print("\nThe first response token. In the base model's corpus an answer word almost always follows a space, "
      "and byte-level BPE\nhas separate tokens for the two. Without the space, common answers split into rare "
      "pieces the base model has hardly seen:")
for w in ("smith", "parrot", "negative", W.people[0].home):
    print(f"  {w!r:>12} -> {show(tok, tok.encode(w)):<22} {' ' + w!r:>13} -> {show(tok, tok.encode(' ' + w))}")
print(f"So encode_pair encodes Tokenizer.response_text(response), with one leading space: "
      f"response_text({response!r}) = {tok.response_text(response)!r}.\nGenerated answers are scored after "
      f".strip(), so the space never counts.")

# ==============================================================================================
header("2. Before: the base model on instructions (and the other tasks)")


def budget(task, exs):
    """max_new_tokens for a group of examples: SLACK more than its longest gold response needs."""
    return max(len(tok.encode(tok.response_text(format_example(task, e)[1]))) + 1 for e in exs) + SLACK


# Greedy generation, one group per task and per instruction type, each with its own max_new_tokens:
# the base model never stops on its own, and one runaway keeps its whole batch decoding.
groups = defaultdict(list)          # (task, split) -> [(example indices, max_new_tokens)]
for (task, split), exs in evals.items():
    kind_of = [e["task"] if task == "instructions" else task for e in exs]
    for k in dict.fromkeys(kind_of):
        idx = [i for i, x in enumerate(kind_of) if x == k]
        groups[task, split].append((idx, budget(task, [exs[i] for i in idx])))


def measure(model):
    """Every metric of part 2-4: greedy responses, scores per task and instruction type, the
    response NLL on held-out instructions, and the language model's forgetting probe."""
    out = {"resp": {}, "score": {}, "per_type": {}}
    for (task, split), exs in evals.items():
        resp = [""] * len(exs)
        for idx, n_new in groups[task, split]:
            for i, x in zip(idx, generate_responses(model, tok, [format_example(task, exs[i])[0] for i in idx], n_new)):
                resp[i] = x
        out["resp"][task, split], out["score"][task, split] = resp, score(task, resp, exs)
        if task == "instructions":
            by = defaultdict(list)
            for e, x in zip(exs, resp):
                by[e["task"]].append(exact_match(x, e["output"]))
            out["per_type"].update({k: sum(v) / len(v) for k, v in by.items()})
    for split, exs in (("val", inst_val), ("test", inst_test)):
        data = SFTDataset(tok, [format_example("instructions", e) for e in exs], T)
        out[f"nll_{split}"] = evaluate_nll(model, data, batch_size=16, collate_fn=collate_fn(tok.pad_id))
    everything = [x for rs in out["resp"].values() for x in rs]
    out["echo"] = sum(any(k in x for k in ECHO) for x in everything) / len(everything)
    out["probe"] = forgetting_probe(model, tok, **PROBE)
    return out


def sizes(k, exs):
    return f"{len(exs)} ({'all' if k is None else f'the first {k}'} of each type)"


print(f"Evaluation sets: instructions val {sizes(PER_TYPE_VAL, inst_val)}, test {sizes(PER_TYPE_TEST, inst_test)}, "
      f"and {N_EVAL} test examples of each other task.\nGreedy generation; max_new_tokens per task or type is its "
      f"longest gold response (with EOS) + {SLACK}:")
print("  " + ", ".join(f"{t if t != 'instructions' else exs[idx[0]]['task']} {n}" for (t, s), exs in evals.items()
                       for idx, n in groups[t, s]) + "\n")
t2 = time.perf_counter()
before = measure(base)
show_ids = [next(i for i, e in enumerate(inst_test) if e["task"] == k) for k in world.HELDOUT_INSTRUCTION_TYPES
            if any(e["task"] == k for e in inst_test)]
seen_ids = [next(i for i, e in enumerate(inst_val) if e["task"] == k)
            for k in ("town_of_person", "last_item", "past_tense") if any(e["task"] == k for e in inst_val)]
print("Greedy responses of the base model to unseen instruction types (test) and seen types (val):")
for split, exs, pick in (("test", inst_test, show_ids), ("val", inst_val, seen_ids)):
    for i in pick:
        e = exs[i]
        print(f"  [{split}] {e['task']}: {e['definition']}\n        Input: {e['input']!r}  gold: {e['output']!r}"
              f"\n        base: {before['resp']['instructions', split][i][:90]!r}")
rows = [(f"instructions {s} ({'seen' if s == 'val' else 'unseen'} types)", "exact match", str(len(evals['instructions', s])),
         f"{before['score']['instructions', s]:.3f}") for s in ("val", "test")]
rows += [(f"{t} test", TASK_METRIC[t].replace("_", " "), str(len(evals[t, 'test'])), f"{before['score'][t, 'test']:.3f}")
         for t in OTHER_TASKS]
print()
table(("task", "metric", "n", "base"), rows)
p0 = before["probe"]
print(f"\nThe base model does not answer: it continues the text (a pronoun, a half sentence), because nothing in "
      f"its corpus\nlooks like <|prompt|> ... <|response|>. Its language model: pretraining-val perplexity "
      f"{p0['pretrain_ppl']:.2f}, fact recall {p0['fact_accuracy']:.1%}.")
print(f"part 2: {time.perf_counter() - t2:.1f}s", flush=True)

# ==============================================================================================
header("3. SFT: full fine-tuning on an instruction mixture, loss on the response only")

t3 = time.perf_counter()
parts = {"instructions": mixture(["instructions"], "train", N_INSTRUCTIONS)}
parts.update({t: mixture([t], "train", N_OTHER) for t in OTHER_TASKS})
pairs = [pair for ps in parts.values() for pair in ps]
random.Random(0).shuffle(pairs)                       # (the loop draws random batches anyway)
n_long = sum(len(tok.encode_pair(p, r)[0]) > T + 1 for p, r in pairs)
print(f"mixture: {len(pairs):,} (prompt, response) pairs: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
      + f"; {n_long} prompt(s) longer than the {T}-token context lose their oldest tokens.")
cfg = TrainConfig(steps=STEPS, batch_size=BATCH, lr=LR, min_lr_ratio=0.1, warmup_steps=max(1, STEPS // 10),
                  weight_decay=0.0, seed=args.seed, progress=False, desc="sft")
print(f"full fine-tuning of all {base.num_parameters():,} parameters: {cfg.steps} steps x batch {cfg.batch_size} "
      f"({cfg.steps * cfg.batch_size / len(pairs):.2f} epochs), AdamW lr {cfg.lr:g} (warmup {cfg.warmup_steps}, "
      f"cosine to {cfg.lr * cfg.min_lr_ratio:g}), seed {cfg.seed}")


def finetune(train_on_prompt):
    """A fresh copy of the base, trained on the mixture; returns (model, history, seconds)."""
    model, _ = load_base(device=DEV)
    data = SFTDataset(tok, pairs, T, train_on_prompt=train_on_prompt)
    t0 = time.perf_counter()
    hist = train(model, data, cfg, collate_fn=collate_fn(tok.pad_id))
    return model, hist, time.perf_counter() - t0


sft, h, secs = finetune(train_on_prompt=False)
print("\ntrain loss (mean over the response tokens of that step's batch):")
marks = sorted({0, 4, 9} | {len(h) * k // 5 - 1 for k in range(1, 6)})
table(("step", "lr", "loss", "tokens trained"),
      [(str(h[i]["step"]), f"{h[i]['lr']:.1e}", f"{h[i]['loss']:.3f}", f"{h[i]['tokens']:,}") for i in marks if i < len(h)])
print(f"trained in {secs:.1f}s ({cfg.steps / secs:.1f} steps/s)")
after = measure(sft)
print("\nthe same prompts after SFT:")
for split, exs, pick in (("test", inst_test, show_ids), ("val", inst_val, seen_ids)):
    for i in pick:
        e = exs[i]
        print(f"  [{split}] {e['task']}: gold {e['output']!r}\n        base: {before['resp']['instructions', split][i][:70]!r}"
              f"\n        SFT:  {after['resp']['instructions', split][i][:70]!r}")
for t in OTHER_TASKS:
    e = evals[t, "test"][0]
    print(f"  [test] {t}: {format_example(t, e)[0].splitlines()[-1][:80]!r}\n        gold {format_example(t, e)[1]!r}"
          f"\n        SFT:  {after['resp'][t, 'test'][0][:80]!r}")
print()
table(("task", "metric", "n", "base", "SFT"), [r + (f"{after['score'][key]:.3f}",) for r, key in zip(rows, evals)])
if "sentiment" in OTHER_TASKS:
    gold_pos = sum(int(e["label"]) for e in evals["sentiment", "test"]) / len(evals["sentiment", "test"])
    said = Counter(r.split()[0].lower() if r.split() else "(nothing)" for r in after["resp"]["sentiment", "test"])
    print(f"sentiment: {gold_pos:.0%} of the test reviews are positive; SFT's first words: "
          + ", ".join(f"{w!r} {n / len(evals['sentiment', 'test']):.0%}" for w, n in said.most_common(3)))
p1 = after["probe"]
print(f"\nforgetting_probe, base -> SFT: pretraining-val perplexity {p0['pretrain_ppl']:.2f} -> "
      f"{p1['pretrain_ppl']:.2f} (x{p1['pretrain_ppl'] / p0['pretrain_ppl']:.1f}), fact recall "
      f"{p0['fact_accuracy']:.1%} -> {p1['fact_accuracy']:.1%}")
print(f"part 3: {time.perf_counter() - t3:.1f}s", flush=True)

# ==============================================================================================
ABLATION = args.mask_ablation or args.long      # --fast smoke-tests the default path
t4 = time.perf_counter()
if ABLATION:
    header("4. Why the loss mask matters: the same run with the loss on the prompt too")
    n_all = int((SFTDataset(tok, pairs[:1], T, train_on_prompt=True)[0]["targets"] != IGNORE_INDEX).sum())
    n_resp = int((SFTDataset(tok, pairs[:1], T)[0]["targets"] != IGNORE_INDEX).sum())
    print(f"SFTDataset(..., train_on_prompt=True): every target counts ({n_all} in the first pair, against {n_resp} with "
          f"the mask).\nSame pairs, steps, batch, lr and seed: the batches are identical, only the targets differ.")
    sft_p, h_p, secs_p = finetune(train_on_prompt=True)
    print(f"trained in {secs_p:.1f}s; its train loss ({h_p[-1]['loss']:.3f} at the end) averages over every token, so it "
          f"is not comparable with part 3's: compare held-out metrics instead.\n")
    cols = ("base", "SFT (response loss)", "SFT + prompt loss")
    res = [before, after, measure(sft_p)]
else:
    header("4. Base vs SFT, task by task and type by type (--mask-ablation adds the loss-on-the-prompt run)")
    print("The third column of the README's tables, the same run with the loss on the prompt too, needs "
          "--mask-ablation (about as long again as part 3's SFT run).\n")
    cols = ("base", "SFT (response loss)")
    res = [before, after]
table(("task", "metric", "n") + cols,
      [r[:3] + tuple(f"{m['score'][key]:.3f}" for m in res) for r, key in zip(rows, list(evals))]
      + [(f"response NLL, instructions {s}", "nats/token", str(len(evals['instructions', s])))
         + tuple(f"{m[f'nll_{s}']:.3f}" for m in res) for s in ("val", "test")]
      + [("echoes the prompt format", "share of all responses", str(sum(map(len, evals.values()))))
         + tuple(f"{m['echo']:.1%}" for m in res),
         ("pretraining-val perplexity", "forgetting_probe", "-") + tuple(f"{m['probe']['pretrain_ppl']:.2f}" for m in res),
         ("fact recall", "forgetting_probe", "-") + tuple(f"{m['probe']['fact_accuracy']:.1%}" for m in res)])

# A floor for the seen types: always give the answer that type's training examples give most often.
train_answers = defaultdict(Counter)
for e in world.task("instructions", "train"):
    train_answers[e["task"]][e["output"]] += 1
constant = {k: sum(exact_match(c.most_common(1)[0][0], e["output"]) for e in inst_val if e["task"] == k)
            / max(1, sum(e["task"] == k for e in inst_val)) for k, c in train_answers.items()}
print("\nexact match per instruction type (val: seen in training; test: never seen). 'constant' = always "
      "answering the\ntype's most frequent training answer (e.g. 'yes'), a floor no reading is needed for:")
types = sorted(before["per_type"], key=lambda k: (k in world.HELDOUT_INSTRUCTION_TYPES, k))
table(("type", "split", "n", "constant") + cols,
      [(k, "test" if k in world.HELDOUT_INSTRUCTION_TYPES else "val", str(sum(e["task"] == k for e in inst_test + inst_val)),
        f"{constant[k]:.2f}" if k in constant else "-") + tuple(f"{m['per_type'][k]:.2f}" for m in res)
       for k in types])

# What *kind* of answer does each model give to the unseen types? (a job, a town, a person, ...)
kinds = [("a person", {p.name for p in W.people}), ("a town", {t.name for t in W.towns}), ("a job", set(world.JOBS)),
         ("an animal", set(world.PETS) | set(world.HELDOUT_ANIMALS)), ("a thing", set(world.OBJECTS)),
         ("a food", set(world.FOODS)), ("yes/no", {"yes", "no"})]


def kind(text):
    s = text.strip().rstrip(".")
    if s.isdigit():
        return "a number"
    hit = next((k for k, vals in kinds if s in vals), None)
    return hit or ("one other word" if len(s.split()) == 1 else "a sentence" if s else "nothing")


print("\nwhat kind of answer the unseen types get (share of that type's test responses):")
krows = []
for k in world.HELDOUT_INSTRUCTION_TYPES:
    idx = [i for i, e in enumerate(inst_test) if e["task"] == k]
    if not idx:
        continue
    gold = Counter(kind(inst_test[i]["output"]) for i in idx).most_common(1)[0][0]
    for col, m in zip(cols, res):
        c = Counter(kind(m["resp"]["instructions", "test"][i]) for i in idx)
        krows.append((k, f"(gold: {gold})", col, ", ".join(f"{v / len(idx):.0%} {n}" for n, v in c.most_common(3))))
table(("type", "gold kind", "model", "answers"), krows)

# Whose job? qa_closed trains "What is X's job?" for the train people only; the val and test
# people's jobs come from pretraining alone.
job_idx = [i for i, e in enumerate(inst_test) if e["task"] == "job_of_person"]
if job_idx:
    split_of = {p.name: p.split for p in W.people}
    print("\njob_of_person, right answers by whose job is asked (qa_closed asks the jobs of the train people only):")
    for col, m in zip(cols[1:], res[1:]):
        hit = {"train": [0, 0], "val/test": [0, 0]}
        for i in job_idx:
            h = hit["train" if split_of[inst_test[i]["input"]] == "train" else "val/test"]
            h[0] += int(exact_match(m["resp"]["instructions", "test"][i], inst_test[i]["output"]))
            h[1] += 1
        print(f"  {col:<20} train people {hit['train'][0]}/{hit['train'][1]}, "
              f"val and test people {hit['val/test'][0]}/{hit['val/test'][1]}")

print("\nsample generations side by side (unseen types, then seen types, then the other tasks):")
for split, exs, pick in (("test", inst_test, show_ids), ("val", inst_val, seen_ids)):
    for i in pick:
        e = exs[i]
        print(f"  [{split}] {e['task']}  Input: {e['input']!r}  gold: {e['output']!r}")
        for col, m in zip(cols[1:], res[1:]):
            print(f"        {col:<20} {m['resp']['instructions', split][i][:80]!r}")
for t in OTHER_TASKS:
    e = evals[t, "test"][1]
    print(f"  [test] {t}  gold: {format_example(t, e)[1]!r}")
    for col, m in zip(cols[1:], res[1:]):
        print(f"        {col:<20} {m['resp'][t, 'test'][1][:80]!r}")
print(f"part 4: {time.perf_counter() - t4:.1f}s")
print(f"\ntotal: {course.elapsed():.1f}s")
