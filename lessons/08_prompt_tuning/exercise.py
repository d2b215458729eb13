"""Lesson 08 exercise: the four rules that make prompt tuning correct, as plain functions.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 08`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional); do not call minift.
"""
import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_soft_prompt(embeds, prompt, attention_mask):
    """Prepend the soft prompt P to every row, and tell the attention mask about it:

        inputs_embeds  = [P ; embeds]      (B, n + T, C)   P (n, C) is the same for every row
        attention_mask = [1 ... 1 ; mask]  (B, n + T)      the n virtual tokens are real tokens

    embeds: (B, T, C) float; prompt: (n, C) float, n may be 0 (then both come back unchanged);
    attention_mask: (B, T) of 0/1 (padding may be anywhere). Return the pair (inputs_embeds,
    attention_mask); the values of P and embeds must come through unchanged, bit for bit.
    """
    raise NotImplementedError("run_soft_prompt: not written yet; its docstring and "
                              "lessons/08_prompt_tuning/README.md, \"The maths\", say what it computes")


def run_prompt_init_from_text(token_embeds, n):
    """The "text" initialisation of an n-vector prompt from a text's m token embeddings (m, C):

        P_i = token_embeds[i mod m]          i = 0 .. n-1                  (n, C)

    so a text longer than the prompt is cut to its first n tokens, and a shorter one is repeated
    (t0 t1 t2 t0 t1 ... for m = 3). An empty text (m = 0) or n < 1 must raise ValueError.
    """
    raise NotImplementedError("run_prompt_init_from_text: not written yet; its docstring and "
                              "lessons/08_prompt_tuning/README.md, \"The maths\", say what it computes")


def run_prompt_positions(attention_mask, n):
    """The learned-position index GPT-2 gives every slot of the prompted sequence [P ; tokens]:

        the virtual tokens: 0, 1, ..., n-1
        a real token (mask 1): n + (the number of real tokens before it in its row)

    attention_mask: (B, T) of 0/1. Returns an integer tensor (B, n + T). The value at a padding
    slot does not matter (the model never attends to it). This is the rule that makes a prompt
    initialised from a text exactly the same as typing that text in front.
    """
    raise NotImplementedError("run_prompt_positions: not written yet; its docstring and "
                              "lessons/08_prompt_tuning/README.md, \"The maths\", say what it computes")


def run_prompt_loss(logits, targets, n):
    """The training loss of a prompted forward, with nothing shifted:

        loss = mean over (b, t) with targets[b, t] != -100 of  -log softmax(logits[b, n + t])[targets[b, t]]

    logits: (B, n + T, V), the model's output over [P ; tokens]; targets: (B, T) integer, the
    caller's targets for the real tokens only (targets[b, t] is the token that follows token t, or
    -100). The n virtual positions have no target: the logits there must not change the loss.
    Returns a scalar tensor.
    """
    raise NotImplementedError("run_prompt_loss: not written yet; its docstring and "
                              "lessons/08_prompt_tuning/README.md, \"The maths\", say what it computes")
