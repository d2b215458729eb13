"""The `minift` command: data regeneration, lesson lookup errors, the bench table."""
import json
from pathlib import Path

import pytest

from minift import world
from minift.cli import main

pytestmark = pytest.mark.core
ROOT = Path(__file__).resolve().parents[1]


def test_data_command_regenerates_tinyworld_identically(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path / "a")]) == 0
    assert main(["data", "--out", str(tmp_path / "b")]) == 0
    ma = json.loads((tmp_path / "a" / "MANIFEST.json").read_text())
    mb = json.loads((tmp_path / "b" / "MANIFEST.json").read_text())
    assert ma == mb and len(ma["files"]) > 20
    assert ma["fingerprint"] == world.fingerprint()
    for name in ma["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_unknown_lesson_and_bench_names_are_clear_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "99"])
    assert e.value.code == 2 and "no lesson '99'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "nope"])
    assert e.value.code == 2 and "unknown benchmark 'nope'" in capsys.readouterr().err


BROKEN_IMPLS = {                                    # file text -> the line the message must name
    "import torch\n\ndef run_softmax(x, dim=-1)\n    return x\n": 3,                  # a syntax error
    "import torch\nimport no_such_module_here\n\ndef run_softmax(x, dim=-1):\n    return x\n": 2,
    "import torch\n\nSCALE = 1 / 0\n\ndef run_softmax(x, dim=-1):\n    return x\n": 3,  # crashes on import
}


@pytest.mark.parametrize("text", sorted(BROKEN_IMPLS))
@pytest.mark.parametrize("command", [["verify", "--only", "softmax_sums_to_one"], ["check", "00"],
                                     ["golden", "--out", "unused"]])
def test_an_impl_that_does_not_import_is_one_line_and_status_2(tmp_path, capsys, text, command):
    f = tmp_path / "broken_impl.py"
    f.write_text(text)
    argv = command + ["--impl", str(f)]
    if command[0] == "golden":
        argv[2] = str(tmp_path / "out")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err
    assert f"line {BROKEN_IMPLS[text]}:" in err
    assert not (tmp_path / "out").exists()


def test_bench_train_prints_a_table_with_ratios_against_the_base(capsys, monkeypatch):
    from dataclasses import replace

    from minift import bench
    # GPT-2 small's widths with one block instead of twelve: the same table, a tenth of the time
    monkeypatch.setattr(bench, "GPT2_SMALL", replace(bench.GPT2_SMALL, n_layer=1))
    rows = bench.bench_train(fast=True)
    out = capsys.readouterr().out
    assert "tokens/s" in out and "vs base" in out
    V, T, C = 50257, 1024, 768                # wte + wpe + one block (attn 4C² + 4C, MLP 8C² + 5C, 2 LNs 4C) + ln_f
    assert rows[0]["ratio"] == 1.0 and rows[1]["params"] == V * C + T * C + 12 * C * C + 13 * C + 2 * C
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_lessons_shows_the_times_run_measured_here(tmp_path, monkeypatch, capsys):
    from minift import cli
    monkeypatch.setattr(cli, "TIMES_FILE", tmp_path / "runs" / "lesson_times.json")
    cli._record_time("00", False, 12.34, 0)
    cli._record_time("00", True, 3.0, 1)
    cli._record_time("01", False, 40.0, 0)
    cli._record_time("00", False, 11.0, 0)                      # the last run wins
    assert cli.main(["lessons"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line[:2].isdigit()}
    assert rows["00"][4:6] == ["11s", "3s!"]                     # default, --fast (failed)
    assert rows["01"][4:6] == ["40s", "-"]
    assert rows["02"][4:6] == ["-", "-"]


def test_pytest_with_an_impl_that_does_not_import_is_a_usage_error(tmp_path):
    import subprocess
    import sys
    f = tmp_path / "broken_impl.py"
    f.write_text("def run_softmax(x, dim=-1)\n    return x\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "lesson00", "--impl", str(f), "tests/test_readme.py"],
                       capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == pytest.ExitCode.USAGE_ERROR                  # not the status of a failed test (1)
    assert f"{f}: cannot import it: line 1:" in r.stderr and "Traceback" not in r.stdout + r.stderr


def test_run_passes_device_and_fast_to_the_walkthrough(tmp_path, monkeypatch):
    """`minift run NN --device X --fast` starts the walkthrough with both flags (the argv is checked,
    nothing runs), and keeps a non-CPU run's time apart from the CPU's."""
    from minift import cli
    monkeypatch.setattr(cli, "TIMES_FILE", tmp_path / "lesson_times.json")
    started = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd=None, env=None: started.append(cmd) or 0)
    assert main(["run", "00", "--device", "cpu", "--fast"]) == 0
    assert started[-1][1].endswith("walkthrough.py") and started[-1][2:] == ["--fast", "--device", "cpu"]
    assert main(["run", "00", "--device", "cuda:1"]) == 0
    assert started[-1][2:] == ["--device", "cuda:1"]
    assert main(["run", "00"]) == 0
    assert started[-1][2:] == []                                         # the walkthrough's default: cpu
    times = json.loads((tmp_path / "lesson_times.json").read_text())["00"]
    assert set(times) == {"fast", "default", "default@cuda:1"}          # `minift lessons` shows the CPU's


def test_run_all_passes_the_device_to_every_lesson(tmp_path, monkeypatch):
    from minift import cli
    monkeypatch.setattr(cli, "TIMES_FILE", tmp_path / "lesson_times.json")
    started = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd=None, env=None: started.append(cmd) or 0)
    assert main(["run", "all", "--device", "cuda", "--fast"]) == 0
    assert len(started) == len(cli.list_lessons()) > 20
    assert all(cmd[-3:] == ["--fast", "--device", "cuda"] for cmd in started)


def test_run_passes_a_lessons_own_flags_on_and_times_only_its_default_and_fast_runs(tmp_path, monkeypatch, capsys):
    """`minift run 08 --seeds 3 --lengths 1 4` starts the walkthrough with those flags (it judges them),
    after minift's own; `run all` refuses them, and no other command takes unknown flags."""
    from minift import cli
    monkeypatch.setattr(cli, "TIMES_FILE", tmp_path / "lesson_times.json")
    started = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd=None, env=None: started.append(cmd) or 0)
    assert main(["run", "08", "--seeds", "3", "--fast", "--lengths", "1", "4"]) == 0
    assert started[-1][2:] == ["--fast", "--seeds", "3", "--lengths", "1", "4"]
    assert main(["run", "08", "--help-lesson"]) == 0
    assert started[-1][2:] == ["--help"]                                # the walkthrough's own --help
    assert not (tmp_path / "lesson_times.json").exists()                # not the default run's time
    n = len(started)
    assert main(["run", "all", "--seeds", "3"]) == 2 and len(started) == n
    assert "minift run NN --seeds 3" in capsys.readouterr().err
    assert main(["run", "--seeds", "3", "05"]) == 2 and len(started) == n     # not lesson 03 with --seeds 05
    assert "the lesson comes before its own flags" in capsys.readouterr().err
    assert main(["run", "--fast", "05", "--dev", "x"]) == 0                      # --dev is the lesson's: no abbreviations
    assert started[-1][2:] == ["--fast", "--dev", "x"]
    with pytest.raises(SystemExit) as e:
        main(["lessons", "--seeds", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --seeds 3" in capsys.readouterr().err


@pytest.mark.parametrize("capability, preset, want", [
    ("AVX512", None, "avx2"),              # steps down to the READMEs' kernels
    ("AVX512", "default", "default"),      # the learner's choice stands
    ("AVX2", None, None),                  # already the READMEs' kernels
    ("DEFAULT", None, None),               # no AVX2 to step down to (another CPU family, an old x86)
])
def test_run_starts_walkthroughs_on_the_readmes_cpu_kernels_where_it_can(capability, preset, want, tmp_path,
                                                                         monkeypatch, capsys):
    import os
    import torch
    from minift import cli
    monkeypatch.setattr(cli, "TIMES_FILE", tmp_path / "lesson_times.json")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if preset is None:
        monkeypatch.delenv(cli.KERNELS_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.KERNELS_ENV, preset)
    envs = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd=None, env=None: envs.append(env) or 0)
    assert main(["run", "00"]) == 0
    assert envs[-1].get(cli.KERNELS_ENV) == want
    assert envs[-1]["PATH"] == os.environ["PATH"]                                   # the rest passed on
    said = capsys.readouterr().out
    assert ("ATEN_CPU_CAPABILITY=avx2" in said) == (want == "avx2" and preset is None)


def test_torch_takes_the_kernels_minift_run_asks_for():
    """What walkthrough_env relies on: torch, started with ATEN_CPU_CAPABILITY=avx2 on a CPU with AVX-512,
    runs its AVX2 kernels. (Skips elsewhere: there is nothing to step down from.)"""
    import os
    import subprocess
    import sys
    import torch
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip(f"this CPU runs torch's {torch.backends.cpu.get_cpu_capability()} kernels, not AVX512")
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "AVX2"
