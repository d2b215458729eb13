"""Planted bugs for lesson 09 (random masking): buggy copies of the reference `run_*` functions, one
plausible learner mistake each. tests/test_planted.py swaps each into the reference and asserts that
the checks of its run_* function catch it. Do not copy from this file.
"""
import math

import torch

from minift.conformance import reference as ref


def run_random_mask__rounds_down(shape, density, seed):
    """k = floor(density n): rounds down instead of to the nearest integer."""
    n = math.prod(shape)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:int(density * n)]


def run_random_mask__with_replacement(shape, density, seed):
    """draws k positions with replacement, so some repeat."""
    n = math.prod(shape)
    k = len(ref.run_random_mask(shape, density, seed))
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (k,), generator=g)


def run_random_mask__global_generator(shape, density, seed):
    """draws from torch's global generator: the seed is ignored, and two calls differ."""
    n = math.prod(shape)
    k = len(ref.run_random_mask(shape, density, seed))
    return torch.randperm(n)[:k]


def run_random_mask__first_k(shape, density, seed):
    """takes the first k positions, a fixed pattern rather than a random draw."""
    return torch.arange(len(ref.run_random_mask(shape, density, seed)))


def run_masked_update__in_place(W0, idx, values):
    """adds the values into W0 itself and returns it (the caller's W0 changes)."""
    W0.view(-1)[idx] += values
    return W0


def run_masked_update__overwrites(W0, idx, values):
    """writes the values over W0's entries instead of adding them."""
    W = W0.clone()
    W.view(-1)[idx] = values
    return W


def run_masked_linear__no_bias(x, W0, b, idx, values):
    """forgets the bias b."""
    return ref.run_masked_linear(x, W0, None, idx, values)


def run_masked_linear__column_major(x, W0, b, idx, values):
    """reads the flat positions column by column (into the transpose) instead of row by row."""
    Wt = W0.T.contiguous().clone()
    Wt.view(-1)[idx] += values
    return x @ Wt.T.T + (0 if b is None else b)


def run_masked_adamw_step__masked_gradient(x, W0, b, idx, values, grad_out, lr, weight_decay):
    """trains the full W with its gradient masked: AdamW's weight decay then shrinks all of W0."""
    W = (W0.clone() + 0).reshape(-1)
    W[idx] += values
    W = W.reshape(W0.shape).requires_grad_(True)
    h = x @ W.T + (0 if b is None else b)
    (h * grad_out).sum().backward()
    M = torch.zeros(W0.numel())
    M[idx] = 1
    W.grad *= M.view_as(W)
    opt = torch.optim.AdamW([W], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    opt.step()
    return W.detach()


def run_masked_adamw_step__coupled_decay(x, W0, b, idx, values, grad_out, lr, weight_decay):
    """Adam with L2 weight decay added to the gradient, not AdamW's decoupled decay."""
    v = values.clone().requires_grad_(True)
    W = W0.reshape(-1).clone()
    W = W.index_add(0, idx.long(), v).reshape(W0.shape)
    ((x @ W.T + (0 if b is None else b)) * grad_out).sum().backward()
    opt = torch.optim.Adam([v], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    opt.step()
    return ref.run_masked_update(W0, idx, v.detach())


def run_masked_adamw_step__sgd(x, W0, b, idx, values, grad_out, lr, weight_decay):
    """takes a plain SGD step (values - lr g) instead of an AdamW step."""
    G = grad_out.T @ x                                                     # dL/dW (out, in)
    return ref.run_masked_update(W0, idx, values * (1 - lr * weight_decay) - lr * G.reshape(-1)[idx.long()])
