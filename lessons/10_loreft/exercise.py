"""Lesson 10 exercise: LoReFT's edit of one hidden state, and the orthonormalisation that keeps R's
rows orthonormal while it trains.

Fill in the two functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 10`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.linalg); do not call minift in the run_* functions.

The try_* functions at the bottom are complete starters for the README's "try" exercise. Run them
from your own copy (`minift exercise 10` makes it): `python exercises/10_loreft.py try_scaled_r`.
try_scaled_r uses the run_loreft of the file it runs in: run from lessons/10_loreft/exercise.py,
whose run_loreft stays a stub, it uses minift's.
"""
import time

import torch  # noqa: F401
import torch.nn.functional as F


def run_loreft(h, R, W, b):
    """LoReFT (Wu et al., 2024) on a batch of hidden states, one per row:

        Φ(h) = h + Rᵀ (W h + b − R h)          for a column vector h (C,)
        out  = h + (h Wᵀ + b − h Rᵀ) R         the same for rows h (N, C)

    h: (N, C) float tensor; R: (r, C) with orthonormal rows (R Rᵀ = I; use it as given, do not
    re-orthonormalise it); W: (r, C); b: (r,). Returns (N, C) in h's dtype.

    With W = R and b = 0 (LoReFT's no-op initialisation) the output must be h exactly, bit for
    bit: compute the r coordinates W h + b − R h first (they are then exactly 0), and only then
    map them back with R and add them to h. Expanding the product (h + h Wᵀ R + b R − h Rᵀ R) is
    the same algebra but not the same floating point.
    """
    raise NotImplementedError("run_loreft: not written yet; lessons/10_loreft/README.md, "
                              "\"The maths\", equation (10.1), says what it computes")


def run_orthonormal_rows(A):
    """Gram–Schmidt on the rows of a full-rank A (r, C), r <= C: returns R (r, C) with

        R Rᵀ = I_r        and        A = G R,   G (r, r) lower triangular with a positive diagonal.

    Row i of R is row i of A minus its projections on rows 0..i-1 of R, divided by its norm. (A QR
    decomposition of Aᵀ gives the same R up to the sign of each row: flip the rows where the
    triangular factor has a negative diagonal entry.) Returns A's dtype; compute in float32 at
    least. This is how ReFT's trainable R_raw becomes the R that Φ uses, at every step.
    """
    raise NotImplementedError("run_orthonormal_rows: not written yet; lessons/10_loreft/README.md, "
                              "\"The maths\", equation (10.4), says what it computes")


# ---- starters for the README's "try" exercise (complete) ----

def _your_loreft():
    """This file's run_loreft once you have written it; minift's reference until then."""
    try:
        run_loreft(torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1))
        return run_loreft, "your run_loreft"
    except NotImplementedError:
        from minift.conformance.reference import run_loreft as ref
        return ref, "minift's run_loreft (yours is not written yet)"


def try_scaled_r(scale=2.0, r=4, C=16, N=8, seed=0):
    """Exercise 3: Φ with R = scale · R0 (R0 orthonormal rows) on random h, W, b. Prints how far
    R Φ(h) is from W h + b (the target inside the subspace) and how far Φ(h) − h is from the row
    space of R, for R0 and for the scaled R."""
    loreft, who = _your_loreft()
    g = torch.Generator().manual_seed(seed)
    R0 = torch.linalg.qr(torch.randn(C, r, generator=g, dtype=torch.float64))[0].T      # (r, C), R0 R0ᵀ = I
    h, W, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((N, C), (r, C), (r,)))
    print(f"{who}, float64, r={r}, C={C}, N={N}:")
    for name, R in (("R = R0", R0), (f"R = {scale:g} R0", scale * R0)):
        phi = loreft(h, R, W, b)
        target = (F.linear(phi, R) - F.linear(h, W, b)).abs().max().item()               # R Φ(h) vs W h + b
        d = phi - h
        outside = (d - d @ R0.T @ R0).abs().max().item()                                  # off span(R0)
        print(f"  {name:<10} max |R Φ(h) − (W h + b)| = {target:.2e}   max |part of Φ(h) − h outside span(R)| "
              f"= {outside:.2e}")


def try_qr_cost(r=4, sizes=(128, 4096), repeats=20, seed=0):
    """Exercise 3, the cost: the time of one Gram–Schmidt (QR) of an (r, C) matrix, forward and
    backward, at each C in `sizes` (best of `repeats`, this machine)."""
    from minift.peft.reft import orthonormal_rows
    g = torch.Generator().manual_seed(seed)
    for C in sizes:
        A = torch.randn(r, C, generator=g, requires_grad=True)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            orthonormal_rows(A).sum().backward()
            best = min(best, time.perf_counter() - t0)
        print(f"r={r}, C={C}: one QR forward + backward {best * 1e6:.0f} µs")


if __name__ == "__main__":         # python exercises/10_loreft.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
