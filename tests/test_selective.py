"""Selective fine-tuning: the selection, frozen weights stay bit-identical, the report adds up."""
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from minift.heads import SequenceClassifier
from minift.model import GPT, GPTConfig
from minift.peft.selective import (COMPONENTS, SelectiveConfig, apply_selective, bitfit, select,
                                   select_by_pattern, trainable_report)
from minift.train import TrainConfig, train

pytestmark = pytest.mark.lesson04
CFG = GPTConfig(vocab_size=24, block_size=8, n_layer=3, n_head=2, n_embd=8)

selections = st.builds(
    SelectiveConfig,
    layers=st.one_of(st.none(), st.lists(st.integers(-3, 2), min_size=1, max_size=3, unique=True)),
    components=st.one_of(st.none(), st.lists(st.sampled_from(sorted(COMPONENTS)), min_size=1, max_size=3, unique=True)),
    param_types=st.one_of(st.none(), st.lists(st.sampled_from(["weight", "bias"]), min_size=1, max_size=2, unique=True)),
    include_head=st.booleans())


def _clf(seed=0):
    torch.manual_seed(seed)
    return SequenceClassifier(GPT(CFG), 2)


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    return [{"idx": torch.randint(0, 24, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(n)]


def _loss(model, batch):
    return model(batch["idx"], labels=batch["labels"]).loss, {}


@settings(deadline=None, max_examples=30)
@given(cfg=selections)
def test_frozen_weights_are_bit_identical_and_every_selected_one_learns(cfg):
    clf = _clf()
    try:
        chosen = set(apply_selective(clf, cfg))
    except ValueError as e:
        assert "matches no parameter" in str(e)                 # e.g. layers + head-only component
        return
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    train(clf, _data(), TrainConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=0, progress=False),
          loss_fn=_loss)
    for n, p in clf.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), f"selected {n} did not move"
        else:
            assert torch.equal(p, before[n]) and p.grad is None, f"frozen {n} changed or has a gradient"
    assert {n for n, p in clf.named_parameters() if p.requires_grad} <= chosen


@settings(deadline=None, max_examples=30)
@given(cfg=selections)
def test_report_sums_to_the_model_total(cfg):
    clf = _clf()
    try:
        apply_selective(clf, cfg)
    except ValueError:
        return
    rep = trainable_report(clf)
    total = sum(p.numel() for p in clf.parameters())
    trainable = sum(p.numel() for p in clf.parameters() if p.requires_grad)
    assert sum(r["params"] for r in rep["rows"]) == rep["total"]["params"] == total
    assert sum(r["trainable"] for r in rep["rows"]) == rep["total"]["trainable"] == trainable
    assert rep["total"]["optimizer_bytes"] == 2 * 4 * trainable               # AdamW: two fp32 moments


def test_bitfit_selects_exactly_the_biases_and_the_head():
    clf = _clf()
    names = bitfit(clf)
    assert names and all(n.endswith(".bias") or n.startswith("head.") for n in names)
    assert {n for n, _ in clf.named_parameters() if n.endswith(".bias")} <= set(names)


def test_layers_and_components_intersect():
    clf = _clf()
    names = select(clf, SelectiveConfig(layers=[-1], components=["mlp"], include_head=False))
    assert names and all(n.startswith("body.transformer.h.2.mlp.") for n in names)


def test_selecting_the_embeddings_trains_the_tied_lm_head():
    m = GPT(CFG)
    apply_selective(m, SelectiveConfig(components=["embeddings"]))
    assert m.lm_head.weight.requires_grad and m.transformer.wte.weight.requires_grad


@settings(deadline=None, max_examples=30)
@given(cfg=selections)
@example(cfg=SelectiveConfig(components=["head"], include_head=False))   # lm_head matched, wte forgotten
def test_returned_names_are_exactly_the_trainable_names_tied_aliases_included(cfg):
    m = GPT(CFG)                                       # a bare LM: lm_head.weight IS transformer.wte.weight
    try:
        names = apply_selective(m, cfg)
    except ValueError:
        return                                         # an empty selection is refused (tested below)
    trainable = {n for n, p in m.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert set(names) == trainable
    assert ("lm_head.weight" in names) == ("transformer.wte.weight" in names)


def test_bad_selections_raise():
    clf = _clf()
    with pytest.raises(ValueError, match="layer index 3 is out of range .*n_layer=3"):
        select(clf, SelectiveConfig(layers=[3]))
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['attn'\]"):
        select(clf, SelectiveConfig(components=["attn"]))
    with pytest.raises(ValueError, match="pattern 'nope' matches no parameter"):
        select_by_pattern(clf, ["nope"])
    with pytest.raises(ValueError, match="matches no parameter"):
        select(GPT(CFG), SelectiveConfig(layers=[0], components=["embeddings"]))
