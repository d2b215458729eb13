"""Reference `run_*` adapters of lesson 20 (scaling laws for fine-tuning, minift/scaling.py).

    run_scaling_law(X, D, A, alpha, beta, E)   L̂ = A X^-α D^-β + E, elementwise (float64)
    run_fit_scaling_law(X, D, L)               (A, alpha, beta, E) fitted to the points (X_i, D_i, L_i)

`adapters.py` re-exports everything in `__all__`.
"""
from __future__ import annotations

from minift.scaling import fit_scaling_law, predict_loss

__all__: list[str] = ["run_scaling_law", "run_fit_scaling_law"]


def run_scaling_law(X, D, A: float, alpha: float, beta: float, E: float):
    return predict_loss({"A": A, "alpha": alpha, "beta": beta, "E": E}, X, D)


def run_fit_scaling_law(X, D, L) -> tuple:
    f = fit_scaling_law(X, D, L)
    return (f["A"], f["alpha"], f["beta"], f["E"])
