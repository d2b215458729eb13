"""The contract every fine-tuning method keeps (DESIGN.md, "How a method is written"), tested once for
all of them: full / selective (BitFit), LoRA, DoRA, bottleneck adapters (series and parallel), prefix
and prompt tuning, random masking, LoReFT, QLoRA on an NF4 or an int8 base, and LoftQ.

For every method, on a small random GPT, with configs drawn by hypothesis:

    no-op at init     cfg.apply(model) leaves the outputs bit for bit those of the base (QLoRA: of the
                      quantized base, since B = 0). Prefix and prompt tuning are *not* a no-op at any
                      length >= 1 (the exact no-op is length 0, which their own test files check), and
                      neither is LoftQ (it starts at Q + sBA ≈ W): for these the test asserts the change.
    what trains       exactly the method's own tensors (a method file's filter, adapter_state_dict), and
                      each of them gets a gradient
    disable           with disable_adapters(model): the base again, bit for bit; afterwards the adapted model
    save / load       save_adapter, then load_adapter into a fresh base: identical outputs and generations;
                      the file holds exactly the adapter tensors and the recorded methods; the config
                      names itself (cfg.method) and rebuilds from its JSON
    remove            remove_adapters: the base modules, state-dict keys and outputs back, no hook left
    merge / unmerge   where the maths allows: merged forward = unmerged forward, merging twice is a no-op,
                      disable refuses a merged model, unmerge restores W0 (masking: bit for bit)

What is particular to a method (its equation by hand, its placement, its own files and errors) stays
in that method's test file.
"""
import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file

from minift.checkpoint import load_trainable, save_trainable
from minift.model import GPT, GPTConfig
from minift.peft.adapters import AdapterConfig
from minift.peft.common import (AdapterLayer, adapter_state_dict, apply_config, disable_adapters, method_config,
                                remove_adapters)
from minift.peft.io import load_adapter, save_adapter
from minift.peft.lora import LoRAConfig, find_targets, merge_and_unload, merge_lora, unmerge_lora
from minift.peft.masking import MaskingConfig, merge_masking, unmerge_masking
from minift.peft.prefix import PrefixConfig
from minift.peft.prompt import PromptConfig
from minift.peft.reft import ReFTConfig
from minift.peft.selective import SelectiveConfig
from minift.quant.qlora import QLoRAConfig, QLoRALinear, merge_and_unload_qlora, quantize_model
from strategies import tiny_model

pytestmark = pytest.mark.core
CFG = GPTConfig(vocab_size=24, block_size=12, n_layer=2, n_head=2, n_embd=8)
LINEARS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
FLOATS = st.sampled_from([torch.float32, torch.float64])
QKVS = st.sampled_from([None, ("q",), ("q", "v"), ("k", "v"), ("q", "k", "v")])
LAYERS = st.one_of(st.none(), st.lists(st.integers(-2, 1), min_size=1, max_size=2))


def _with_c_attn(cfg):
    """q/k/v slices need a fused c_attn among the targets."""
    if cfg.qkv is None or "attn.c_attn" in cfg.targets:
        return cfg
    return dataclasses.replace(cfg, targets=(*cfg.targets, "attn.c_attn"))


def _lora(dora):
    return st.builds(LoRAConfig, r=st.integers(1, 3), alpha=st.sampled_from([1.0, 4.0, 16.0]),
                     targets=st.lists(st.sampled_from(LINEARS), min_size=1, max_size=3, unique=True), qkv=QKVS,
                     use_rslora=st.booleans(), use_dora=st.just(dora)).map(_with_c_attn)


def _adapters(kind):
    return st.builds(AdapterConfig, kind=st.just(kind), placement=st.sampled_from(["houlsby", "pfeiffer"]),
                     bottleneck=st.integers(1, 8), activation=st.sampled_from(["relu", "gelu", "silu", "tanh"]),
                     scaling=st.sampled_from([1.0, 4.0, -0.5]), layers=LAYERS)


def _qlora(quant, loftq=False):
    return st.builds(QLoRAConfig, r=st.integers(1, 2), targets=st.lists(st.sampled_from(LINEARS), min_size=1,
                                                                           max_size=2, unique=True),
                     qkv=QKVS, quant=st.just(quant), block_size=st.sampled_from([16, 64]),
                     double_quant=st.booleans(), quantize_rest=st.booleans(),
                     loftq_iters=st.integers(1, 2) if loftq else st.just(0)).map(_with_c_attn)


@dataclass
class Method:
    configs: st.SearchStrategy          # this method's configs
    noop: Optional[str] = "base"        # what the model is at init: "base", "quantized" base, or None (a change)
    dtypes: st.SearchStrategy = FLOATS  # the quantized bases are float32 models


METHODS = {
    "lora": Method(_lora(dora=False)),
    "dora": Method(_lora(dora=True)),
    "adapters-series": Method(_adapters("series")),
    "adapters-parallel": Method(_adapters("parallel")),
    "prefix": Method(st.builds(PrefixConfig, n_prefix=st.integers(1, 5), reparam=st.booleans(),
                               embed_dim=st.sampled_from([None, 3]), hidden=st.integers(1, 6)), noop=None),
    "prompt": Method(st.builds(PromptConfig, n_tokens=st.integers(1, 4), init=st.sampled_from(["random", "vocab"]),
                               seed=st.integers(0, 100)), noop=None),
    "masking": Method(st.builds(MaskingConfig, density=st.one_of(st.sampled_from([1.0, 0.5, 0.05]), st.floats(0.01, 1.0)),
                                targets=st.sampled_from([("attn.c_attn",), tuple(LINEARS), ("mlp.c_fc",),
                                                         (r"h\.1\.attn\.c_proj",)]),
                                qkv=QKVS, seed=st.integers(0, 1000)).map(_with_c_attn)),
    "reft": Method(st.one_of(st.builds(ReFTConfig, r=st.integers(1, 8), layers=LAYERS, first=st.integers(0, 3),
                                       last=st.integers(1, 3), positions=st.sampled_from(["prompt", "all"])),
                             st.builds(ReFTConfig, r=st.integers(1, 8), layers=LAYERS, first=st.integers(1, 3),
                                       last=st.integers(1, 3), tied=st.just(False)))),      # first, last: one each
    "qlora-nf4": Method(_qlora("nf4"), noop="quantized", dtypes=st.just(torch.float32)),
    "qlora-int8": Method(_qlora("int8"), noop="quantized", dtypes=st.just(torch.float32)),
    "loftq": Method(_qlora("nf4", loftq=True), noop=None, dtypes=st.just(torch.float32)),
}
SELECTIVE = st.one_of(st.just(SelectiveConfig(patterns=["."])),                       # full fine-tuning
                      st.just(SelectiveConfig(param_types=["bias"])),                 # BitFit
                      st.builds(SelectiveConfig, layers=st.lists(st.integers(-2, 1), min_size=1, max_size=2),
                                components=st.sampled_from([None, ["attention"], ["mlp", "layernorm"]])))


# The `device` fixture (tests/conftest.py: cpu, and cuda where there is one) is taken where it is cheap:
# the model's life, save/load and merging run on every device. `device` is the same for every example
# hypothesis draws, so its function scope is harmless.
ON_EVERY_DEVICE = dict(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _idx(seed=0, B=2, T=6, device="cpu"):
    g = torch.Generator().manual_seed(seed)                              # drawn on the CPU: the same ids everywhere
    return torch.randint(0, CFG.vocab_size, (B, T), generator=g, device="cpu").to(device)


def _base(dtype=torch.float32, device="cpu"):
    return tiny_model(CFG, dtype=dtype).to(device)


def _reference(cfg, base):
    """The model the adapted one must equal with its adapters off: the base, or (QLoRA) a copy of it
    quantized the same way. None for LoftQ, whose quantized weight depends on its LoRA init."""
    if not isinstance(cfg, QLoRAConfig):
        return base
    if cfg.loftq_iters:
        return None
    q = copy.deepcopy(base)
    quantize_model(q, cfg, None if cfg.quantize_rest else find_targets(q, cfg.lora))
    return q


@torch.no_grad()
def _perturb(model, seed=1):
    """Move every trainable tensor (B = 0, zero mask values, W = R ... all become something else)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64, device="cpu").to(p))


def _adapted(method, data, dtype=None, device="cpu"):
    cfg = data.draw(METHODS[method].configs, label="cfg")
    dtype = dtype or data.draw(METHODS[method].dtypes, label="dtype")
    model = _base(dtype, device)
    assert apply_config(model, cfg) is model
    return cfg, dtype, model


def _hooks(model):
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


# ---- one life: apply, what trains, perturb, disable, remove --------------------------------------

QUANTIZED = ["loftq", "qlora-int8", "qlora-nf4"]                        # slower: fewer examples
FLOAT = sorted(set(METHODS) - set(QUANTIZED))


def _life(methods, examples: int):
    """The test of one method's whole life on a base model; quantized bases are slower, so they
    draw fewer examples."""
    @pytest.mark.parametrize("method", methods)
    @settings(deadline=None, max_examples=examples, **ON_EVERY_DEVICE)
    @given(data=st.data())
    def test_life(method, data, device):
        cfg, dtype, model = _adapted(method, data, device=device)
        base_model = _base(dtype, device)
        ref = _reference(cfg, base_model)
        names = model.peft_methods[0]["modules"]
        x = _idx(device=device)

        # no-op at init: the base (QLoRA: the quantized base), unless the method says why not
        y, base = model(x).logits, base_model(x).logits
        if METHODS[method].noop == "base":
            assert torch.equal(y, base)
        elif METHODS[method].noop == "quantized":
            assert torch.equal(y, ref(x).logits)
            assert not torch.equal(y, base)                                  # quantization error is there from step 0
        else:                                                                # prefix, prompt, LoftQ: a real change
            assert not torch.allclose(y, base, atol=1e-6, rtol=0)

        # exactly the method's own tensors train, and each gets a gradient
        own = {n for n, p in adapter_state_dict(model).items() if p.is_floating_point()}
        assert own and {n for n, p in model.named_parameters() if p.requires_grad} == own
        model(x, targets=_idx(seed=1, device=device)).loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == (n in own) or p.numel() == 0, n   # (a mask the draw left empty)

        # disable_adapters: the base back, bit for bit (LoftQ: its own quantized base, what remove leaves)
        _perturb(model)
        adapted = model(x).logits
        with disable_adapters(model):
            off = model(x).logits
        assert not torch.allclose(adapted, off)
        if ref is not None:
            assert torch.equal(off, ref(x).logits)
        assert torch.equal(model(x).logits, adapted)                         # switched back on

        # remove_adapters: the base modules, keys and outputs, no adapter, record or hook left
        assert sorted(remove_adapters(model)) == sorted(names)
        assert torch.equal(model(x).logits, off)
        assert not any(isinstance(m, AdapterLayer) for m in model.modules()) and not model.peft_methods
        assert not _hooks(model)
        if ref is not None:
            assert set(model.state_dict()) == set(ref.state_dict())
            assert [type(m) for m in model.modules()] == [type(m) for m in ref.modules()]

    return test_life


test_no_op_at_init_own_tensors_train_disable_and_remove_give_the_base_back = _life(FLOAT, 5)
test_the_same_on_a_quantized_base = _life(QUANTIZED, 2)


# ---- files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
@settings(deadline=None, max_examples=2, **ON_EVERY_DEVICE)
@given(data=st.data())
def test_save_load_into_a_fresh_base_gives_identical_outputs(method, data, tmp_path_factory, device):
    cfg, dtype, model = _adapted(method, data, dtype=torch.float32, device=device)
    assert method_config(cfg.method) is type(cfg)
    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    _perturb(model)
    x, prompt = _idx(device=device), _idx(T=3, device=device)
    y, gen = model(x).logits, model.generate(prompt, 4)
    folder = str(tmp_path_factory.mktemp(method))
    save_adapter(model, folder)
    stored = load_file(os.path.join(folder, "adapter.safetensors"))
    assert set(stored) == set(adapter_state_dict(model))                 # the adapters, nothing else
    assert all(torch.equal(stored[k], v.detach().cpu()) for k, v in adapter_state_dict(model).items())
    meta = json.loads(open(os.path.join(folder, "adapter.json")).read())
    assert meta["methods"] == model.peft_methods and meta["methods"][0]["method"] == cfg.method
    assert meta["base_model"]["fingerprint"] == CFG.fingerprint()
    fresh = _base(device=device)
    assert load_adapter(fresh, folder) == model.peft_methods[0]["modules"]
    assert all(p.device.type == device.type for p in fresh.parameters())   # loaded onto the model's device
    assert torch.equal(fresh(x).logits, y)
    assert torch.equal(fresh.generate(prompt, 4), gen)


@settings(deadline=None, max_examples=2)
@given(cfg=SELECTIVE, dtype=FLOATS)
def test_selective_changes_nothing_at_init_and_its_trainable_file_round_trips(cfg, dtype, tmp_path_factory):
    model, base = _base(dtype), _base(dtype)
    chosen = apply_config(model, cfg).named_parameters()
    trainable = {n for n, p in chosen if p.requires_grad}
    assert trainable and torch.equal(model(_idx()).logits, base(_idx()).logits)
    _perturb(model)
    path = os.path.join(str(tmp_path_factory.mktemp("sel")), "trainable.safetensors")
    save_trainable(model, path)
    fresh = apply_config(_base(dtype), cfg)
    load_trainable(fresh, path)
    assert torch.equal(fresh(_idx()).logits, model(_idx()).logits)
    for n, p in fresh.named_parameters():                                # frozen: the base's, bit for bit
        assert n in trainable or torch.equal(p, dict(base.named_parameters())[n])


# ---- merging -------------------------------------------------------------------------

MERGES = {"lora": (merge_lora, unmerge_lora), "dora": (merge_lora, unmerge_lora),
          "masking": (merge_masking, unmerge_masking)}


@pytest.mark.parametrize("method", sorted(MERGES))
@settings(deadline=None, max_examples=2, **ON_EVERY_DEVICE)
@given(data=st.data())
def test_merge_equals_the_unmerged_forward_and_unmerge_restores_w0(method, data, device):
    merge, unmerge = MERGES[method]
    cfg, dtype, model = _adapted(method, data, dtype=torch.float64, device=device)
    W0 = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    _perturb(model)
    x = _idx(device=device)
    y = model(x).logits
    merge(model)
    merge(model)                                                         # twice: a no-op
    torch.testing.assert_close(model(x).logits, y, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="merged"):
        with disable_adapters(model):
            pass
    unmerge(model)
    for n, p in model.named_parameters():
        if n in W0:
            if method == "masking":                                      # the k original entries put back
                assert torch.equal(p, W0[n]), n
            else:                                                        # W0 up to one rounding
                torch.testing.assert_close(p, W0[n], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x).logits, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora-nf4", "loftq"])   # (an int8 base quantizes x too)
@settings(deadline=None, max_examples=2)
@given(data=st.data())
def test_merge_and_unload_leaves_plain_layers_computing_the_adapted_function(method, data):
    # float64 for every method, the quantized bases too (their NF4 layers compute in the model's dtype):
    # the merge is then exact up to float64 rounding; in float32 the rounding of 4 blocks reached 3e-5
    cfg, dtype, model = _adapted(method, data, dtype=torch.float64)
    _perturb(model)
    y = model(_idx()).logits
    if isinstance(cfg, QLoRAConfig):
        with pytest.raises(ValueError, match="lossy"):
            next(m for m in model.modules() if isinstance(m, QLoRALinear)).merge()
        merge_and_unload_qlora(model)
    else:
        merge_and_unload(model)
        assert set(model.state_dict()) == set(GPT(CFG).state_dict())    # a plain GPT again
    assert not any(isinstance(m, AdapterLayer) for m in model.modules()) and not model.peft_methods
    torch.testing.assert_close(model(_idx()).logits, y, rtol=1e-10, atol=1e-10)


def test_apply_config_takes_any_method_config_and_refuses_anything_else():
    model = GPT(CFG)
    assert apply_config(model, None) is model and not getattr(model, "peft_methods", None)
    s = apply_config(GPT(CFG), SelectiveConfig(components=["layernorm"]))
    assert {n for n, p in s.named_parameters() if p.requires_grad} == {n for n, _ in s.named_parameters() if ".ln_" in n}
    with pytest.raises(TypeError, match="dict is not a method config"):
        apply_config(GPT(CFG), {"r": 2})
