"""Lesson 05 exercise: the LoRA formulas as warm-ups, then the assignment: LoRA from scratch.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 05`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Layouts are nn.Linear's: a weight is (out, in) and a layer computes x W^T + b. So A is (r, in),
B is (out, r), and the update s B A is (out, in), like W0.

Rules: plain PyTorch (@, .T, .to, torch.linalg.vector_norm or .pow/.sum/.sqrt; for the assignment
also torch.nn: nn.Module, nn.Parameter, nn.init, nn.Dropout). Do not call minift in the run_*
functions. Inputs are float32 unless a docstring says otherwise; return tensors.

Below the stubs, the starters of the README's "try it" exercises (they call minift):

    python lessons/05_lora/exercise.py try_lora_plus_wte    # exercise 6, about 12 s of CPU
    python lessons/05_lora/exercise.py try_rslora           # exercise 7, about 10 s of CPU
"""
import math  # noqa: F401

import torch  # noqa: F401
import torch.nn as nn  # noqa: F401


# ---- warm-ups: the formulas --------------------------------------------------------------------------

def run_lora_linear(x, W0, b, A, B, alpha, r, rslora=False):
    """The LoRA layer's forward (Hu et al., 2021), unmerged and without dropout:

        h = x W0^T + b + s · (x A^T) B^T      s = alpha / r           (LoRA)
                                              s = alpha / √r          (rsLoRA, when rslora=True)

    x: (N, in); W0: (out, in), frozen; b: (out,) or None (then no bias term); A: (r, in);
    B: (out, r); alpha: float > 0; r: int, 1 <= r <= min(in, out). Returns (N, out).

    Compute the low-rank branch as (x A^T) B^T, never by forming the (out, in) product B A first:
    that is the point of LoRA (r (in + out) multiply-adds per row instead of in · out).
    With B = 0 the result must be bit-for-bit x W0^T + b, whatever A, alpha and rslora are.
    """
    raise NotImplementedError("run_lora_linear: not written yet; lessons/05_lora/README.md, "
                              "\"The maths\", equation (5.1), says what it computes")


def run_lora_merge(W0, A, B, scaling):
    """Fold the update into the weight, for inference at no extra cost:

        W = W0 + s · B A          (out, in); s = scaling

    Compute it in float32 (W0, A, B may be bfloat16: widen them first) and round the result to W0's
    dtype once, at the end. W0: (out, in); A: (r, in); B: (out, r); scaling: a float (alpha / r for
    LoRA). Returns a new (out, in) tensor with W0's dtype; W0 itself must not change.
    """
    raise NotImplementedError("run_lora_merge: not written yet; lessons/05_lora/README.md, "
                              "\"The maths\", equation (5.4), says what it computes")


def run_lora_unmerge(W, A, B, scaling):
    """Take a merged update out of the weight again:

        W0 = W − s · B A          (out, in); s = scaling

    As for the merge: in float32, rounded once to W's dtype at the end. W: (out, in) a merged
    weight; A: (r, in); B: (out, r). Returns a new (out, in) tensor with W's dtype; W must not change.
    Unmerging what you merged gives W0 back up to the rounding of the two steps.
    """
    raise NotImplementedError("run_lora_unmerge: not written yet; lessons/05_lora/README.md, "
                              "\"The maths\", equation (5.5), says what it computes")


def run_lora_dropout_forward(x, W0, b, A, B, s, p, mask):
    """The LoRA forward in training mode, with dropout on the branch's input only:

        d   = (x ⊙ mask) / (1 − p)                          (N, in): inverted dropout
        h   = x W0^T + b + s · (d A^T) B^T                   (N, out): the base path sees x itself

    mask: (N, in) of 0 (dropped) and 1 (kept), given so the result is deterministic; p in [0, 1):
    the dropout probability; s: the scaling (a float). x: (N, in); W0: (out, in); b: (out,) or
    None; A: (r, in); B: (out, r). Returns (N, out).
    """
    raise NotImplementedError("run_lora_dropout_forward: not written yet; lessons/05_lora/README.md, "
                              "\"The maths\", equation (5.6), says what it computes")


def run_dora_linear(x, W0, b, A, B, m, alpha, r):
    """DoRA (Liu et al., 2024), weight-decomposed LoRA: a magnitude m and a direction V / ‖V‖.

        V   = W0 + s · B A,   s = alpha / r                   (out, in)
        n_o = ‖row o of V‖ = √(Σ_i V_oi²)                     (out,): one norm per output row
        W'  = row o of V rescaled by m_o / n_o                (out, in): row o now has length m_o
        h   = x W'^T + b

    (The paper writes weights as (in, out) and calls n the column-wise norm; in nn.Linear's
    (out, in) layout it is the norm of each row.) x: (N, in); W0: (out, in); b: (out,) or None;
    A: (r, in); B: (out, r); m: (out,); alpha: float; r: int. Returns (N, out).
    With m = ‖W0‖ row-wise and B = 0, W' = W0: DoRA starts as the base layer.
    """
    raise NotImplementedError("run_dora_linear: not written yet; lessons/05_lora/README.md, "
                              "\"The maths\", equation (5.7), says what it computes")


# ---- Assignment: LoRA from scratch ------------------------------------------------------------------
# Build the layer (part 1), the surgery that puts it into a GPT (part 2), and merge / unmerge (part 3).
# Write your own nn.Module class for the layer here; the run_* functions below hand it to the grader.

def run_lora_layer(linear, r, alpha, dropout=0.0):
    """Part 1: wrap the nn.Linear `linear` (weight W0 (out, in), bias b or None) in a LoRA layer and
    return it (an nn.Module). The grader reads and sets these names, so use them:

        weight, bias   the wrapped layer's own tensors (not copies), frozen: no gradient
        lora_A         (r, in), trainable, random at the start (Kaiming-uniform as nn.Linear, or small normal)
        lora_B         (out, r), trainable, zero at the start
        scaling        the float s = alpha / r
        merge()        W ← W0 + s · B A (once; a second merge changes nothing)
        unmerge()      W ← W − s · B A (only after a merge; otherwise nothing)

    forward(x), x (..., in) -> (..., out): unmerged, h = x W0^T + b + s · (dropout(x) A^T) B^T; merged,
    h = x W^T + b alone. A, B in the dtype and on the device of W0. dropout: probability p of the
    branch's input (inverted dropout, in training mode only; p = 0: none).
    """
    raise NotImplementedError("run_lora_layer: not written yet; lessons/05_lora/README.md, "
                              "\"Part 1: the LoRA layer\", equation (5.9), says what it computes")


def run_apply_lora(model, targets, r, alpha, dropout=0.0):
    """Part 2: in `model` (a minift GPT, or any nn.Module), replace every nn.Linear whose module name
    ends with one of the `targets` (whole dot-separated parts: "mlp.c_fc" matches
    "transformer.h.0.mlp.c_fc"; "h.1.attn.c_proj" only block 1's) by your LoRA layer around it, and
    freeze every other parameter of the model. Returns the model.

    Afterwards exactly the lora_A and lora_B of the adapted layers train, the model's output is
    unchanged, and every base tensor keeps its name (".weight", ".bias") and value.
    """
    raise NotImplementedError("run_apply_lora: not written yet; lessons/05_lora/README.md, "
                              "\"Part 2: the surgery\", equation (5.10), says what it computes")


def run_merge_lora(model):
    """Part 3: merge every LoRA layer of `model` (one your run_apply_lora adapted). Returns the model."""
    raise NotImplementedError("run_merge_lora: not written yet; lessons/05_lora/README.md, "
                              "\"Part 3: merge and unmerge\", equation (5.11), says what it computes")


def run_unmerge_lora(model):
    """Part 3: unmerge every merged LoRA layer of `model`. Returns the model."""
    raise NotImplementedError("run_unmerge_lora: not written yet; lessons/05_lora/README.md, "
                              "\"Part 3: merge and unmerge\", equation (5.12), says what it computes")


# ---- "try it" starters (run: python lessons/05_lora/exercise.py try_<what>) ---------------------------

def _bench(methods, probe=True, steps=100):
    """Lesson 05's bench: NER on TinyWorld, 100 steps x 8, val and test F1, the body's forgetting (the
    walkthrough's probe: 16 pretraining windows, 72 facts)."""
    from minift import course
    from minift.heads import ner_splits
    from minift.pretrain import load_base

    torch.set_num_threads(1)
    _, tok = load_base()
    return course.Bench(methods, tok, ner_splits(tok, 128), steps=steps, batch=8, dev="val",
                        warmup_steps=max(1, steps // 10), probe=dict(n_windows=16, n_facts=72) if probe else None,
                        width=24)


def try_lora_plus_wte(lr=1e-2):
    """Exercise 6's starter (about 12 s of CPU): LoRA r=4 on W_q, W_v with the lesson's recipe, then the same
    with the token embedding `transformer.wte.` trainable too. Prints trainable parameters, val and
    test F1, and the body's pretraining perplexity after training (the walkthrough's probe, so the
    first line is part 2's LoRA r=4 q,v row)."""
    from minift.peft.lora import LoRAConfig

    bench = _bench({"LoRA r=4 q,v": LoRAConfig(r=4)})
    for unfreeze in ((), ("transformer.wte.",)):
        r = bench.train_and_measure("LoRA r=4 q,v", lr, unfreeze=unfreeze)
        print(f"LoRA r=4 q,v{' + wte' if unfreeze else '':<6}  trainable {r['rep']['trainable']:>9,}  val F1 "
              f"{r['f1']['val']:.3f}  test F1 {r['f1']['test']:.3f}  pretrain ppl {r['after']['pretrain_ppl']:.2f}",
              flush=True)


def try_rslora(ranks=(1, 4, 16), alpha=16.0, lr=1e-2):
    """Exercise 7's starter (about 10 s of CPU): prints s for LoRA and rsLoRA at each rank, then trains rsLoRA
    (W_q, W_v, alpha 16) at each rank with the lesson's recipe at one lr. Change lr to see where
    each rank's best rate moves."""
    from minift.peft.lora import LoRAConfig

    for r in ranks:
        print(f"r = {r:>2}: LoRA s = {LoRAConfig(r=r, alpha=alpha).scaling:g}, "
              f"rsLoRA s = {LoRAConfig(r=r, alpha=alpha, use_rslora=True).scaling:g}")
    methods = {f"rsLoRA r={r}": LoRAConfig(r=r, alpha=alpha, use_rslora=True) for r in ranks}
    bench = _bench(methods, probe=False)
    for m in methods:
        bench.run(m, lr)


if __name__ == "__main__":         # python lessons/05_lora/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
