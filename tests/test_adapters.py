"""Bottleneck adapters, series (Houlsby, Pfeiffer) and parallel: placement, the equations by hand, only the
adapters and a task head train, a head saved with them, the switch shared with LoRA, bad input. (No-op at
start, disable, files, removal: tests/test_method_contract.py.)"""
import json
import math

import pytest
import torch
import torch.nn as nn

from minift.heads import SequenceClassifier
from minift.model import GPT, GPTConfig
from minift.peft.adapters import (AdapterConfig, ParallelAdapterMLP, SeriesAdapterLinear, adapter_parameter_count,
                                  adapters_state_dict, apply_adapters)
from minift.peft.common import count_adapter_parameters, disable_adapters
from minift.peft.io import load_adapter, save_adapter
from minift.peft.lora import LoRAConfig, apply_lora
from minift.train import TrainConfig, train
from strategies import reference_forward, tiny_model

pytestmark = pytest.mark.lesson06
CFG = GPTConfig(vocab_size=24, block_size=8, n_layer=2, n_head=2, n_embd=8)


def _idx(seed=0):
    return torch.randint(0, CFG.vocab_size, (2, 6), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in adapters_state_dict(model).values():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.5)


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


