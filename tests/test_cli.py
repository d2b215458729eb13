"""The `minift` command: data regeneration, lesson lookup errors, the bench table."""
import json

import pytest

from minift import world
from minift.cli import main

pytestmark = pytest.mark.core


def test_data_command_regenerates_tinyworld_identically(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path / "a")]) == 0
    assert main(["data", "--out", str(tmp_path / "b")]) == 0
    ma = json.loads((tmp_path / "a" / "MANIFEST.json").read_text())
    mb = json.loads((tmp_path / "b" / "MANIFEST.json").read_text())
    assert ma == mb and len(ma["files"]) > 20
    assert ma["fingerprint"] == world.fingerprint()
    for name in ma["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_unknown_lesson_and_bench_names_are_clear_errors():
    with pytest.raises(SystemExit, match="no lesson '99'"):
        main(["run", "99"])
    with pytest.raises(SystemExit, match="unknown benchmark 'nope'"):
        main(["bench", "nope"])


def test_bench_train_prints_a_table_with_ratios_against_the_base(capsys):
    from minift.bench import bench_train
    rows = bench_train(fast=True)
    out = capsys.readouterr().out
    assert "tokens/s" in out and "vs base" in out
    assert rows[0]["ratio"] == 1.0 and rows[1]["params"] > 100 * rows[0]["params"]
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
