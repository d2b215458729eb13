"""LoRA (+ rsLoRA, DoRA, q/v slices of the fused c_attn): the init, one layer's merge = unmerged forward,
the equations by hand, only the LoRA tensors train, several adapters on one base, the PEFT layout, counts,
bad input. (No-op at start, disable, files, removal, the model's merge: tests/test_method_contract.py.)"""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minift.model import GPT, GPTConfig
from minift.peft.io import export_peft, import_peft, load_adapter, save_adapter
from minift.peft.lora import (LoRAConfig, LoRALinear, apply_lora, lora_layers, lora_parameter_count, lora_report,
                              lora_state_dict)
from minift.peft.selective import trainable_report
from minift.train import TrainConfig, train
from strategies import reference_forward, tiny_model

pytestmark = pytest.mark.lesson05
CFG = GPTConfig(vocab_size=24, block_size=8, n_layer=2, n_head=2, n_embd=8)
EPS = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}

lora_configs = st.builds(
    LoRAConfig, r=st.integers(1, 3), alpha=st.sampled_from([1.0, 4.0, 16.0]),
    targets=st.lists(st.sampled_from(["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
                     min_size=1, max_size=3, unique=True),
    qkv=st.sampled_from([None, ("q",), ("q", "v"), ("k", "v"), ("q", "k", "v")]),
    use_rslora=st.booleans(), use_dora=st.booleans())


def _idx(n=2, t=6, seed=0):
    return torch.randint(0, CFG.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))


def _apply(model, cfg):
    if cfg.qkv is not None and "attn.c_attn" not in cfg.targets:
        cfg.targets = cfg.targets + ("attn.c_attn",)
    return apply_lora(model, cfg)


@torch.no_grad()
def _randomize(model, seed=1):
    """Non-zero B (and a magnitude away from ‖W0‖): the adapters now do something."""
    g = torch.Generator().manual_seed(seed)
    for _, m in lora_layers(model):
        m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g, dtype=torch.float64) * 0.5)
        m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g, dtype=torch.float64) * 0.5)
        if m.use_dora:
            m.lora_magnitude.mul_(1 + 0.5 * torch.rand(m.lora_magnitude.shape, generator=g, dtype=torch.float64))


def _base_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


# ---- initialisation, one layer's merge (the model-level contract: test_method_contract.py) ---------------------------------------------------------------

@settings(deadline=None, max_examples=10)
@given(cfg=lora_configs)
def test_B_starts_at_zero_and_A_is_kaiming(cfg):
    """(That the model then is the base exactly: tests/test_method_contract.py.)"""
    model = tiny_model(CFG, dtype=torch.float32)
    names = _apply(model, cfg)
    for n in names:
        m = model.get_submodule(n)
        assert not m.lora_B.any() and m.lora_A.any()
        assert m.lora_A.abs().max() <= 1 / math.sqrt(m.in_features)   # kaiming_uniform(a=sqrt(5)) bound


def _layer(in_f, out_f, r, dtype, dora, slices=None, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    layer = LoRALinear(lin.to(dtype), r, alpha=2.0 * r, use_dora=dora, slices=slices)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g))
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
        if dora:
            layer.lora_magnitude.mul_(1.5)
    return layer.eval(), torch.randn(5, in_f, generator=g).to(dtype)


@settings(deadline=None, max_examples=40)
@given(in_f=st.integers(1, 12), out_f=st.integers(1, 12), r=st.integers(1, 4), dora=st.booleans(),
       bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 1000))
def test_merge_then_forward_equals_unmerged_and_unmerge_restores_W0(in_f, out_f, r, dora, bias, dtype, seed):
    r = min(r, in_f, out_f)
    layer, x = _layer(in_f, out_f, r, dtype, dora, seed=seed, bias=bias)
    W0 = layer.weight.detach().clone()
    with torch.no_grad():
        y = layer(x)                                                   # the ground truth: unmerged
        dW = layer.scaling * layer.lora_B.double() @ layer.lora_A.double()
        layer.merge()
        W1 = layer.weight.detach().clone()
        layer.merge()                                                  # merging twice is a no-op
        assert torch.equal(layer.weight, W1) and layer.merged
        y_merged = layer(x)
    eps = EPS[dtype]
    scale = x.double().abs() @ (W0.double().abs() + dW.abs()).T * (3.0 if dora else 1.0) + 1.0
    assert y_merged.dtype == dtype and W1.dtype == dtype
    assert ((y_merged.double() - y.double()).abs() <= 16 * eps * scale).all()
    layer.unmerge()
    layer.unmerge()                                                    # no-op too
    assert not layer.merged
    tol = 4 * eps * (W0.double().abs() + dW.abs() * (3.0 if dora else 1.0)) + (1e-30 if dtype != torch.float16 else 1e-7)
    assert ((layer.weight.double() - W0.double()).abs() <= tol).all()


def test_merged_weight_is_W0_plus_sBA_computed_in_float32():
    layer, _ = _layer(6, 5, 2, torch.bfloat16, dora=False, seed=3)
    W0, A, B = (t.detach().clone() for t in (layer.weight, layer.lora_A, layer.lora_B))
    layer.merge()
    expected = (W0.double() + layer.scaling * B.double() @ A.double()).to(torch.bfloat16)
    assert torch.equal(layer.weight, expected)                         # one rounding, from a float32-exact sum


def test_qv_slices_leave_the_k_output_and_k_rows_untouched():
    model = tiny_model(CFG, dtype=torch.float32)
    C = CFG.n_embd
    apply_lora(model, LoRAConfig(r=2, targets=["attn.c_attn"], qkv=("q", "v"), use_dora=True))
    _randomize(model)
    layer = model.transformer.h[0].attn.c_attn
    assert layer.slices == [(0, C), (2 * C, 3 * C)]
    x = torch.randn(3, C)
    base = F.linear(x, layer.weight, layer.bias)
    y = layer(x)
    assert torch.equal(y[:, C:2 * C], base[:, C:2 * C])               # k: bit for bit
    assert not torch.allclose(y[:, :C], base[:, :C]) and not torch.allclose(y[:, 2 * C:], base[:, 2 * C:])
    W0 = layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.weight[C:2 * C], W0[C:2 * C])
    assert not torch.equal(layer.weight[:C], W0[:C])


# ---- hand-checkable cases: rsLoRA and DoRA reduce to their definitions ------------------------

def _hand_layer(W0, b, A, B, alpha, **kw):
    lin = nn.Linear(W0.shape[1], W0.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(W0)
        if b is not None:
            lin.bias.copy_(b)
    layer = LoRALinear(lin, A.shape[0], alpha, **kw)
    with torch.no_grad():
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer


def test_rslora_scaling_by_hand():
    # W0 = 0, A = B = I (r = 4), alpha = 2:  LoRA s = 2/4 = 0.5,  rsLoRA s = 2/sqrt(4) = 1
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    lora = _hand_layer(torch.zeros(4, 4), None, torch.eye(4), torch.eye(4), alpha=2.0)
    rs = _hand_layer(torch.zeros(4, 4), None, torch.eye(4), torch.eye(4), alpha=2.0, use_rslora=True)
    assert lora.scaling == 0.5 and rs.scaling == 1.0
    assert torch.equal(lora(x), torch.tensor([[0.5, 1.0, 1.5, 2.0]]))
    assert torch.equal(rs(x), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))


def test_dora_by_hand_row_norms_and_detached_gradient():
    # W0 rows [3, 4] and [0, 2]: norms 5 and 2, so m starts at [5, 2] (and the layer is W0 x + b)
    W0, b = torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([0.5, -1.0])
    A, B = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]])
    layer = _hand_layer(W0, b, A, torch.zeros(2, 1), alpha=1.0, use_dora=True)
    assert torch.equal(layer.lora_magnitude.detach(), torch.tensor([5.0, 2.0]))
    x = torch.tensor([[1.0, 1.0]])
    assert torch.equal(layer(x), torch.tensor([[7.5, 1.0]]))          # [3 + 4 + 0.5, 2 - 1]
    # s B A = [[1, 0], [0, 0]]: V = [[4, 4], [0, 2]], norms [4 sqrt 2, 2]; m = [10, 1]
    # W' = [[10 / sqrt 2, 10 / sqrt 2], [0, 1]];  y = [20 / sqrt 2 + 0.5, 1 - 1]
    with torch.no_grad():
        layer.lora_B.copy_(B)
        layer.lora_magnitude.copy_(torch.tensor([10.0, 1.0]))
    y = layer(x)
    assert torch.allclose(y, torch.tensor([[20 / math.sqrt(2) + 0.5, 0.0]]), atol=1e-6)
    # backward treats the norm as a constant: the gradient of sum(y) w.r.t. B is that of
    # x (m / c ⊙ (W0 + B A))^T with c = [4 sqrt 2, 2] fixed
    y.sum().backward()
    Bv = B.clone().requires_grad_(True)
    c = torch.tensor([4 * math.sqrt(2), 2.0])
    (x @ (torch.tensor([10.0, 1.0])[:, None] / c[:, None] * (W0 + Bv @ A)).T).sum().backward()
    assert torch.allclose(layer.lora_B.grad, Bv.grad, atol=1e-6)
    assert torch.allclose(layer.lora_magnitude.grad, (x @ ((W0 + B @ A) / c[:, None]).T)[0], atol=1e-6)


# ---- training: only LoRA moves -----------------------------------------------------------------

def _lm_data(n=8, t=8):
    g = torch.Generator().manual_seed(0)
    return [{"idx": torch.randint(0, CFG.vocab_size, (t,), generator=g),
             "targets": torch.randint(0, CFG.vocab_size, (t,), generator=g)} for _ in range(n)]


@pytest.mark.parametrize("cfg", [LoRAConfig(r=2), LoRAConfig(r=2, qkv=None, targets=["c_attn", "c_proj", "c_fc"]),
                                 LoRAConfig(r=1, use_dora=True, use_rslora=True, dropout=0.1)],
                         ids=["qv", "all-linear", "dora-rslora-dropout"])
def test_only_lora_tensors_train_and_frozen_weights_stay_bit_identical(cfg):
    torch.manual_seed(0)
    model = GPT(CFG)
    before = _base_state(model)
    apply_lora(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model)) and trainable
    batch = _lm_data()[0]
    model(batch["idx"][None], batch["targets"][None]).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), f"{n}: gradient {'missing' if n in trainable else 'on a frozen weight'}"
    for n, m in lora_layers(model):
        assert m.lora_B.grad.any()                                     # (A's is 0 while B = 0: dL/dA = s B^T ...)
    model.zero_grad(set_to_none=True)
    B0 = {n: m.lora_B.detach().clone() for n, m in lora_layers(model)}
    train(model, _lm_data(), TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, progress=False))
    for n, p in model.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    for n, m in lora_layers(model):
        assert m.lora_B.any() and not torch.equal(m.lora_B, B0[n]), f"{n}.lora_B did not move off zero"


# ---- counting ---------------------------------------------------------------------------------

@settings(deadline=None, max_examples=20)
@given(cfg=lora_configs)
def test_parameter_count_is_r_in_plus_out_per_adapted_matrix(cfg):
    model = GPT(CFG)
    _apply(model, cfg)
    C, r = CFG.n_embd, cfg.r
    shapes = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    expected = 0
    for t in cfg.targets:
        out, fin = shapes[t]
        if t == "attn.c_attn" and cfg.qkv is not None:
            matrices = [(C, C)] * len(cfg.qkv)                        # each slice is its own matrix
        else:
            matrices = [(out, fin)]
        expected += sum(r * (i + o) + (o if cfg.use_dora else 0) for o, i in matrices)
    expected *= CFG.n_layer
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert sum(row["lora"] for row in lora_report(model)) == expected
    report = trainable_report(model)                                   # selective's report counts them too
    assert report["total"]["trainable"] == expected and report["total"]["params"] == GPT(CFG).num_parameters() + expected
    assert lora_parameter_count(C, 3 * C, r) == r * 4 * C


def test_gpt3_175b_count_on_the_meta_device_matches_the_lora_paper():
    # LoRA paper, GPT-3 175B, W_q and W_v, r = 8: 96 layers x 2 matrices x 8 (12288 + 12288) = 37.7M
    cfg = GPTConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288)
    with torch.device("meta"):
        model = GPT(cfg)
    apply_lora(model, LoRAConfig(r=8, alpha=8, targets=["attn.c_attn"], qkv=("q", "v")))
    assert model.num_parameters(trainable_only=True) == 96 * 2 * 8 * (12288 + 12288) == 37_748_736


# ---- files ---------------------------------------------------------------------------------------

FILE_CFGS = [LoRAConfig(r=2), LoRAConfig(r=2, qkv=None, targets=["c_attn", "mlp.c_fc"], use_rslora=True),
             LoRAConfig(r=2, targets=["attn.c_attn", "mlp.c_proj"], use_dora=True)]
FILE_IDS = ["qv", "full-rslora", "qv+mlp-dora"]


def _adapted(cfg, seed=0):
    base = tiny_model(CFG, seed=seed, dtype=torch.float32)
    state = _base_state(base)
    apply_lora(base, cfg)
    _randomize(base, seed + 1)
    return base, state


def _fresh(state):
    m = GPT(CFG).eval()
    m.load_state_dict(state)
    return m


def test_one_base_several_adapters_swapped_at_run_time(tmp_path):
    cfg = LoRAConfig(r=2)
    m1, state = _adapted(cfg, seed=0)
    save_adapter(m1, tmp_path / "a")
    _randomize(m1, seed=7)
    save_adapter(m1, tmp_path / "b")
    y_b = m1(_idx()).logits
    _randomize(m1, seed=1)
    y_a = m1(_idx()).logits
    model = _fresh(state)
    load_adapter(model, tmp_path / "b")
    assert torch.equal(model(_idx()).logits, y_b)
    load_adapter(model, tmp_path / "a")                                # same method: tensors swapped in
    assert torch.equal(model(_idx()).logits, y_a)


@pytest.mark.parametrize("cfg", FILE_CFGS, ids=FILE_IDS)
def test_peft_export_import_round_trip_is_identical(cfg, tmp_path):
    model, state = _adapted(cfg)
    y = model(_idx()).logits
    export_peft(model, tmp_path)
    fresh = _fresh(state)
    import_peft(fresh, tmp_path)
    assert torch.equal(fresh(_idx()).logits, y)
    assert [(n, m.slices) for n, m in lora_layers(fresh)] == [(n, m.slices) for n, m in lora_layers(model)]


@pytest.mark.parametrize("cfg", FILE_CFGS + [LoRAConfig(r=2, targets=["attn.c_attn", "mlp.c_proj"]),
                                              LoRAConfig(r=2, targets=["attn.c_attn", "mlp.c_fc"], use_rslora=True)],
                         ids=FILE_IDS + ["qv+mlp-rank-pattern", "qv+mlp-rslora-rank-pattern"])
def test_peft_export_means_the_same_model_to_peft(cfg, tmp_path):
    """Read the exported folder the way PEFT does for GPT-2 (Conv1D weights stored (in, out),
    fan_in_fan_out: merge W += (B A)^T · lora_alpha / r, rank_pattern / alpha_pattern per module;
    DoRA: W = m ⊙ V / ‖V‖ per output, V = W0 + s B A), and check GPT-2 written out in float64 gives
    our adapted logits."""
    model, state = _adapted(cfg)
    export_peft(model, tmp_path)
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["fan_in_fan_out"] is True and conf["bias"] == "none"
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    hf = {k.removeprefix("transformer."): v.double() for k, v in state.items() if k != "lm_head.weight"}
    for k in list(hf):
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            hf[k] = hf[k].T.contiguous()                               # Conv1D layout (in, out)
    for name in conf["target_modules"]:
        A = tensors[f"base_model.model.{name}.lora_A.weight"].double()
        B = tensors[f"base_model.model.{name}.lora_B.weight"].double()
        assert A.shape[1] == model.get_submodule(name).in_features   # lora_A (r, in)
        assert B.shape[0] == model.get_submodule(name).out_features  # lora_B (out, r)
        key = name.split(".", 1)[1].replace(".", r"\.")
        r, alpha = conf["rank_pattern"].get(key, conf["r"]), conf["alpha_pattern"].get(key, conf["lora_alpha"])
        assert A.shape[0] == r
        s = alpha / math.sqrt(r) if conf["use_rslora"] else alpha / r
        key = name.removeprefix("transformer.") + ".weight"
        V = hf[key].T + s * (B @ A)                                    # (out, in)
        if conf["use_dora"]:
            m = tensors[f"base_model.model.{name}.lora_magnitude_vector"].double()
            assert m.shape == (B.shape[0],)                            # one magnitude per output, k rows too
            V = m[:, None] * V / V.norm(dim=1, keepdim=True)
        hf[key] = V.T.contiguous()
    ref = reference_forward(CFG, hf, _idx(), conv1d=True)
    assert torch.allclose(model(_idx()).logits.double(), ref, atol=1e-4)


def test_import_a_peft_folder_written_by_someone_else(tmp_path):
    """A plain PEFT LoRA (no minift metadata): target_modules ["c_attn"], r = 2, lora_alpha = 4."""
    model = tiny_model(CFG, dtype=torch.float32)
    state = _base_state(model)
    g = torch.Generator().manual_seed(5)
    C = CFG.n_embd
    tensors = {}
    for i in range(CFG.n_layer):
        tensors[f"base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight"] = torch.randn(2, C, generator=g)
        tensors[f"base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight"] = torch.randn(3 * C, 2, generator=g)
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["c_attn"],
         "fan_in_fan_out": True, "bias": "none", "task_type": "CAUSAL_LM"}))
    names = import_peft(model, tmp_path)
    assert names == [f"transformer.h.{i}.attn.c_attn" for i in range(CFG.n_layer)]
    sd = {k.removeprefix("transformer."): v.double() for k, v in state.items() if k != "lm_head.weight"}
    for i in range(CFG.n_layer):
        A = tensors[f"base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight"].double()
        B = tensors[f"base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight"].double()
        sd[f"h.{i}.attn.c_attn.weight"] += (4 / 2) * B @ A
    assert torch.allclose(model(_idx()).logits.double(), reference_forward(CFG, sd, _idx()), atol=1e-4)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_targets_are_clear_errors():
    with pytest.raises(ValueError, match=r"rank r=9 must be between 1 and min\(in_features, out_features\)=8"):
        apply_lora(GPT(CFG), LoRAConfig(r=9))
    with pytest.raises(ValueError, match=r"target 'attn\.q_proj' matches no nn\.Linear module"):
        apply_lora(GPT(CFG), LoRAConfig(targets=["attn.q_proj"], qkv=None))
    with pytest.raises(ValueError, match=r"qkv=\('q', 'v'\) selects slices of a fused attn\.c_attn"):
        apply_lora(GPT(CFG), LoRAConfig(targets=["mlp.c_fc"]))
    with pytest.raises(ValueError, match=r"lm_head shares its weight with .*transformer\.wte\.weight"):
        apply_lora(GPT(CFG), LoRAConfig(targets=["lm_head"], qkv=None))
    model = GPT(CFG)
    apply_lora(model, LoRAConfig(r=2))
    with pytest.raises(ValueError, match=r"already applied to \['transformer\.h\.0\.attn\.c_attn'"):
        apply_lora(model, LoRAConfig(r=2))


def test_loading_onto_the_wrong_base_or_a_broken_file_is_refused_and_rolled_back(tmp_path):
    model, state = _adapted(LoRAConfig(r=2))
    save_adapter(model, tmp_path / "ok")
    other = GPT(GPTConfig(vocab_size=24, block_size=8, n_layer=3, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match=rf"different base model.*{CFG.fingerprint()}.*n_layer 2 vs 3"):
        load_adapter(other, tmp_path / "ok")
    assert not lora_layers(other)
    export_peft(model, tmp_path / "peft")
    with pytest.raises(ValueError, match="different base model"):
        import_peft(other, tmp_path / "peft")
    # a file with a key missing and an unexpected one: both named, and the base is left as it was
    sd = load_file(tmp_path / "ok" / "adapter.safetensors")
    sd.pop("transformer.h.1.attn.c_attn.lora_B")
    sd["transformer.h.0.attn.c_attn.weight"] = torch.zeros(3 * CFG.n_embd, CFG.n_embd)
    (tmp_path / "bad").mkdir()
    save_file(sd, tmp_path / "bad" / "adapter.safetensors")
    (tmp_path / "bad" / "adapter.json").write_text((tmp_path / "ok" / "adapter.json").read_text())
    fresh = _fresh(state)
    base = fresh(_idx()).logits
    with pytest.raises(ValueError, match=r"unexpected keys \['transformer\.h\.0\.attn\.c_attn\.weight'\]"):
        load_adapter(fresh, tmp_path / "bad")
    assert not lora_layers(fresh) and torch.equal(fresh(_idx()).logits, base)
    sd.pop("transformer.h.0.attn.c_attn.weight")
    save_file(sd, tmp_path / "bad" / "adapter.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['transformer\.h\.1\.attn\.c_attn\.lora_B'\]"):
        load_adapter(fresh, tmp_path / "bad")
    assert all(p.requires_grad for p in fresh.parameters())           # freezing undone too
    with pytest.raises(ValueError, match="not a minift adapter file"):
        (tmp_path / "bad" / "adapter.json").write_text('{"format": "something-else"}')
        load_adapter(fresh, tmp_path / "bad")
    with pytest.raises(ValueError, match="carries no adapter"):
        save_adapter(fresh, tmp_path / "none")


def test_peft_folders_that_are_not_what_they_claim_are_refused(tmp_path):
    model, state = _adapted(LoRAConfig(r=2))                           # q/v slices
    export_peft(model, tmp_path)
    sd = load_file(tmp_path / "adapter_model.safetensors")
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:  # keep the minift metadata
        md = f.metadata()
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"
    sd[key][CFG.n_embd, 0] = 1.0                                        # a k row is no longer zero
    save_file(sd, tmp_path / "adapter_model.safetensors", metadata=md)
    fresh = _fresh(state)
    with pytest.raises(ValueError, match=r"not zero outside the q/k/v slices"):
        import_peft(fresh, tmp_path)
    assert not lora_layers(fresh)                                       # rolled back
    save_file(sd, tmp_path / "adapter_model.safetensors")              # no metadata: a foreign file ...
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    conf["rank_pattern"] = {"h\\.0\\.attn\\.c_attn": 4}                 # ... with per-module ranks
    (tmp_path / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"rank_pattern.*not supported"):
        import_peft(fresh, tmp_path)
    conf["peft_type"] = "IA3"
    (tmp_path / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"peft_type='IA3'; only 'LORA'"):
        import_peft(fresh, tmp_path)
