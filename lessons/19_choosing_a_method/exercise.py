"""Lesson 19 exercise: what each method of the course trains, counted from the shapes.

Fill in the function below (delete the `raise NotImplementedError`), then grade your file with
`minift check 19`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The "trainable" column of lesson 19's table, and its claim that LoRA trains thousands of times fewer
parameters at scale, rest on these counts. Every check draws a small GPT-2 shape (n_layer L <= 3,
n_embd C in {4, 8, 12, 16}) and hyperparameters, and compares your count with the method's closed
form; a failing check prints the smallest shape that breaks it (printed as "counterexample: <check>(<arguments>)").

Rules: plain Python (you may build the model with torch if you like); do not call minift.
"""
import math  # noqa: F401


def run_trainable_count(method, n_layer, n_embd, vocab_size, block_size, hp):
    """The number of parameters that train when `method` is applied to a GPT-2-layout model
    (C = n_embd, L = n_layer, V = vocab_size, T = block_size; biases everywhere, the LM head tied to
    the token embedding wte, no task head), equations (19.1) to (19.9) of the README. A GPT-2 block
    holds ln_1, attn.c_attn (C -> 3C, the fused W_q, W_k, W_v), attn.c_proj (C -> C), ln_2,
    mlp.c_fc (C -> 4C) and mlp.c_proj (4C -> C); around the blocks: wte (V, C), wpe (T, C) and
    ln_f. Return an int.

        "full"     every parameter:      V C + T C + L (12 C² + 13 C) + 2 C
        "bitfit"   every bias:           L (3C + C + 4C + C) + (LayerNorm biases: 2 L C + C)
        "lora"     hp keys r, qkv, dora: on W_q, W_v (qkv = ("q", "v")) L · 2 · r (C + C);
                   on the whole fused c_attn (qkv = None) L · r (C + 3C); dora = True adds one
                   magnitude per adapted output row (2C or 3C per block)
        "adapter"  hp keys kind, placement, bottleneck m: each adapter W_down (C × m), b_down (m),
                   W_up (m × C), b_up (C): 2 C m + m + C; kind "series" with placement "houlsby"
                   puts two in each block, "pfeiffer" one; kind "parallel" one
        "prefix"   hp keys n_prefix P, reparam, hidden m: without the MLP (reparam False) P keys and
                   P values per block: 2 L P C; with it: the table P' (P × C) + W_1 (C × m) + b_1 (m)
                   + W_2 (m × 2 L C) + b_2 (2 L C)
        "prompt"   hp key n_tokens n: n C
        "reft"     hp key r: LoReFT on every block's output, R (r × C), W (r × C), b (r): L r (2 C + 1)
        "masking"  hp key density d: k = ⌊d · N + ½⌋ of the N = L · 2 C · C weights in the W_q and
                   W_v rows of every c_attn
    """
    raise NotImplementedError("run_trainable_count: not written yet; lessons/19_choosing_a_method/README.md, "
                              "\"The maths\", equation (19.2), says what it computes")
