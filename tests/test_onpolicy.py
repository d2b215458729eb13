"""Preference pairs from the policy (minift/align/onpolicy.py): the ranking step against a brute-force
reading of its definition, the sampling's determinism, and the pairs feeding DPO."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.dpo import DPOConfig, train_dpo
from minift.align.onpolicy import on_policy_pairs, rank_pairs, sample_responses
from minift.model import GPTConfig
from minift.train import TrainConfig
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson15
TOK = CharTok()
CFG = GPTConfig(vocab_size=24, block_size=32, n_layer=1, n_head=2, n_embd=8)

# few distinct texts and few distinct scores, so equal texts and tied scores are common
ANSWERS = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "ab"]), st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0])),
                   min_size=2, max_size=5)
GROUPS = st.lists(ANSWERS, min_size=1, max_size=4)


def _split(groups):
    prompts = [f"p{i}" for i in range(len(groups))]
    return prompts, [[y for y, _ in g] for g in groups], [[s for _, s in g] for g in groups]


@settings(deadline=None, max_examples=150)
@given(groups=GROUPS, margin=st.sampled_from([0.0, 0.5, 1.0]))
def test_all_pairs_are_every_two_different_answers_further_apart_than_the_margin(groups, margin):
    prompts, ys, ss = _split(groups)
    got = rank_pairs(prompts, ys, ss, "all", margin)
    want = sorted((x, ys[i][j], ys[i][l], ss[i][j] - ss[i][l])
                  for i, x in enumerate(prompts) for j in range(len(ys[i])) for l in range(len(ys[i]))
                  if ss[i][j] > ss[i][l] + margin and ys[i][j] != ys[i][l])
    assert sorted((p["prompt"], p["chosen"], p["rejected"], p["margin"]) for p in got) == want


@settings(deadline=None, max_examples=150)
@given(groups=GROUPS, margin=st.sampled_from([0.0, 0.5, 1.0]))
def test_best_worst_pairs_the_first_top_answer_with_the_last_bottom_one(groups, margin):
    prompts, ys, ss = _split(groups)
    got = {p["prompt"]: p for p in rank_pairs(prompts, ys, ss, "best_worst", margin)}
    assert len(got) == len(rank_pairs(prompts, ys, ss, "best_worst", margin))          # at most one per prompt
    for x, y, s in zip(prompts, ys, ss):
        top, bottom = max(s), min(s)
        first_top = y[s.index(top)]                                                     # earliest sample
        last_bottom = y[len(s) - 1 - s[::-1].index(bottom)]                             # latest sample
        if top - bottom > margin and first_top != last_bottom:
            assert (got[x]["chosen"], got[x]["rejected"], got[x]["margin"]) == (first_top, last_bottom, top - bottom)
        else:
            assert x not in got


@pytest.mark.parametrize("args, match", [
    ((["p"], [["a", "b"]], [[1.0]]), "2 responses and 1 scores"),
    ((["p"], [["a"]], [[1.0]]), "at least 2"),
    ((["p", "q"], [["a", "b"]], [[1.0, 0.0]]), "one of each per prompt"),
    ((["p"], [["a", "b"]], [[1.0, math.nan]]), "NaN or inf"),
])
def test_rank_pairs_refuses_inconsistent_input(args, match):
    with pytest.raises(ValueError, match=match):
        rank_pairs(*args)
    with pytest.raises(ValueError, match="margin"):
        rank_pairs(["p"], [["a", "b"]], [[1.0, 0.0]], margin=-1)
    with pytest.raises(ValueError, match="one of"):
        rank_pairs(["p"], [["a", "b"]], [[1.0, 0.0]], pairs="best")


def test_samples_are_k_per_prompt_and_the_same_for_the_same_seed():
    model = tiny_model(CFG, dtype=torch.float32)
    prompts = ["ab", "cde", "f"]
    a = sample_responses(model, TOK, prompts, k=4, max_new_tokens=6, seed=3)
    assert [len(r) for r in a] == [4, 4, 4] and all(len(t) <= 6 for r in a for t in r)
    assert a == sample_responses(model, TOK, prompts, k=4, max_new_tokens=6, seed=3)
    assert a != sample_responses(model, TOK, prompts, k=4, max_new_tokens=6, seed=4)      # another draw
    assert len({t for r in a for t in r}) > 3                                             # they differ


def test_on_policy_pairs_follow_the_rater_and_train_dpo():
    model = tiny_model(CFG, dtype=torch.float32)
    prompts = [f"{c}{d}" for c in "abcd" for d in "efg"]
    pairs, stats = on_policy_pairs(model, TOK, prompts, k=4, score=lambda x, y: len(y), max_new_tokens=8, seed=0)
    assert pairs and all(len(p["chosen"]) > len(p["rejected"]) for p in pairs)             # the rater's order
    assert stats["prompts"] == 12 and stats["pairs"] == len(pairs) == 12 - stats["no_pair"]
    ref = tiny_model(CFG, dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    hist = train_dpo(model, pairs, DPOConfig(beta=0.1), TrainConfig(steps=2, batch_size=4, lr=1e-2, progress=False),
                     ref=ref, tok=TOK)
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
