"""Lesson 04 (selective fine-tuning): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_bitfit_select(names)                 the names BitFit trains: every bias, and the task head
    run_layer_select(names, layers)          the parameters of the chosen blocks (negative from the end) + head
    run_trainable_share(shapes, trainable)   sum of trainable sizes / sum of all sizes
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from hypothesis import assume, strategies as st

from minift.peft.selective import SelectiveConfig, bitfit, select, trainable_report

from .harness import assert_close, property_check, scalar
from .strategies import shared


# ---- the reference functions --------------------------------------------------------------------

def _module_with(shapes: dict) -> nn.Module:
    """A module whose parameters are exactly `shapes` (dotted name -> shape), built as nested
    submodules, so minift's selection code sees the names a real model would give."""
    root = nn.Module()
    for name, shape in shapes.items():
        if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
            raise ValueError(f"parameter name {name!r} must be a non-empty dotted name like 'transformer.h.0.ln_1.bias'")
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, nn.Module())
            m = m._modules[part]
        m.register_parameter(leaf, nn.Parameter(torch.zeros(tuple(shape))))
    return root


def run_bitfit_select(names: list) -> list[str]:
    """The parameter names `minift.peft.selective.bitfit` leaves trainable: every name whose last
    part is `bias`, and every parameter of a task head (a `head` module: `head.weight`,
    `body.head.bias`; not `lm_head`). Order does not matter."""
    return bitfit(_module_with({n: (1,) for n in names}))


def run_layer_select(names: list, layers: list) -> list[str]:
    """`minift.peft.selective.select(model, SelectiveConfig(layers=layers))`: the parameters of
    blocks `transformer.h.<i>` for i in layers (negative i counts from the end: -1 is the last of
    n_layer = 1 + the largest block index in names), plus a task head's (`head.*`). Order does not matter."""
    return select(_module_with({n: (1,) for n in names}), SelectiveConfig(layers=list(layers)))


def run_trainable_share(shapes: dict, trainable: list) -> float:
    """The share of trainable parameters `minift.peft.selective.trainable_report` reports:
    sum over trainable names of prod(shape) / sum over all names of prod(shape).

    shapes: name -> shape tuple (() is a scalar, 1 parameter); trainable: some of the names."""
    unknown = [n for n in trainable if n not in shapes]
    if unknown:
        raise ValueError(f"run_trainable_share: trainable name(s) {unknown} are not in shapes")
    model = _module_with(shapes)
    keep = set(trainable)
    for n, p in model.named_parameters():
        p.requires_grad = n in keep
    return float(trainable_report(model)["total"]["share"])


# ---- the checks ----------------------------------------------------------------------------------

_BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
_OUTER_PARAMS = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                 "transformer.ln_f.bias", "lm_head.weight")


@st.composite
def _gpt_param_names(draw):
    """(n_layer, names): GPT-2 parameter names of 1-4 blocks, each block with a non-empty subset of
    its tensors, some of the outer ones, sometimes wrapped as a classifier (`body.` + `head.*`);
    shuffled."""
    L = draw(st.integers(1, 4))
    prefix = draw(st.sampled_from(("", "body.")))
    names = [f"{prefix}transformer.h.{i}.{p}" for i in range(L)
             for p in draw(st.lists(st.sampled_from(_BLOCK_PARAMS), min_size=1, unique=True))]
    names += [prefix + n for n in draw(st.lists(st.sampled_from(_OUTER_PARAMS), unique=True))]
    if prefix:
        names += draw(st.lists(st.sampled_from(("head.weight", "head.bias")), unique=True))
    return L, draw(st.permutations(names))


def _name_list(y, what: str) -> list[str]:
    if not isinstance(y, (list, tuple)) or not all(isinstance(n, str) for n in y):
        raise AssertionError(f"{what} must return a list of parameter names (str), got {y!r:.120}")
    if len(set(y)) != len(y):
        raise AssertionError(f"{what} lists a name twice: {sorted(n for n in set(y) if list(y).count(n) > 1)}")
    return list(y)


def _is_head(name: str) -> bool:
    return "head" in name.split(".")[:-1]                  # a module called `head` (lm_head is not)


def _diff(got: list[str], expected: set) -> str:
    return (f"missing {sorted(expected - set(got))}, unexpected {sorted(set(got) - expected)}")


@property_check("run_bitfit_select", lesson=4, examples=60, model=_gpt_param_names())
def bitfit_select_matches_rule(bitfit_select, model):
    """bitfit_select(names) is exactly the names whose last part is `bias` plus the task head's (a
    module named `head`, never `lm_head`), any order, no duplicates (GPT-2 names of 1-4 blocks, bare
    or wrapped as `body.` + `head.`)."""
    _, names = model
    expected = {n for n in names if n.split(".")[-1] == "bias" or _is_head(n)}
    assume(expected)                                   # BitFit on a model without biases is an error
    what = f"run_bitfit_select({names})"
    got = _name_list(bitfit_select(list(names)), what)
    if set(got) != expected:
        raise AssertionError(f"{what}: {_diff(got, expected)}")


_MODEL = shared(_gpt_param_names(), "lsel")
_TWELVE = (12, [f"transformer.h.{i}.{p}" for i in range(12) for p in ("ln_1.bias", "attn.c_attn.weight")]
           + ["transformer.wte.weight"])                     # block 1 must not select blocks 10 and 11


@property_check("run_layer_select", lesson=4, examples=60, model=_MODEL,
                explicit=[dict(model=_TWELVE, layers=[1]), dict(model=_TWELVE, layers=[-11])],
                layers=_MODEL.flatmap(lambda m: st.lists(st.integers(-m[0], m[0] - 1), min_size=1, max_size=3)))
def layer_select_matches_rule(layer_select, model, layers):
    """layer_select(names, layers) is exactly the parameters of the blocks transformer.h.<i>, i
    in layers (i < 0 counts from the end: i + n_layer, n_layer = 1 + the largest block index), plus
    the task head's (`head.*`); any order, no duplicates (1-4 blocks, and 12 where block 1 must not
    select blocks 10 and 11)."""
    L, names = model
    blocks = {i + L if i < 0 else i for i in layers}
    expected = set()
    for n in names:
        parts = n.split(".")
        for j in range(len(parts) - 2):
            if parts[j] == "transformer" and parts[j + 1] == "h" and int(parts[j + 2]) in blocks:
                expected.add(n)
        if _is_head(n):
            expected.add(n)
    what = f"run_layer_select({names}, layers={layers}) (n_layer={L})"
    got = _name_list(layer_select(list(names), list(layers)), what)
    if set(got) != expected:
        raise AssertionError(f"{what}: {_diff(got, expected)}")


_SHAPES = st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple)


@property_check("run_trainable_share", lesson=4, examples=60, shapes=st.lists(_SHAPES, min_size=1, max_size=8),
                data=st.data())
def trainable_share_matches_count(share_of, shapes, data):
    """trainable_share(shapes, trainable) equals the sum over trainable names of prod(shape) over
    the sum over all names (a scalar () counts 1): 0 when nothing trains, 1 when everything does."""
    named = {f"layer{i}.{'weight' if len(s) > 1 else 'bias'}": s for i, s in enumerate(shapes)}
    trainable = data.draw(st.lists(st.sampled_from(list(named)), unique=True), label="trainable")
    size = {n: math.prod(s) for n, s in named.items()}            # math.prod(()) = 1
    expected = sum(size[n] for n in trainable) / sum(size.values())
    what = f"run_trainable_share({named}, {trainable})"
    assert_close(scalar(share_of(dict(named), list(trainable)), what), expected,
                 f"{what} vs trainable / total parameter count", atol=1e-12, rtol=1e-12)
