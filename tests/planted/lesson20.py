"""Planted bugs for lesson 20 (scaling laws): copies of the reference `run_*` functions, each with
one plausible learner mistake. tests/test_planted.py checks that lesson 20's checks catch every
one. Do not copy from this file."""
import torch

from minift.conformance import reference as ref


def run_scaling_law__exponents_swapped(X, D, A, alpha, beta, E):
    """puts α on the data and β on the model size"""
    return ref.run_scaling_law(X, D, A, beta, alpha, E)


def run_scaling_law__positive_exponents(X, D, A, alpha, beta, E):
    """X^α D^β: forgets the minus signs"""
    return ref.run_scaling_law(X, D, A, -alpha, -beta, E)


def run_scaling_law__scale_on_e(X, D, A, alpha, beta, E):
    """A (X^-α D^-β + E): the scale multiplies the irreducible loss too"""
    return A * (ref.run_scaling_law(X, D, 1.0, alpha, beta, E))


def run_fit_scaling_law__returns_alpha_beta_swapped(X, D, L):
    """returns (A, β, α, E): the exponents in the wrong order"""
    A, alpha, beta, E = ref.run_fit_scaling_law(X, D, L)
    return (A, beta, alpha, E)


def run_fit_scaling_law__returns_log_a(X, D, L):
    """returns log A (the fit's parameter a) instead of A"""
    A, alpha, beta, E = ref.run_fit_scaling_law(X, D, L)
    return (float(torch.log(torch.tensor(A, dtype=torch.float64))), alpha, beta, E)


def run_fit_scaling_law__log_linear_no_e(X, D, L):
    """a least-squares line of log L on log X and log D: ignores E (returns E = 0)"""
    X, D, L = (torch.as_tensor(v, dtype=torch.float64) for v in (X, D, L))
    M = torch.stack([torch.ones_like(X), -X.log(), -D.log()], 1)                  # (n, 3)
    sol = torch.linalg.lstsq(M, L.log()[:, None]).solution[:, 0]
    return (float(sol[0].exp()), float(sol[1]), float(sol[2]), 0.0)


def run_equivalent_factor__ratio_inverted(alpha_from, alpha_to, k=2.0):
    """k^(α_to / α_from): the exponents' ratio upside down"""
    return float(k) ** (alpha_to / alpha_from)


def run_equivalent_factor__ratio_times_k(alpha_from, alpha_to, k=2.0):
    """k · α_from / α_to: scales k by the ratio instead of raising it to that power"""
    return float(k) * alpha_from / alpha_to
