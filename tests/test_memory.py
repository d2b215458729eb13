"""minift.memory: the meta-device estimate equals what a real step holds, on configs that fit here."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.memory import activation_bytes, estimate, quantized_bytes, step_memory
from minift.model import GPT, GPTConfig
from minift.peft.lora import LoRAConfig, apply_lora
from minift.quant.int8 import Int8Linear
from minift.quant.ops import NF4Linear
from minift.quant.qlora import QLoRAConfig, apply_qlora

pytestmark = pytest.mark.lesson12

PARTS = ("weights", "gradients", "optimizer", "activations", "trainable", "parameters")


@st.composite
def configs(draw):
    H = draw(st.integers(1, 3))
    return GPTConfig(vocab_size=draw(st.integers(16, 80)), block_size=32, n_layer=draw(st.integers(1, 2)),
                     n_head=H, n_embd=H * draw(st.sampled_from([8, 16, 22])), bias=draw(st.booleans()))


@settings(max_examples=8)
@given(cfg=configs(), method=st.sampled_from(["full", "lora", "qlora-nf4", "qlora-int8"]),
       batch=st.integers(1, 3), seq=st.integers(1, 16))
def test_the_meta_estimate_equals_the_real_step(cfg, method, batch, seq):
    torch.manual_seed(0)
    m = GPT(cfg).train()
    kind, _, quant = method.partition("-")
    if kind == "lora":
        apply_lora(m, LoRAConfig(r=2, include_head=False))
    if kind == "qlora":
        if (cfg.n_embd * cfg.n_embd) % 64:                                    # NF4 blocks must divide
            quant = "int8"
        apply_qlora(m, QLoRAConfig(r=2, quant=quant, include_head=False))
    real = step_memory(m, batch, seq)
    est = estimate(cfg, kind, batch=batch, seq=seq, dtype=torch.float32, r=2, quant=quant or "nf4")
    parts = [k for k in PARTS if not (kind == "qlora" and k == "parameters")]   # real: weights are buffers
    assert {k: est[k] for k in parts} == {k: real[k] for k in parts}


@given(out_f=st.integers(1, 8), in_f=st.sampled_from([64, 128, 192]), dq=st.booleans())
def test_quantized_bytes_is_what_the_quantized_layers_store(out_f, in_f, dq):
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    nf4 = NF4Linear(lin, double_quant=dq)
    assert quantized_bytes(out_f, in_f, "nf4", double_quant=dq) == sum(b.numel() * b.element_size()
                                                                          for b in nf4.buffers())
    for code in ("nf3", "nf2"):
        low = NF4Linear(lin, double_quant=dq, code=code)
        assert quantized_bytes(out_f, in_f, code, double_quant=dq) == sum(b.numel() * b.element_size()
                                                                             for b in low.buffers())
    i8 = Int8Linear(lin)
    assert quantized_bytes(out_f, in_f, "int8") == sum(b.numel() * b.element_size() for b in i8.buffers())


def test_activations_are_what_autograd_saves_and_scale_with_the_batch():
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
    m = GPT(cfg).train()
    a1, a2 = activation_bytes(m, 1, 16), activation_bytes(m, 2, 16)
    assert a1 > 0 and abs(a2 - 2 * a1) < 0.01 * a1                          # per example (+ a few scalars)
    frozen = GPT(cfg).train().requires_grad_(False)
    assert activation_bytes(frozen, 1, 16) == 0                              # nothing to differentiate


def test_checkpointing_keeps_one_block_input_per_layer():
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
    deeper = GPTConfig(vocab_size=64, block_size=32, n_layer=3, n_head=2, n_embd=32)
    plain = estimate(cfg, "full", batch=2, seq=16, dtype=torch.float32)
    ck, ck3 = (estimate(c, "full", batch=2, seq=16, dtype=torch.float32, checkpointing=True) for c in (cfg, deeper))
    assert ck["activations"] < plain["activations"]
    assert ck3["activations"] - ck["activations"] == 2 * 16 * 32 * 4         # one more (B, T, C) fp32 input


def test_bad_arguments():
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match="method='prefix' must be"):
        estimate(cfg, "prefix")
    with pytest.raises(ValueError, match=r"seq=64 in \[1, block_size=32\]"):
        estimate(cfg, batch=1, seq=64)
    with pytest.raises(ValueError, match="quant='fp8' must be"):
        quantized_bytes(4, 64, "fp8")


def test_bench_quant_orders_the_methods_by_memory(capsys):
    from minift.bench import bench_quant
    out = bench_quant(fast=True)
    totals = {m: r["total"] for m, r in out["memory"]}
    assert totals["full"] > totals["LoRA"] > totals["QLoRA-int8"] > totals["QLoRA-NF4"]
    printed = capsys.readouterr().out
    assert "vs copy" in printed and "QLoRA-NF4" in printed and "(predicted from the meta device)" in printed


def test_saved_for_backward_keeps_the_largest_step_and_skips_the_models_own_tensors():
    """A Linear saves its input for dW = gᵀ x: 4 bytes x B x in per step; the weight is the model's own."""
    from minift.memory import SavedForBackward
    lin = torch.nn.Linear(8, 4)
    with SavedForBackward(lin) as meter:
        for batch in (5, 11, 3):                                   # the 11-row step is the peak
            lin(torch.randn(batch, 8)).sum().backward()
    assert meter.peak == 4 * 11 * 8
    with SavedForBackward() as meter:             # no model given: the weight, saved for dx = g W, counts too
        lin(torch.randn(5, 8, requires_grad=True)).sum().backward()
    assert meter.peak == 4 * 5 * 8 + 4 * 4 * 8
    assert torch.autograd.backward.__module__ == "torch.autograd"   # the patch is gone after the block
    with pytest.raises(TypeError, match="nn.Module"):
        SavedForBackward(lin.weight)
