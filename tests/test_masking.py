"""Random masking: the mask's size and rows, only masked entries ever change (AdamW with weight decay too),
gradients reach only the values, the file's size and tampered indices, bad input. (No-op at start, disable,
the sparse delta through adapter files, merge, removal: tests/test_method_contract.py.)"""
import json
import math
import os

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file

from minift.heads import TokenClassifier
from minift.model import GPTConfig
from minift.peft.common import count_adapter_parameters, remove_adapters
from minift.peft.io import load_adapter, save_adapter
from minift.peft.masking import (MaskedLinear, MaskingConfig, apply_masking, check_masks, masked_count,
                                 masked_count_of, masked_layers, random_mask)
from minift.train import TrainConfig, train
from strategies import tiny_model

pytestmark = pytest.mark.lesson09
CFG = GPTConfig(vocab_size=24, block_size=8, n_layer=2, n_head=2, n_embd=8)
C = CFG.n_embd
ALL_LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

mask_configs = st.builds(
    MaskingConfig, density=st.one_of(st.sampled_from([1.0, 0.5, 0.05]), st.floats(0.01, 1.0)),
    targets=st.sampled_from([("attn.c_attn",), ALL_LINEAR, ("mlp.c_fc",), (r"h\.1\.attn\.c_proj",)]),
    qkv=st.sampled_from([None, ("q", "v"), ("k",), ("q", "k", "v")]), seed=st.integers(0, 1000))


def _cfg_ok(cfg):
    """qkv needs a fused c_attn among the targets."""
    return cfg.qkv is None or "attn.c_attn" in cfg.targets


def _idx(seed=0, B=2, T=6):
    return torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _, m in masked_layers(model):
        m.mask_values.copy_(torch.randn(m.mask_values.shape, generator=g, dtype=torch.float64).to(m.mask_values.dtype))


def _maskable(name, m, cfg):
    """The flat positions the config allows in module m (written out independently of masking.py)."""
    out_f, in_f = m.weight.shape
    if cfg.qkv is not None and name.endswith("c_attn"):
        rows = [r for s in cfg.qkv for r in range("qkv".index(s) * in_f, ("qkv".index(s) + 1) * in_f)]
    else:
        rows = range(out_f)
    return {r * in_f + c for r in rows for c in range(in_f)}


# ---- the mask ------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=30)
@given(cfg=mask_configs)
def test_mask_has_exactly_k_distinct_entries_inside_the_allowed_rows(cfg):
    if not _cfg_ok(cfg):
        cfg.qkv = None
    model = tiny_model(CFG)
    names = apply_masking(model, cfg)
    layers = dict(masked_layers(model))
    assert sorted(layers) == sorted(names)
    N = sum(len(_maskable(n, m, cfg)) for n, m in layers.items())
    k = math.floor(cfg.density * N + 0.5)                                 # round half up, exact count
    assert sum(m.k for m in layers.values()) == k == masked_count_of(model)
    for n, m in layers.items():
        pos = m.mask_indices.tolist()
        assert len(set(pos)) == len(pos) and pos == sorted(pos)
        assert set(pos) <= _maskable(n, m, cfg)
        assert m.mask_values.shape == (m.k,) and not m.mask_values.any()


def test_density_one_masks_every_allowed_entry_and_the_mask_follows_the_seed():
    model = tiny_model(CFG)
    apply_masking(model, MaskingConfig(density=1.0, qkv=("q", "v")))
    for _, m in masked_layers(model):                                    # rows 0..C-1 and 2C..3C-1, all of them
        assert m.mask_indices.tolist() == list(range(0, C * C)) + list(range(2 * C * C, 3 * C * C))
    masks = []
    for seed in (0, 0, 1):
        model = tiny_model(CFG)
        apply_masking(model, MaskingConfig(density=0.25, seed=seed))
        masks.append([m.mask_indices.tolist() for _, m in masked_layers(model)])
    assert masks[0] == masks[1] and masks[0] != masks[2]


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 400), density=st.floats(0.001, 1.0), seed=st.integers(0, 2 ** 20))
def test_random_mask_is_k_distinct_positions(n, density, seed):
    k = masked_count(n, density)
    assert k == math.floor(density * n + 0.5)
    pos = random_mask(n, k, seed)
    assert pos.dtype == torch.int64 and pos.numel() == k == len(set(pos.tolist()))
    assert all(0 <= p < n for p in pos.tolist())
    assert torch.equal(pos, random_mask(n, k, seed))


def test_mask_draw_does_not_touch_the_global_rng():
    model = tiny_model(CFG)
    torch.manual_seed(3)
    a = torch.rand(3)
    torch.manual_seed(3)
    apply_masking(model, MaskingConfig(density=0.3))                      # its own generator
    assert torch.equal(torch.rand(3), a)


# ---- a no-op at start, the switch, gradients -------------------------------------------------

def test_gradients_reach_only_the_values_and_equal_the_dense_gradient_at_the_mask():
    model = tiny_model(CFG)
    apply_masking(model, MaskingConfig(density=0.3, targets=ALL_LINEAR, qkv=None))
    _randomize(model)
    model(_idx(), _idx(1)).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.mask_values" for n, _ in masked_layers(model)}
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    # the same loss through a dense delta D (all entries trainable): dL/dv = dL/dD at the mask
    dense = tiny_model(CFG)
    deltas = {}
    for n, m in masked_layers(model):
        lin = dense.get_submodule(n)
        D = torch.zeros_like(lin.weight).reshape(-1).index_put((m.mask_indices.long(),), m.mask_values.detach())
        deltas[n] = D.view_as(lin.weight).requires_grad_(True)
        lin.weight.requires_grad_(False)
        lin.forward = (lambda lin, D: lambda x: nn.functional.linear(x, lin.weight + D, lin.bias))(lin, deltas[n])
    dense(_idx(), _idx(1)).loss.backward()
    for n, m in masked_layers(model):
        want = deltas[n].grad.reshape(-1)[m.mask_indices.long()]
        torch.testing.assert_close(m.mask_values.grad, want, rtol=1e-10, atol=1e-12)


@settings(deadline=None, max_examples=8)
@given(weight_decay=st.sampled_from([0.0, 0.1, 1.0]), steps=st.integers(1, 6), lr=st.sampled_from([1e-2, 1e-1]))
def test_unmasked_entries_are_bit_identical_after_adamw_steps_with_weight_decay(weight_decay, steps, lr):
    model = tiny_model(CFG)
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_masking(model, MaskingConfig(density=0.2, targets=ALL_LINEAR, qkv=None))
    _randomize(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)   # decay on everything trainable
    for s in range(steps):
        model(_idx(s), _idx(s + 50)).loss.backward()
        opt.step()
        opt.zero_grad()
    for n, m in masked_layers(model):
        W, base = m.effective_weight().detach().reshape(-1), W0[f"{n}.weight"].reshape(-1)
        off = torch.ones_like(base, dtype=torch.bool)
        off[m.mask_indices.long()] = False
        assert torch.equal(W[off], base[off])
        assert torch.equal(m.weight.detach(), W0[f"{n}.weight"])       # the stored W0 never moves
        assert not torch.equal(W[~off], base[~off])                     # the masked ones did
    for n, p in model.named_parameters():
        if n in W0:
            assert torch.equal(p.detach(), W0[n])


def test_train_loop_on_a_token_classifier_changes_only_the_mask_and_the_head():
    body = tiny_model(CFG, dtype=torch.float32)
    W0 = {n: p.detach().clone() for n, p in body.named_parameters()}
    clf = TokenClassifier(body, 3)
    names = apply_masking(clf, MaskingConfig(density=0.1))
    assert names == [f"body.transformer.h.{i}.attn.c_attn" for i in range(CFG.n_layer)]
    assert {n for n, p in clf.named_parameters() if p.requires_grad} == \
        {f"{n}.mask_values" for n in names} | {"head.weight", "head.bias"}
    g = torch.Generator().manual_seed(0)
    data = [{"idx": torch.randint(0, CFG.vocab_size, (6,), generator=g),
             "labels": torch.randint(0, 3, (6,), generator=g)} for _ in range(16)]

    def loss_fn(model, batch):
        return model(batch["idx"], labels=batch["labels"]).loss, {}
    train(clf, data, TrainConfig(steps=5, batch_size=4, lr=0.1, weight_decay=0.5, progress=False), loss_fn=loss_fn)
    for n, m in masked_layers(clf):
        W = m.effective_weight().detach().reshape(-1)
        changed = set((W != W0[n.removeprefix("body.") + ".weight"].reshape(-1)).nonzero().squeeze(1).tolist())
        assert changed and changed <= set(m.mask_indices.tolist())
    assert all(torch.equal(p.detach(), W0[n.removeprefix("body.")]) for n, p in clf.named_parameters()
               if n.removeprefix("body.") in W0)


# ---- files, merge, removal -------------------------------------------------------------------

def test_file_size_scales_with_the_density(tmp_path):
    sizes = {}
    for d in (0.5, 0.05):
        model = tiny_model(CFG, dtype=torch.float32)
        apply_masking(model, MaskingConfig(density=d, targets=ALL_LINEAR, qkv=None))
        save_adapter(model, str(tmp_path / str(d)))
        sizes[d] = (os.path.getsize(tmp_path / str(d) / "adapter.safetensors"), masked_count_of(model))
    (s_big, k_big), (s_small, k_small) = sizes[0.5], sizes[0.05]
    assert abs((s_big - s_small) - 8 * (k_big - k_small)) <= 64          # int32 position + float32 value,
                                                                          # the JSON header's digits aside


def test_load_the_same_file_onto_a_token_classifier_and_swap(tmp_path):
    def clf_with(seed):
        torch.manual_seed(0)
        clf = TokenClassifier(tiny_model(CFG), 3).double()
        apply_masking(clf, MaskingConfig(density=0.2, seed=seed))
        _randomize(clf, seed)
        return clf
    a, b = clf_with(1), clf_with(2)
    save_adapter(a, str(tmp_path / "a"))
    save_adapter(b, str(tmp_path / "b"))
    torch.manual_seed(0)
    target = TokenClassifier(tiny_model(CFG), 3).double()
    load_adapter(target, str(tmp_path / "a"))
    assert torch.equal(target(_idx()).logits, a(_idx()).logits)
    # b was drawn with another seed: another config, so it needs a fresh model
    with pytest.raises(ValueError, match="another config"):
        load_adapter(target, str(tmp_path / "b"))


def test_tampered_indices_are_refused(tmp_path):
    model = tiny_model(CFG)
    apply_masking(model, MaskingConfig(density=0.2))
    _randomize(model)
    save_adapter(model, str(tmp_path))
    path = str(tmp_path / "adapter.safetensors")
    sd = load_file(path)
    key = next(k for k in sd if k.endswith("mask_indices"))
    bad = sd[key].clone()
    bad[1] = bad[0]                                                       # a repeated position
    save_file({**sd, key: bad}, path, metadata={"format": "pt"})
    fresh = tiny_model(CFG)
    with pytest.raises(ValueError, match="sorted and distinct"):        # refused at load time ...
        load_adapter(fresh, str(tmp_path))
    assert not masked_layers(fresh)                                       # ... and the model is left as it was
    sd[key] = sd[key].clone()
    sd[key][0] = 2 * C * C - 1                                            # a k row: outside the q/v slices
    save_file({**sd, key: sd[key].sort().values}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="outside the masked rows"):
        load_adapter(tiny_model(CFG), str(tmp_path))
    model2 = tiny_model(CFG)                                              # indices overwritten by hand:
    apply_masking(model2, MaskingConfig(density=0.2))                     # check_masks / the next forward
    layer = next(m for _, m in masked_layers(model2) if m.k >= 2)
    with torch.no_grad():
        layer.mask_indices[1] = layer.mask_indices[0]
    with pytest.raises(ValueError, match="sorted and distinct"):
        check_masks(model2)
    with pytest.raises(ValueError, match="sorted and distinct"):
        model2(_idx())


def test_the_values_are_the_parameters_and_removal_gives_plain_linears():
    model = tiny_model(CFG)
    names = apply_masking(model, MaskingConfig(density=0.5, targets=ALL_LINEAR, qkv=None))
    assert count_adapter_parameters(model) == masked_count_of(model)       # values only; the indices are not parameters
    assert sorted(remove_adapters(model)) == sorted(names)
    assert not masked_layers(model) and all(type(model.get_submodule(n)) is nn.Linear for n in names)


def test_a_layer_the_draw_left_empty_is_the_base_layer():
    model = tiny_model(CFG)
    N = 2 * 2 * C * C                                                     # q, v rows of 2 blocks
    apply_masking(model, MaskingConfig(density=1 / N))                    # k = 1: one block gets nothing
    ks = [m.k for _, m in masked_layers(model)]
    assert sorted(ks) == [0, 1]
    _randomize(model)
    empty = next(m for _, m in masked_layers(model) if m.k == 0)
    x = torch.randn(3, C, dtype=torch.float64)
    assert torch.equal(empty(x), nn.functional.linear(x, empty.weight, empty.bias))


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("density", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.1", None])
def test_density_outside_0_1_is_refused(density):
    with pytest.raises(ValueError, match=r"density=.* must be a number in \(0, 1\]"):
        MaskingConfig(density=density)


def test_density_too_small_for_one_entry_says_the_smallest_that_works():
    N = 2 * 2 * C * C
    with pytest.raises(ValueError, match=rf"= 0 trainable entries out of the N = {N:,} .* {0.5 / N:.3g}"):
        apply_masking(tiny_model(CFG), MaskingConfig(density=0.4 / N))
    model = tiny_model(CFG)
    apply_masking(model, MaskingConfig(density=0.5 / N))                  # exactly a half rounds up to 1
    assert masked_count_of(model) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(targets=("nothing_like_this",)), "matches no nn.Linear"),
    (dict(targets=("mlp.c_fc",)), "qkv=.* selects slices of a fused attn.c_attn"),
    (dict(targets=("lm_head",), qkv=None), "tied embeddings"),
])
def test_bad_targets_are_refused_before_anything_changes(kwargs, match):
    model = tiny_model(CFG)
    with pytest.raises(ValueError, match=match):
        apply_masking(model, MaskingConfig(density=0.1, **kwargs))
    assert not masked_layers(model) and not getattr(model, "peft_methods", [])


@pytest.mark.parametrize("kwargs, match", [
    (dict(targets=()), "non-empty regexes"),
    (dict(targets=("(",)), "not a valid regular expression"),
    (dict(qkv=("q", "x")), "distinct slices"),
    (dict(qkv=("q", "q")), "distinct slices"),
    (dict(seed=-1), "seed=-1 must be an integer"),
    (dict(seed=1.5), "seed=1.5 must be an integer"),
])
def test_bad_config_fields_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskingConfig(**kwargs)


def test_config_round_trips_and_refuses_unknown_fields():
    cfg = MaskingConfig(density=0.02, targets=["mlp.c_fc", "attn.c_attn"], qkv=["v", "q"], seed=7)
    assert cfg.qkv == ("q", "v")
    assert MaskingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown MaskingConfig field"):
        MaskingConfig.from_dict({"density": 0.1, "rank": 4})


def test_applying_twice_is_refused():
    model = tiny_model(CFG)
    apply_masking(model, MaskingConfig(density=0.1))
    with pytest.raises(ValueError, match="already applied"):
        apply_masking(model, MaskingConfig(density=0.1))


def test_masked_linear_refuses_bad_indices_when_built():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="outside"):
        MaskedLinear(lin, torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="sorted and distinct"):
        MaskedLinear(lin, torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="sorted and distinct"):
        MaskedLinear(lin, torch.tensor([5, 2]))


def test_masking_composes_with_another_method_on_other_layers():
    from minift.peft.lora import LoRAConfig, apply_lora
    model = tiny_model(CFG)
    apply_masking(model, MaskingConfig(density=0.2, targets=["mlp.c_fc"], qkv=None))
    apply_lora(model, LoRAConfig(r=2))                                    # its freeze must skip int indices
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith("mask_values") for n in trainable) and any(n.endswith("lora_A") for n in trainable)
    assert not any(n.endswith("mask_indices") for n in trainable)
