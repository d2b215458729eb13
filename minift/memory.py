"""Memory accounting for one training step, from shapes alone, so that it works for a model of any
size, and the same code measures a real step on configs that fit here.

    total = weights + gradients + optimizer state + activations

weights      every parameter and buffer at its stored size; a quantized linear layer counts its
             packed codes and constants (NF4: 4 bits + 8 / 64 + 32 / (64 · 256) with double
             quantization; int8: 8 bits + one fp32 scale per row);
gradients    one per trainable parameter, at its dtype;
optimizer    AdamW: two fp32 moments per trainable parameter (`optimizer_states`);
activations  what autograd keeps for backward after the forward and the loss: every tensor
             passed to a `saved_tensors_hooks` pack hook, deduplicated by storage, parameters and
             buffers excluded (they are already counted). This is measured, not modelled.

On the meta device tensors have shapes and no data, so a GPT-3-175B-shaped model can be built and
run forward in seconds without allocating. Two things differ there, and are handled here:
  * PyTorch has no fused attention kernel on meta and falls back to the math path, which would
    save the (T, S) attention weights. `step_memory` swaps in a stand-in that saves what the fused
    CPU/GPU kernels save (q, k, v, the output and one log-sum-exp per row);
  * a quantized layer cannot be quantized without data: `estimate(method="qlora")` builds LoRA on
    the meta model and counts every frozen linear weight at its quantized storage
    (`quantized_bytes`); tests check that rule against real NF4 / int8 states.
Not counted: the transient copy of one dequantized layer (QLoRA rebuilds each weight when it is
used), allocator fragmentation, and the framework's own workspace.

Gradient checkpointing keeps only each block's input (B, T, C) and recomputes the rest in
backward; `estimate(..., checkpointing=True)` counts n_layer block inputs plus one block's
activations and the head's (measured on a one-block copy of the config).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Optional, Sequence
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import model as model_module
from .model import GPT, GPTConfig, at_least_fp32

PRESETS = {   # GPT-2-architecture shapes of well-known models (LLaMA's SwiGLU MLP has 3 matrices of
              # 8/3 d, GPT-2's 2 of 4 d: the same parameter count to within 1%)
    "gpt2-small": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-xl": GPTConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
    "llama-7b": GPTConfig(vocab_size=32000, block_size=2048, n_layer=32, n_head=32, n_embd=4096, bias=False),
    "llama-65b": GPTConfig(vocab_size=32000, block_size=2048, n_layer=80, n_head=64, n_embd=8192, bias=False),
    "gpt3-175b": GPTConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288),
}
GiB = 2 ** 30


def quantized_bytes(out_features: int, in_features: int, quant: str, block_size: int = 64,
                    double_quant: bool = True, dq_block_size: int = 256) -> int:
    """Bytes a frozen (out, in) weight takes when quantized (the storage of minift.quant)."""
    n = out_features * in_features
    if quant == "int8":
        return n + 4 * out_features                                    # codes + one fp32 scale per row
    bits = {"nf4": 4, "nf3": 3, "nf2": 2}.get(quant)
    if bits is None:
        raise ValueError(f"quant={quant!r} must be 'nf4', 'nf3', 'nf2' or 'int8'")
    blocks = n // block_size
    consts = blocks + 4 * math.ceil(blocks / dq_block_size) + 4 if double_quant else 4 * blocks
    return -(-n * bits // 8) + consts                                  # the packed codes + absmax


class _FusedAttentionSaves(torch.autograd.Function):
    """Shape stand-in for fused attention on the meta device: saves q, k, v, out, logsumexp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)                                      # (B, H, T, D)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1]))  # + lse (B, H, T)
        return out

    @staticmethod
    def backward(ctx, g):                                              # never called on meta
        raise RuntimeError("shape stand-in only")


@contextmanager
def _fused_attention_on_meta(device: torch.device):
    if device.type != "meta":
        yield
        return
    with mock.patch.object(model_module, "causal_attention", lambda q, k, v, mask=None, dropout_p=0.0:
                           _FusedAttentionSaves.apply(q, k, v)):
        yield


def _unique(tensors) -> dict:
    out = {}
    for t in tensors:
        out[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    return out


def activation_bytes(model: nn.Module, batch: int, seq: int) -> int:
    """Bytes autograd saves for backward in one forward + next-token loss of a (batch, seq) input."""
    if not isinstance(model, GPT):
        raise TypeError(f"activation_bytes measures a GPT language model, got {type(model).__name__}")
    p, gpt, V = next(model.parameters()), model, model.config.vocab_size
    own = _unique(list(model.parameters()) + list(model.buffers()))
    saved: dict = {}

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in own:
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        return t

    idx = torch.zeros(batch, seq, dtype=torch.long, device=p.device)      # (B, T), on the model's device
    with _fused_attention_on_meta(p.device), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        # token ids go in through inputs_embeds so the meta device never reads their values
        x = gpt.transformer.wte(idx)                                       # (B, T, C)
        logits = model(inputs_embeds=x).logits                             # (B, T, V)
        F.cross_entropy(at_least_fp32(logits.reshape(-1, V)), idx.reshape(-1))   # as GPT.forward's loss
    return sum(saved.values())


class SavedForBackward:
    """Peak bytes autograd holds for backward over a whole run of real training steps: the rule of
    `activation_bytes` (every tensor the pack hook sees, deduplicated by storage, the given models'
    parameters and buffers excluded), summed between two backward() calls and the largest such sum kept.

        with SavedForBackward(policy, ref) as meter:      # any number of models
            train_ppo(...)                                # every backward() inside is measured
        meter.peak                                        # bytes, an int

    It patches torch.autograd.backward (which Tensor.backward calls) for the block's duration, so it
    measures loops it cannot see into (the PPO and DPO trainers)."""

    def __init__(self, *models: nn.Module):
        if not all(isinstance(m, nn.Module) for m in models):
            raise TypeError(f"SavedForBackward takes nn.Module models, got {[type(m).__name__ for m in models]}")
        self.own = set(_unique(p for m in models for p in list(m.parameters()) + list(m.buffers())))
        self.live: dict = {}
        self.peak = 0

    def _pack(self, t):
        key = t.untyped_storage()._cdata
        if key not in self.own:
            self.live[key] = t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        real = torch.autograd.backward

        def backward(*a, **k):                      # the bytes saved since the last backward: one step's
            self.peak = max(self.peak, sum(self.live.values()))
            self.live.clear()
            return real(*a, **k)
        self._patch = mock.patch.object(torch.autograd, "backward", backward)
        self._patch.start()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self._patch.stop()
        return False


def step_memory(model: nn.Module, batch: int, seq: int, optimizer_states: int = 2,
                quantized: Optional[dict] = None) -> dict:
    """The four parts of a training step's memory, in bytes, for `model` as it is (any device).
    quantized: {id(weight): bytes} for frozen weights to count at a quantized size instead."""
    quantized = quantized or {}
    params = {id(p): p for p in model.parameters()}                        # unique (tied once)
    weights = sum(quantized.get(i, p.numel() * p.element_size()) for i, p in params.items())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    train = [p for p in params.values() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in train)
    optim = optimizer_states * 4 * sum(p.numel() for p in train)
    acts = activation_bytes(model, batch, seq)
    return {"weights": weights, "gradients": grads, "optimizer": optim, "activations": acts,
            "total": weights + grads + optim + acts, "trainable": sum(p.numel() for p in train),
            "parameters": sum(p.numel() for p in params.values())}


def _build(cfg: GPTConfig, method: str, dtype: torch.dtype, r: int, targets: Sequence[str], qkv) -> nn.Module:
    from .peft.lora import LoRAConfig, apply_lora                       # (memory sits above peft)
    with torch.device("meta"):
        m = GPT(replace(cfg, dropout=0.0)).to(dtype)
    if method == "full":
        return m
    apply_lora(m, LoRAConfig(r=r, targets=tuple(targets), qkv=qkv, include_head=False))   # A, B in `dtype`
    return m


def estimate(cfg: GPTConfig, method: str = "full", *, batch: int = 1, seq: Optional[int] = None,
             dtype: torch.dtype = torch.bfloat16, r: int = 8, targets: Sequence[str] = ("attn.c_attn",),
             qkv=("q", "v"), quant: str = "nf4", double_quant: bool = True, checkpointing: bool = False,
             optimizer_states: int = 2) -> dict:
    """Predicted training-step memory of a `cfg`-shaped model, from the meta device (no allocation).
    method: "full", "lora" or "qlora" (frozen linear weights counted at `quant`'s storage)."""
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method={method!r} must be 'full', 'lora' or 'qlora'")
    seq = cfg.block_size if seq is None else seq
    if not 1 <= seq <= cfg.block_size or batch < 1:
        raise ValueError(f"batch={batch} must be >= 1 and seq={seq} in [1, block_size={cfg.block_size}]")
    m = _build(cfg, method, dtype, r, targets, qkv)
    quantized = {}
    if method == "qlora":                                                  # every frozen linear weight
        from .peft.lora import LoRALinear
        for mod in m.modules():
            if isinstance(mod, (nn.Linear, LoRALinear)) and mod is not m.lm_head:   # (lm_head is wte)
                quantized[id(mod.weight)] = quantized_bytes(*mod.weight.shape, quant, double_quant=double_quant)
    out = step_memory(m, batch, seq, optimizer_states, quantized)
    if checkpointing:
        one = _build(replace(cfg, n_layer=1), method, dtype, r, targets, qkv)
        block_in = batch * seq * cfg.n_embd * torch.finfo(dtype).bits // 8
        out["activations"] = cfg.n_layer * block_in + activation_bytes(one, batch, seq)
        out["total"] = sum(out[k] for k in ("weights", "gradients", "optimizer", "activations"))
    return {**out, "method": method, "batch": batch, "seq": seq, "dtype": str(dtype).replace("torch.", ""),
            "checkpointing": checkpointing}
