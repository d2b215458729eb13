"""minift/scaling.py (lesson 20): the fit recovers the law it is given, the law is
multiplicative, a sweep cell early-stops on validation, the cache keeps what it holds and refuses
another recipe's cells, and the shipped model sizes and sweep cache are current."""
import itertools
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minift.checkpoint import load_json
from minift.model import GPT, GPTConfig
from minift.pretrain import (BASE_DIR, DATA_DIR, PRETRAIN_AMOUNTS, RECIPE, SIZES, corpus_fingerprint, load_base,
                             pretrain, pretraining_tokens, size_dir)
from minift.report import ascii_plot
from minift.train import TrainConfig
from minift.scaling import (METHODS, Cache, equivalent_factor, finetune_cell, fit_scaling_law,
                            non_embedding_parameters, predict_loss, recipe_fingerprint, steps_for, sweep, train_subset)

from hypothesis import settings

pytestmark = pytest.mark.lesson20

GRID_X = (1e5, 3.3e5, 8e5)
GRID_D = (48, 150, 480, 1500)


def _points(p):
    pts = list(itertools.product(GRID_X, GRID_D))
    L = [p["A"] * x ** -p["alpha"] * d ** -p["beta"] + p["E"] for x, d in pts]   # the law, written out here
    return [x for x, _ in pts], [d for _, d in pts], L


@settings(max_examples=20, deadline=None)
@given(logA=st.floats(0.0, 8.0), alpha=st.floats(0.05, 0.8), beta=st.floats(0.05, 0.8), E=st.floats(0.05, 2.0))
def test_fit_recovers_the_law_it_was_given(logA, alpha, beta, E):
    p = {"A": math.exp(logA), "alpha": alpha, "beta": beta, "E": E}
    X, D, L = _points(p)
    # identifiable only where the reducible term is not lost against E over the grid
    red = [l - E for l in L]
    if max(red) / min(red) < 1.5 or min(red) < 1e-3 * E:
        return
    f = fit_scaling_law(X, D, L)
    for x, d, l in zip(X, D, L):
        assert abs(float(predict_loss(f, x, d)) - l) <= 1e-4 * l, (p, f)
    assert abs(f["alpha"] - alpha) < 0.02 and abs(f["beta"] - beta) < 0.02, (p, f)
    assert abs(f["E"] - E) < 0.02 * E + 1e-3, (p, f)


@settings(max_examples=30, deadline=None)
@given(x=st.floats(1e3, 1e7), d=st.floats(1.0, 1e5), alpha=st.floats(0.0, 1.5), beta=st.floats(0.0, 1.5),
       k=st.floats(1.1, 10.0))
def test_law_is_multiplicative(x, d, alpha, beta, k):
    """Scaling X by k multiplies the reducible loss by k^-α whatever D is (and D by k: k^-β)."""
    p = {"A": 3.0, "alpha": alpha, "beta": beta, "E": 0.5}
    base = float(predict_loss(p, x, d)) - 0.5
    assert float(predict_loss(p, k * x, d)) - 0.5 == pytest.approx(base * k ** -alpha, rel=1e-9)
    assert float(predict_loss(p, x, k * d)) - 0.5 == pytest.approx(base * k ** -beta, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), noise=st.sampled_from([0.005, 0.02, 0.05]))
def test_fit_on_noisy_points_is_no_worse_than_the_truth(seed, noise):
    """With multiplicative noise, 12 points do not pin the four parameters down (A, α, β trade off
    against E), but a minimiser must fit the points at least as well as the true law does: its
    Huber objective is <= the truth's, computed here from the definition."""
    g = torch.Generator().manual_seed(seed)
    p = {"A": 40.0, "alpha": 0.3, "beta": 0.45, "E": 0.4}
    X, D, L = _points(p)
    L = [l * math.exp(noise * float(torch.randn((), generator=g))) for l in L]

    def huber(q, delta=1e-3):
        r = [math.log(q["A"] * x ** -q["alpha"] * d ** -q["beta"] + q["E"]) - math.log(l) for x, d, l in zip(X, D, L)]
        return sum(0.5 * v * v if abs(v) <= delta else delta * (abs(v) - 0.5 * delta) for v in r)
    f = fit_scaling_law(X, D, L)
    assert huber(f) <= huber(p) * (1 + 1e-9), (f, huber(f), huber(p))
    assert f["objective"] == pytest.approx(huber(f), rel=1e-6)


@pytest.mark.parametrize("X,D,L,msg", [
    ([1e5, 2e5, 3e5], [10, 20, 30], [1.0, 0.9], "same length"),
    ([1e5, 2e5, 3e5], [10, 20, 30], [1.0, 0.9, 0.8], "4 parameters"),
    ([1e5] * 4, [10, 20, 30, 40], [1.0, 0.9, 0.8, 0.7], "two distinct"),
    ([1e5, 2e5, 1e5, 2e5], [10, 10, 20, 20], [1.0, 0.0, 0.8, 0.7], "every L"),
    ([1e5, 2e5, 1e5, 2e5], [10, 10, 20, float("nan")], [1.0, 0.9, 0.8, 0.7], "every D"),
])
def test_fit_rejects_bad_points(X, D, L, msg):
    with pytest.raises(ValueError, match=msg):
        fit_scaling_law(X, D, L)


def test_steps_and_subsets():
    assert {steps_for(n) for n in (1, 48, 150, 480, 1500, 10**6)} == {200}     # one compute budget
    pairs = [(f"p{i}", f"r{i}") for i in range(100)]
    small, big = train_subset(pairs, 10, 3), train_subset(pairs, 40, 3)
    assert big[:10] == small and len(set(big)) == 40                 # nested, no repeats
    assert train_subset(pairs, 10, 4) != small                       # another seed, another draw
    with pytest.raises(ValueError, match="more than the 100"):
        train_subset(pairs, 101, 0)
    with pytest.raises(ValueError, match="n_train"):
        steps_for(0)


def test_non_embedding_parameters_counts_12_L_C2_plus_biases():
    cfg = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=16)
    m = GPT(cfg)
    C, Lyr = 16, 2
    per_block = 12 * C * C + (3 * C + C + 4 * C + C) + 4 * C          # weights, biases, two LayerNorms
    assert non_embedding_parameters(m) == Lyr * per_block + 2 * C     # + ln_f; wte (tied head) and wpe out


@pytest.fixture(scope="module")
def toy_load():
    """A tiny randomly initialised GPT on the shipped tokenizer: a sweep cell in about a second."""
    _, tok = load_base()

    def load(size):
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=160, n_layer=1, n_head=2, n_embd=32)), tok
    return load


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cell_reports_test_loss_at_the_val_best_step(toy_load, method):
    r = finetune_cell("tiny", method, 32, seed=0, steps=16, n_val=8, n_test=8, load=toy_load)
    assert r["steps"] == 16 and 1 <= r["best_step"] <= 16
    k = min(range(len(r["val_curve"])), key=r["val_curve"].__getitem__)
    assert r["best_step"] == r["eval_steps"][k] and r["val_nll"] == r["val_curve"][k]
    assert math.isfinite(r["test_nll"]) and r["test_nll"] > 0
    assert 0 < r["trainable"] <= sum(p.numel() for p in toy_load("tiny")[0].parameters())
    if method != "full":
        assert r["trainable"] < r["X"]
    torch.manual_seed(987)
    torch.rand(13)                                                    # whatever ran before must not matter
    again = finetune_cell("tiny", method, 32, seed=0, steps=16, n_val=8, n_test=8, load=toy_load)
    assert again["test_nll"] == r["test_nll"] and again["val_nll"] == r["val_nll"]     # reproducible


def test_cell_evaluates_every_tenth_of_its_steps(toy_load):
    """The evaluation schedule does not depend on the method: one method shows it."""
    r20 = finetune_cell("tiny", "lora", 32, seed=0, steps=20, n_val=8, n_test=8, load=toy_load)
    assert r20["steps"] == 20 and r20["eval_steps"] == list(range(2, 21, 2))      # every 20 // 10 steps
    assert r20["best_step"] in r20["eval_steps"]


def test_cell_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="not in the sweep"):
        finetune_cell("tiny", "bitfit", 48)


def test_cache_keeps_cells_and_refuses_another_recipe(tmp_path):
    path = str(tmp_path / "sweep.json")
    calls = []

    def fake(size, method, n, seed):
        calls.append((size, method, n, seed))
        return {"size": size, "method": method, "n_train": n, "seed": seed, "test_nll": 1.0 / n}
    c = Cache(path, "aaaa")
    out = sweep(["s"], ["m"], [10, 20], [0], c, run=fake, progress=False)
    assert len(out) == 2 and len(calls) == 2
    c2 = Cache(path, "aaaa")                                          # read back from disk
    out2 = sweep(["s"], ["m"], [10, 20, 40], [0], c2, run=fake, progress=False)
    assert len(calls) == 3 and calls[-1] == ("s", "m", 40, 0) and len(out2) == 3
    assert len(sweep(["s"], ["m"], [10, 80], [0], Cache(path, "aaaa"), run=fake, only_cached=True)) == 1
    stale = Cache(path, "bbbb")                                       # another recipe: nothing reused
    assert stale.get("s", "m", 10, 0) is None
    stale.put(fake("s", "m", 10, 1))
    old = load_json(path + ".aaaa")                                   # the old cells are kept, not overwritten
    assert old["fingerprint"] == "aaaa" and len(old["cells"]) == 3
    assert load_json(path)["fingerprint"] == "bbbb" and len(load_json(path)["cells"]) == 1
    (tmp_path / "bad.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(ValueError, match="not a scaling cache"):
        Cache(str(tmp_path / "bad.json"), "aaaa")


def test_ascii_plot_puts_extremes_on_the_edges():
    text = ascii_plot({"a": [(1, 1.0), (100, 10.0)], "b": [(10, 3.0)]}, width=21, height=5)
    rows = [line.split("|", 1)[1] for line in text.splitlines()[:5]]
    assert rows[0][-1] == "a" and rows[-1][0] == "a" and rows[2][10] == "b"   # log axes: 10 sits mid-way
    with pytest.raises(ValueError, match="log axes"):
        ascii_plot({"a": [(0, 1.0)]})


def test_pretrain_size_is_checked_and_fast_runs(tmp_path):
    with pytest.raises(ValueError, match="not a model size"):
        size_dir("huge")
    with pytest.raises(ValueError, match="not a model size"):
        pretrain(out=str(tmp_path), fast=True, size="huge")
    assert size_dir("base") == BASE_DIR and size_dir("tiny") == DATA_DIR / "sizes" / "tiny"


@pytest.mark.parametrize("size", [s for s in SIZES if s != "base"])
def test_shipped_sizes_share_the_recipe_and_tokenizer(size):
    """data/sizes/S/ was made by `minift pretrain --size S`: the base's recipe, corpus and
    tokenizer, only the shape of SIZES[S]."""
    folder = size_dir(size)
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} not built (minift pretrain --size {size})")
    meta, base = load_json(str(folder / "config.json")), load_json(str(BASE_DIR / "config.json"))
    assert meta["size"] == size
    assert {k: meta["model"][k] for k in SIZES[size]} == SIZES[size]
    shared = {k: v for k, v in meta["recipe"].items() if k in base["recipe"]}
    newer = {k: v for k, v in meta["recipe"].items() if k not in base["recipe"]}   # TrainConfig fields added since
    assert shared == base["recipe"] and meta["recipe"]["steps"] == RECIPE.steps
    assert all(getattr(TrainConfig(), k) == v for k, v in newer.items()), newer
    assert meta["corpus_fingerprint"] == base["corpus_fingerprint"] == corpus_fingerprint()
    assert (folder / "tokenizer.json").read_bytes() == (BASE_DIR / "tokenizer.json").read_bytes()


def test_shipped_sweep_cache_is_current():
    """data/scaling/sweep.json must be the output of this recipe on these checkpoints: if either
    changes, re-run `python lessons/20_scaling/walkthrough.py --full` (the README says how long)."""
    path = DATA_DIR / "scaling" / "sweep.json"
    if not path.is_file():
        pytest.skip("no shipped sweep cache")
    data = load_json(str(path))
    assert data["fingerprint"] == recipe_fingerprint(tuple(SIZES)), "stale cache: re-run lesson 20 --full"
    for key, cell in data["cells"].items():
        assert key == f"{cell['size']}/{cell['method']}/{cell['n_train']}/{cell['seed']}"
        assert cell["best_step"] <= cell["steps"] == steps_for(cell["n_train"])
        assert math.isfinite(cell["test_nll"]) and cell["test_nll"] > 0


# ---- the conformance checks of lesson 20 catch plausible mistakes -------------------------------

def _impl(**fns):
    import types
    from minift.conformance import lesson20_scaling
    return types.SimpleNamespace(**{**{k: getattr(lesson20_scaling, k) for k in dir(lesson20_scaling) if k.startswith("run_")},
                                    **fns})


SCALING_BUGS = {
    "scaling_law_matches_definition": dict(                      # additive instead of multiplicative
        run_scaling_law=lambda X, D, A, alpha, beta, E: A * X ** -alpha + A * D ** -beta + E),
    "fit_recovers_law": dict(                                    # fits log L linearly: forgets E
        run_fit_scaling_law=lambda X, D, L: _fit_without_E(X, D, L)),
}


def _fit_without_E(X, D, L):
    M = torch.stack([torch.ones_like(X), -X.log(), -D.log()], 1)
    a, alpha, beta = torch.linalg.lstsq(M, L.log()[:, None]).solution.reshape(-1).tolist()
    return (math.exp(a), alpha, beta, 0.0)


@pytest.mark.parametrize("name", sorted(SCALING_BUGS))
def test_each_scaling_check_catches_a_plausible_bug(name):
    from minift.conformance import CHECKS, FAIL, PASS, run_check
    assert run_check(CHECKS[name], _impl()).status == PASS
    assert run_check(CHECKS[name], _impl(**SCALING_BUGS[name])).status == FAIL


def test_a_fit_that_only_matches_the_points_is_not_enough():
    """Swapping α and β fits nothing on an asymmetric grid: the check fails it too."""
    from minift.conformance import CHECKS, FAIL, run_check
    from minift.scaling import fit_scaling_law as fit

    def swapped(X, D, L):
        f = fit(X, D, L)
        return (f["A"], f["beta"], f["alpha"], f["E"])
    assert run_check(CHECKS["fit_recovers_law"], _impl(run_fit_scaling_law=swapped)).status == FAIL


def test_walkthrough_report_reads_the_shipped_cache():
    """`walkthrough.py --report` rebuilds the README's tables from data/scaling/sweep.json alone."""
    import subprocess
    import sys
    from pathlib import Path
    if not (DATA_DIR / "scaling" / "sweep.json").is_file():
        pytest.skip("no shipped sweep cache")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "lessons" / "20_scaling" / "walkthrough.py"), "--report"],
                       cwd=str(root), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "108 of 108 cells" in r.stdout and "Δe (fitted)" in r.stdout and "missing" not in r.stdout
    if (DATA_DIR / "scaling" / "pretrain_axis.json").is_file():                   # part 7, from its own cache
        n = len(PRETRAIN_AMOUNTS) * len(METHODS) * 4
        assert f"{n} of {n} cells" in r.stdout and "α_p (pretraining)" in r.stdout and "not cached" not in r.stdout


# ---- the pretraining-data axis (part 7) ----------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(a_from=st.floats(-1.0, 2.0), a_to=st.floats(0.02, 2.0), k=st.floats(1.01, 100.0),
       x=st.floats(1e3, 1e7), p=st.floats(1e5, 1e9), d=st.floats(1.0, 1e4))
def test_equivalent_factor_shrinks_the_other_axis_as_much(a_from, a_to, k, x, p, d):
    """k on the first axis and q on the second give the same loss under A x^-a_from p^-a_to d^-β + E,
    written out here, at any point and any D_f."""
    q = equivalent_factor(a_from, a_to, k)
    law = lambda x_, p_: 7.0 * x_ ** -a_from * p_ ** -a_to * d ** -0.4 + 0.3
    assert law(k * x, p) == pytest.approx(law(x, q * p), rel=1e-9)
    if abs(a_from / a_to * math.log(k)) > 1e-12:                                # q = k^(a_from/a_to) != 1 in float64
        assert (q > 1) == (a_from > 0)                                          # growth needs both exponents > 0
    if abs(a_from) >= 1e-3:                                                     # and back again
        assert equivalent_factor(a_to, a_from, q) == pytest.approx(k, rel=1e-9)


@pytest.mark.parametrize("args,msg", [((0.3, 0.0), "alpha_to=0"), ((0.3, 0.2, 0.0), "k=0.0"), ((0.3, 0.2, -2.0), "k="),
                                      ((float("nan"), 0.2), "alpha_from"), ((0.3, float("inf")), "alpha_to"),
                                      ((0.3, 0.2, True), "k=True"), (("0.3", 0.2), "alpha_from")])
def test_equivalent_factor_rejects_bad_arguments(args, msg):
    with pytest.raises(ValueError, match=msg):
        equivalent_factor(*args)


def test_equivalent_factor_is_infinite_beyond_float64():
    assert equivalent_factor(1.0, 1e-5, 1e3) == math.inf and equivalent_factor(1.0, 1e-5, 1e-3) == 0.0


def test_pretraining_tokens_reads_the_recipe(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"recipe": {"steps": 10, "batch_size": 4, "grad_accum": 2},
                                                      "model": {"block_size": 32}}))
    assert pretraining_tokens(tmp_path) == 10 * 4 * 2 * 32
    (tmp_path / "config.json").write_text(json.dumps({"model": {"block_size": 32}}))
    with pytest.raises(ValueError, match="no pretraining recipe"):
        pretraining_tokens(tmp_path)


def test_size_dir_knows_the_pretraining_amounts():
    for name in PRETRAIN_AMOUNTS:
        assert size_dir(name) == DATA_DIR / "sizes" / name
    assert not set(PRETRAIN_AMOUNTS) & set(SIZES)                 # part 1's sweep and its fingerprint are unchanged


@pytest.mark.parametrize("name", sorted(PRETRAIN_AMOUNTS))
def test_shipped_pretraining_amounts_differ_only_in_steps(name):
    """data/sizes/tiny_N/ was made by `minift pretrain --size tiny --steps N --out data/sizes/tiny_N`:
    data/sizes/tiny's recipe, corpus, tokenizer and shape, only fewer steps."""
    folder = size_dir(name)
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} not built")
    shape, steps = PRETRAIN_AMOUNTS[name]
    meta, ref = load_json(str(folder / "config.json")), load_json(str(size_dir(shape) / "config.json"))
    assert meta["size"] == shape and meta["model"] == ref["model"]
    assert meta["recipe"]["steps"] == steps < RECIPE.steps
    shared = {k: v for k, v in meta["recipe"].items() if k in ref["recipe"] and k != "steps"}
    newer = {k: v for k, v in meta["recipe"].items() if k not in ref["recipe"]}   # TrainConfig fields added since
    assert shared == {k: v for k, v in ref["recipe"].items() if k != "steps"}
    assert all(getattr(TrainConfig(), k) == v for k, v in newer.items()), newer
    assert meta["corpus_fingerprint"] == corpus_fingerprint()
    assert (folder / "tokenizer.json").read_bytes() == (BASE_DIR / "tokenizer.json").read_bytes()
    assert pretraining_tokens(folder) == steps * RECIPE.batch_size * 256


def test_shipped_pretrain_axis_cache_is_current():
    """data/scaling/pretrain_axis.json: this recipe on these checkpoints (else re-run
    `python lessons/20_scaling/walkthrough.py --pretrain-axis`)."""
    path = DATA_DIR / "scaling" / "pretrain_axis.json"
    if not path.is_file():
        pytest.skip("no shipped pretraining-axis cache")
    data = load_json(str(path))
    assert data["fingerprint"] == recipe_fingerprint(tuple(PRETRAIN_AMOUNTS)), "stale: re-run --pretrain-axis"
    assert {c["size"] for c in data["cells"].values()} <= set(PRETRAIN_AMOUNTS)
    for key, cell in data["cells"].items():
        assert key == f"{cell['size']}/{cell['method']}/{cell['n_train']}/{cell['seed']}"
        assert cell["best_step"] <= cell["steps"] == steps_for(cell["n_train"])
        assert math.isfinite(cell["test_nll"]) and cell["test_nll"] > 0
