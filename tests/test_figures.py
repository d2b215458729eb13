"""The lessons' figures (minift/figures.py): matplotlib stays optional, `--figures` says how to get it,
every drawing function writes a small deterministic PNG, and the committed PNGs are the ones the
READMEs embed. The drawing tests skip without matplotlib (an optional extra, not in CI's install)."""
import hashlib
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minift import course, figures
from minift.model import GPT, GPTConfig
from minift.peft.lora import LoRAConfig, apply_lora

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 60 * 1024


def test_importing_minift_never_imports_matplotlib():
    code = ("import sys, minift, minift.cli, minift.course, minift.figures, minift.notebook; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_figures_flag_without_matplotlib_prints_how_to_install_and_draws_nothing(monkeypatch, capsys):
    monkeypatch.setattr(figures, "available", lambda: False)
    args = course.parser("Lesson 99: a test.").parse_args(["--fast", "--figures"])
    out = capsys.readouterr().out
    assert args.figures is False and args.fast is True
    assert len(out.strip().splitlines()) == 1 and 'pip install -e ".[plots]"' in out


def test_figures_flag_is_off_by_default_and_on_with_matplotlib(monkeypatch):
    monkeypatch.setattr(figures, "available", lambda: True)
    assert course.parser("Lesson 99: a test.").parse_args([]).figures is False
    assert course.parser("Lesson 99: a test.").parse_args(["--figures"]).figures is True


def test_target_default_run_beside_the_readme_fast_run_elsewhere():
    default = figures.target("5", "x.png", fast=False)
    fast = figures.target("05", "x.png", fast=True)
    assert default.parent == ROOT / "lessons" / "05_lora"
    assert fast.name == "x.png" and fast.parent.name == "05_lora" and ROOT / "lessons" not in fast.parents
    with pytest.raises(ValueError, match="name"):
        figures.target("05", "x.svg", fast=False)
    with pytest.raises(ValueError, match="lesson"):
        figures.target("99", "x.png", fast=False)


def _embedded() -> dict:
    """{lesson dir: set of PNG names its README embeds with ![...](name.png)}."""
    return {d: set(re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", (d / "README.md").read_text()))
            for d in sorted((ROOT / "lessons").glob("[0-9][0-9]_*")) if (d / "README.md").is_file()}


def test_committed_figures_are_embedded_small_and_present():
    emb = _embedded()
    for d, names in emb.items():
        for n in names:
            assert (d / n).is_file(), f"{d.name}/README.md embeds {n}, which is not there"
            assert (d / n).stat().st_size <= MAX_BYTES, f"{d.name}/{n} is over 60 KB"
        for png in d.glob("*.png"):
            assert png.name in names, f"{d.name}/{png.name} is not embedded in its README"


def test_lora_update_spectrum_has_rank_r(device):
    """delta_spectra: a LoRA update of rank r has exactly r singular values above float noise, and
    the body it is read from is left unchanged (LoRA merged into a copy). The tuned body may sit on
    another device than the base (lesson 05 with --device cuda)."""
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tuned = GPT(base.config)
    tuned.load_state_dict(base.state_dict())
    apply_lora(tuned, LoRAConfig(r=2))                       # on W_q and W_v
    tuned.to(device)
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if "lora_B" in n:
                p.normal_()                                  # B = 0 at init: give the update a rank
    before = {n: p.clone() for n, p in tuned.named_parameters()}
    panels = figures.delta_spectra(base, {"lora": tuned}, [("h.0.attn.c_attn", "W_q"), ("h.0.attn.c_attn", "W_k")])
    q, k = panels["h.0.attn.c_attn W_q"], panels["h.0.attn.c_attn W_k"]
    assert int((q["lora"] > 1e-5 * q["lora"][0]).sum()) == 2
    assert float(k["lora"].max()) < 1e-6                     # W_k is not a target: no update
    assert q["random Gaussian"].shape == (16,) and int((q["random Gaussian"] > 1e-5).sum()) == 16
    assert all(torch.equal(p, before[n]) for n, p in tuned.named_parameters())


# ---- drawing (needs matplotlib) ---------------------------------------------------------------

def _hist(steps, **extra):
    return [{"step": s + 1, "loss": 2.0 / (s + 1), **{k: f(s) for k, f in extra.items()}} for s in range(steps)]


def _draws(device="cpu"):
    """Each figure drawn from small fixed numbers, its tensors on `device`."""
    g = torch.Generator().manual_seed(0)
    att = torch.randn(6, 6, generator=g).tril().softmax(-1).to(device)
    weights = torch.randn(4, 64, generator=g).to(device)
    tiny = [dict(h, eval_ppl=10.0 / h["step"]) if h["step"] % 4 == 0 else h for h in _hist(12)]
    cpt = [dict(h, eval_d2=5.0 / h["step"], eval_orig=2.0 + h["step"] / 10) for h in _hist(6)]
    dpo = _hist(10, reward_margin=lambda s: 0.1 * s, chosen_reward=lambda s: -0.01 * s,
                rejected_reward=lambda s: -0.1 * s)
    loss = {(s, m, n): 1.0 + 1.0 / n + 0.1 * i for i, s in enumerate(("a", "b")) for m in ("full", "lora")
            for n in (10, 100)}
    fit = {"A": 1.0, "alpha": 0.1, "beta": 0.5, "E": 0.5}
    return {
        "attention": lambda p: figures.attention_maps({"head 0": att, "head 1": att.t().tril()}, list("abcdef"), p),
        "pretraining": lambda p: figures.pretraining_curves(tiny, 30.0, 64, cpt, {"d2": 9.0, "orig": 2.0}, p),
        "loss_curves": lambda p: figures.loss_curves({"full": [1 / (i + 1) for i in range(30)], "lora": [0.5] * 30}, p),
        "spectra": lambda p: figures.lora_spectra({"W_q": {"full": torch.linspace(2, 0.1, 16, device=device),
                                                          "LoRA r=2": torch.tensor([1.0, 0.5] + [0.0] * 14, device=device),
                                                          "random Gaussian": torch.ones(16)}}, p),
        "nf4": lambda p: figures.nf4_code({"nf4": torch.linspace(-1, 1, 16), "int4": torch.arange(-8, 8) / 7},
                                          0.9677, weights, p),
        "dpo": lambda p: figures.dpo_curves({"DPO β=0.3": (dpo, 0.3), "IPO β=0.3": (dpo, 0.3)}, p),
        "scaling": lambda p: figures.scaling_fits(loss, {"full": fit}, {"a": 100, "b": 1000}, (10, 100), p),
    }


def _png_chunks(data: bytes) -> list:
    """The chunk types of a PNG file (each chunk: length, type, data, CRC)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    chunks, i = [], 8
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        chunks.append(kind)
        i += 12 + n
    return chunks


@pytest.mark.parametrize("name", sorted(_draws()))
def test_each_figure_is_a_small_png_without_dates(name, tmp_path):
    pytest.importorskip("matplotlib")
    data = Path(_draws()[name](tmp_path / "a.png")).read_bytes()
    assert len(data) <= MAX_BYTES
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(_png_chunks(data)), "no date or software metadata"
    w, h = struct.unpack(">II", data[16:24])
    assert 300 <= w <= 1500 and 200 <= h <= 600


def test_figures_take_tensors_on_any_device(device, tmp_path):
    """A --device cuda run hands GPU tensors to the figures: each draws the bytes it draws from CPU tensors."""
    pytest.importorskip("matplotlib")
    for name, draw in _draws(device).items():
        got = Path(draw(tmp_path / f"{name}.png")).read_bytes()
        assert got == Path(_draws()[name](tmp_path / f"{name}_cpu.png")).read_bytes(), name


def test_the_same_numbers_give_the_same_bytes(tmp_path):
    pytest.importorskip("matplotlib")
    draw = _draws()["pretraining"]
    a, b = Path(draw(tmp_path / "a.png")).read_bytes(), Path(draw(tmp_path / "b.png")).read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def test_mismatched_attention_labels_are_a_clear_error(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="labels"):
        figures.attention_maps({"h": torch.eye(3)}, ["a", "b"], tmp_path / "x.png")
