"""The shipped base model and tokenizer (data/base/): they load, they were trained on this
TinyWorld, and they have learned it beyond what any unigram model can reach."""
import math
from collections import Counter

import pytest
import torch

from minift import world
from minift.pretrain import BASE_DIR, base_metrics, corpus_fingerprint, fact_accuracy, load_base, probe_subset
from minift.tasks import LMDataset
from minift.train import evaluate_nll

pytestmark = pytest.mark.lesson01


@pytest.fixture(scope="module")
def base():
    return load_base()


def test_shipped_files_are_small_and_the_config_records_how_they_were_made():
    files = {p.name: p.stat().st_size for p in BASE_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= 15 * 2 ** 20, files                 # <= 15 MB together
    m = base_metrics()
    assert {"val_ppl", "fact_accuracy", "train_seconds"} <= set(m)


def test_base_was_trained_on_this_worlds_corpus():
    from minift.checkpoint import load_json
    recorded = load_json(str(BASE_DIR / "config.json"))["corpus_fingerprint"]
    assert recorded == corpus_fingerprint(), (
        "TinyWorld's pretraining corpus changed since data/base was trained: "
        "run `minift pretrain` and commit data/base/")


def test_perplexity_beats_every_unigram_model(base):
    model, tok = base
    val = LMDataset(tok, world.pretrain_corpus("val"), 128)
    items = [val[i] for i in range(12)]                               # a fixed validation slice
    nll = evaluate_nll(model, items, batch_size=6)
    # The best unigram model *for this very slice* uses the slice's own token frequencies; its
    # cross-entropy is the slice's empirical entropy. No unigram model can do better.
    counts = Counter(t for it in items for t in it["targets"].tolist())
    n = sum(counts.values())
    unigram_floor = -sum(c / n * math.log(c / n) for c in counts.values())
    assert math.exp(nll) < math.exp(unigram_floor) / 4, (math.exp(nll), math.exp(unigram_floor))
    assert math.exp(nll) < tok.vocab_size / 100                       # and far below uniform


def test_base_recalls_world_facts_far_above_chance(base):
    model, tok = base
    probes = probe_subset(48)                                          # 48 people, relations rotating
    assert len({p.split()[1] for p, _ in probes}) >= 4                 # several relations, not one
    acc = fact_accuracy(model, tok, probes)
    # chance: the most frequent value of a relation covers well under 20% of people
    assert acc >= 0.5, acc


def test_generation_from_the_base_model_is_deterministic_and_in_the_world(base):
    model, tok = base
    p = world.get_world().people[0]
    idx = torch.tensor([tok.encode(f"{p.name} lives in")])
    a = model.generate(idx, 6)
    assert torch.equal(a, model.generate(idx, 6, use_cache=False))
    assert tok.decode(a[0].tolist()).strip() != ""


# ---- nothing overwrites the shipped model by accident -----------------------------------------------

def _digest(folder) -> dict:
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_run_other_than_the_recipe_never_lands_on_the_shipped_model(tmp_path, monkeypatch, capsys):
    """`minift pretrain --fast` ("a tiny run, to check the pipeline") used to write its 1-layer, 20-step
    model over data/base/, which every lesson then loaded without a word."""
    from minift.cli import main
    from minift.pretrain import pretrain, size_dir
    for kw in ({"fast": True}, {"steps": 20}, {"steps": 20, "size": "tiny"}):
        shipped = size_dir(kw["size"]) if "size" in kw else BASE_DIR
        with pytest.raises(ValueError, match=f"would replace the shipped model in {shipped}/"):
            pretrain(**kw)                                   # refused before any work: nothing is trained
    assert main(["pretrain", "--steps", "20"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    with pytest.raises(ValueError, match="names no folder"):
        pretrain(out="", fast=True)                          # "" must not fall back to the shipped folder
    before = _digest(BASE_DIR)
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--fast"]) == 0                 # the pipeline check: into runs/pretrain_fast/
    assert (tmp_path / "runs" / "pretrain_fast" / "model.safetensors").is_file()
    assert "saved to runs/pretrain_fast/" in capsys.readouterr().out
    assert _digest(BASE_DIR) == before
    assert main(["pretrain", "--fast", "--steps", "1", "--out", "short"]) == 0     # shorter than the warmup: runs
    assert (tmp_path / "short" / "model.safetensors").is_file()


def test_a_lesson_says_when_data_base_holds_another_recipes_model(tmp_path, monkeypatch):
    import json
    import shutil

    from minift import course, pretrain
    assert pretrain.recipe_differences() == [] and course.base_model_note() is None      # the shipped one
    fake = tmp_path / "base"
    shutil.copytree(BASE_DIR, fake)
    cfg = json.loads((fake / "config.json").read_text())
    cfg["model"]["n_layer"], cfg["recipe"]["steps"] = 1, 20
    (fake / "config.json").write_text(json.dumps(cfg))
    assert pretrain.recipe_differences(fake) == ["n_layer 1 (the recipe: 4)", "steps 20 (the recipe: 3000)"]
    monkeypatch.setattr(pretrain, "BASE_DIR", fake)
    note = course.base_model_note()
    assert "another recipe (n_layer 1 (the recipe: 4), steps 20 (the recipe: 3000))" in note
    assert "git checkout -- data/base" in note
    (fake / "config.json").unlink()                            # unreadable: load_base will say what is wrong
    assert course.base_model_note() is None
