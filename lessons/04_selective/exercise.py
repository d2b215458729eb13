"""Lesson 04 exercise: choose which parameters train, and count what that costs.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 04`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The names are GPT-2 parameter names as `model.named_parameters()` gives them:
"transformer.h.3.attn.c_attn.bias", "transformer.wte.weight", "lm_head.weight", and, for a
model wrapped in a classifier (minift.heads), "body.transformer.h.0.ln_1.weight" and the new task
head "head.weight", "head.bias". Rules: plain Python (str methods, re); do not call minift.
"""
import math  # noqa: F401  (math.prod)
import re  # noqa: F401


def run_bitfit_select(names):
    """BitFit (Ben Zaken et al., 2022): train the bias terms only, plus the new task head.

        selected = { n : the last dot-separated part of n is "bias" }
                 + { n : one of the other parts is exactly "head" }     (head.weight, body.head.bias)

    "lm_head" is NOT a task head: it is the language model's output layer (tied to the token
    embedding), and it has no bias. names: list of str. Returns a list of str, any order, no
    duplicates. (The names always contain at least one bias or head parameter.)
    """
    raise NotImplementedError("run_bitfit_select: not written yet; its docstring and "
                              "lessons/04_selective/README.md, \"The maths\", say what it computes")


def run_layer_select(names, layers):
    """Train only some transformer blocks (e.g. the last two: layers = [-2, -1]).

        n_layer  = 1 + the largest i in any name "...transformer.h.<i>. ..."
        blocks   = { i if i >= 0 else n_layer + i  for i in layers }     (-1 is the last block)
        selected = { n : n contains "transformer.h.<i>." with i in blocks }  +  the task head (head.*)

    names: list of str; layers: list of ints in [-n_layer, n_layer - 1] (duplicates allowed:
    with 4 blocks, [3, -1] is one block). Returns a list of str, any order, no duplicates.
    Careful: "transformer.h.1." must not match "transformer.h.12.".
    """
    raise NotImplementedError("run_layer_select: not written yet; its docstring and "
                              "lessons/04_selective/README.md, \"The maths\", say what it computes")


def run_trainable_share(shapes, trainable):
    """The share of the model that trains, counted in parameters (numbers), not in tensors:

        share = sum_{n in trainable} prod(shapes[n])  /  sum_{n in shapes} prod(shapes[n])

    A scalar parameter has shape () and counts 1 (math.prod(()) == 1). shapes: dict name -> tuple
    of ints; trainable: list of names (a subset; may be empty). Returns a float in [0, 1].
    """
    raise NotImplementedError("run_trainable_share: not written yet; its docstring and "
                              "lessons/04_selective/README.md, \"The maths\", say what it computes")
