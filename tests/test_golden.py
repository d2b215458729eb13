"""Golden vectors: the shipped files match the reference, and a wrong implementation is caught."""
import json
import shutil

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.conformance import CHECKS, golden, load_impl, reference

pytestmark = pytest.mark.core
WRONG = "tests/wrong_impl.py"


def test_the_shipped_golden_files_are_current_for_the_reference(tmp_path):
    # minift's reference functions on the golden inputs give the golden outputs: if this fails, a function's
    # behaviour changed and `minift golden` must be re-run (and the change explained)
    golden.run_impl(reference, tmp_path / "out")
    rows = golden.verify(tmp_path / "out")
    bad = [r for r in rows if r["status"] != "PASS"]
    assert not bad, bad[:3]
    cases, _ = golden.load(golden.GOLDEN_DIR)
    covered = {c["adapter"] for c in cases}
    unrecorded = json.loads((golden.GOLDEN_DIR / "index.json").read_text()).get("unrecorded", {})
    # every checked function has cases, except those whose inputs the files cannot hold (a model), named with why
    assert covered | set(unrecorded) == {c.adapter for c in CHECKS.values()} and not covered & set(unrecorded)
    assert all(why.startswith(("its inputs include a", "its output includes a", "its output is a draw from torch's"))
               for why in unrecorded.values()), unrecorded
    assert set(golden.SEEDED) <= set(unrecorded)         # torch's random streams differ between versions (2.4 and 2.13)


def test_a_wrong_implementation_fails_where_it_is_wrong_and_a_function_it_lacks_is_missing(tmp_path):
    golden.run_impl(load_impl(WRONG), tmp_path / "out")
    rows = golden.verify(tmp_path / "out")
    by = {}
    for r in rows:
        by.setdefault(r["adapter"], []).append(r["status"])
    assert "FAIL" in by["run_softmax"]                            # wrong_impl's softmax overflows
    assert "FAIL" in by["run_layer_norm"]                         # ... and its LayerNorm forgets eps / uses a biased var
    wrong_names = {n for n in dir(load_impl(WRONG)) if n.startswith("run_")}
    absent = next(a for a in by if a not in wrong_names)
    fails = [r for r in rows if r["adapter"] == absent]
    assert fails and all(r["status"] == "MISSING" for r in fails)   # not defined: missing, as with --impl


def test_one_changed_value_in_a_candidate_is_found(tmp_path):
    out = tmp_path / "out"
    golden.run_impl(reference, out)
    from safetensors.torch import load_file, save_file
    t = load_file(str(out / "tensors.safetensors"))
    cases = json.loads((out / "index.json").read_text())["cases"]
    case = next(c for c in cases if c["adapter"] == "run_softmax")
    key = case["output"]["tensor"]
    t[key] = t[key].clone()
    t[key].view(-1)[0] += 1e-3                                    # far above atol + rtol |y| for y <= 1
    save_file(t, str(out / "tensors.safetensors"))
    rows = {r["id"]: r for r in golden.verify(out)}
    assert rows[case["id"]]["status"] == "FAIL" and "flat index 0" in rows[case["id"]]["error"]
    assert sum(r["status"] == "FAIL" for r in rows.values()) == 1


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=32),
                    st.text("abc", max_size=3))
TENSORS = st.builds(lambda shape, dt: (torch.arange(int(torch.tensor(shape).prod())).reshape(shape) * 0.5).to(dt),
                    st.lists(st.integers(1, 3), max_size=3), st.sampled_from([torch.float32, torch.int64, torch.bool]))
VALUES = st.recursive(st.one_of(SCALARS, TENSORS),
                      lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                              st.dictionaries(st.text("xyz", min_size=1, max_size=2), inner, max_size=3)),
                      max_leaves=8)


@settings(deadline=None, max_examples=60)
@given(v=VALUES)
def test_encode_then_decode_gives_the_value_back(v):
    tensors = {}
    enc = json.loads(json.dumps(golden.encode(v, "k", tensors)))   # through JSON, as on disk
    assert golden.compare(v, golden.decode(enc, tensors), 0.0, 0.0) == ""
    assert type(golden.decode(enc, tensors)) is type(v) or isinstance(v, torch.Tensor)


def test_bad_folders_raise_clearly(tmp_path):
    with pytest.raises(ValueError, match="no index.json"):
        golden.load(tmp_path)
    shutil.copy(golden.GOLDEN_DIR / "tensors.safetensors", tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        golden.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": 99, "cases": []}))
    with pytest.raises(ValueError, match="format"):
        golden.load(tmp_path)
    with pytest.raises(golden.Unsupported):
        golden.encode(torch.nn.Linear(2, 2), "k", {})


def test_regenerating_some_checks_keeps_every_other_case(tmp_path):
    """`minift golden --only X` over an existing folder records X's cases again and leaves the rest
    as they were: the files are not cut down to X."""
    out = tmp_path / "golden"
    shutil.copytree(golden.GOLDEN_DIR, out)
    before, before_t = golden.load(out)
    check = "softmax_matches_formula"
    for c in before:                                  # mark X's old cases, so that re-recording shows
        if c["check"] == check:
            c["atol"] = -1.0
    (out / "index.json").write_text(json.dumps({**json.loads((out / "index.json").read_text()), "cases": before}))
    golden.generate(out, only=check)
    after, after_t = golden.load(out)
    assert [c["id"] for c in after] == [c["id"] for c in before]          # same cases, same order
    for b, a in zip(before, after):
        assert (a["atol"] >= 0) if b["check"] == check else (a == b), b["id"]
    assert after_t.keys() == before_t.keys()
    bits = lambda t: t.reshape(-1).view(torch.uint8)                     # bit for bit (NaN inputs too)
    assert all(after_t[k].dtype == before_t[k].dtype and torch.equal(bits(after_t[k]), bits(before_t[k]))
               for k in after_t if not k.startswith(check + "."))


def _candidate_with(tmp_path, adapter: str, change):
    """The reference's outputs, with the first tensor output of `adapter`'s first case replaced by
    change(tensor) (or the whole output JSON by change(None) when that returns a non-tensor)."""
    out = tmp_path / "out"
    golden.run_impl(reference, out, only=adapter)
    from safetensors.torch import load_file, save_file
    t = load_file(str(out / "tensors.safetensors"))
    index = json.loads((out / "index.json").read_text())
    case = index["cases"][0]
    o = case["output"]
    leaf = o if "tensor" in o else next(v for v in o.get("tuple", o.get("list", [])) if "tensor" in v)
    new = change(t[leaf["tensor"]])
    if isinstance(new, torch.Tensor):
        t[leaf["tensor"]] = new.contiguous()
    else:
        case["output"] = new
    save_file(t, str(out / "tensors.safetensors"))
    (out / "index.json").write_text(json.dumps(index))
    return out, case["id"]


@pytest.mark.parametrize("adapter, change, says", [
    ("run_softmax", lambda y: y.double(), "dtype float64, expected float32"),           # right values, wrong dtype
    ("run_nf4_quantize", lambda c: c.float() + 0.7, "dtype float32, expected uint8"),  # a cast would round 3.7 to 3
    ("run_nf4_quantize", lambda c: c.long() + 256, "dtype int64, expected uint8"),     # a cast would wrap 259 to 3
    ("run_nf4_quantize", lambda c: c ^ 1, "integer values differ"),
    ("run_softmax", lambda y: 0.5, "must be a JSON object"),                             # a bare number, not {"value": ...}
])
def test_a_candidate_is_compared_without_casting_and_never_crashes_the_comparison(tmp_path, adapter, change, says):
    out, cid = _candidate_with(tmp_path, adapter, change)
    rows = {r["id"]: r for r in golden.verify(out, only=adapter)}
    assert rows[cid]["status"] == "FAIL" and says in rows[cid]["error"], rows[cid]
    assert sum(r["status"] != "PASS" for r in rows.values()) == 1


def test_only_selects_cases_and_a_cut_tensor_file_is_one_clear_error(tmp_path, capsys):
    from minift.conformance.verify import verify_main
    out = tmp_path / "out"
    info = golden.run_impl(load_impl(WRONG), out, only="run_softmax,run_dpo_loss")
    cases = json.loads((out / "index.json").read_text())["cases"]
    chosen = {n for n, c in CHECKS.items() if c.adapter in ("run_softmax", "run_dpo_loss")}
    assert {c["check"] for c in cases} == chosen and info["cases"] == len(cases)      # (a check may call others too)
    assert "run_dpo_loss" in info["missing"] and all("output" not in c for c in cases if c["adapter"] == "run_dpo_loss")
    assert {r["adapter"] for r in golden.verify(out, only="run_softmax")} == {"run_softmax"}
    assert verify_main(["--golden", str(out), "--only", "run_dpo_loss"]) == 1          # named, and absent
    assert "no outputs at all for: run_dpo_loss" in capsys.readouterr().out
    assert verify_main(["--golden", str(out), "--impl", WRONG]) == 2                   # --impl means the property checks
    assert "minift golden --impl FILE" in capsys.readouterr().err
    ten = out / "tensors.safetensors"
    ten.write_bytes(ten.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        golden.load(out)
    assert verify_main(["--golden", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_golden_inputs_are_varied_not_hypothesis_first_simplest_draws():
    """Hypothesis starts from the simplest inputs (zeros, rank 1): recorded as they came, a quarter of
    the argument tensors were all zeros and 11 of 12 run_lora_linear cases had r = 1, so an
    implementation that scales by alpha instead of alpha / r failed one case. Each check keeps its
    first golden.PER_CHECK calls (the edges) and adds the golden.VARIED most varied of the next ones."""
    from safetensors.torch import load_file
    cases, _ = golden.load(golden.GOLDEN_DIR)
    t = load_file(str(golden.GOLDEN_DIR / "tensors.safetensors"))
    added = {c["id"] for c in cases if int(c["id"].rsplit(".", 1)[1]) >= golden.PER_CHECK}
    assert len(added) > 200
    args = [v for k, v in t.items() if (".args" in k or ".kwargs" in k) and ".".join(k.split(".")[:3]) in added]
    zeros = sum(1 for v in args if v.numel() and not bool(v.ne(0).any()))
    assert zeros < 0.05 * len(args), (zeros, len(args))
    ranks = [c["args"]["list"][-1]["value"] for c in cases if c["adapter"] == "run_lora_linear"]
    assert sum(r > 1 for r in ranks) >= 5, ranks


@pytest.mark.parametrize("bad", [{"tensor": ["a"]}, {"list": 5}, {"dict": [1]}, {"tuple": "ab"}])
def test_a_malformed_candidate_value_is_a_failed_case_not_a_traceback(tmp_path, bad):
    out = tmp_path / "out"
    golden.run_impl(reference, out, only="run_softmax")
    index = json.loads((out / "index.json").read_text())
    index["cases"][0]["output"] = bad
    index["cases"].append({"id": ["not", "a", "string"], "output": {"value": 1}})     # ignored, not a crash
    (out / "index.json").write_text(json.dumps(index))
    rows = {r["id"]: r for r in golden.verify(out, only="run_softmax")}
    first = rows[index["cases"][0]["id"]]
    assert first["status"] == "FAIL" and "golden file" in first["error"], first
