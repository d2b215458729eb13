"""Lesson 19 (choosing a method): the trainable-parameter counts its table rests on, and its checks.

The conformance checks themselves (minift/conformance/lesson19_choosing_a_method.py) run in
tests/test_conformance.py; here: the reference function on shapes whose counts are known from
elsewhere, its errors, and that the checks catch wrong counts and score the stubs zero.
"""
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.conformance import CHECKS, FAIL, NOT_IMPLEMENTED, PASS, run_check
from minift.conformance.reference import run_trainable_count
from minift.memory import PRESETS, estimate
from minift.pretrain import load_base

pytestmark = pytest.mark.lesson19

ROOT = Path(__file__).resolve().parent.parent
LESSON19 = [c for c in CHECKS.values() if c.lesson == "lesson19"]


def test_full_count_is_the_shipped_base_model():
    base, _ = load_base()
    c = base.config
    assert run_trainable_count("full", c.n_layer, c.n_embd, c.vocab_size, c.block_size, {}) == base.num_parameters()


def test_lora_count_is_lesson05s_table():
    # lesson 05's README: LoRA r=4 q,v trains 9,353 with the head (1,161 = 9 x 129): 8,192 without
    c = load_base()[0].config
    assert run_trainable_count("lora", c.n_layer, c.n_embd, c.vocab_size, c.block_size, {"r": 4}) == 9_353 - 1_161


@settings(max_examples=10, deadline=None)
@given(r=st.integers(1, 8))
def test_estimate_on_7b_counts_the_same_lora(r):
    cfg = PRESETS["llama-7b"]
    e = estimate(cfg, "lora", batch=1, seq=1, r=r)
    assert e["trainable"] == cfg.n_layer * 2 * r * 2 * cfg.n_embd           # W_q, W_v: r (C + C) each


@pytest.mark.parametrize("method, hp, match", [
    ("sgd", {}, "method='sgd' must be one of"),
    ("lora", {"r": 0}, r"LoRAConfig\.r=0"),
    ("adapter", {"bottleneck": 0}, "bottleneck=0"),
    ("masking", {"density": 0.0}, "density=0.0"),
])
def test_bad_inputs_raise_in_the_users_terms(method, hp, match):
    with pytest.raises(ValueError, match=match):
        run_trainable_count(method, 2, 8, 20, 16, hp)


def test_the_checks_cover_every_method():
    counts = [c for c in LESSON19 if c.adapter == "run_trainable_count"]
    assert len(counts) == 5 and len(LESSON19) == 8
    assert {c.adapter for c in LESSON19} == {"run_trainable_count", "run_merge_into_linear"}


def _wrong(bug):
    def run_trainable_count_wrong(method, n_layer, n_embd, vocab_size, block_size, hp):
        return bug(method, hp, run_trainable_count(method, n_layer, n_embd, vocab_size, block_size, hp), n_embd,
                   vocab_size)
    return types.SimpleNamespace(run_trainable_count=run_trainable_count_wrong)


BUGS = {  # a plausible mistake per check, each must be caught
    "trainable_count_full_and_bitfit": lambda m, hp, n, C, V: n + V * C if m == "full" else n,   # untied lm_head
    "trainable_count_lora": lambda m, hp, n, C, V: n - (2 * C if hp.get("dora") else 0),        # DoRA's m forgotten
    "trainable_count_adapters": lambda m, hp, n, C, V: n - (C if m == "adapter" else 0),         # no b_up
    "trainable_count_prefix_and_prompt": lambda m, hp, n, C, V: n // 2 if m == "prefix" and not hp["reparam"] else n,
    "trainable_count_reft_and_masking": lambda m, hp, n, C, V: n - hp["r"] if m == "reft" else n,  # no b
}


@pytest.mark.parametrize("name", sorted(BUGS))
def test_each_check_catches_a_wrong_count(name):
    assert run_check(CHECKS[name], _wrong(BUGS[name])).status == FAIL


def test_reference_passes_and_stubs_score_zero():
    from minift.conformance import load_impl, reference
    stub = load_impl(ROOT / "lessons" / "19_choosing_a_method" / "exercise.py")
    for c in LESSON19:
        assert run_check(c, reference).status == PASS, c.name
        assert run_check(c, stub).status == NOT_IMPLEMENTED, c.name


def test_count_is_an_int_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    n = run_trainable_count("prompt", 1, 4, 8, 8, {"n_tokens": 2})
    assert type(n) is int and n == 2 * 4                                   # n C
    assert torch.equal(torch.rand(3), want)
