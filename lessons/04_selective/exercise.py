"""Lesson 04 exercise: choose which parameters train, and count what that costs.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 04`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The names are GPT-2 parameter names as `model.named_parameters()` gives them:
"transformer.h.3.attn.c_attn.bias", "transformer.wte.weight", "lm_head.weight", and, for a
model wrapped in a classifier (minift.heads), "body.transformer.h.0.ln_1.weight" and the new task
head "head.weight", "head.bias". Rules: plain Python (str methods, re, math); do not call minift.

Below the stubs, `try_bitfit_vs_full()` is the starter of the README's exercise 5 (it calls minift):

    python lessons/04_selective/exercise.py try_bitfit_vs_full
"""
import math  # noqa: F401
import re  # noqa: F401


def run_bitfit_select(names):
    """BitFit (Ben Zaken et al., 2022): train the bias terms only, plus the new task head.

        selected = { n : the last dot-separated part of n is "bias" }
                 ∪ { n : one of the other parts is exactly "head" }     (head.weight, body.head.bias)

    "lm_head" is NOT a task head: it is the language model's output layer (tied to the token
    embedding), and it has no bias. names: list of str. Returns a list of str, any order, no
    duplicates. (The names always contain at least one bias or head parameter.)
    """
    raise NotImplementedError("run_bitfit_select: not written yet; lessons/04_selective/README.md, "
                              "\"The maths\", equation (4.2), says what it computes")


def run_layer_select(names, layers):
    """Train only some transformer blocks (e.g. the last two: layers = [-2, -1]).

        n_layer  = 1 + the largest i in any name "...transformer.h.<i>. ..."
        blocks   = { i if i >= 0 else n_layer + i  for i in layers }     (-1 is the last block)
        selected = { n : n contains "transformer.h.<i>." with i in blocks }  ∪  the task head (head.*)

    names: list of str; layers: list of ints in [-n_layer, n_layer - 1] (duplicates allowed:
    with 4 blocks, [3, -1] is one block). Returns a list of str, any order, no duplicates.
    Careful: "transformer.h.1." must not match "transformer.h.12.".
    """
    raise NotImplementedError("run_layer_select: not written yet; lessons/04_selective/README.md, "
                              "\"The maths\", equation (4.3), says what it computes")


def run_trainable_share(shapes, trainable):
    """The share of the model that trains, counted in parameters (numbers), not in tensors:

        share = sum_{n in trainable} prod(shapes[n])  /  sum_{n in shapes} prod(shapes[n])

    A scalar parameter has shape () and counts 1 (the product of no factors is 1). shapes: dict
    name -> tuple of ints; trainable: list of names (a subset; may be empty). Returns a float in [0, 1].
    """
    raise NotImplementedError("run_trainable_share: not written yet; lessons/04_selective/README.md, "
                              "\"The maths\", equation (4.4), says what it computes")


# ---- "try it" starters (they call minift; run: python lessons/04_selective/exercise.py try_<what>) ----

def try_bitfit_vs_full(steps=100, n_sentences=6, surnames=(" Ward", " Moss", " Hart")):
    """Exercise 5's starter (under a minute): trains BitFit and full fine-tuning on lesson 04's NER task
    (the lesson's recipes: 100 steps x 16, lr 1e-2 and 1e-3), prints the first dev sentences whose
    tags differ, word / gold / BitFit / full side by side, then how the tokenizer splits a few surnames."""
    import torch
    from minift import course, world
    from minift.heads import encode_ner
    from minift.peft.selective import SelectiveConfig
    from minift.pretrain import load_base

    torch.set_num_threads(1)
    _, tok = load_base()
    ner_all = world.task("ner", "train")
    ner = {"train": ner_all[:-200], "dev": ner_all[-200:], "test": world.task("ner", "test")[:40]}
    items = {s: encode_ner(tok, v, world.NER_TAGS, 128) for s, v in ner.items()}
    train_items = [{"idx": it["idx"], "labels": it["labels"]} for it in items["train"]]
    bench = course.Bench({"BitFit": SelectiveConfig(param_types=["bias"]), "full": None}, tok,
                         (ner, items, train_items), steps=steps, batch=16, warmup_steps=max(1, steps // 10))
    runs = {m: bench.run(m, lr) for m, lr in (("BitFit", 1e-2), ("full", 1e-3))}
    shown = 0
    for i, e in enumerate(ner["dev"]):
        bit, full = runs["BitFit"]["pred"]["dev"][i], runs["full"]["pred"]["dev"][i]
        if bit == full or shown == n_sentences:
            continue
        shown += 1
        print(f"\ndev sentence {i}:  word / gold / BitFit / full")
        for w, g, b, f in zip(e["tokens"], e["tags"], bit, full):
            print(f"  {w:<12} {g:<9} {b:<9} {f:<9}{'  <-' if b != g else ''}")
    for s in surnames:
        print(f"{s!r} -> pieces {[tok.decode([t]) for t in tok.encode(s)]}")


if __name__ == "__main__":         # python lessons/04_selective/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
