"""The conformance harness itself: it must catch known bugs (tests/wrong_impl.py) with a
counterexample, blame nothing else, pass minift's reference, and `minift verify` must report
all of that with the right exit status."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.conformance import (CHECKS, FAIL, MISSING, NOT_IMPLEMENTED, PASS, load_impl, run_checks,
                                verify_main)
from minift.conformance import reference
from minift.conformance.harness import format_counterexample, run_property
from minift.conformance.verify import failure_text

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).resolve().parents[1]
WRONG = Path(__file__).resolve().with_name("wrong_impl.py")
EXERCISE = ROOT / "lessons" / "00_transformer" / "exercise.py"

# What wrong_impl.py's three bugs must break, and nothing more (see its docstring).
EXPECTED_FAILURES = {
    "softmax_stable_large",                     # no max shift: exp overflows
    "layer_norm_matches_formula",               # unbiased variance
    "layer_norm_standardizes",
    "causal_attention_matches_naive_loop",      # no causal mask
    "causal_attention_is_causal",
    "gpt_block_matches_formula",                # the block inherits both
    "gpt_block_is_causal",
}


@pytest.fixture(scope="module")
def wrong_results():
    return {r.name: r for r in run_checks(load_impl(WRONG), only="lesson00")}   # its bugs are lesson 00's


def test_expected_failures_name_real_checks():
    assert EXPECTED_FAILURES <= set(CHECKS)


def test_wrong_impl_fails_exactly_the_expected_checks(wrong_results):
    failed = {n for n, r in wrong_results.items() if r.status == FAIL}
    assert failed == EXPECTED_FAILURES
    assert all(r.status == PASS for n, r in wrong_results.items() if n not in EXPECTED_FAILURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FAILURES))
def test_each_failure_comes_with_a_minimal_counterexample(wrong_results, name):
    r = wrong_results[name]
    assert r.error.strip(), "a failure must say what was wrong"
    assert r.counterexample.startswith(f"{name}(")   # our text: the property and its arguments


def _arguments(counterexample: str) -> dict:
    """The keyword arguments of a counterexample's text, evaluated back into Python values."""
    return eval("dict" + counterexample[counterexample.index("("):], {"array": np.array, "float32": np.float32})   # noqa: S307


def test_softmax_counterexample_reproduces_the_failure(wrong_results):
    r = wrong_results["softmax_stable_large"]
    assert "nan" in r.error or "inf" in r.error
    args = _arguments(r.counterexample)
    x = torch.from_numpy(args["x"])                      # the text gives back the exact float32 input
    assert not torch.isfinite(load_impl(WRONG).run_softmax(x, args["dim"])).all()
    assert torch.isfinite(torch.softmax(x, args["dim"])).all()


def test_counterexamples_show_values_drawn_inside_the_property():
    """A property that draws from st.data() reports its draws, in order, as `data=[...]`."""
    @settings(max_examples=50, derandomize=True, database=None)
    @given(n=st.integers(0, 10), data=st.data())
    def drawn_sum_is_small(n, data):
        assert n + data.draw(st.integers(0, 10)) < 15

    with pytest.raises(AssertionError) as e:
        run_property(drawn_sum_is_small)
    args = _arguments(e.value.counterexample)
    assert set(args) == {"n", "data"} and len(args["data"]) == 1
    assert args["n"] + args["data"][0] >= 15             # the reported example does fail the property


def test_counterexample_text_is_our_own():
    """The text comes from the failing arguments, not from hypothesis' report: bit-exact floats."""
    x = np.array([0.1, 1 / 3, -2.5e-39], dtype=np.float32)
    text = format_counterexample("prop", {"x": x, "flag": True})
    assert text.startswith("prop(") and "flag=True" in text
    assert np.array_equal(_arguments(text)["x"], x)


def test_every_check_grades_a_reference_function_of_its_own_lesson():
    # that the reference passes every check is tests/test_conformance.py (one test per check);
    # here the registry's shape: each check's run_* function is a reference function defined in the
    # file of the check's lesson, and every lesson with an exercise has checks
    lessons = {p.name[:2] for p in (ROOT / "lessons").iterdir() if (p / "exercise.py").is_file()}
    for c in CHECKS.values():
        fn = getattr(reference, c.adapter, None)
        assert callable(fn), f"{c.name}: no reference {c.adapter}"
        assert fn.__module__.rsplit(".", 1)[-1].startswith(c.lesson), (c.name, c.lesson, fn.__module__)
        assert c.description.strip() and callable(c.fn)
    assert {c.lesson.removeprefix("lesson") for c in CHECKS.values()} == lessons
    assert set(reference.__all__) == {c.adapter for c in CHECKS.values()}    # no unchecked reference function
    assert [(r.name, r.status) for r in run_checks(only="lesson06")] == \
        [(c.name, PASS) for c in CHECKS.values() if c.lesson == "lesson06"]     # impl=None: the reference


def test_exercise_stubs_are_not_implemented():
    results = run_checks(load_impl(EXERCISE), only="lesson00")
    assert results and {r.status for r in results} == {NOT_IMPLEMENTED}
    assert all(r.adapter in r.error for r in results)


def test_missing_adapter_is_skipped(tmp_path):
    f = tmp_path / "only_gelu.py"
    f.write_text("import torch\n\ndef run_gelu(x):\n    return torch.nn.functional.gelu(x, approximate='tanh')\n")
    results = {r.name: r.status for r in run_checks(load_impl(f))}
    assert results["gelu_matches_formula"] == PASS
    assert results["softmax_sums_to_one"] == MISSING


# ---- minift verify -----------------------------------------------------------------------------

def test_verify_wrong_impl_exits_1_and_prints_counterexamples(wrong_results, capsys, monkeypatch):
    # the report of every check against wrong_impl: lesson 00's results are the fixture's (the same
    # run), the other lessons' checks are MISSING (wrong_impl has none of their functions)
    import minift.conformance.verify as verify
    real = verify.run_checks
    monkeypatch.setattr(verify, "run_checks", lambda impl, names, seconds=None: [
        wrong_results[n] if n in wrong_results else real(impl, [n])[0] for n in names])
    assert verify_main(["--impl", str(WRONG)]) == 1
    out = capsys.readouterr().out
    for name in EXPECTED_FAILURES:
        assert f"=== FAIL {name}" in out
        assert f"counterexample (the example hypothesis drew):\n    {name}(" in out
    assert "gelu_matches_formula" in out and "PASS" in out
    n00 = len(wrong_results)                             # lesson 00's checks; the others are MISSING
    assert f"{len(EXPECTED_FAILURES)} failed" in out and f"{n00 - len(EXPECTED_FAILURES)} passed" in out
    # failures come before the table, MISSING rows are one line, each status that occurs is explained
    assert out.index("=== FAIL") < out.index("check ") < out.index("skipped (MISSING)")
    assert "  MISSING " not in out.split("skipped (MISSING)")[0]          # no MISSING row in the table
    assert all(f"\n  {s} " in out for s in (PASS, FAIL, MISSING))


def test_the_failing_call_is_torch_code_that_reproduces_the_failure(wrong_results):
    """The report's call text, run as Python with the implementation's functions, gives the same
    wrong output: here softmax's NaN (the exact float32 input, as a torch tensor)."""
    r = wrong_results["softmax_stable_large"]
    assert "torch.tensor(" in r.calls and "array(" not in r.calls
    impl = load_impl(WRONG)
    *setup, call = r.calls.strip().splitlines()
    scope = {"run_softmax": impl.run_softmax}
    exec("\n".join(setup), scope)                                      # noqa: S102
    y = eval(call, scope)                                               # noqa: S307
    assert not torch.isfinite(y).all()
    assert torch.isfinite(torch.softmax(scope["x"], dim=-1)).all()


def test_seed_drawn_inputs_are_shown_as_tensors(wrong_results):
    """The block's inputs come from a drawn seed: the report shows the tensors themselves."""
    calls = wrong_results["gpt_block_matches_formula"].calls
    assert "x = torch.tensor(" in calls and "ln_1_weight = torch.tensor(" in calls
    assert calls.strip().splitlines()[-1].startswith("run_gpt_block(x, {'ln_1.weight': ln_1_weight")


def test_a_failure_that_follows_from_another_says_so(wrong_results, capsys):
    """wrong_impl's block is written correctly from its wrong LayerNorm and attention: the block's
    failures name those two; the LayerNorm's own failure names nothing."""
    assert set(wrong_results["gpt_block_matches_formula"].follows) == {"run_layer_norm", "run_causal_attention"}
    assert wrong_results["layer_norm_matches_formula"].follows == ()
    assert verify_main(["--impl", str(WRONG), "--only", "run_gpt_block,run_layer_norm"]) == 1
    out = capsys.readouterr().out
    assert "run_gpt_block calls run_causal_attention" not in out        # attention was not run here
    assert "note: run_gpt_block or this check calls run_layer_norm, which fails its own checks" in out


def test_verify_reference_exits_0(capsys):
    # the reference on one lesson's checks (all of them pass in tests/test_conformance.py)
    n06 = sum(c.lesson == "lesson06" for c in CHECKS.values())
    assert verify_main(["--only", "lesson06"]) == 0
    out = capsys.readouterr().out
    assert "implementation: minift reference functions" in out
    assert f"{n06} checks: {n06} passed, 0 failed" in out
    assert "FAIL" not in out


def test_verify_only_selects_checks(capsys):
    assert verify_main(["--impl", str(WRONG), "--only", "gelu_matches_formula,run_cross_entropy"]) == 0
    out = capsys.readouterr().out
    assert "gelu_matches_formula" in out and "cross_entropy_stable_large" in out
    assert "softmax" not in out
    assert verify_main(["--impl", str(WRONG), "--only", "softmax_stable_large"]) == 1


def test_verify_unknown_only_name_names_it_suggests_the_nearest_and_stays_one_short_line(capsys):
    assert verify_main(["--only", "softmax_sums_to_one,no_such_check"]) == 2
    err = capsys.readouterr().err
    assert "no_such_check" in err and "verify --list" in err and len(err) < 300
    assert verify_main(["--only", "softmax_sums_to_on"]) == 2                  # a typo: the check it meant
    assert "did you mean softmax_sums_to_one" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no_such_check"):
        run_checks(only=["no_such_check"])


def test_verify_missing_impl_file_is_a_clean_error(tmp_path, capsys):
    missing = tmp_path / "nope.py"
    assert verify_main(["--impl", str(missing)]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no such file"):
        load_impl(missing)


def test_load_impl_without_run_functions_is_an_error(tmp_path):
    f = tmp_path / "empty.py"
    f.write_text("x = 1\n")
    with pytest.raises(ValueError, match="no run_\\* function"):
        load_impl(f)


def test_verify_missing_adapters_fail_only_when_named(tmp_path, capsys):
    f = tmp_path / "only_gelu.py"
    f.write_text("import torch\n\ndef run_gelu(x):\n    return torch.nn.functional.gelu(x, approximate='tanh')\n")
    assert verify_main(["--impl", str(f)]) == 0
    assert "MISSING" in capsys.readouterr().out
    assert verify_main(["--impl", str(f), "--only", "gelu_matches_formula,softmax_sums_to_one"]) == 1


def test_verify_exercise_reports_not_implemented(capsys):
    assert verify_main(["--impl", str(EXERCISE), "--only", "lesson00"]) == 1
    out = capsys.readouterr().out
    assert "NOT IMPLEMENTED" in out
    assert out.count("=== NOT IMPLEMENTED run_softmax") == 1          # one block per function, not per check


def test_verify_list(capsys):
    assert verify_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CHECKS)


def test_verify_list_shows_only_what_only_selects(capsys):
    assert verify_main(["--list", "--only", "run_lora_merge"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line and not line.startswith(" ")]
    assert rows and all(r[1] == "run_lora_merge" and r[2] == "lesson05" for r in rows)      # columns apart
    assert verify_main(["--list"]) == 0
    every = [line.split() for line in capsys.readouterr().out.splitlines() if line and not line.startswith(" ")]
    assert len(every) == len(CHECKS) and all(len(r) == 3 for r in every)


def test_a_folder_given_as_impl_is_named_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_impl(tmp_path)


def test_a_function_that_writes_into_its_inputs_fails_naming_the_argument(tmp_path):
    """An in-place LayerNorm (x -= mean) computes the right values, but the caller's x is gone: with
    the harness's copies it passed every check, and the pasted counterexample did not reproduce."""
    f = tmp_path / "inplace.py"
    f.write_text("import torch\n\n\ndef run_layer_norm(x, weight, bias, eps=1e-5):\n"
                 "    x.sub_(x.mean(-1, keepdim=True))\n"
                 "    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight + bias\n")
    res = run_checks(str(f), only="layer_norm_matches_formula")[0]
    assert res.status == FAIL and "run_layer_norm changed its argument x in place" in res.error
    g = tmp_path / "nested.py"                                 # any argument, not only the first
    g.write_text("from minift.conformance.reference import run_lora_merge as _m\n\n\n"
                 "def run_lora_merge(W0, A, B, scaling):\n    out = _m(W0, A, B, scaling)\n    A.zero_()\n    return out\n")
    res = run_checks(str(g), only="lora_merge_matches_formula")[0]
    assert res.status == FAIL and "changed its argument A in place" in res.error


def test_an_output_in_another_dtype_fails_and_a_gradient_checks_call_pastes_with_requires_grad(tmp_path):
    f = tmp_path / "f64.py"
    f.write_text("import torch\n\n\ndef run_softmax(x, dim):\n    return torch.softmax(x.double(), dim)\n\n\n"
                 "def run_dpo_loss(pc, pr, rc, rr, beta, label_smoothing=0.0, loss_type='sigmoid'):\n"
                 "    h = (pc - rc) - (pr - rr)\n"
                 "    return -torch.nn.functional.logsigmoid(beta * h.detach()) + 0 * h   # no gradient\n")
    res = run_checks(str(f), only="softmax_sums_to_one")[0]
    assert res.status == FAIL and "returned a float64 tensor, expected float32" in res.error
    res = run_checks(str(f), only="dpo_gradient")[0]
    assert res.status == FAIL and "requires_grad=True" in res.calls      # as the check passed it: pasted, it differentiates


def test_a_check_that_calls_a_second_failing_function_says_so(tmp_path, capsys):
    """lora_merge_then_forward grades run_lora_merge but also calls run_lora_linear: a right merge
    beside a wrong forward fails, and the note points at the forward."""
    f = tmp_path / "impl2.py"
    f.write_text("from minift.conformance.reference import run_lora_merge  # noqa: F401\n\n\n"
                 "def run_lora_linear(x, W0, b, A, B, alpha, r):\n"
                 "    y = x @ W0.T + alpha * (x @ A.T) @ B.T                  # alpha, not alpha / r\n"
                 "    return y if b is None else y + b\n")
    res = {r.name: r for r in run_checks(str(f), only="run_lora_merge,run_lora_linear")}
    merged = res["lora_merge_then_forward"]
    assert merged.status == FAIL and merged.follows == ("run_lora_linear",)
    assert "or this check calls run_lora_linear" in failure_text(merged)
    assert verify_main(["--impl", str(f), "--only", "run_lora_unmerge"]) == 1       # named, and not defined
    out = capsys.readouterr().out
    assert out.count("=== MISSING") == 1 and "=== MISSING run_lora_unmerge (named by --only)" in out
