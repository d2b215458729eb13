"""Lesson 15, part 7 (preference data from the policy): the reference `run_*` function that turns k
scored samples per prompt into preference pairs, and its checks.

    run_rank_pairs(prompts, responses, scores, pairs="best_worst", margin=0.0)
        [{"prompt", "chosen", "rejected", "margin"}]: per prompt, "best_worst" pairs the first
        highest-scoring answer with the last lowest-scoring one; "all" pairs every j, l with
        s_j − s_l > margin (by j, then l); a pair is kept only if its gap exceeds `margin` and its two
        texts differ; "margin" is the gap s_chosen − s_rejected

The reference is `minift/align/onpolicy.py: rank_pairs`. The checks read the definition off
directly, by brute force over every (j, l) of every prompt, in plain Python, and never call minift.
Scores are drawn from a few values and texts from a few strings, so ties and equal texts are common.
"""
from __future__ import annotations

import math

from hypothesis import strategies as st

from minift.align.onpolicy import rank_pairs

from .harness import property_check


# ---- the reference function ---------------------------------------------------------------------

def run_rank_pairs(prompts: list, responses: list, scores: list, pairs: str = "best_worst",
                   margin: float = 0.0) -> list:
    """Preference pairs from k scored answers per prompt (InstructGPT's K answers ranked per prompt).

    prompts: n strings; responses: n lists of k strings; scores: n lists of k floats; pairs:
    "best_worst" (one pair per prompt: the FIRST answer with the highest score over the LAST answer
    with the lowest) or "all" (every ordered j, l with s_j − s_l > margin, j before l in the loops
    "for j: for l:"); margin >= 0. A pair is kept only if s_chosen − s_rejected > margin and the two
    texts differ. Returns a list of {"prompt", "chosen", "rejected", "margin": s_chosen − s_rejected},
    in prompt order."""
    return rank_pairs(prompts, responses, scores, pairs, margin)


# ---- the checks ----------------------------------------------------------------------------------

TEXTS = st.sampled_from(["good.", "not good.", "bad.", "very good."])
SCORES = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


@st.composite
def _groups(draw):
    """n prompts with k answers each (k may differ between prompts), ties and repeats common."""
    n = draw(st.integers(1, 4))
    ys, ss = [], []
    for _ in range(n):
        k = draw(st.integers(2, 5))
        ys.append([draw(TEXTS) for _ in range(k)])
        ss.append([draw(SCORES) for _ in range(k)])
    return [f"prompt {i}" for i in range(n)], ys, ss


def _expected(prompts, ys, ss, pairs, margin) -> list:
    out = []
    for x, y, s in zip(prompts, ys, ss):
        if pairs == "best_worst":
            top, bottom = max(s), min(s)
            j = s.index(top)                                          # the first of the highest
            l = max(i for i in range(len(s)) if s[i] == bottom)       # the last of the lowest
            cand = [(j, l)]
        else:
            cand = [(j, l) for j in range(len(s)) for l in range(len(s))]
        out += [(x, y[j], y[l], s[j] - s[l]) for j, l in cand if s[j] - s[l] > margin and y[j] != y[l]]
    return out


def _as_tuples(got, what) -> list:
    if not isinstance(got, list):
        raise AssertionError(f"{what} must return a list of dicts, got {type(got).__name__}")
    rows = []
    for i, p in enumerate(got):
        if not isinstance(p, dict) or not {"prompt", "chosen", "rejected", "margin"} <= set(p):
            raise AssertionError(f"{what}: item {i} must be a dict with keys prompt, chosen, rejected, margin; got {p!r}")
        rows.append((p["prompt"], p["chosen"], p["rejected"], float(p["margin"])))
    return rows


def _compare(got, want, what) -> None:
    """Same pairs in the same order; margins to float rounding."""
    same = len(got) == len(want) and all(g[:3] == w[:3] and math.isclose(g[3], w[3], abs_tol=1e-9)
                                         for g, w in zip(got, want))
    if not same:
        raise AssertionError(f"{what}:\n  got      {got}\n  expected {want}")


def _pairs_check(name: str, pairs: str, description: str) -> None:
    def prop(rank, g, margin):
        prompts, ys, ss = g
        what = f"run_rank_pairs(prompts, responses={ys}, scores={ss}, pairs={pairs!r}, margin={margin})"
        _compare(_as_tuples(rank(prompts, ys, ss, pairs=pairs, margin=margin), what),
                 _expected(prompts, ys, ss, pairs, margin), what)
    prop.__name__ = prop.__qualname__ = name
    property_check("run_rank_pairs", lesson=15, examples=80, description=description,
                   g=_groups(), margin=st.sampled_from([0.0, 0.25, 0.5]))(prop)


_pairs_check("rank_pairs_best_worst", "best_worst",
             "pairs='best_worst': one pair per prompt, the first highest-scoring answer over the last lowest-scoring "
             "one, kept if the gap exceeds the margin and the texts differ; margin = the gap (ties and repeated "
             "texts common).")
_pairs_check("rank_pairs_all", "all",
             "pairs='all': every (j, l) with s_j − s_l > margin and different texts, by j then l, prompt by prompt; "
             "margin = s_j − s_l.")


@property_check("run_rank_pairs", lesson=15, examples=20, k=st.integers(2, 5), s=SCORES,
                pairs=st.sampled_from(["best_worst", "all"]))
def rank_pairs_no_preference_no_pair(rank, k, s, pairs):
    """a prompt whose k answers all score the same gives no pair (margin 0), and a prompt whose answers
    are all one text gives none either, whatever their scores."""
    ys = [[f"answer {i}." for i in range(k)], ["good."] * k]
    ss = [[s] * k, [float(i) for i in range(k)]]
    what = f"run_rank_pairs(['p', 'q'], {ys}, {ss}, pairs={pairs!r}, margin=0.0)"
    got = _as_tuples(rank(["p", "q"], ys, ss, pairs=pairs, margin=0.0), what)
    if got:
        raise AssertionError(f"{what} should give no pair (equal scores; equal texts), got {got}")
