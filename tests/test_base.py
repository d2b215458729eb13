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
