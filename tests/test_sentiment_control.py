"""Sentiment control (minift/sentiment.py): the completion mask against a loop over its definition, the
TinyWorld data cut before the judgement, the fixed pairs, and the reward / KL measured on fresh samples."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift import world
from minift.heads import SequenceClassifier
from minift.model import GPTConfig
from minift.sentiment import (classifier_reward, completion_mask, first_reaching, fixed_pairs, positive_prob,
                              reward_and_kl, sentiment_completions)
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson15
TOK = CharTok()
CFG = GPTConfig(vocab_size=24, block_size=32, n_layer=1, n_head=2, n_embd=8)


@settings(deadline=None, max_examples=100)
@given(rows=st.lists(st.tuples(st.lists(st.integers(0, 6), min_size=1, max_size=8), st.integers(0, 3)),
                     min_size=1, max_size=4))
def test_completion_mask_keeps_the_real_tokens_after_the_first_marker(rows):
    R = TOK.response_id
    T = max(len(ids) + 1 for ids, _ in rows)
    ids, am = torch.zeros(len(rows), T, dtype=torch.long), torch.zeros(len(rows), T, dtype=torch.long)
    for b, (toks, pad) in enumerate(rows):
        row = toks + [R if 3 in toks else 5]                  # one real token after a marker, when there is one
        row = [R] + row if R not in row else row
        row = row[:T]
        ids[b, :len(row)], am[b, :len(row)] = torch.tensor(row), 1
    want = torch.zeros_like(ids)
    for b in range(len(rows)):
        first = min(t for t in range(T) if ids[b, t] == R and am[b, t] == 1)
        for t in range(first + 1, T):
            want[b, t] = int(am[b, t] == 1)                   # a later marker is completion too
    if bool((want.sum(1) == 0).any()):
        with pytest.raises(ValueError, match="no real token after"):
            completion_mask(ids, am, R)
    else:
        assert torch.equal(completion_mask(ids, am, R), want)


def test_completion_mask_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="one"):
        completion_mask(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), 3)


def test_completions_are_tinyworld_reviews_cut_before_their_judgement():
    ex = sentiment_completions("val")
    texts = {e["text"]: e["label"] for e in world.task("sentiment", "val")}
    assert len(ex) > 50
    for e in ex:
        full = f"{e['prompt']} {e['response']}"
        assert texts[full] == e["label"]                                   # the same review, the same label
        assert e["prompt"].endswith((" was", " is")) and "," not in e["response"] and " but " not in full
        words = e["response"][:-1].split(" ")
        assert e["response"].endswith(".") and 1 <= len(words) <= 2       # "good.", "not good.", "very good."


def test_fixed_pairs_put_a_positive_completion_over_a_negative_one_for_every_prompt():
    ex = sentiment_completions("train")[:60]
    label = {e["response"]: e["label"] for e in sentiment_completions("train")}
    pairs = fixed_pairs(ex, seed=1)
    assert [p["prompt"] for p in pairs] == [e["prompt"] for e in ex]
    for p, e in zip(pairs, ex):
        assert label[p["chosen"]] == 1 and label[p["rejected"]] == 0
        assert e["response"] in (p["chosen"], p["rejected"])             # its own completion is one side
    with pytest.raises(ValueError, match="both labels"):
        fixed_pairs([e for e in ex if e["label"] == 1])


def test_first_reaching():
    assert first_reaching([0.1, 0.5, 0.9, 0.95], 0.9) == 2
    assert first_reaching([0.1, 0.5], 0.9) is None


def _clf():
    torch.manual_seed(0)
    return SequenceClassifier(tiny_model(CFG, seed=1, dtype=torch.float32), 2).eval()


def test_the_reward_reads_the_completion_only_and_agrees_with_positive_prob():
    clf = _clf()
    prompts, responses = ["abc", "de", "fghij"], ["xy", "xy", "zzq"]
    p = positive_prob(clf, TOK, prompts, responses)
    assert p[0] == pytest.approx(float(p[1]), abs=1e-6)                  # same completion, other prompt
    with torch.no_grad():
        alone = clf(torch.tensor([TOK.encode("xy") + [TOK.eos_id]])).logits.softmax(-1)[0, 1]
    assert float(p[0]) == pytest.approx(float(alone), abs=1e-5)          # = classifying y on its own
    b = [TOK.encode_pair(x, y)[0] for x, y in zip(prompts, responses)]
    T = max(map(len, b))
    ids = torch.tensor([[TOK.pad_id] * (T - len(r)) + r for r in b])    # left-padded, as rollouts are
    am = (torch.arange(T)[None] >= torch.tensor([T - len(r) for r in b])[:, None]).long()
    assert torch.allclose(classifier_reward(clf, TOK.response_id)(ids, am), p, atol=1e-5)


def test_reward_and_kl_on_fresh_samples():
    policy = tiny_model(CFG, seed=2, dtype=torch.float32)
    reward = classifier_reward(_clf(), TOK.response_id)
    prompts = ["ab", "cd", "efg", "h"] * 3
    same = reward_and_kl(policy, copy.deepcopy(policy), reward, TOK, prompts, 5, seed=0, batch_size=5)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and len(same["responses"]) == len(prompts)
    assert 0.0 <= same["reward"] <= 1.0
    other = tiny_model(CFG, seed=3, dtype=torch.float32)
    d = reward_and_kl(policy, other, reward, TOK, prompts, 5, seed=0, batch_size=5)
    assert d["responses"] == same["responses"]                           # the same draws: π samples either way
    # KL by hand: Σ log π − log π_ref over each sampled completion's tokens (EOS included), one full
    # forward per row, averaged over the prompts
    total = 0.0
    for x, resp in zip(prompts, d["tokens"]):
        full = torch.tensor([TOK.encode_prompt(x) + resp])
        n = len(resp)
        with torch.no_grad():
            lp = [m(full).logits.log_softmax(-1)[0, -n - 1:-1].gather(-1, full[0, -n:, None]).sum()
                  for m in (policy, other)]
        total += float(lp[0] - lp[1])
    assert d["kl"] == pytest.approx(total / len(prompts), abs=1e-4)


def test_the_frontier_figure_is_a_small_png_and_the_same_numbers_give_the_same_bytes(tmp_path):
    pytest.importorskip("matplotlib")
    from minift import figures
    pts = {"PPO": [(1.6, 0.9, "β_KL=0.1"), (0.9, 0.79, "β_KL=0.3")], "DPO": [(5.1, 0.92, "β=1")]}
    a = figures.reward_kl_frontier(pts, tmp_path / "a.png", target=0.8).read_bytes()
    b = figures.reward_kl_frontier(pts, tmp_path / "b.png", target=0.8).read_bytes()
    assert a == b and a[:8] == b"\x89PNG\r\n\x1a\n" and len(a) <= 60_000
