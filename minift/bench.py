"""Benchmarks behind `minift bench NAME`. Each prints a table and ratios against a baseline
measured in the same run, on the same machine: absolute numbers differ between machines, ratios
travel better.

    minift bench train     training-step tokens/s: the base config vs a GPT-2-small-shaped one
    minift bench quant     quantize/dequantize throughput vs a float copy; training-step memory of
                           full fine-tuning, LoRA, QLoRA-int8, QLoRA-NF4 (measured and predicted)
    minift bench kernels   the fused quantized-LoRA matmul (cuda_ext) vs float32 dense and vs
                           dequantize-then-matmul, batch 1/8/128, and its bandwidth vs the copy bandwidth
    minift bench kernels --device cuda
                           the same on a GPU against fp32/bf16/fp16 cuBLAS, LLM-sized shapes, batches
                           1-128, and the kernel's targets judged (minift/bench_gpu.py)

`run` is what the command calls: every benchmark runs on the CPU (the default); `--device cuda` is
for `kernels` only, and refuses with one line and exit status 2 where torch sees no GPU.
"""
from __future__ import annotations

import math
import sys
import time

import torch

from .model import GPT, GPTConfig
from .train import TrainConfig, make_optimizer

BASE = GPTConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=128)
GPT2_SMALL = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def _train_step_rate(cfg: GPTConfig, batch: int, seq: int, steps: int, warmup: int) -> dict:
    """Tokens/s of full training steps (forward, backward, clip, AdamW step) at (batch, seq)."""
    torch.manual_seed(0)
    model = GPT(cfg).train()
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device="cpu")
    idx, tgt = x[:, :-1], x[:, 1:]

    def step():
        loss = model(idx, tgt).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"params": model.num_parameters(), "tokens_per_s": batch * seq * steps / dt,
            "ms_per_step": 1000 * dt / steps}


def bench_train(fast: bool = False) -> list[dict]:
    runs = [("base (TinyWorld)", BASE, 16, 128, 3 if fast else 20),
            ("gpt2-small shape", GPT2_SMALL, 1, 128, 1 if fast else 3)]
    rows = []
    for name, cfg, b, t, steps in runs:
        r = _train_step_rate(cfg, b, t, steps, warmup=1)
        rows.append({"config": name, "batch x seq": f"{b} x {t}", **r})
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / base
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"{'config':<18} {'params':>12} {'batch x seq':>12} {'ms/step':>10} {'tokens/s':>11} {'vs base':>8}")
    for r in rows:
        print(f"{r['config']:<18} {r['params']:>12,} {r['batch x seq']:>12} {r['ms_per_step']:>10.1f} "
              f"{r['tokens_per_s']:>11,.0f} {r['ratio']:>7.3f}x")
    return rows


BENCHES = {"train": bench_train}


def _refuse(message: str):
    """One line on stderr and exit status 2, as argparse does for a bad argument."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def run(name: str, fast: bool = False, device: str = "cpu") -> int:
    """`minift bench NAME [--fast] [--device D]`: 0 once the table is printed; SystemExit(2) with one
    line on stderr when it cannot run (an unknown name, a device that is not cpu/cuda[:N], no GPU)."""
    if name not in BENCHES:
        _refuse(f"minift bench: unknown benchmark {name!r}; choose from {sorted(BENCHES)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        _refuse(f"minift bench: --device {device!r} is not a device here; use cpu, cuda or cuda:N")
    if dev.type == "cpu":
        BENCHES[name](fast=fast)
        return 0
    if name != "kernels":
        _refuse(f"minift bench {name}: --device {device} is for `minift bench kernels` only; {name} runs on the CPU")
    if not torch.cuda.is_available():
        _refuse(f"minift bench kernels: --device {device}: torch.cuda.is_available() is False (torch "
                f"{torch.__version__}, {'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU build'}); "
                f"run it on a machine with a GPU and a CUDA build of torch")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        _refuse(f"minift bench kernels: --device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    from .bench_gpu import bench_kernels_cuda
    bench_kernels_cuda(fast=fast, device=dev)
    return 0


# ---- minift bench quant ------------------------------------------------------------------------

def _best_ms(fn, repeat: int) -> float:
    """Best-of-`repeat` wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def _rate(fn, n_bytes: int, repeat: int) -> float:
    """Best-of-`repeat` throughput of fn() in MB/s of float32 weight processed."""
    return n_bytes / (_best_ms(fn, repeat) / 1000) / 1e6


def bench_quant(fast: bool = False) -> dict:
    """Quantize/dequantize throughput (vs a plain float32 copy of the same weight), then the memory of
    one training step of the base-shaped model for full fine-tuning, LoRA, QLoRA-int8 and QLoRA-NF4:
    measured on a real model (minift.memory.step_memory) and predicted from the meta device."""
    from .quant.int8 import quantize_absmax
    from .quant.nf4 import dequantize_nf4, quantize_nf4

    torch.manual_seed(0)
    side = 512 if fast else 2048
    w = torch.randn(side, side, device="cpu") * 0.02
    nb, rep = w.numel() * 4, 2 if fast else 5
    st4, st8 = quantize_nf4(w, double_quant=True), quantize_absmax(w, "row")
    ops = [("float32 copy (baseline)", lambda: w.clone()),
           ("NF4 quantize (+ double quant)", lambda: quantize_nf4(w, double_quant=True)),
           ("NF4 dequantize", lambda: dequantize_nf4(st4)),
           ("int8 quantize (per row)", lambda: quantize_absmax(w, "row")),
           ("int8 dequantize", lambda: st8.dequantize())]
    rates = [(name, _rate(fn, nb, rep)) for name, fn in ops]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; weight {side} x {side} fp32")
    print(f"{'operation':<32} {'MB/s':>10} {'vs copy':>8}")
    for name, r in rates:
        print(f"{name:<32} {r:>10,.0f} {r / rates[0][1]:>7.3f}x")

    B, T = (4, 64) if fast else (16, 128)
    rows = memory_by_method(BASE, B, T, dict(r=8, targets=("attn.c_attn",), qkv=("q", "v")))
    full = rows[0][1]["total"]
    print(f"\none training step of the base-shaped model ({BASE.n_layer} blocks, C={BASE.n_embd}), batch {B} x {T}, "
          f"float32, AdamW; LoRA r=8 on W_q, W_v; MiB measured (predicted from the meta device)")
    print(f"{'method':<11} {'trainable':>10} {'weights':>15} {'grads':>13} {'AdamW':>13} {'activations':>15} "
          f"{'total':>15} {'vs full':>8}")
    mib = lambda b: f"{b / 2 ** 20:.2f}"  # noqa: E731
    for method, real, pred in rows:
        cells = [f"{mib(real[k])} ({mib(pred[k])})" for k in ("weights", "gradients", "optimizer", "activations", "total")]
        print(f"{method:<11} {real['trainable']:>10,} {cells[0]:>15} {cells[1]:>13} {cells[2]:>13} {cells[3]:>15} "
              f"{cells[4]:>15} {real['total'] / full:>7.3f}x")
    return {"rates": rates, "memory": [(m, r) for m, r, _ in rows]}


BENCHES["quant"] = bench_quant


def memory_by_method(config: GPTConfig, batch: int, seq: int, lora: dict) -> list[tuple[str, dict, dict]]:
    """One float32 AdamW training step of a GPT of `config` at (batch, seq) for full fine-tuning, LoRA,
    QLoRA-int8 and QLoRA-NF4 (`lora`: the LoRAConfig fields, r included; no head adapter): rows of
    (method, measured by minift.memory.step_memory, predicted from the meta device by estimate)."""
    from .memory import estimate, step_memory
    from .peft.lora import LoRAConfig, apply_lora
    from .quant.qlora import QLoRAConfig, apply_qlora

    rows = []
    for method in ("full", "LoRA", "QLoRA-int8", "QLoRA-NF4"):
        torch.manual_seed(0)
        m = GPT(config).train()
        if method == "LoRA":
            apply_lora(m, LoRAConfig(include_head=False, **lora))
        elif method.startswith("QLoRA"):
            apply_qlora(m, QLoRAConfig(include_head=False, quant=method.split("-")[1].lower(), **lora))
        kind = {"full": "full", "LoRA": "lora"}.get(method, "qlora")
        pred = estimate(config, kind, batch=batch, seq=seq, dtype=torch.float32, r=lora["r"],
                        quant="int8" if method == "QLoRA-int8" else "nf4")
        rows.append((method, step_memory(m, batch, seq), pred))
    return rows


# ---- minift bench kernels ----------------------------------------------------------------------


def copy_bandwidth(n_bytes: int = 128 * 2 ** 20, repeat: int = 5) -> float:
    """Measured memory bandwidth in GB/s: a float32 copy of n_bytes reads n_bytes and writes n_bytes."""
    a = torch.empty(n_bytes // 4, device="cpu")
    b = torch.empty_like(a)
    return 2 * n_bytes / (_best_ms(lambda: b.copy_(a), repeat) / 1000) / 1e9


def _copies(make, n_bytes: int, cold_bytes: int) -> list:
    """Enough independent copies that cycling through them never finds the weight in the last-level
    cache (decoding a real model reads each layer once per token: from memory, not from cache)."""
    return [make() for _ in range(max(1, min(8, -(-cold_bytes // n_bytes))))]


def bench_kernels(fast: bool = False) -> list[dict]:
    """The fused quantized-LoRA matmul (lesson 13) against the float32 dense matmul and the pure-PyTorch
    dequantize-then-matmul, measured in the same run: shapes 4096x4096, 1024x4096 and the base model's
    (3C x C, 4C x C, C x 4C with C = 128), batches 1, 8, 128. Bandwidth: bytes of weight read per call
    / time, against the measured copy bandwidth (the batch-1 limit: the weight must be read once)."""
    from .quant import ops
    from .quant.int8 import quantize_absmax
    from .quant.nf4 import NF4State, quantize_nf4

    torch.manual_seed(0)
    ext = ops.extension()
    shapes = [(1024, 1024), (384, 128)] if fast else [(4096, 4096), (1024, 4096), (384, 128), (512, 128), (128, 512)]
    batches = (1, 8) if fast else (1, 8, 128)
    repeat = 3 if fast else 7
    bw = copy_bandwidth(32 * 2 ** 20 if fast else 256 * 2 ** 20, repeat)
    cold = 48 * 2 ** 20 if fast else 96 * 2 ** 20                  # > this machine's 32 MiB L3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; kernel path: {ops.backend()}")
    print(f"measured copy bandwidth {bw:.1f} GB/s (read + write of a float32 buffer); weights cycled through "
          f"copies totalling >= {cold / 2 ** 20:.0f} MiB so that no call finds its weight in cache")
    rows = []
    for out_f, in_f in shapes:
        W = torch.randn(out_f, in_f, device="cpu") * 0.02
        nf4, i8 = quantize_nf4(W, 64, double_quant=True), quantize_absmax(W, "row")
        sizes = {"fp32": W.numel() * 4, "nf4": sum(t.numel() * t.element_size() for t in nf4.tensors().values()),
                 "int8": i8.q.numel() + i8.scale.numel() * 4}
        Ws = _copies(W.clone, sizes["fp32"], cold)
        nf4s = _copies(lambda: NF4State(**{**nf4.__dict__, **{k: v.clone() for k, v in nf4.tensors().items()}}),
                       sizes["nf4"], cold)
        i8s = _copies(lambda: type(i8)(i8.q.clone(), i8.scale.clone(), None, "row", 0), sizes["int8"], cold)

        def cycling(items, f):
            it = [0]

            def call():
                it[0] = (it[0] + 1) % len(items)
                return f(items[it[0]])
            return call

        for N in batches:
            x = torch.randn(N, in_f, device="cpu")
            cases = [("float32 dense x Wᵀ", "fp32", cycling(Ws, lambda w: x @ w.T)),
                     ("NF4 dequantize-then-matmul", "nf4", cycling(nf4s, lambda s: ops.quant_lora_matmul_reference(x, s)))]
            if ext is not None:
                cases += [("NF4 fused kernel", "nf4", cycling(nf4s, lambda s: ops.quant_lora_matmul(x, s, use_extension=True))),
                          ("int8 fused kernel", "int8", cycling(i8s, lambda s: ops.quant_lora_matmul(x, s, use_extension=True)))]
            rep = max(2, repeat // 2) if (N >= 128 and out_f * in_f >= 2 ** 22) else repeat
            with torch.no_grad():
                times = {name: _best_ms(fn, rep) for name, _, fn in cases}
            dense = times["float32 dense x Wᵀ"]
            deq = times["NF4 dequantize-then-matmul"]
            for name, fmt, _ in cases:
                ms = times[name]
                gbs = sizes[fmt] / (ms / 1000) / 1e9                 # weight bytes read per second
                limit_ms = 1000 * sizes[fmt] / (bw * 1e9)             # the weight read once at copy speed
                rows.append({"shape": f"{out_f}x{in_f}", "batch": N, "path": name, "ms": ms,
                             "vs_dense": dense / ms, "vs_dequant": deq / ms, "weight_GBps": gbs,
                             "vs_limit": ms / limit_ms})
    print(f"\n{'shape':<10} {'batch':>5} {'path':<28} {'ms':>9} {'speed-up vs fp32':>17} {'vs dequant':>11} "
          f"{'weight GB/s':>12} {'time / limit':>13}")
    for r in rows:
        print(f"{r['shape']:<10} {r['batch']:>5} {r['path']:<28} {r['ms']:>9.3f} {r['vs_dense']:>16.2f}x "
              f"{r['vs_dequant']:>10.2f}x {r['weight_GBps']:>12.1f} {r['vs_limit']:>12.2f}x")
    print("speed-up > 1: faster than the float32 dense matmul / than dequantize-then-matmul; time / limit: "
          "the call's time over the time to read its weight bytes once at the measured copy bandwidth")
    return rows


BENCHES["kernels"] = bench_kernels
