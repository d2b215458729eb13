"""Bottleneck adapters, series (Houlsby, Pfeiffer) and parallel: no-op at start, placement, only the
adapters train, files round-trip, the shared disable switch, bad input."""
import json
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from minift.heads import SequenceClassifier
from minift.model import GPT, GPTConfig
from minift.peft.adapters import (AdapterConfig, ParallelAdapterMLP, SeriesAdapterLinear, adapter_parameter_count,
                                  adapters_state_dict, apply_adapters)
from minift.peft.common import count_adapter_parameters, disable_adapters, remove_adapters
from minift.peft.io import load_adapter, save_adapter
from minift.peft.lora import LoRAConfig, apply_lora
from minift.train import TrainConfig, train
from strategies import reference_forward, tiny_model

pytestmark = pytest.mark.lesson06
CFG = GPTConfig(vocab_size=24, block_size=8, n_layer=2, n_head=2, n_embd=8)

adapter_configs = st.builds(
    AdapterConfig, kind=st.sampled_from(["series", "parallel"]), placement=st.sampled_from(["houlsby", "pfeiffer"]),
    bottleneck=st.integers(1, 8), activation=st.sampled_from(["relu", "gelu", "silu", "tanh"]),
    scaling=st.sampled_from([1.0, 4.0, -0.5]),
    layers=st.one_of(st.none(), st.lists(st.integers(-2, 1), min_size=1, max_size=2)))


def _idx(seed=0):
    return torch.randint(0, CFG.vocab_size, (2, 6), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in adapters_state_dict(model).values():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.5)


def _base_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".adapter." not in k}


@settings(deadline=None, max_examples=20)
@given(cfg=adapter_configs, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_zero_init_is_the_base_model_exactly_and_disable_gives_it_back(cfg, dtype):
    model = tiny_model(CFG, dtype=dtype)
    base = model(_idx()).logits
    apply_adapters(model, cfg)
    assert torch.equal(model(_idx()).logits, base)
    _randomize(model)
    adapted = model(_idx()).logits
    assert not torch.allclose(adapted, base)
    with disable_adapters(model):
        assert torch.equal(model(_idx()).logits, base)
    assert torch.equal(model(_idx()).logits, adapted)


@pytest.mark.parametrize("kind, placement, where", [
    ("series", "houlsby", ["attn.c_proj", "mlp.c_proj"]),
    ("series", "pfeiffer", ["mlp.c_proj"]),
    ("parallel", "houlsby", ["mlp"]),
])
def test_placement_and_parameter_count(kind, placement, where):
    model = GPT(CFG)
    names = apply_adapters(model, AdapterConfig(kind=kind, placement=placement, bottleneck=3, layers=[-1]))
    assert names == [f"transformer.h.1.{w}" for w in where]          # layers=[-1]: the last block only
    C, m = CFG.n_embd, 3
    per_adapter = 2 * C * m + m + C                                    # W_down, b_down, W_up, b_up
    assert adapter_parameter_count(C, m) == per_adapter
    assert count_adapter_parameters(model) == len(where) * per_adapter
    assert model.num_parameters(trainable_only=True) == len(where) * per_adapter


def _tensors(g, *shapes):
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def test_series_adapter_is_h_plus_s_f_h_Wdown_Wup_on_the_sublayer_output():
    g = torch.Generator().manual_seed(0)
    C, m, s = 5, 3, 2.5
    lin = nn.Linear(4, C).double()
    layer = SeriesAdapterLinear(lin, AdapterConfig(bottleneck=m, activation="tanh", scaling=s))
    Wd, bd, Wu, bu, x = _tensors(g, (m, C), (m,), (C, m), (C,), (6, 4))
    with torch.no_grad():
        for p, v in ((layer.adapter.down.weight, Wd), (layer.adapter.down.bias, bd), (layer.adapter.up.weight, Wu),
                     (layer.adapter.up.bias, bu)):
            p.copy_(v)
    h = x @ lin.weight.detach().T + lin.bias.detach()
    expected = h + s * (torch.tanh(h @ Wd.T + bd) @ Wu.T + bu)
    assert torch.allclose(layer(x), expected, atol=1e-12)


def test_parallel_adapter_reads_the_mlp_input_and_adds_beside_it():
    g = torch.Generator().manual_seed(1)
    model = tiny_model(CFG)
    mlp = model.transformer.h[0].mlp
    Wfc, bfc, Wpr, bpr = (t.detach().clone() for t in (mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias))
    apply_adapters(model, AdapterConfig(kind="parallel", bottleneck=2, activation="relu", scaling=4.0))
    layer = model.transformer.h[0].mlp
    assert isinstance(layer, ParallelAdapterMLP)
    C = CFG.n_embd
    Wd, bd, Wu, bu, x = _tensors(g, (2, C), (2,), (C, 2), (C,), (3, C))
    with torch.no_grad():
        for p, v in ((layer.adapter.down.weight, Wd), (layer.adapter.down.bias, bd), (layer.adapter.up.weight, Wu),
                     (layer.adapter.up.bias, bu)):
            p.copy_(v)
    z = x @ Wfc.T + bfc
    gelu = 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    expected = gelu @ Wpr.T + bpr + 4.0 * (torch.relu(x @ Wd.T + bd) @ Wu.T + bu)
    assert torch.allclose(layer(x), expected, atol=1e-12)


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_series_adapters_sit_before_the_residual_add_in_the_whole_model(placement):
    """With a linear f (identity), h + s (h Wd^T + bd) Wu^T + bu is the sublayer's projection with
    weight (I + s Wu Wd) W and bias (I + s Wu Wd) b + s (Wu bd + bu): GPT-2 written out in float64
    with those projections must give the adapted model's logits."""
    model = tiny_model(CFG)
    sd = {k.removeprefix("transformer."): v.detach().clone() for k, v in model.state_dict().items()
          if k != "lm_head.weight"}
    names = apply_adapters(model, AdapterConfig(placement=placement, bottleneck=3, activation="identity", scaling=0.5))
    _randomize(model)
    for n in names:
        ad = model.get_submodule(n).adapter
        M = torch.eye(CFG.n_embd, dtype=torch.float64) + 0.5 * ad.up.weight.detach() @ ad.down.weight.detach()
        key = n.removeprefix("transformer.")
        sd[key + ".bias"] = M @ sd[key + ".bias"] + 0.5 * (ad.up.weight.detach() @ ad.down.bias.detach()
                                                           + ad.up.bias.detach())
        sd[key + ".weight"] = M @ sd[key + ".weight"]
    assert torch.allclose(model(_idx()).logits, reference_forward(CFG, sd, _idx()), atol=1e-9)


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    return [{"idx": torch.randint(0, 24, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(n)]


def _clf_loss(model, batch):
    return model(batch["idx"], labels=batch["labels"]).loss, {}


@pytest.mark.parametrize("kind, placement", [("series", "houlsby"), ("series", "pfeiffer"), ("parallel", "houlsby")])
def test_only_adapters_and_the_task_head_train(kind, placement):
    torch.manual_seed(0)
    clf = SequenceClassifier(GPT(CFG), 2)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    apply_adapters(clf, AdapterConfig(kind=kind, placement=placement, bottleneck=4))
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable == set(adapters_state_dict(clf)) | {"head.weight", "head.bias"}
    batch = _data()[0]
    _clf_loss(clf, {"idx": batch["idx"][None], "labels": batch["labels"][None]})[0].backward()
    assert {n for n, p in clf.named_parameters() if p.grad is not None} == trainable
    params = dict(clf.named_parameters())
    ups = {n: params[n] for n in adapters_state_dict(clf) if n.endswith("up.weight")}
    assert ups and all(p.grad.any() for p in ups.values())           # W_up = 0 still gets a gradient
    clf.zero_grad(set_to_none=True)
    train(clf, _data(), TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, progress=False), loss_fn=_clf_loss)
    for n, p in clf.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    assert all(p.any() for p in ups.values())                         # W_up moved off zero
    assert not torch.equal(clf.head.weight, before["head.weight"])


@pytest.mark.parametrize("cfg", [AdapterConfig(bottleneck=3), AdapterConfig(kind="parallel", bottleneck=2, layers=[0])],
                         ids=["houlsby", "parallel"])
def test_save_load_gives_identical_outputs(cfg, tmp_path):
    model = tiny_model(CFG, dtype=torch.float32)
    state = _base_state(model)
    names = apply_adapters(model, cfg)
    _randomize(model)
    y = model(_idx()).logits
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter.json").read_text())
    assert meta["methods"] == [{"method": "adapters", "config": cfg.to_dict(), "modules": names}]
    fresh = GPT(CFG).eval()
    fresh.load_state_dict(state)
    assert load_adapter(fresh, tmp_path) == names
    assert torch.equal(fresh(_idx()).logits, y)
    assert remove_adapters(fresh) == names
    assert torch.equal(fresh(_idx()).logits, tiny_model(CFG, dtype=torch.float32)(_idx()).logits)


def test_classifier_head_is_saved_with_the_adapters(tmp_path):
    torch.manual_seed(0)
    clf = SequenceClassifier(GPT(CFG), 3).eval()
    body = {k: v.clone() for k, v in clf.body.state_dict().items()}
    apply_adapters(clf, AdapterConfig(bottleneck=2))
    _randomize(clf)
    with torch.no_grad():
        clf.head.weight.normal_()
    y = clf(_idx()).logits
    save_adapter(clf, tmp_path)
    assert json.loads((tmp_path / "adapter.json").read_text())["extra_trainable"] == ["head.bias", "head.weight"]
    fresh = SequenceClassifier(GPT(CFG), 3).eval()
    fresh.body.load_state_dict(body)
    load_adapter(fresh, tmp_path)
    assert torch.equal(fresh(_idx()).logits, y)


def test_lora_and_adapters_share_one_disable_switch(tmp_path):
    model = tiny_model(CFG, dtype=torch.float32)
    base = model(_idx()).logits
    apply_lora(model, LoRAConfig(r=2))
    apply_adapters(model, AdapterConfig(placement="pfeiffer", bottleneck=2))
    _randomize(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    y = model(_idx()).logits
    with disable_adapters(model):
        assert torch.equal(model(_idx()).logits, base)
    save_adapter(model, tmp_path)
    fresh = tiny_model(CFG, dtype=torch.float32)
    load_adapter(fresh, tmp_path)
    assert torch.equal(fresh(_idx()).logits, y)


@pytest.mark.parametrize("kw, match", [
    (dict(kind="serial"), r"kind='serial' must be one of \('series', 'parallel'\)"),
    (dict(placement="after"), r"placement='after' must be one of \('houlsby', 'pfeiffer'\)"),
    (dict(bottleneck=0), r"bottleneck=0 must be an integer >= 1"),
    (dict(activation="swish"), r"activation='swish' must be one of"),
])
def test_bad_config_values_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**kw)


def test_bad_placements_are_clear_errors():
    with pytest.raises(ValueError, match=r"bottleneck=9 must be <= n_embd=8"):
        apply_adapters(GPT(CFG), AdapterConfig(bottleneck=9))
    with pytest.raises(ValueError, match=r"layers has \[2\]: out of range for n_layer=2"):
        apply_adapters(GPT(CFG), AdapterConfig(layers=[2]))
    model = GPT(CFG)
    apply_adapters(model, AdapterConfig(bottleneck=2))
    with pytest.raises(ValueError, match=r"already applied to \['transformer\.h\.0\.attn\.c_proj'"):
        apply_adapters(model, AdapterConfig(bottleneck=2))
    with pytest.raises(ValueError, match="no GPT blocks"):
        apply_adapters(nn.Sequential(nn.Linear(2, 2)), AdapterConfig())


def test_apply_config_dispatches_on_the_config_type():
    from minift.peft.io import apply_config
    from minift.peft.lora import LoRAConfig
    from minift.peft.selective import SelectiveConfig
    m = apply_config(GPT(CFG), LoRAConfig(r=2))
    assert [r["method"] for r in m.peft_methods] == ["lora"]
    s = apply_config(GPT(CFG), SelectiveConfig(components=["layernorm"]))
    assert {n for n, p in s.named_parameters() if p.requires_grad} == {n for n, _ in s.named_parameters() if ".ln_" in n}
    assert apply_config(m, None) is m
    with pytest.raises(TypeError, match="dict is not a method config"):
        apply_config(GPT(CFG), {"r": 2})
