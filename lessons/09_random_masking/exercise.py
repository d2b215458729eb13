"""Lesson 09 exercise: random masking, the four functions the method is made of.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 09`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

No check asks for minift's random stream: any uniform draw of the right size passes.

Rules: plain PyTorch (torch, torch.nn.functional); do not call minift.
"""
import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_random_mask(shape, density, seed):
    """A fixed random mask over one weight matrix of `shape` (e.g. (out, in)), as flat positions into
    W.view(-1):

        n = prod(shape),   k = floor(density * n + 0.5)          (round half up; 0 < density <= 1)
        return k DISTINCT positions in [0, n), drawn uniformly at random, as a (k,) int64 tensor

    The draw comes from a private generator seeded by `seed` (torch.Generator().manual_seed(seed)),
    so the same arguments give the same mask every time, and different seeds give different masks.
    Hint: the first k entries of a seeded random permutation of range(n).
    """
    raise NotImplementedError("run_random_mask: not written yet; its docstring and "
                              "lessons/09_random_masking/README.md, \"The maths\", say what it computes")


def run_masked_update(W0, idx, values):
    """The masked (merged) weight: W0 plus the sparse delta.

        W = W0 + scatter(idx, values):   W.view(-1)[idx[j]] = W0.view(-1)[idx[j]] + values[j]

    W0: (out, in) float tensor; idx: (k,) distinct flat positions, in any order; values: (k,).
    Every other entry of W must be W0's, bit for bit. Return a new (out, in) tensor of W0's dtype;
    do not modify W0.
    """
    raise NotImplementedError("run_masked_update: not written yet; its docstring and "
                              "lessons/09_random_masking/README.md, \"The maths\", say what it computes")


def run_masked_linear(x, W0, b, idx, values):
    """The forward of a randomly masked linear layer:

        h = x (W0 + scatter(idx, values))^T + b         x: (N, in) -> h: (N, out)

    W0: (out, in) (nn.Linear layout); b: (out,) or None; idx, values: (k,) as in run_masked_update.
    With values = 0 the output must be the base layer's x W0^T + b exactly, bit for bit.
    """
    raise NotImplementedError("run_masked_linear: not written yet; its docstring and "
                              "lessons/09_random_masking/README.md, \"The maths\", say what it computes")


def run_masked_adamw_step(x, W0, b, idx, values, grad_out, lr, weight_decay):
    """One training step of the masked layer, where only `values` may learn:

        h = run_masked_linear(x, W0, b, idx, values),   loss L = sum(grad_out * h)
        g = dL/dvalues                                  (k,): (grad_out^T x) read at the masked positions
        values' = one torch.optim.AdamW step on values  (betas (0.9, 0.999), eps 1e-8, fresh state,
                                                         lr, weight_decay: decoupled, on the values)
        return W0 + scatter(idx, values')               (out, in)

    W0 itself must get no gradient and no update (not even weight decay): off the mask the result is
    W0 bit for bit. (On a first step AdamW moves each value by lr g / (|g| + eps), after decaying it
    by the factor (1 - lr weight_decay).)
    """
    raise NotImplementedError("run_masked_adamw_step: not written yet; its docstring and "
                              "lessons/09_random_masking/README.md, \"The maths\", say what it computes")
