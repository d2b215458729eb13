"""Multitask mixtures and sequential fine-tuning: the mixture weights against their definition, the
sampler's proportions within binomial bounds, the cap, determinism, the per-example loss, the
forgetting measures, the stage runner (replay, per-task adapters that cannot forget), bad input."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from minift.align.multitask import (Column, MixtureConfig, MixtureDataset, Stage, backward_transfer,
                                    example_loss, forgetting, mixture_weights, replay_weights, run_stages,
                                    sample_mixture, stage_matrix)
from minift.model import GPTConfig
from minift.peft.lora import LoRAConfig
from minift.tasks import collate_fn
from minift.train import evaluate_nll
from strategies import tiny_model

pytestmark = pytest.mark.lesson18

sizes_lists = st.lists(st.integers(1, 5000), min_size=1, max_size=6)
temperatures = st.one_of(st.sampled_from([1.0, 2.0, 1 / 0.3, 0.5, math.inf]), st.floats(0.1, 50.0))


def _expected(sizes, T, cap=None):
    """p_i = min(n_i, K_cap)^(1/T) / Σ_j min(n_j, K_cap)^(1/T) in float64 numpy (no log-space shift)."""
    n = np.minimum(np.array(sizes, np.float64), cap if cap is not None else np.inf)
    w = np.ones_like(n) if math.isinf(T) else n ** (1.0 / T)
    return w / w.sum()


# ---- the weights ------------------------------------------------------------------------------

@settings(deadline=None, max_examples=60)
@given(sizes=sizes_lists, T=temperatures, cap=st.one_of(st.none(), st.integers(1, 3000)))
def test_weights_match_their_definition_and_sum_to_one(sizes, T, cap):
    p = np.array(mixture_weights(sizes, T, cap))
    np.testing.assert_allclose(p, _expected(sizes, T, cap), rtol=1e-9, atol=1e-12)
    assert abs(p.sum() - 1) < 1e-12 and (p >= 0).all()
    order = np.argsort(sizes, kind="stable")
    assert (np.diff(p[order]) >= -1e-15).all(), "a bigger set never gets less weight"


@settings(deadline=None, max_examples=40)
@given(sizes=sizes_lists)
def test_temperature_one_is_proportional_and_infinity_is_equal(sizes):
    total = sum(sizes)
    assert mixture_weights(sizes, 1.0) == pytest.approx([n / total for n in sizes], rel=1e-12)
    assert mixture_weights(sizes, math.inf) == pytest.approx([1 / len(sizes)] * len(sizes), rel=1e-12)
    # T -> inf approaches equal: |p_i - 1/K| <= (max log-ratio / T) for large T
    spread = math.log(max(sizes) / min(sizes))
    for T in (1e3, 1e6):
        p = mixture_weights(sizes, T)
        assert max(abs(x - 1 / len(sizes)) for x in p) <= 2 * spread / T + 1e-12


@settings(deadline=None, max_examples=40)
@given(sizes=st.lists(st.integers(1, 5000), min_size=2, max_size=6), T1=st.floats(0.2, 20.0), dT=st.floats(0.1, 20.0))
def test_a_higher_temperature_moves_weight_from_big_sets_to_small(sizes, T1, dT):
    assume(max(sizes) > min(sizes))
    lo, hi = mixture_weights(sizes, T1), mixture_weights(sizes, T1 + dT)
    big, small = sizes.index(max(sizes)), sizes.index(min(sizes))
    assert hi[big] <= lo[big] + 1e-12 and hi[small] >= lo[small] - 1e-12


@settings(deadline=None, max_examples=40)
@given(sizes=sizes_lists, cap=st.integers(1, 5000), T=temperatures)
def test_cap_K(sizes, cap, T):
    p = mixture_weights(sizes, T, cap)
    capped = [i for i, n in enumerate(sizes) if n >= cap]
    if capped:                                    # every set at or above K counts as K: equal weights
        assert max(p[i] for i in capped) - min(p[i] for i in capped) < 1e-12
    if cap >= max(sizes):                         # a cap nobody reaches changes nothing
        assert p == pytest.approx(mixture_weights(sizes, T), rel=1e-12)


def test_weights_by_name_and_the_config_strategies():
    sizes = {"a": 300, "b": 100}
    assert mixture_weights(sizes) == pytest.approx({"a": 0.75, "b": 0.25})
    assert MixtureConfig("proportional").weights(sizes) == pytest.approx({"a": 0.75, "b": 0.25})
    assert MixtureConfig("equal").weights(sizes) == pytest.approx({"a": 0.5, "b": 0.5})
    w = MixtureConfig("temperature", temperature=2.0).weights(sizes)       # sqrt(3) : 1
    assert w["a"] == pytest.approx(math.sqrt(3) / (math.sqrt(3) + 1))
    assert MixtureConfig("proportional", cap=100).weights(sizes) == pytest.approx({"a": 0.5, "b": 0.5})
    huge = mixture_weights([10 ** 300, 10 ** 300], 0.01)                  # log-space: no overflow
    assert huge == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(temperature=-1.0), dict(temperature=float("nan")),
                                 dict(temperature=True), dict(cap=0), dict(cap=2.5), dict(cap=-3)])
def test_bad_temperature_or_cap_raise(bad):
    with pytest.raises(ValueError, match="temperature|cap"):
        mixture_weights([10, 20], **{"temperature": 1.0, **bad})


def test_empty_sets_and_bad_configs_raise():
    for sizes in ([], {}, [0, 5], {"qa": 0}, [3, -1], [2.5]):
        with pytest.raises(ValueError, match="size|empty"):
            mixture_weights(sizes)
    with pytest.raises(ValueError, match="strategy"):
        MixtureConfig("uniform")
    with pytest.raises(ValueError, match="temperature"):
        MixtureConfig("temperature", temperature=0.0)
    with pytest.raises(ValueError, match="cap"):
        MixtureConfig(cap=0)


# ---- the sampler --------------------------------------------------------------------------------

def _bound(n, p):
    """|count - n p| <= 6 sd + 1: a binomial count breaks it with probability < 1e-8."""
    return 6 * math.sqrt(n * p * (1 - p)) + 1


@settings(deadline=None, max_examples=30)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5), T=temperatures, seed=st.integers(0, 2 ** 31 - 1),
       n=st.integers(200, 3000))
def test_sampler_proportions_within_binomial_bounds(sizes, T, seed, n):
    names = [f"t{i}" for i in range(len(sizes))]
    w = mixture_weights(dict(zip(names, sizes)), T)
    draws = sample_mixture(dict(zip(names, sizes)), w, n, seed)
    assert len(draws) == n
    c = Counter(t for t, _ in draws)
    for k in names:
        assert abs(c[k] - n * w[k]) <= _bound(n, w[k]), (k, c[k], n * w[k])


@settings(deadline=None, max_examples=30)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4), seed=st.integers(0, 10 ** 6),
       n=st.integers(1, 120))
def test_sampler_takes_examples_in_epochs_and_is_deterministic(sizes, seed, n):
    names = [f"t{i}" for i in range(len(sizes))]
    sz = dict(zip(names, sizes))
    w = mixture_weights(sz, math.inf)
    draws = sample_mixture(sz, w, n, seed)
    assert draws == sample_mixture(sz, w, n, seed)
    for k in names:
        mine = [i for t, i in draws if t == k]
        assert all(0 <= i < sz[k] for i in mine)
        per = Counter(mine)
        lo, hi = len(mine) // sz[k], -(-len(mine) // sz[k])
        assert all(lo <= per[i] <= hi for i in range(sz[k])), f"{k}: counts {dict(per)} not within [{lo}, {hi}]"


def test_sampler_depends_on_the_seed_and_skips_zero_weights():
    sz = {"a": 50, "b": 50, "c": 50}
    w = {"a": 0.5, "b": 0.5, "c": 0.0}
    runs = {tuple(sample_mixture(sz, w, 64, s)) for s in range(4)}
    assert len(runs) == 4
    assert all(t != "c" for r in runs for t, _ in r)
    assert {t for t, _ in sample_mixture(sz, {"a": 1.0}, 30, 0)} == {"a"}    # a task left out is never drawn


def test_sampler_bad_inputs_raise():
    sz = {"qa": 5, "summ": 5}
    with pytest.raises(ValueError, match="unknown task.*ner"):
        sample_mixture(sz, {"qa": 0.5, "ner": 0.5}, 10, 0)
    for w in ({"qa": -0.1, "summ": 1.1}, {"qa": 0.0, "summ": 0.0}, {"qa": float("nan"), "summ": 1.0}):
        with pytest.raises(ValueError, match="weights"):
            sample_mixture(sz, w, 10, 0)
    with pytest.raises(ValueError, match="n=0"):
        sample_mixture(sz, {"qa": 1.0}, 0, 0)
    with pytest.raises(ValueError, match="size"):
        sample_mixture({"qa": 0}, {"qa": 1.0}, 3, 0)
    with pytest.raises(ValueError, match="no datasets"):
        MixtureDataset({}, {}, 3)


def test_mixture_dataset_items_come_from_their_sets():
    sets = {"a": [f"a{i}" for i in range(7)], "b": [f"b{i}" for i in range(3)]}
    ds = MixtureDataset(sets, {"a": 0.3, "b": 0.7}, 50, seed=1)
    assert len(ds) == 50 and sum(ds.counts().values()) == 50
    for k in range(50):
        t, i = ds.draws[k]
        assert ds[k] == sets[t][i]


@settings(deadline=None, max_examples=30)
@given(rho=st.floats(0.0, 0.99), sizes=st.lists(st.integers(1, 1000), min_size=0, max_size=3))
def test_replay_weights(rho, sizes):
    earlier = {f"s{i}": n for i, n in enumerate(sizes)}
    w = replay_weights("now", earlier, rho)
    assert sum(w.values()) == pytest.approx(1.0)
    if rho == 0 or not earlier:
        assert w == {"now": 1.0}
    else:
        assert w["now"] == pytest.approx(1 - rho)
        total = sum(sizes)
        for k, n in earlier.items():                   # proportional to the earlier sets' sizes
            assert w[k] == pytest.approx(rho * n / total)
    with pytest.raises(ValueError, match="fraction"):
        replay_weights("now", earlier, 1.0)
    with pytest.raises(ValueError, match="fraction"):
        replay_weights("now", earlier, -0.1)


# ---- the per-example loss ----------------------------------------------------------------------

CFG = GPTConfig(vocab_size=20, block_size=12, n_layer=1, n_head=2, n_embd=8)


@settings(deadline=None, max_examples=20)
@given(lengths=st.lists(st.integers(2, 10), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_example_loss_is_the_mean_of_per_example_means(lengths, seed):
    model = tiny_model(CFG)
    g = torch.Generator().manual_seed(seed)
    items = []
    for L in lengths:
        idx = torch.randint(0, CFG.vocab_size, (L,), generator=g)
        tgt = torch.randint(0, CFG.vocab_size, (L,), generator=g)
        tgt[: int(torch.randint(0, L, (1,), generator=g))] = -100      # a prompt: no loss there
        items.append({"idx": idx, "targets": tgt})
    batch = collate_fn(0)(items)
    loss, _ = example_loss(model, batch)
    per = []
    for it in items:                                       # one example at a time, no padding
        logits = model(it["idx"][None]).logits[0].double()
        keep = it["targets"] != -100
        logp = torch.log_softmax(logits, -1)[keep, it["targets"][keep]]
        per.append(-logp.mean().item())
    assert loss.item() == pytest.approx(sum(per) / len(per), rel=1e-9, abs=1e-12)


def test_example_loss_equals_the_token_mean_when_every_example_is_a_full_window():
    model = tiny_model(CFG)
    g = torch.Generator().manual_seed(0)
    batch = {"idx": torch.randint(0, 20, (3, 12), generator=g), "targets": torch.randint(0, 20, (3, 12), generator=g)}
    assert example_loss(model, batch)[0].item() == pytest.approx(model(batch["idx"], batch["targets"]).loss.item(),
                                                                 rel=1e-10)


# ---- forgetting and backward transfer ----------------------------------------------------------

def test_forgetting_and_bwt_by_hand():
    R = [[0.9, 0.1, 0.0],      # after stage 0: task 0 learned
         [0.5, 0.8, 0.1],      # after stage 1: task 0 down, task 1 learned
         [0.3, 0.6, 0.7]]      # after stage 2
    assert forgetting(R).tolist() == pytest.approx([0.6, 0.2])
    assert backward_transfer(R).item() == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)


@settings(deadline=None, max_examples=40)
@given(K=st.integers(2, 5), data=st.data())
def test_forgetting_and_bwt_match_their_definitions(K, data):
    R = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=K * K, max_size=K * K))).reshape(K, K)
    f = [max(R[l, j] for l in range(K - 1)) - R[K - 1, j] for j in range(K - 1)]
    bwt = sum(R[K - 1, j] - R[j, j] for j in range(K - 1)) / (K - 1)
    assert forgetting(R).tolist() == pytest.approx(f, abs=1e-12)
    assert backward_transfer(R).item() == pytest.approx(bwt, abs=1e-12)
    frozen = np.tril(np.tile(np.diag(R), (K, 1)))             # every task keeps its score: nothing forgotten
    assert backward_transfer(frozen).item() == pytest.approx(0.0, abs=1e-12)


def test_forgetting_bad_inputs_raise():
    for R in ([[1.0]], [[1.0, 2.0, 3.0]], [[1.0, 2.0], [3.0, float("nan")]], np.zeros((2, 3))):
        with pytest.raises(ValueError, match="score matrix"):
            forgetting(R)
        with pytest.raises(ValueError, match="score matrix"):
            backward_transfer(R)


# ---- the stage runner ---------------------------------------------------------------------------

def _items(seed, n=6, L=8):
    g = torch.Generator().manual_seed(seed)
    return [{"idx": torch.randint(0, 20, (L,), generator=g), "targets": torch.randint(0, 20, (L,), generator=g)}
            for _ in range(n)]


def _setup():
    sets = {"a": _items(1), "b": _items(2), "c": _items(3)}
    cols = {n: Column(lambda m, d=d: -evaluate_nll(m, d, batch_size=8), n) for n, d in sets.items()}
    cols["ppl"] = Column(lambda m: math.exp(evaluate_nll(m, sets["a"], batch_size=8)), None, higher_is_better=False)
    stages = [Stage(n, d, steps=4, lr=3e-2) for n, d in sets.items()]
    return sets, cols, stages


def _fresh():
    return tiny_model(CFG, dtype=torch.float32).train()


def test_run_stages_scores_every_column_after_every_stage_and_is_deterministic():
    _, cols, stages = _setup()
    r1 = run_stages(_fresh(), stages, cols, batch_size=3, progress=False)
    r2 = run_stages(_fresh(), stages, cols, batch_size=3, progress=False)
    assert r1["rows"] == ["base", "a", "b", "c"] and len(r1["scores"]) == 4
    assert r1["scores"] == r2["scores"]
    assert r1["scores"][1]["a"] > r1["scores"][0]["a"]                # stage a teaches a
    R = stage_matrix(r1, cols)
    assert R.shape == (3, 3) and R[0, 0].item() == r1["scores"][1]["a"]
    assert [sum(c.values()) for c in r1["counts"]] == [12, 12, 12]    # steps x batch examples per stage


def test_replay_draws_the_stated_share_from_earlier_stages():
    sets, cols, _ = _setup()
    stages = [Stage(n, d, steps=100, lr=1e-3) for n, d in sets.items()]
    r = run_stages(_fresh(), stages[:2], {}, batch_size=4, replay=0.25, progress=False)
    c = r["counts"][1]                                                  # stage b: 400 examples, a quarter from a
    assert c["a"] + c["b"] == 400 and abs(c["a"] - 100) <= _bound(400, 0.25)
    assert r["counts"][0] == {"a": 400}


def test_per_task_adapters_never_forget_and_leave_the_base_untouched(tmp_path):
    _, cols, stages = _setup()
    model = _fresh()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    r = run_stages(model, stages, cols, batch_size=3, lora=LoRAConfig(r=2), folder=str(tmp_path), progress=False)
    for k, name in enumerate(["a", "b", "c"], start=1):                # a column is fixed once its stage ran
        for later in range(k, 4):
            assert r["scores"][later][name] == r["scores"][k][name]
        for earlier in range(k):                                        # before: the base model's score
            assert r["scores"][earlier][name] == r["scores"][0][name]
    assert all(r["scores"][k]["ppl"] == r["scores"][0]["ppl"] for k in range(4))   # stage None: the base
    assert backward_transfer(stage_matrix(r, cols)).item() == 0.0
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in base.items())         # the base weights, bit for bit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_full_fine_tuning_moves_earlier_scores():
    _, cols, stages = _setup()
    r = run_stages(_fresh(), stages, cols, batch_size=3, progress=False)
    assert r["scores"][3]["a"] != r["scores"][1]["a"]                  # not frozen: later stages move it


def test_run_stages_bad_inputs_raise(tmp_path):
    sets, cols, stages = _setup()
    with pytest.raises(ValueError, match="no stages"):
        run_stages(_fresh(), [], cols)
    with pytest.raises(ValueError, match="distinct"):
        run_stages(_fresh(), [stages[0], stages[0]], cols)
    with pytest.raises(ValueError, match="folder"):
        run_stages(_fresh(), stages, cols, lora=LoRAConfig(r=2))
    with pytest.raises(ValueError, match="replay"):
        run_stages(_fresh(), stages, cols, lora=LoRAConfig(r=2), folder=str(tmp_path), replay=0.5)
    with pytest.raises(ValueError, match="fraction"):
        run_stages(_fresh(), stages, cols, replay=1.0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        Stage("x", [], 3)
    with pytest.raises(ValueError, match="steps"):
        Stage("x", sets["a"], 0)


def test_before_scores_are_reused_not_measured_again():
    sets, _, stages = _setup()
    calls = []
    cols = {"a": Column(lambda m: calls.append(1) or -evaluate_nll(m, sets["a"], batch_size=8), "a")}
    r = run_stages(_fresh(), stages[:1], cols, batch_size=3, before={"a": -99.0}, progress=False)
    assert r["scores"][0] == {"a": -99.0} and len(calls) == 1          # only after the stage
    assert len(r["cpu_seconds"]) == 1 and r["cpu_seconds"][0] >= 0
