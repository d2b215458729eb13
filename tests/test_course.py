"""minift.course: the walkthroughs' shared preamble (arguments, base-model check, one thread, the
clock) and the fine-tune-and-measure bench of the method lessons."""
import argparse
import ast
import os
import re
from pathlib import Path

import pytest
import torch

from minift import course
from minift.cli import list_lessons
from minift.heads import ner_splits
from minift.peft.lora import LoRAConfig, lora_layers
from minift.peft.masking import MaskingConfig, masked_layers
from minift.peft.selective import SelectiveConfig
from minift.pretrain import load_base
from minift.validate import count_arg, rate_arg, seed_arg, share_arg

DOC = """Lesson 99: a title line.

The rest of the docstring.
"""


def test_parser_takes_the_title_and_offers_fast():
    p = course.parser(DOC)
    assert p.description == "Lesson 99: a title line."
    assert p.parse_args([]).fast is False and p.parse_args(["--fast"]).fast is True
    assert "tiny budgets and eval slices" in p.format_help()
    assert "small shapes" in course.parser(DOC, "small shapes (seconds)").format_help()
    p.add_argument("--sweep", action="store_true")
    args = p.parse_args(["--sweep", "--fast"])
    assert args.sweep and args.fast
    with pytest.raises(SystemExit):
        p.parse_args(["--no-such-flag"])


def test_start_parses_sets_one_thread_and_starts_the_clock():
    threads = torch.get_num_threads()
    try:
        args = course.start("99", DOC, needs_base=False, argv=["--fast"])
        assert args.fast is True
        assert torch.get_num_threads() == 1
        t = course.elapsed()
        assert 0 <= t < 60 and course.elapsed() >= t
    finally:
        torch.set_num_threads(threads)
        course._fast, course._note_due = False, None                            # no bottom note at pytest's exit


def test_a_fast_run_says_at_its_top_and_bottom_that_its_numbers_mean_nothing(capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")   # (no kernels note)
    registered = []
    monkeypatch.setattr(course.atexit, "register", registered.append)
    threads = torch.get_num_threads()
    try:
        course.start("05", DOC, needs_base=False, argv=["--fast"])
        note = ("--fast: a smoke test with tiny budgets; its numbers mean nothing. "
                "The README quotes the default run: minift run 05")
        assert capsys.readouterr().out == note + "\n"                       # the top line
        assert registered == [course.end]                                     # the bottom one, at exit
        course.verdict("LoRA r=4 -> holds")
        assert capsys.readouterr().out == ""                                  # no verdicts in --fast
        course.end()
        course.end()
        assert capsys.readouterr().out == note + "\n"                       # printed once
        course.start("05", DOC, needs_base=False, argv=[])
        course.verdict("LoRA r=4 -> holds")
        course.end()
        assert capsys.readouterr().out == "LoRA r=4 -> holds\n"              # a default run: no note
    finally:
        torch.set_num_threads(threads)
        course._fast, course._note_due = False, None


@pytest.mark.parametrize("capability", ["AVX512", "DEFAULT", "AVX2"])
def test_a_default_run_on_other_cpu_kernels_says_so_first(capability, capsys, monkeypatch):
    """Where torch's CPU kernels are not the READMEs' (AVX2), a default CPU run says so before anything
    else, and how to get the READMEs' kernels where that is possible (or that the learner chose others);
    --fast runs (numbers that mean nothing) and runs on a GPU say nothing of it."""
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    threads = torch.get_num_threads()
    try:
        course.start("05", DOC, needs_base=False, argv=[])
        said = capsys.readouterr().out
        if capability == "AVX2":
            assert said == ""
        else:
            kind = {"DEFAULT": "generic (no AVX2)"}.get(capability, capability)
            assert said.startswith(f"note: torch runs its {kind} CPU kernels here") and said.count("\n") == 1
            assert ("`minift run 05` runs it on the AVX2 kernels (ATEN_CPU_CAPABILITY=avx2" in said) == \
                (capability == "AVX512")
        course.start("05", DOC, needs_base=False, argv=["--fast"])
        assert "CPU kernels" not in capsys.readouterr().out
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")              # chosen: no advice to use minift run
        course.start("05", DOC, needs_base=False, argv=[])
        said = capsys.readouterr().out
        assert said == "" if capability == "AVX2" else said.endswith("(ATEN_CPU_CAPABILITY=avx512 is set.)\n")
    finally:
        torch.set_num_threads(threads)
        course._fast, course._note_due = False, None


def test_a_first_build_of_the_extension_says_so_before_it_starts(tmp_path, monkeypatch, capsys):
    import importlib.util

    import torch.utils.cpp_extension as cpp
    spec = importlib.util.spec_from_file_location("cuda_ext_loader_t", Path(course.__file__).parent.parent / "cuda_ext" / "loader.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    monkeypatch.setenv("MINIFT_EXT_DIR", str(tmp_path))
    calls = []

    def fake_load(name, build_directory, **kw):
        calls.append(capsys.readouterr().err)                               # what was said before the build
        (Path(build_directory) / f"{name}.so").write_bytes(b"")
        return "module"
    monkeypatch.setattr(cpp, "load", fake_load)
    assert loader.load() == "module" and calls == ["building the C++ extension (one time, ~40 s)\n"]
    assert loader.load() == "module" and calls[1] == ""                     # built: loaded without a word


def test_a_missing_base_model_stops_the_lesson_with_todays_message(tmp_path, monkeypatch):
    monkeypatch.setattr(course, "BASE_DIR", tmp_path)
    want = (f"lesson 05 needs the base model in {tmp_path}/; it is shipped with minift "
            f"(or rebuild it with `minift pretrain`).")
    assert course.base_model_error("05") == want
    with pytest.raises(SystemExit) as e:
        course.start("05", DOC, argv=[])
    assert e.value.code == want
    threads = torch.get_num_threads()
    try:
        assert course.start("05", DOC, needs_base=False, argv=[]).fast is False    # lessons 13, 20, 22
    finally:
        torch.set_num_threads(threads)


def test_the_shipped_base_passes_the_check():
    assert course.base_model_error("05") is None


def test_kib():
    assert course.kib(512) == "0.5 KiB"
    assert course.kib(18_534) == "18.1 KiB"
    assert course.kib(3 * 1024 ** 2) == "3.00 MiB"


def test_forward_cpu_seconds_times_every_model_and_leaves_them_in_eval_mode():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, idx, attention_mask=None):
            return self.lin(idx.float())

    models = {"a": Toy(), "b": Toy()}
    batch = {"idx": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    best = course.forward_cpu_seconds(models, batch, rounds=2)
    assert set(best) == {"a", "b"} and all(0 <= v < float("inf") for v in best.values())
    assert not any(m.training for m in models.values())


@pytest.fixture(scope="module")
def bench():
    _, tok = load_base()
    methods = {"full": None, "head-only": SelectiveConfig(patterns=()), "LoRA": LoRAConfig(r=2)}
    return course.Bench(methods, tok, ner_splits(tok, 128, 8), steps=2, batch=4, dev="val", width=10)


def test_bench_data_must_name_its_dev_split():
    _, tok = load_base()
    with pytest.raises(ValueError, match="'dev'"):
        course.Bench({}, tok, ner_splits(tok, 128, 8), steps=1, batch=1)         # the split is called "val"


def test_every_fresh_model_starts_from_the_same_head(bench):
    a, b = bench.fresh("full"), bench.fresh("LoRA")
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.bias, b.head.bias)
    trains = {n for n, p in bench.fresh("head-only").named_parameters() if p.requires_grad}
    assert trains == {"head.weight", "head.bias"}


def test_a_run_is_trained_once_measured_and_reported(bench, capsys):
    r = bench.run("head-only", 1e-2)
    line = capsys.readouterr().out
    assert re.fullmatch(r"head-only  lr 0\.01: loss \d+\.\d{3} -> \d+\.\d{3}, val F1 \d\.\d{3}, test F1 "
                        r"\d\.\d{3}, \d+\.\ds\n", line), line
    assert bench.run("head-only", 1e-2, quiet=True) is r and capsys.readouterr().out == ""
    n_head = 9 * (128 + 1)                                        # K tags x (C + 1)
    assert r["rep"]["trainable"] == n_head and r["n_adapter"] == 0
    assert set(r["f1"]) == set(r["pred"]) == {"val", "test"}
    assert len(r["pred"]["val"]) == len(bench.ner["val"]) == 8
    assert r["time"] > 0 and r["cpu"] > 0 and "after" not in r    # no probe asked for


def test_tag_errors_count_the_wrong_word_tags(bench):
    gold = [e["tags"] for e in bench.ner["val"]]
    assert bench.tag_errors(gold) == {}
    wrong = [["O"] * len(t) for t in gold]
    n_entity_words = sum(t != "O" for tags in gold for t in tags)
    errs = bench.tag_errors(wrong)
    assert sum(errs.values()) == n_entity_words and all(p == "O" for _, p in errs)
    assert sum(bench.tag_errors(wrong, words=True).values()) == n_entity_words


def fake_run(method, lr, dev):
    """A finished run as the bench stores it, without training."""
    return dict(method=method, lr=lr, f1={"val": dev, "test": 0.5}, loss=(2.0, 1.0), model=object())


def test_sweep_picks_the_best_dev_rate_and_the_smaller_one_within_0005(bench, capsys):
    runs = {("LoRA", 1e-3): 0.79, ("LoRA", 3e-3): 0.797, ("LoRA", 1e-2): 0.80,      # 3e-3 is within 0.005
            ("full", 1e-3): 0.70, ("full", 3e-3): 0.60}
    for (m, lr), dev in runs.items():
        bench.done[(m, lr)] = fake_run(m, lr, dev)
    lr = {"LoRA": 1.0, "full": 1.0}
    grid = {"LoRA": (1e-3, 3e-3, 1e-2), "full": (1e-3, 3e-3)}
    picks = bench.sweep(["LoRA", "full"], grid, lr, keep=lambda r: r["lr"] == 1e-3)
    assert picks == lr == {"LoRA": 3e-3, "full": 1e-3}
    assert bench.done[("LoRA", 1e-2)]["model"] is None                              # not picked: dropped
    assert bench.done[("LoRA", 1e-3)]["model"] is not None                          # kept on request
    assert bench.done[("LoRA", 3e-3)]["model"] is not None                          # picked
    out = capsys.readouterr().out
    assert "final loss" in out and "val F1" in out and out.count("<-") == 2
    before = {"LoRA": 1.0}
    assert bench.sweep(["LoRA"], grid, columns=("F1",), progress=False) == {"LoRA": 3e-3}
    assert before == {"LoRA": 1.0}                                                  # no lr dict: nothing written


def test_a_sweep_over_seeds_picks_on_the_mean_dev_f1_and_marks_seed_0s_pick(bench, capsys, monkeypatch):
    dev = {1e-3: [0.80, 0.70, 0.72], 3e-3: [0.78, 0.79, 0.80], 1e-2: [0.50, 0.90, 0.91]}   # (seed 0, 1, 2)
    for x in dev:                                         # means 0.740, 0.790, 0.770: seed 0 alone picks 1e-3
        bench.done[("LoRA", x)] = fake_run("LoRA", x, dev[x][0])
    trained = []

    def other_seed(method, lr, *, seed):
        trained.append((lr, seed))
        return {"f1": {bench.dev: dev[lr][seed]}}

    monkeypatch.setattr(bench, "train_and_measure", other_seed)
    lr = {"LoRA": 1.0}
    assert bench.sweep(["LoRA"], {"LoRA": tuple(dev)}, lr, columns=("F1",), seeds=(0, 1, 2)) == lr == {"LoRA": 3e-3}
    assert sorted(trained) == sorted((x, sd) for x in dev for sd in (1, 2))           # seed 0: the sweep's own runs
    out = capsys.readouterr().out.splitlines()
    head = next(ln for ln in out if ln.startswith("method"))
    rows = {float(ln.split()[1]): ln for ln in out if ln.startswith("LoRA ")}

    def cell(x, title):                                                         # right-aligned under its title
        return rows[x][head.index(title):head.index(title) + len(title)].strip()

    assert [cell(x, "picked") for x in dev] == ["", "<-", ""]                 # on the mean
    assert [cell(x, "seed 0") for x in dev] == ["<-", "", ""]                 # on seed 0 alone
    assert rows[3e-3].split()[-4:-1] == ["0.790", "0.800", "0.790"]             # seeds 1, 2; the mean
    assert "0.500 0.900 0.910" in rows[1e-2] and "0.770" in rows[1e-2]


def test_the_seed_spread_reuses_seed_0_and_redraws_what_each_method_draws(capsys):
    """Seed k retrains with the head, the data order AND the method's own draws moved: a mask's
    positions come from its config's seed, so a spread that kept it would not be a spread."""
    _, tok = load_base()
    methods = {"mask": MaskingConfig(density=0.01, seed=5), "LoRA": LoRAConfig(r=2)}
    b = course.Bench(methods, tok, ner_splits(tok, 128, 8), steps=2, batch=4, dev="val", width=10)
    assert b.reseeded("mask", 0) == methods["mask"] and b.reseeded("mask", 2) == MaskingConfig(density=0.01, seed=7)
    assert b.reseeded("LoRA", 2) is methods["LoRA"]                              # no seed of its own
    seed0 = {"mask": fake_run("mask", 1e-2, 0.25), "LoRA": fake_run("LoRA", 1e-2, 0.75)}
    spread = b.seed_spread(["mask", "LoRA"], {"mask": 1e-2, "LoRA": 1e-2}, [0, 1, 2], seed0)
    assert all(len(runs) == 3 and runs[0] is seed0[m] for m, runs in spread.items())   # seed 0: not retrained
    idx = [masked_layers(r["model"])[0][1].mask_indices for r in spread["mask"][1:]]
    assert not torch.equal(idx[0], idx[1])
    assert torch.equal(idx[0], masked_layers(b.fresh("mask", cfg=MaskingConfig(density=0.01, seed=6)))[0][1].mask_indices)
    a = [lora_layers(r["model"])[0][1].lora_A for r in spread["LoRA"][1:]]
    assert not torch.equal(a[0], a[1])                                           # drawn after manual_seed(k)
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("mask ", "LoRA "))}
    for m, dev0 in (("mask", 0.25), ("LoRA", 0.75)):
        dev = [float(x) for x in rows[m][2:5]]
        test = [float(x) for x in rows[m][7:10]]
        assert dev[0] == dev0 and test[0] == 0.5
        assert dev[1:] == [round(r["f1"]["val"], 3) for r in spread[m][1:]]
        assert float(rows[m][5]) == pytest.approx(sum(dev) / 3, abs=1e-3)           # mean of the rounded cells
        assert float(rows[m][6]) == pytest.approx(max(dev) - min(dev), abs=1e-3)     # the range
        assert float(rows[m][10]) == pytest.approx(sum(test) / 3, abs=1e-3)


def test_every_walkthrough_starts_with_the_course_preamble():
    for les in list_lessons():
        src = (les["dir"] / "walkthrough.py").read_text()
        assert re.search(r"^args = course\.start\(\"" + les["nn"] + r"\"", src, re.M), \
            f"{les['dir'].name}: start with `args = course.start(\"{les['nn']}\", ...)` (minift/course.py)"
        assert "ArgumentParser(" not in src and "set_num_threads" not in src.replace("torch.set_num_threads(1); ", ""), \
            f"{les['dir'].name}: the parser and the thread setting come from course.parser / course.start"


def test_the_course_module_stays_on_the_lessons_side_of_the_imports():
    """Nothing in the library imports minift.course (imports flow one way: lessons use the library)."""
    root = Path(course.__file__).parent
    for f in root.rglob("*.py"):
        if f.name != "course.py":
            assert not re.search(r"^\s*(from \.+course import|from minift\.course|from minift import .*\bcourse\b|"
                                 r"import minift\.course)", f.read_text(), re.M), f"{f} imports minift.course"


# ---- --seeds ------------------------------------------------------------------------------------

def test_the_seeds_flag_takes_a_count_of_one_or_more_and_says_what_it_costs(capsys):
    p = course.parser(DOC)
    course.add_seeds(p, "part 2's methods", "head init, data order", "dev/test F1", "K=5: 4x the default run's time")
    assert p.parse_args([]).seeds == 1 and p.parse_args(["--seeds", "5"]).seeds == 5
    text = " ".join(p.format_help().split())
    assert "retrain part 2's methods with seeds 0..K-1 (head init, data order)" in text
    assert "dev/test F1 (K=5: 4x the default run's time)" in text
    for bad in ["0", "-2", "x", "2.5", ""]:
        with pytest.raises(SystemExit) as e:
            p.parse_args(["--seeds", bad])
        assert e.value.code == 2 and "argument --seeds: " in capsys.readouterr().err, bad


# ---- numbers on a walkthrough's command line -----------------------------------------------------

def test_every_number_a_command_takes_is_checked_as_it_is_parsed():
    """No flag of a walkthrough or of `minift` is parsed with a bare type=int or type=float. Before,
    `--steps 0` ran lesson 03's default budget (`args.steps or 300`) and `minift pretrain --steps 0` the
    recipe's 3000 steps without a word, and `--lengths 0` or `--cpt-lr -1` failed minutes into the run
    instead of at once."""
    root, bare = Path(__file__).resolve().parents[1], []
    for f in sorted([*root.glob("lessons/*/walkthrough.py"), *root.glob("minift/**/*.py")]):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                bare += [f"{f.relative_to(root)} {ast.unparse(node.args[0])}" for kw in node.keywords
                         if kw.arg == "type" and isinstance(kw.value, ast.Name) and kw.value.id in ("int", "float")]
    assert not bare, f"parsed without a check (minift.validate: count_arg, rate_arg, seed_arg, share_arg): {bare}"


@pytest.mark.parametrize("fn, good, bad, says", [
    (count_arg, {"1": 1, "250": 250}, ["0", "-3", "2.5", "x", ""], "is not a count: a whole number >= 1"),
    (rate_arg, {"1e-3": 1e-3, "0.3": 0.3}, ["0", "-1e-3", "nan", "inf", "x"], "is not a learning rate: a finite number > 0"),
    (seed_arg, {"0": 0, "4294967295": 2 ** 32 - 1}, ["-1", "1.5", "x", "4294967296"],
     "is not a seed: a whole number from 0 to 2^32 - 1"),
    (share_arg, {"0": 0.0, "0.25": 0.25}, ["1", "-0.1", "nan", "x"], "is not a share: a number in [0, 1)"),
])
def test_a_number_flag_takes_its_range_and_refuses_the_rest_in_one_line(fn, good, bad, says, capsys):
    p = argparse.ArgumentParser(prog="walkthrough.py")
    p.add_argument("--n", type=fn)
    for text, want in good.items():
        assert p.parse_args(["--n", text]).n == want
    for text in bad:
        with pytest.raises(SystemExit) as e:
            p.parse_args([f"--n={text}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1] == f"walkthrough.py: error: argument --n: {text!r} {says}", (text, err)


def test_sweep_seeds_pick_over_seeds_only_with_the_sweep_itself(capsys):
    p = course.parser(DOC)
    course.add_sweep(p, "pick every rate on dev first")
    assert "pick every rate on dev first" in " ".join(p.format_help().split())
    threads = torch.get_num_threads()
    try:
        args = course.start("99", p, needs_base=False, argv=[])
        assert (args.sweep, course.sweep_seeds(args)) == (False, (0,))
        assert course.sweep_note(args) == ""
        args = course.start("99", p, needs_base=False, argv=["--sweep", "--sweep-seeds", "3"])
        assert (args.sweep, course.sweep_seeds(args)) == (True, (0, 1, 2))
        assert course.sweep_note(args, "val") == "; with seeds 0..2: on their mean val F1 (the F1 columns are seed 0's)"
        capsys.readouterr()
        for argv in (["--sweep-seeds", "3"], ["--sweep", "--sweep-seeds", "0"]):
            with pytest.raises(SystemExit) as e:
                course.start("99", p, needs_base=False, argv=argv)
            assert e.value.code == 2 and "--sweep-seeds" in capsys.readouterr().err, argv
        course.start("99", p, needs_base=False, argv=["--sweep-seeds", "1"])      # one seed: the plain sweep's
    finally:
        torch.set_num_threads(threads)


def test_the_seed_table_prints_each_seed_the_mean_and_the_dev_range(capsys):
    course.seed_table([("a", 0.003, [0.5, 0.75, 1.0], [0.25, 0.5, 0.0]), ("b", "-", [0.125], [1.0])],
                      "val", "accuracy")
    lines = capsys.readouterr().out.splitlines()
    assert "val accuracy per seed" in lines[0] and "test accuracy per seed" in lines[0]
    row_a = next(x for x in lines if x.startswith("a ")).split()
    assert row_a == ["a", "0.003", "0.500", "0.750", "1.000", "0.750", "0.500", "0.250", "0.500", "0.000", "0.250"]
    assert next(x for x in lines if x.startswith("b ")).split() == ["b", "-", "0.125", "0.125", "0.000", "1.000",
                                                                     "1.000"]


@pytest.mark.parametrize("given, want", [("0,1,2", (0, 1, 2)), ("3", (3,)), ("4,0", (4, 0))])
def test_a_seed_list_keeps_its_order(given, want):
    assert course.seed_list(given) == want


@pytest.mark.parametrize("bad", ["", "0,", "0,x", "-1", "1,1", "0;1"])
def test_a_seed_list_refuses_what_is_not_distinct_seeds(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="not a list of seeds"):
        course.seed_list(bad)


def test_a_seeds_section_opens_only_for_two_seeds_or_more(capsys):
    assert course.seeds_section(1, "3. Seed spread: x", "head init") == []
    assert capsys.readouterr().out == ""                                      # seed 0 alone: no section
    assert course.seeds_section(3, "3. Seed spread: x", "head init") == [0, 1, 2]
    assert "3. Seed spread: x, seeds [0, 1, 2] (head init)" in capsys.readouterr().out
    course.seeds_section(2, "4. Seed spread: y")
    assert "4. Seed spread: y, seeds [0, 1]\n" in capsys.readouterr().out


# ---- --device -----------------------------------------------------------------------------------

@pytest.mark.parametrize("given, want", [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cuda:3", "cuda:3"),
                                         ("CUDA:1", "cuda:1")])
def test_the_parser_takes_cpu_cuda_and_cuda_n(given, want):
    p = course.parser(DOC)
    assert p.parse_args([]).device == "cpu"                                    # the READMEs' runs
    assert p.parse_args(["--device", given]).device == want                    # spelling only: start asks torch


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda:-1", "mps", ""])
def test_the_parser_refuses_what_is_not_a_device_name(bad, capsys):
    with pytest.raises(SystemExit) as e:
        course.parser(DOC).parse_args(["--device", bad])
    assert e.value.code == 2 and "--device" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_start_refuses_a_cuda_this_torch_cannot_use_in_one_line(name, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        course.start("99", DOC, needs_base=False, argv=["--device", name])
    assert e.value.code == 2                                                   # like argparse's errors
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"--device {name}: ")
    assert "torch.cuda.is_available() is False" in err


def test_resolve_device_checks_the_gpu_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)              # a pretend machine with 2 GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert course.resolve_device("cuda") == torch.device("cuda", 0)            # indexed: == a tensor's .device
    assert course.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"^--device cuda:2: .*2 GPUs"):
        course.resolve_device("cuda:2")
    assert course.resolve_device("cpu") == torch.device("cpu")


def test_start_gives_a_torch_device_and_keeps_it_for_device(capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")   # (no kernels note)
    threads = torch.get_num_threads()
    try:
        args = course.start("99", DOC, needs_base=False, argv=["--device", "cpu"])
        assert args.device == torch.device("cpu") and isinstance(args.device, torch.device)
        assert course.device() == args.device
        assert capsys.readouterr().out == ""                                   # the GPU line is for GPUs only
    finally:
        torch.set_num_threads(threads)


def test_the_clock_says_what_it_measures_on_the_cpu():
    assert course.clock_name("cpu") == "CPU" and course.clock_name("cuda:0") == "GPU wall"
    assert course.memory_note("cpu") == ""
    t0 = course.clock("cpu")
    sum(i * i for i in range(20000))
    assert course.clock("cpu") > t0
    course.sync("cpu")                                                         # a no-op, no error


def test_forward_cpu_seconds_moves_the_batch_to_each_model(device):
    """float64 weights stand in for another device on a CPU-only machine: the same bug (a batch left
    where it was made) is caught by dtype here and by device on a GPU."""
    class Toy(torch.nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3, dtype=dtype)

        def forward(self, idx, attention_mask=None):
            assert idx.device == self.lin.weight.device, "the batch was not moved to the model"
            return self.lin(idx.to(self.lin.weight.dtype))

    models = {"f32": Toy(torch.float32).to(device), "f64": Toy(torch.float64).to(device)}
    batch = {"idx": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    best = course.forward_cpu_seconds(models, batch, rounds=1)
    assert set(best) == {"f32", "f64"} and all(0 <= v < float("inf") for v in best.values())


def test_the_bench_builds_its_models_on_its_device(bench, device):
    b = course.Bench(bench.methods, bench.tok, (bench.ner, bench.items, bench.train_items), steps=1, batch=2,
                     dev="val", device=device)                                 # the module bench's data, reused
    assert course.Bench(bench.methods, bench.tok, (bench.ner, bench.items, bench.train_items), steps=1, batch=2,
                        dev="val").device == course.device()                   # default: the walkthrough's --device
    clf = b.fresh("LoRA")
    assert {p.device.type for p in clf.parameters()} == {device.type}               # body, LoRA and the head


# ---- every walkthrough puts its models on --device (read from the source) ------------------------

MODEL_CLASSES = {"GPT", "TokenClassifier", "SequenceClassifier", "ViT", "RewardModel"}


def models_off_the_device(src: str) -> list[str]:
    """Where a walkthrough builds or loads a model without placing it: a `load_base(...)` call
    without device=, or a GPT/TokenClassifier/SequenceClassifier/ViT(...) whose result is not
    `.to(...)`-ed at once; inside `with torch.device("meta"):` nothing is placed (shapes only)."""
    import ast
    tree = ast.parse(src)
    parent = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}

    def under_meta(node):
        while node in parent:
            node = parent[node]
            if isinstance(node, ast.With) and any("meta" in ast.unparse(i.context_expr) for i in node.items):
                return True
        return False

    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name == "load_base" and not any(k.arg == "device" for k in node.keywords):
            bad.append(f"line {node.lineno}: {ast.unparse(node)} (no device=)")
        elif name in MODEL_CLASSES and not under_meta(node):
            up = parent.get(node)
            moved = isinstance(up, ast.Attribute) and up.attr == "to" and isinstance(parent.get(up), ast.Call)
            if not moved:
                bad.append(f"line {node.lineno}: {ast.unparse(node)} (not .to(device))")
    return bad


@pytest.mark.parametrize("snippet, n_bad", [
    ("model, tok = load_base()", 1),
    ("model, tok = load_base(size_dir(s))", 1),
    ("model, tok = load_base(device=DEV)", 0),
    ("m = GPT(cfg)", 1),
    ("m = GPT(cfg).to(DEV)", 0),
    ("clf = TokenClassifier(body, 9)", 1),
    ("clf = TokenClassifier(load_base(device=DEV)[0], 9).to(DEV)", 0),
    ("clf = TokenClassifier(load_base()[0], 9).to(DEV)", 1),
    ("v = ViT(cfg).eval()", 1),
    ("with torch.device('meta'):\n    big = GPT(cfg)", 0),
    ("with torch.device('meta'):\n    pass\nbig = GPT(cfg)", 1),
])
def test_the_device_check_catches_a_planted_model(snippet, n_bad):
    assert len(models_off_the_device(snippet)) == n_bad, models_off_the_device(snippet)


@pytest.mark.parametrize("les", list_lessons(), ids=lambda les: les["nn"])
def test_every_walkthrough_puts_every_model_it_builds_on_the_device(les):
    src = (les["dir"] / "walkthrough.py").read_text()
    assert models_off_the_device(src) == [], f"{les['dir'].name}: place every model on args.device"
    assert re.search(r"\bargs\.device\b", src), f"{les['dir'].name}: read --device (args.device)"


def test_load_base_puts_the_model_on_the_device_it_is_given(device):
    model, _ = load_base(device=device)
    assert {p.device.type for p in model.parameters()} == {device.type} and not model.training
    with pytest.raises(ValueError, match="device='tpu:x'"):
        load_base(device="tpu:x")


def test_a_starter_run_from_the_command_line_uses_the_readmes_kernels(tmp_path):
    """`python lessons/NN/exercise.py try_x` on an AVX-512 CPU ran torch's AVX-512 kernels, and lesson 08's
    starter then trained its row to test F1 0.869 instead of the README's 0.901; it now runs again with
    ATEN_CPU_CAPABILITY=avx2, as `minift run` does (and keeps a kernel the user chose). What torch then
    reports is compared with a plain `python -c` under the same variable (torch versions name them apart)."""
    import subprocess
    import sys
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("only a CPU with AVX-512 kernels steps down")
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}

    def capability(*cmd, **extra):
        out = subprocess.run([sys.executable, *cmd], env={**env, **extra}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout.strip().splitlines()[-1]
    probe = ("-c", "import torch; print('capability', torch.backends.cpu.get_cpu_capability())")
    f = tmp_path / "starter.py"
    f.write_text("import torch\nfrom minift.course import run_starter\n\n\ndef try_cap():\n"
                 "    print('capability', torch.backends.cpu.get_cpu_capability())\n\n\n"
                 "if __name__ == '__main__':\n    run_starter(globals())\n")
    assert capability(str(f), "try_cap") == capability(*probe, ATEN_CPU_CAPABILITY="avx2") != capability(*probe)
    assert capability(str(f), "try_cap", ATEN_CPU_CAPABILITY="default") == capability(*probe, ATEN_CPU_CAPABILITY="default")
