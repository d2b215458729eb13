"""Lesson 20 exercise: the multiplicative scaling law of fine-tuning, and fitting it.

Fill in the three functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 20`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Plain torch (or numpy); do not call minift. Inputs are float64 tensors.
"""
import torch  # noqa: F401


def run_scaling_law(X, D, A, alpha, beta, E):
    """The multiplicative scaling law of fine-tuning, equation (20.1) of the README:

        L̂ = A · X^(−α) · D^(−β) + E

    elementwise over the tensors X (model sizes) and D (fine-tuning data sizes); A, α, β, E are
    floats. Returns a float64 tensor of X's shape."""
    raise NotImplementedError("run_scaling_law: not written yet; lessons/20_scaling/README.md, "
                              "\"The maths\", equation (20.1), says what it computes")


def run_fit_scaling_law(X, D, L):
    """Fit (A, α, β, E) of L̂ = A X^(−α) D^(−β) + E to the points (X_i, D_i, L_i), equations (20.2)
    to (20.4) of the README; return them as a tuple of four floats (A, α, β, E).

    A route that works: for fixed (α, β) the law is linear in (A, E), so the least-squares line
    of L_i against f_i = X_i^(−α) D_i^(−β) gives them in closed form (20.4); scan a grid of
    (α, β) in [−1, 2]², keep the best few, then refine (a, α, β, e) with a = log A, e = log E by
    minimising Σ_i (log L̂_i − log L_i)² (Gauss-Newton / Levenberg-Marquardt, or an L-BFGS
    optimizer). The check fits noise-free points, so a good fit reproduces them to 1e-4.
    """
    raise NotImplementedError("run_fit_scaling_law: not written yet; lessons/20_scaling/README.md, "
                              "\"The maths\", equation (20.3), says what it computes")


def run_equivalent_factor(alpha_from, alpha_to, k=2.0):
    """Compare two axes of the law (20.1): multiplying the first factor (say the model size) by k
    multiplies the reducible loss L − E by k^(−α_from); by what factor q must the second (say the
    pretraining tokens, exponent α_to) grow to shrink L − E by as much? README, "The pretraining-data
    axis", equation (20.5). Floats in, a float out (α_to is nonzero, k > 0)."""
    raise NotImplementedError("run_equivalent_factor: not written yet; lessons/20_scaling/README.md, "
                              "\"The pretraining-data axis\", equation (20.5), says what it computes")
