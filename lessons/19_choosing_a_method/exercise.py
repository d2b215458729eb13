"""Lesson 19 exercise: what each method of the course trains, counted from the shapes, and what the
class of a method predicts about merging it (part 4, the taxonomy).

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 19`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The "trainable" column of lesson 19's table, and its claim that LoRA trains thousands of times fewer
parameters at scale, rest on these counts. Every check draws a small GPT-2 shape (n_layer L <= 3,
n_embd C in {4, 8, 12, 16}) and hyperparameters, and compares your count with the method's closed
form; a failing check prints the smallest shape that breaks it (printed as "counterexample: <check>(<arguments>)").

Rules: plain Python (you may build the model with torch if you like; `run_merge_into_linear` works on
torch tensors); do not call minift.
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


def run_merge_into_linear(W0, b0, method, params):
    """Part 4's prediction, done by hand on one linear layer h = x W0ᵀ + b0 (W0 (out, in), b0 (out,),
    float32): fold the trained tensors `params` of `method` into a plain layer and return its (W, b),
    float32, so that x Wᵀ + b is what the adapted layer computes, for every x. Equations (19.10) to
    (19.12) of the README's exercise 4:

        "bitfit"   params bias (out,), the trained bias: W = W0, b = bias
        "masking"  params indices (k,) int64, sorted distinct flat positions of W0 counted row by row,
                   values (k,): W = W0 with values_t added at position indices_t (row = indices_t div
                   in, column = indices_t mod in), b = b0
        "lora"     params A (r, in), B (out, r), scaling s: W = W0 + s·B·A, b = b0
        "dora"     the same plus magnitude m (out,): with V = W0 + s·B·A, output row i of W is
                   m_i V_i / ‖V_i‖ (the norm of row i), b = b0
        "adapter"  params down (m, out), b_down (m,), up (out, m), b_up (out,): the layer's output h
                   becomes h + relu(h W_downᵀ + b_down) W_upᵀ + b_up
        "prefix"   params keys, values (P, out): P extra keys and values for the attention above
        "prompt"   params embeddings (n, in): n extra input tokens
        "reft"     params R, W (r, out), b (r,): h becomes h + Rᵀ (W h + b − R h) at the positions
                   the method edits (the first and last prompt tokens), h elsewhere

    Each method belongs to one class of part 4 (selective, reparameterization, additive); a method
    whose class cannot be merged raises ValueError instead of returning. Leave W0 and b0 unchanged
    (work on copies).
    """
    raise NotImplementedError("run_merge_into_linear: not written yet; lessons/19_choosing_a_method/README.md, "
                              "\"Exercises\", equation (19.10), says what it computes")
