"""Lesson 10 exercise: LoReFT's edit of one hidden state, and the orthonormalisation that keeps R's
rows orthonormal while it trains.

Fill in the two functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 10`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.linalg); do not call minift.
"""
import torch  # noqa: F401


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
    raise NotImplementedError("run_loreft: not written yet; its docstring and "
                              "lessons/10_loreft/README.md, \"The maths\", say what it computes")


def run_orthonormal_rows(A):
    """Gram–Schmidt on the rows of a full-rank A (r, C), r <= C: returns R (r, C) with

        R Rᵀ = I_r        and        A = L R,   L (r, r) lower triangular with a positive diagonal.

    Row i of R is row i of A minus its projections on rows 0..i-1 of R, divided by its norm. (A QR
    decomposition of Aᵀ gives the same R up to the sign of each row: flip the rows where the
    triangular factor has a negative diagonal entry.) Returns A's dtype; compute in float32 at
    least. This is how ReFT's trainable R_raw becomes the R that Φ uses, at every step.
    """
    raise NotImplementedError("run_orthonormal_rows: not written yet; its docstring and "
                              "lessons/10_loreft/README.md, \"The maths\", say what it computes")
