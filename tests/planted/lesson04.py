"""Planted bugs for lesson 04 (selective fine-tuning): copies of the reference `run_*` functions, each
with one plausible learner mistake. tests/test_planted.py swaps each into the reference and asserts
that a check of its function fails. Do not copy from this file."""
import math
import re


def _is_bias(n):
    return n.split(".")[-1] == "bias"


def _is_head(n):
    return "head" in n.split(".")[:-1]


def run_bitfit_select__head_substring(names):
    """takes every name containing "head" as the task head, so lm_head.weight trains too"""
    return [n for n in names if _is_bias(n) or "head" in n]


def run_bitfit_select__no_head(names):
    """forgets the new task head"""
    return [n for n in names if _is_bias(n)]


def run_bitfit_select__duplicates(names):
    """lists a head bias twice (once as a bias, once as the head)"""
    return [n for n in names if _is_bias(n)] + [n for n in names if _is_head(n)]


def _n_layer(names):
    return 1 + max(int(m.group(1)) for n in names if (m := re.search(r"transformer\.h\.(\d+)\.", n)))


def _layer_select(names, blocks, match):
    return [n for n in names if _is_head(n) or any(match(n, i) for i in blocks)]


def run_layer_select__prefix_match(names, layers):
    """matches "transformer.h.1" without the closing dot, so block 1 also selects blocks 10-19"""
    L = _n_layer(names)
    blocks = {i % L for i in layers}
    return _layer_select(names, blocks, lambda n, i: f"transformer.h.{i}" in n)


def run_layer_select__negative_off_by_one(names, layers):
    """counts negative indices from L - 1: -1 selects the second-to-last block"""
    L = _n_layer(names)
    blocks = {i if i >= 0 else L - 1 + i for i in layers}
    return _layer_select(names, blocks, lambda n, i: f"transformer.h.{i}." in n)


def run_layer_select__no_head(names, layers):
    """forgets the task head"""
    L = _n_layer(names)
    blocks = {i % L for i in layers}
    return [n for n in names if any(f"transformer.h.{i}." in n for i in blocks)]


def run_trainable_share__counts_tensors(shapes, trainable):
    """counts tensors instead of numbers"""
    return len(trainable) / len(shapes)


def run_trainable_share__scalar_is_zero(shapes, trainable):
    """gives a scalar (shape ()) zero entries instead of one"""
    size = {n: math.prod(s) if len(s) else 0 for n, s in shapes.items()}
    total = sum(size.values())
    return sum(size[n] for n in trainable) / total if total else 0.0


def run_trainable_share__sum_of_sides(shapes, trainable):
    """counts a tensor's entries as the sum of its sides instead of their product"""
    size = {n: sum(s) if len(s) else 1 for n, s in shapes.items()}
    return sum(size[n] for n in trainable) / sum(size.values())
