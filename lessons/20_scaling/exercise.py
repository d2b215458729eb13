"""Lesson 20 exercise: the multiplicative scaling law of fine-tuning, and fitting it.

Fill in the two functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 20`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Plain torch (or numpy); do not call minift. Inputs are float64 tensors.
"""
import torch  # noqa: F401


def run_scaling_law(X, D, A, alpha, beta, E):
    """L̂ = A · X^(-alpha) · D^(-beta) + E, elementwise over the tensors X (model sizes) and D
    (fine-tuning data sizes), returned as a float64 tensor of their shape."""
    raise NotImplementedError("run_scaling_law: not written yet; its docstring and "
                              "lessons/20_scaling/README.md, \"The maths\", say what it computes")


def run_fit_scaling_law(X, D, L):
    """Fit (A, alpha, beta, E) of L̂ = A X^-alpha D^-beta + E to the points (X_i, D_i, L_i);
    return them as a tuple of four floats.

    Hint (what minift does): for fixed (alpha, beta) the law is linear in (A, E), so a least-squares
    line of L against f = X^-alpha D^-beta gives them in closed form; scan a grid of (alpha, beta)
    in [-1, 2]^2, keep the best few, then refine (a, alpha, beta, e) with a = log A, e = log E by
    minimising sum_i (log L̂_i - log L_i)^2 (Gauss-Newton / Levenberg-Marquardt, or torch.optim.LBFGS).
    The check fits noise-free points, so a good fit reproduces them to 1e-4.
    """
    raise NotImplementedError("run_fit_scaling_law: not written yet; its docstring and "
                              "lessons/20_scaling/README.md, \"The maths\", say what it computes")
