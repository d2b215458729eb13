"""Planted bugs for lesson 18 (multitask and sequential fine-tuning): copies of the reference
`run_*` functions, each with one plausible learner mistake. tests/test_planted.py checks that
lesson 18's checks catch every one. Do not copy from this file."""
import math

import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


def _weights(n, T):
    """n^(1/T), normalised (T = inf: equal), in log space."""
    n = n.to(torch.float64)
    if math.isinf(T):
        return torch.full_like(n, 1.0 / len(n))
    return torch.softmax(n.log() / T, 0)


def run_mixture_weights__power_t(sizes, temperature=1.0, cap=None):
    """raises the sizes to the power T instead of 1/T"""
    n = sizes if cap is None else sizes.clamp(max=cap)
    if math.isinf(temperature):
        return _weights(n, temperature)
    return _weights(n, 1.0 / temperature)


def run_mixture_weights__cap_after_temperature(sizes, temperature=1.0, cap=None):
    """caps n^(1/T) at K instead of capping n at K before the temperature"""
    n = sizes.to(torch.float64)
    if math.isinf(temperature):
        return _weights(n, temperature)
    w = n ** (1.0 / temperature)
    if cap is not None:
        w = w.clamp(max=cap)
    return w / w.sum()


def run_mixture_weights__cap_ignored(sizes, temperature=1.0, cap=None):
    """forgets the cap"""
    return ref.run_mixture_weights(sizes, temperature, None)


def run_sample_mixture__with_replacement(weights, sizes, n, seed):
    """draws each example uniformly at random, with replacement, instead of in epochs"""
    g = torch.Generator().manual_seed(int(seed))
    tasks = torch.multinomial(weights.to(torch.float64), n, replacement=True, generator=g)
    ex = torch.stack([torch.randint(int(sizes[t]), (), generator=g) for t in tasks]) if n else tasks
    return torch.stack([tasks, ex], 1).to(torch.int64)


def run_sample_mixture__uniform_tasks(weights, sizes, n, seed):
    """draws the task uniformly, ignoring the weights"""
    w = torch.ones(len(sizes), dtype=torch.float64)
    return ref.run_sample_mixture(w, sizes, n, seed)


def run_sample_mixture__seed_ignored(weights, sizes, n, seed):
    """draws from the global random stream, so the seed does not fix the draws"""
    return ref.run_sample_mixture(weights, sizes, n, int(torch.randint(2 ** 30, ())))


def run_sample_mixture__examples_from_one(weights, sizes, n, seed):
    """numbers the examples 1..n_i instead of 0..n_i − 1"""
    out = ref.run_sample_mixture(weights, sizes, n, seed).clone()
    out[:, 1] += 1
    return out


def run_forgetting__max_includes_last(R):
    """the best score is taken over every stage, the last one too"""
    K = R.shape[0]
    return R[:, :K - 1].max(0).values - R[K - 1, :K - 1]


def run_forgetting__sign_flipped(R):
    """final minus best instead of best minus final"""
    return -ref.run_forgetting(R)


def run_forgetting__from_own_stage(R):
    """compares with the score right after the task's own stage, R[j, j], not with the best"""
    K = R.shape[0]
    return torch.diagonal(R)[:K - 1] - R[K - 1, :K - 1]


def run_backward_transfer__divides_by_k(R):
    """averages over K instead of the K − 1 earlier tasks"""
    K = R.shape[0]
    return ref.run_backward_transfer(R) * (K - 1) / K


def run_backward_transfer__sign_flipped(R):
    """R[j, j] − R[K−1, j]: positive when tasks are forgotten"""
    return -ref.run_backward_transfer(R)


def run_backward_transfer__against_first_stage(R):
    """compares with the first stage's row R[0, j], not with R[j, j]"""
    K = R.shape[0]
    return (R[K - 1, :K - 1] - R[0, :K - 1]).mean()


def run_example_loss__token_mean(logits, targets):
    """the token mean: every target counts once, so long examples weigh more"""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def run_example_loss__divides_by_b(logits, targets):
    """divides by every example B, those without a target too, instead of by B'"""
    n_with = int(((targets != -100).sum(1) > 0).sum())
    return ref.run_example_loss(logits, targets) * n_with / targets.shape[0]


def run_example_loss__shifted(logits, targets):
    """shifts logits and targets by one position, as for raw next-token ids (they are already aligned)"""
    t = targets[:, 1:]
    if not bool((t != -100).any()):
        return ref.run_example_loss(logits, targets)
    return ref.run_example_loss(logits[:, :-1].contiguous(), t.contiguous())
