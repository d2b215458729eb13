"""Lesson 22 exercise: an image as a sequence of patches, the ViT's tokenizer.

Fill in the function below (delete the `raise NotImplementedError`), then grade your file with
`minift check 22`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The check compares your patches with an explicit loop over the image's blocks on many small
random images; a failure prints the smallest image hypothesis could find. Plain tensor operations
(reshape, permute); do not call minift.
"""
import torch  # noqa: F401


def run_patchify(x, patch_size):
    """(B, c, H, W) -> (B, N, c P P) with P = patch_size and N = (H / P) (W / P).

    Patch k is the block in row k // (W / P) and column k % (W / P) of the grid of P x P blocks,
    that is x[:, :, i P:(i + 1) P, j P:(j + 1) P], flattened channel-major (.reshape(B, -1)).
    """
    raise NotImplementedError("run_patchify: not written yet; its docstring and "
                              "lessons/22_beyond_text/README.md, \"The maths\", say what it computes")
