"""Planted bugs for lesson 22 (beyond text): copies of the reference `run_patchify`, each with one
plausible learner mistake. tests/test_planted.py checks that lesson 22's check catches every one.
Do not copy from this file."""


def run_patchify__plain_reshape(x, patch_size):
    """reshapes (B, c, H, W) straight to (B, N, c P²) without moving the blocks together"""
    B, c, H, W = x.shape
    return x.reshape(B, (H // patch_size) * (W // patch_size), c * patch_size * patch_size)


def run_patchify__column_major_grid(x, patch_size):
    """numbers the patches column by column instead of row by row"""
    B, c, H, W = x.shape
    P = patch_size
    p = x.reshape(B, c, H // P, P, W // P, P).permute(0, 4, 2, 1, 3, 5)     # (B, W/P, H/P, c, P, P)
    return p.reshape(B, -1, c * P * P)


def run_patchify__channels_last(x, patch_size):
    """flattens each patch pixel-major (P, P, c) instead of channel-major (c, P, P)"""
    B, c, H, W = x.shape
    P = patch_size
    p = x.reshape(B, c, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1)     # (B, H/P, W/P, P, P, c)
    return p.reshape(B, -1, c * P * P)


def run_patchify__rows_and_columns_of_a_patch_swapped(x, patch_size):
    """flattens each block transposed: column u of the block before row v"""
    B, c, H, W = x.shape
    P = patch_size
    p = x.reshape(B, c, H // P, P, W // P, P).permute(0, 2, 4, 1, 5, 3)     # (B, H/P, W/P, c, P_w, P_h)
    return p.reshape(B, -1, c * P * P)
