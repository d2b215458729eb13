"""Lesson 18 exercise: mixture weights, the mixture sampler, forgetting, backward transfer, and the
per-example loss.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 18`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The sampler is graded on its properties, not on a particular random stream: any generator will
do, as long as the same seed gives the same draws.

Rules: plain Python and PyTorch (math, torch.Generator, torch.multinomial, torch.randperm,
torch.log_softmax ...). Do not call minift. Return tensors.
"""
import math  # noqa: F401  (math.inf is a valid temperature)

import torch  # noqa: F401


def run_mixture_weights(sizes, temperature=1.0, cap=None):
    """Temperature-scaled mixing (T5, Raffel et al. 2020; mT5, Xue et al. 2021) of K task sets:

        p_i = min(n_i, K)^(1/T) / Σ_j min(n_j, K)^(1/T)

    sizes: (K,) integer tensor of set sizes n_i >= 1; temperature: T > 0, or math.inf for equal
    mixing (every p_i = 1/K); cap: None (no cap) or an int K >= 1 (T5's "limit K").
    T = 1 and no cap: examples-proportional, p_i = n_i / Σ n. Returns (K,) float64 summing to 1.
    Hint: for huge n_i and small T, compute in log space: (1/T) log min(n_i, K), shift by the max.
    """
    raise NotImplementedError("run_mixture_weights: not written yet; its docstring and "
                              "lessons/18_multitask_sequential/README.md, \"The maths\", say what it computes")


def run_sample_mixture(weights, sizes, n, seed):
    """Draw n (task, example) pairs from K task sets.

        task_k   ~ Categorical(weights / Σ weights)                   independently for k = 1..n
        example  = the task's next index in its current epoch: a fresh random permutation of
                   0..sizes[i]-1, replaced by a new one when used up

    So after c draws of task i (size s) each of its examples was drawn ⌊c/s⌋ or ⌈c/s⌉ times, and a
    task of weight 0 is never drawn. weights: (K,) float >= 0, not all 0; sizes: (K,) int >= 1;
    n: int >= 1; seed: int: the same seed must give the same draws (use a torch.Generator).
    Returns (n, 2) int64: column 0 the task index, column 1 the example index.
    """
    raise NotImplementedError("run_sample_mixture: not written yet; its docstring and "
                              "lessons/18_multitask_sequential/README.md, \"The maths\", say what it computes")


def run_forgetting(R):
    """Forgetting (Chaudhry et al., 2018, "Riemannian Walk") of a score matrix.

    R: (K, K) float, R[i, j] = score of task j after stage i (task j is trained at stage j,
    higher is better). For every task j < K-1:

        f_j = max_{l < K-1} R[l, j] - R[K-1, j]          (the best it ever was, minus where it ends)

    Returns (K-1,) with R's dtype.
    """
    raise NotImplementedError("run_forgetting: not written yet; its docstring and "
                              "lessons/18_multitask_sequential/README.md, \"The maths\", say what it computes")


def run_backward_transfer(R):
    """Backward transfer (Lopez-Paz & Ranzato, 2017, GEM) of a (K, K) score matrix:

        BWT = 1/(K-1) Σ_{j < K-1} (R[K-1, j] - R[j, j])      < 0: later stages cost earlier tasks

    Returns a scalar tensor () with R's dtype. With per-task adapters (every column frozen after
    its stage) it is exactly 0.
    """
    raise NotImplementedError("run_backward_transfer: not written yet; its docstring and "
                              "lessons/18_multitask_sequential/README.md, \"The maths\", say what it computes")


def run_example_loss(logits, targets):
    """The per-example language-model loss a multitask batch is trained with:

        L = 1/B' Σ_b  mean_{t : targets[b, t] != -100}  -log softmax(logits[b, t])[targets[b, t]]

    over the B' examples that have at least one target. Each example counts once, however many
    targets it has: a 128-token text window and a 1-token answer weigh the same (the token mean
    would give the window 128 times the answer's say). logits: (B, T, V) float32; targets: (B, T)
    int64 with -100 where no loss is taken. Returns a scalar tensor ().
    """
    raise NotImplementedError("run_example_loss: not written yet; its docstring and "
                              "lessons/18_multitask_sequential/README.md, \"The maths\", say what it computes")
