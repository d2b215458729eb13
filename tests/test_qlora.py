"""QLoRA and LoftQ (minift/quant/qlora.py): a quantized frozen base plus float LoRA. (No-op at init over
the quantized base, disable, files, removal: tests/test_method_contract.py.)"""

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.model import GPT, GPTConfig
from minift.quant.int8 import Int8Linear
from minift.quant.ops import NF4Linear
from minift.quant.qlora import (QLoRAConfig, QLoRALinear, apply_qlora, loftq, merge_to_float, merge_to_quantized,
                                quantize_model, quantized_layers)

pytestmark = pytest.mark.lesson12

CFG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64)


def _base(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).eval()


IDX = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))


def test_no_float_copy_of_a_quantized_weight_is_kept():
    m = _base()
    apply_qlora(m, QLoRAConfig(r=4))
    for n, mod in m.named_modules():
        if isinstance(mod, (QLoRALinear, NF4Linear)):
            big = [t.shape for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
                   if t.is_floating_point() and t.dim() == 2 and t.shape[0] * t.shape[1] >= 64 * 64]
            assert not big, (n, big)
    assert len(quantized_layers(m)) == 4 * CFG.n_layer                        # every linear of every block


@pytest.mark.parametrize("quant", ["nf4", "nf2", "int8"])
def test_only_lora_trains_and_gradients_cross_the_quantized_layers(quant):
    m = _base()
    names = apply_qlora(m, QLoRAConfig(r=4, quant=quant, qkv=None))
    frozen = {n: t.clone() for n, t in m.state_dict().items() if "lora_" not in n}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = m(IDX, targets=IDX)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{x}" for n in names for x in "AB"}
    first = m.get_submodule(names[0])                                        # block 0: its grads came through
    assert first.lora_B.abs().sum() > 0                                      # the quantized block 1
    assert all(torch.equal(t, m.state_dict()[n]) for n, t in frozen.items())


def test_merge_to_float_is_exact_and_merge_to_quantized_is_not():
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    cfg = QLoRAConfig(r=4, qkv=None)
    layer = QLoRALinear(lin, cfg)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.02)
    x = torch.randn(5, 64)
    y = layer(x)
    assert torch.allclose(merge_to_float(layer)(x), y, atol=1e-5)
    drift = (merge_to_quantized(layer, cfg)(x) - y).abs().max()
    assert drift > 1e-4                                                      # re-quantizing moves the output
    with pytest.raises(ValueError, match="merging into a quantized weight is lossy"):
        layer.merge()


mats = st.tuples(st.integers(4, 12), st.sampled_from([8, 16])).flatmap(
    lambda s: hnp.arrays(np.float32, s, elements=st.floats(-1, 1, width=32)))


@given(W=mats, r=st.integers(1, 3), iters=st.integers(1, 4), quant=st.sampled_from(["nf4", "nf3", "nf2", "int8"]))
def test_loftq_never_increases_the_error_over_plain_quantization(W, r, iters, quant):
    cfg = QLoRAConfig(r=r, quant=quant, block_size=8, qkv=None)
    Wt = torch.from_numpy(W)
    out = loftq(Wt, r, cfg.scaling, cfg.quantize_fn(), iters)
    plain = torch.linalg.matrix_norm(Wt.double() - cfg.quantize_fn()(Wt).double())
    Q = cfg.quantize_fn()(out["target"]).double()                            # the same quantizer
    err = torch.linalg.matrix_norm(Wt.double() - (Q + cfg.scaling * out["B"].double() @ out["A"].double()))
    assert float(err) <= float(plain) * (1 + 1e-5) + 1e-6
    assert abs(float(err) - out["errors"][out["best"]]) <= 1e-4 * (1 + float(err))   # reported = recomputed
    assert out["A"].shape == (r, W.shape[1]) and out["B"].shape == (W.shape[0], r)


def test_loftq_layer_starts_closer_to_the_float_weight_and_slices_leave_k_alone():
    torch.manual_seed(0)
    lin = nn.Linear(64, 192)                                                 # a fused (3C, C) c_attn shape
    plain = QLoRALinear(lin, QLoRAConfig(r=8), slices=[(0, 64), (128, 192)])
    lq = QLoRALinear(lin, QLoRAConfig(r=8, loftq_iters=3), slices=[(0, 64), (128, 192)])
    W = lin.weight.detach()
    with torch.no_grad():
        e_plain = torch.linalg.matrix_norm(W - plain.dequantized_weight() - plain.delta_weight())
        e_loftq = torch.linalg.matrix_norm(W - lq.dequantized_weight() - lq.delta_weight())
    assert e_loftq < e_plain
    assert torch.equal(lq.delta_weight()[64:128], torch.zeros(64, 64))      # the k rows get no update
    assert lq.loftq_errors[0] == pytest.approx(float(e_plain), rel=1e-5)    # t = 0 is plain quantization


def test_bad_configs_and_double_application_are_refused():
    with pytest.raises(ValueError, match="quant='fp8' must be one of"):
        QLoRAConfig(quant="fp8")
    with pytest.raises(ValueError, match="loftq_iters=-1 must be an integer >= 0"):
        QLoRAConfig(loftq_iters=-1)
    with pytest.raises(ValueError, match=r"QLoRAConfig\.r=0 must be an integer >= 1"):
        QLoRAConfig(r=0)
    m = _base()
    apply_qlora(m, QLoRAConfig(r=2))
    with pytest.raises(ValueError, match="already has quantized or LoRA layers"):
        apply_qlora(m, QLoRAConfig(r=2))
    with pytest.raises(ValueError, match="loftq: iters=0"):
        loftq(torch.randn(8, 8), 2, 1.0, lambda w: w, 0)
    q = _base()
    assert len(quantize_model(q, QLoRAConfig(quant="int8"))) == 4 * CFG.n_layer
    assert all(isinstance(q.get_submodule(n), Int8Linear) for n in quantized_layers(q))
    with pytest.raises(ValueError, match="no nn.Linear left to quantize"):
        quantize_model(q)


def test_loading_a_quantized_state_with_other_shapes_or_layout_is_refused():
    from minift.checkpoint import load_state_dict_strict
    small, wide = _base(), GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=128))
    quantize_model(small)
    quantize_model(wide)
    with pytest.raises(ValueError, match=r"mis-shaped keys .*absmax_q: file \(\d+,\) vs model"):
        load_state_dict_strict(wide, small.state_dict(), source="small.safetensors")
    no_dq = _base()
    quantize_model(no_dq, QLoRAConfig(double_quant=False))                    # stores absmax, not absmax_q
    with pytest.raises(ValueError, match="absmax"):
        load_state_dict_strict(no_dq, small.state_dict(), source="dq.safetensors")


def test_an_nf4_base_computes_in_the_model_dtype():
    """QLoRA stores the base in 4 bits and computes in the model's dtype (bf16 on a GPU): a bf16 model's
    NF4 layers take and return bf16, so no float32 activation appears between them."""
    m = _base().to(torch.bfloat16)
    apply_qlora(m, QLoRAConfig(r=2, quant="nf4", block_size=64))
    layers = [mod for mod in m.modules() if isinstance(mod, NF4Linear)]
    assert layers and all(mod.compute_dtype == torch.bfloat16 for mod in layers)
    x = torch.randn(2, 3, CFG.n_embd, dtype=torch.bfloat16)
    assert layers[0](x).dtype == torch.bfloat16
    assert m(torch.randint(0, CFG.vocab_size, (2, 5))).logits.dtype == torch.bfloat16
