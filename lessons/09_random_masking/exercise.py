"""Lesson 09 exercise: random masking, the four functions the method is made of.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 09`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

No check asks for minift's random stream: any uniform draw of the right size passes.

Rules: plain PyTorch (torch, torch.nn.functional, torch.optim); do not call minift in the run_*
functions.

The try_* function at the bottom is a complete starter for the README's "try" exercise; it uses
minift. Run it with `python lessons/09_random_masking/exercise.py try_mask_all_linears`.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_random_mask(shape, density, seed):
    """A fixed random mask over one weight matrix of `shape` (e.g. (out, in)), as flat positions
    (entries counted row by row, from 0):

        n = the number of entries (the product of shape),   k = ⌊density · n + ½⌋   (0 < density ≤ 1)
        the mask = k DISTINCT positions in {0, 1, …, n-1}, every k-subset equally likely

    Returns a (k,) int64 tensor. The draw comes from a private random generator seeded with `seed`
    (never the global one): the same arguments give the same mask every time, and different seeds
    give different masks.
    """
    raise NotImplementedError("run_random_mask: not written yet; lessons/09_random_masking/README.md, "
                              "\"The maths\", equation (9.4), says what it computes")


def run_masked_update(W0, idx, values):
    """The masked (merged) weight: W0 plus the sparse delta.

        W = W0 + scatter(idx, values):   entry idx_j of W (counted row by row) is W0's entry idx_j + values_j,
                                         every other entry is W0's

    W0: (out, in) float tensor; idx: (k,) distinct flat positions, in any order; values: (k,).
    Every other entry of W must be W0's, bit for bit. Return a new (out, in) tensor of W0's dtype;
    do not modify W0.
    """
    raise NotImplementedError("run_masked_update: not written yet; lessons/09_random_masking/README.md, "
                              "\"The maths\", equation (9.1), says what it computes")


def run_masked_linear(x, W0, b, idx, values):
    """The forward of a randomly masked linear layer:

        h = x (W0 + scatter(idx, values))ᵀ + b         x: (N, in) -> h: (N, out)

    W0: (out, in) (nn.Linear layout); b: (out,) or None; idx, values: (k,) as in run_masked_update.
    With values = 0 the output must be the base layer's x W0ᵀ + b exactly, bit for bit.
    """
    raise NotImplementedError("run_masked_linear: not written yet; lessons/09_random_masking/README.md, "
                              "\"The maths\", equation (9.2), says what it computes")


def run_masked_adamw_step(x, W0, b, idx, values, grad_out, lr, weight_decay):
    """One training step of the masked layer, where only `values` may learn:

        h = x (W0 + scatter(idx, values))ᵀ + b,   loss L = Σ grad_out ⊙ h
        g = ∂L/∂values                                  (k,): the entries of grad_outᵀ x at the masked positions
        values' = one AdamW step on values              (β1 0.9, β2 0.999, ε 1e-8, fresh state,
                                                         lr, weight_decay: decoupled, on the values)
        return W0 + scatter(idx, values')               (out, in)

    W0 itself must get no gradient and no update (not even weight decay): off the mask the result is
    W0 bit for bit. (On a first step AdamW moves each value by lr g / (|g| + ε), after decaying it
    by the factor (1 − lr weight_decay).)
    """
    raise NotImplementedError("run_masked_adamw_step: not written yet; lessons/09_random_masking/README.md, "
                              "\"The maths\", equation (9.6), says what it computes")


# ---- starter for the README's "try" exercise (complete; it uses minift) ----

ALL_LINEARS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def try_mask_all_linears(lr=3e-2, density=0.001, targets=ALL_LINEARS, steps=80, seed=0):
    """Exercise 5: train one NER model with a random mask of `density` over `targets` (every
    linear of every block by default: N = 786,432 entries, k = 786 at 0.1%) with the walkthrough's
    data, steps, batch, warmup and seed, and print its val and test F1. Compare with the table's
    rows. One training run, like a row of the walkthrough's part 2; steps=10 for a quick look (its F1
    means little)."""
    from minift import course
    from minift.heads import ner_splits
    from minift.peft.masking import MaskingConfig
    from minift.pretrain import load_base
    _, tok = load_base()
    cfg = MaskingConfig(density=density, targets=list(targets), qkv=None)
    name = f"mask {density:.2%} all"
    bench = course.Bench({name: cfg}, tok, ner_splits(tok, 128), steps=steps, batch=16, dev="val",
                         warmup_steps=max(1, steps // 10), width=len(name))
    r = bench.train_and_measure(name, lr, seed=seed)
    bench.report(r)
    print(f"trainable mask values: {r['n_adapter']:,}")
    return r


if __name__ == "__main__":         # python lessons/09_random_masking/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
