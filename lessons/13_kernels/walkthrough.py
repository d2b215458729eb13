"""Lesson 13: the fused quantized-LoRA matmul, a kernel that never builds the float weight.

Prints, top to bottom:

  1. bytes per weight of each storage format, counted from the stored tensors, and the batch-1
     time limit they imply at this machine's measured copy bandwidth;
  2. why batch 1 is memory-bound: the float32 dense matmul's achieved GB/s and GFLOP/s at batch
     1, 8 and 128 (flops per byte grow with the batch; bandwidth does not);
  3. the kernel against the reference: the worst error over both code paths (AVX2 and scalar),
     as a fraction of the stated float32 bound, and the gradients;
  4. the benchmark (`minift bench kernels`, one thread): float32 dense, dequantize-then-matmul and
     the fused kernels at 4096x4096, 1024x4096 and the base model's shapes, batch 1, 8, 128;
     then the lesson's targets, measured, met or not;
  5. where the kernel's time goes: three AVX2 decoders (vpshufb on byte planes, the default;
     vpermps; a 256-pair lookup table) against the scalar loop, with the weight hot in cache;
  6. decoding with the base model: greedy tokens/s in float32, NF4 through the kernel, NF4
     through dequantize-then-matmul.

    python lessons/13_kernels/walkthrough.py          # or: minift run 13
    python lessons/13_kernels/walkthrough.py --fast   # small shapes, batch 1 and 8 (the tests)

Everything it uses lives in the library (minift/quant/ops.py, cuda_ext/, minift/bench.py,
minift/quant/nf4.py); this file only calls it and prints. The first run builds cuda_ext (about
40 s, once; cached in ~/.cache/minift/cuda_ext).
"""
EXPECTED_SECONDS = 41
FAST_SECONDS = 7

import os
import subprocess
import sys
import time

import torch

from minift import course
from minift.bench import _best_ms, bench_kernels, copy_bandwidth
from minift.pretrain import load_base
from minift.quant import ops
from minift.quant.int8 import quantize_absmax
from minift.quant.nf4 import CODES, bits_per_parameter, quantize_nf4
from minift.quant.qlora import quantize_model
from minift.report import format_table, header, table

# --fast, one thread, the clock (minift/course.py); only part 6 loads the base model
args = course.start("13", course.parser(__doc__, "small shapes, batch 1 and 8 (seconds)"), needs_base=False)
FAST, DEV = args.fast, args.device     # DEV: --device; parts 1-5 are the CPU kernel's, part 6 decodes on DEV
torch.manual_seed(0)
ext = ops.extension()
print(f"kernel path: {ops.backend()}; torch {torch.__version__}, {torch.get_num_threads()} thread")
if DEV.type == "cuda":
    print(f"--device {DEV}: parts 1-5 measure the CPU kernel, this lesson's subject, and run on the CPU whatever the "
          f"device; the CUDA kernel's table is `minift bench kernels --device cuda`. Part 6 decodes on {DEV}.")

# ---- 1. bytes per weight ------------------------------------------------------------------------
header("1. Bytes per weight, counted from the stored tensors")
side = 1024 if FAST else 4096
W = torch.randn(side, side) * 0.02
bw = copy_bandwidth(32 * 2 ** 20 if FAST else 256 * 2 ** 20, 3 if FAST else 5)
i8 = quantize_absmax(W, "row")
formats = [("float32", W.numel() * 4), ("bfloat16", W.numel() * 2),
           ("int8, absmax per row", i8.q.numel() + 4 * i8.scale.numel()),
           ("NF4, block 64", bits_per_parameter(quantize_nf4(W, 64, False)) * W.numel() / 8),
           ("NF4, block 64, double quant", bits_per_parameter(quantize_nf4(W, 64, True)) * W.numel() / 8)]
table(["format", "bytes / weight", f"{side}x{side} MiB", "vs float32", "batch-1 limit ms"],
      [[n, f"{b / W.numel():.4f}", f"{b / 2 ** 20:.2f}", f"{W.numel() * 4 / b:.2f}x", f"{1000 * b / (bw * 1e9):.3f}"]
       for n, b in formats])
print(f"measured copy bandwidth {bw:.1f} GB/s; the limit is the time to read the weight once at that speed")

# ---- 2. batch 1 is memory-bound ------------------------------------------------------------------
header("2. Why batch 1 is memory-bound: the float32 dense matmul x Wᵀ")
Ws = [W.clone() for _ in range(max(1, -(-96 * 2 ** 20 // (W.numel() * 4))))] if not FAST else [W.clone() for _ in range(2)]
rows = []
for N in (1, 8, 128):
    x = torch.randn(N, side)
    it = [0]

    def dense():
        it[0] = (it[0] + 1) % len(Ws)
        return x @ Ws[it[0]].T
    ms = _best_ms(dense, 3 if FAST else 5)
    flops, nbytes = 2 * N * W.numel(), W.numel() * 4
    rows.append([N, f"{flops / nbytes:.1f}", f"{ms:.3f}", f"{nbytes / (ms / 1000) / 1e9:.1f}", f"{flops / (ms / 1000) / 1e9:.1f}"])
table(["batch", "flops / weight byte", "ms", "weight GB/s", "GFLOP/s"], rows)
print("At batch 1 every weight is read once for 2 flops: the matmul runs at the memory's speed and the\n"
      "arithmetic units wait. More inputs per weight (batch 8, 128) raise GFLOP/s at the same bytes.")

# ---- 3. correctness ------------------------------------------------------------------------------
header("3. The kernel equals the reference within the float32 bound")
if ext is None:
    print(f"the extension is not loaded ({ops.backend()}): nothing to compare, everything runs the reference")
else:
    g = torch.Generator().manual_seed(0)
    rows = []
    for quant, out_f, in_f, bs, N in [("nf4", 384, 128, 64, 1), ("nf4+dq", 512, 128, 64, 8), ("nf4+dq", 96, 130, 10, 3),
                                      ("nf4", 7, 12, 6, 40), ("int8", 128, 512, 0, 5), ("int8", 33, 13, 0, 1)]:
        Wt = torch.randn(out_f, in_f, generator=g)
        wq = quantize_absmax(Wt, "row") if quant == "int8" else quantize_nf4(Wt, bs, quant == "nf4+dq")
        x, A, B, b = (torch.randn(N, in_f, generator=g), torch.randn(4, in_f, generator=g),
                      torch.randn(out_f, 4, generator=g), torch.randn(out_f, generator=g))
        ref = ops.quant_lora_matmul_reference(x, wq, A, B, 2.0, b)
        y = ops.quant_lora_matmul(x, wq, A, B, 2.0, b, use_extension=True)
        frac = float(((y - ref).abs().double() / ops.error_bound(x, wq, A, B, 2.0, b)).max())
        path = "int8 AVX2" if quant == "int8" else ("AVX2" if in_f % bs == 0 and bs % 8 == 0 else "scalar")
        path += ", tiled GEMM" if N > 16 else ""
        rows.append([f"{quant} {out_f}x{in_f}" + (f", block {bs}" if bs else ""), N, path,
                     f"{float((y - ref).abs().max()):.2e}", f"{frac:.3f}"])
    table(["weight", "batch", "path", "max |kernel - reference|", "/ bound"], rows)
    xg = torch.randn(6, 128, requires_grad=True)
    Ag, Bg = torch.randn(4, 128, requires_grad=True), torch.randn(384, 4, requires_grad=True)
    wq = quantize_nf4(torch.randn(384, 128), 64, True)
    gy = torch.randn(6, 384)
    grads = torch.autograd.grad((ops.quant_lora_matmul(xg, wq, Ag, Bg, 2.0) * gy).sum(), (xg, Ag, Bg))
    grads_ref = torch.autograd.grad((ops.quant_lora_matmul_reference(xg, wq, Ag, Bg, 2.0) * gy).sum(), (xg, Ag, Bg))
    print("gradients (custom backward, W re-dequantized) vs autograd through the reference: max |diff| "
          + ", ".join(f"d{n} {float((a - b).abs().max()):.1e}" for n, a, b in zip("xAB", grads, grads_ref)))

# ---- 4. the benchmark ----------------------------------------------------------------------------
header("4. The benchmark (minift bench kernels, one thread)")
bench = bench_kernels(fast=FAST)
big = f"{side}x{side}"


def row(shape, N, path):
    return next((r for r in bench if r["shape"] == shape and r["batch"] == N and r["path"] == path), None)


if ext is not None:
    b1, b128 = row(big, 1, "NF4 fused kernel"), row(big, 128, "NF4 fused kernel")
    targets = [["batch 1: fused NF4 vs float32 dense", ">= 3x faster", f"{b1['vs_dense']:.2f}x", b1["vs_dense"] >= 3],
               ["batch 1: fused NF4 vs dequantize-then-matmul", ">= 10x faster", f"{b1['vs_dequant']:.1f}x", b1["vs_dequant"] >= 10],
               ["batch 1: fused NF4 time / bandwidth limit", "<= 2.5x", f"{b1['vs_limit']:.1f}x", b1["vs_limit"] <= 2.5]]
    if b128 is not None:
        targets.append(["batch 128: fused NF4 vs dequantize-then-matmul", ">= 1x (no slower)", f"{b128['vs_dequant']:.2f}x",
                        b128["vs_dequant"] >= 1])
    print(f"\nthe targets at {big} (set at 4096x4096, on both cores; this is one thread):")
    course.verdict(format_table(["target", "wanted", "measured", "met"], [t[:3] + ["yes" if t[3] else "NO"] for t in targets]))

# ---- 5. where the time goes ----------------------------------------------------------------------
header("5. Where the kernel's time goes: decoding 4-bit indices")
if ext is None:
    print("the extension is not loaded: skipped")
else:
    wq = quantize_nf4(W, 64, True)
    x = torch.randn(1, side)
    e = torch.empty(0)
    code = CODES["nf4"]()

    def raw(vec):
        return lambda: ext.nf4_lora_matmul(x, wq.packed, side, side, e, wq.absmax_q, wq.absmax_scales, float(wq.absmax_mean),
                                           256, code, 64, e, e, 1.0, e, vec)
    rows = [["AVX2: vpshufb on 4 byte planes, 32 weights per step (default)", _best_ms(raw(True), 5)],
            ["scalar loop (the exercise, in C++)", _best_ms(raw(False), 3)]]
    if not FAST:                                                # the decoder is chosen per process
        code_alt = ("import torch, sys; torch.set_num_threads(1); sys.path.insert(0, '.'); "
                    "from minift.bench import _best_ms; from minift.quant import ops; from minift.quant.nf4 import quantize_nf4; "
                    f"torch.manual_seed(0); wq = quantize_nf4(torch.randn({side}, {side}) * 0.02, 64, True); "
                    f"x = torch.randn(1, {side}); print(_best_ms(lambda: ops.quant_lora_matmul(x, wq, use_extension=True), 5))")
        for i, (mode, name) in enumerate([("permute", "AVX2: two vpermps + blend, 8 weights per step"),
                                          ("lut", "AVX2: 256-entry table of float pairs")]):
            r = subprocess.run([sys.executable, "-c", code_alt], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "MINIFT_EXT_DECODE": mode, "OMP_NUM_THREADS": "1"})
            if r.returncode == 0:
                rows.insert(1 + i, [f"{name} (MINIFT_EXT_DECODE={mode})", float(r.stdout.split()[-1])])
    base_ms = rows[0][1]
    table(["decoder", "ms", "ns / weight", "vs default"],
          [[n, f"{ms:.3f}", f"{1e6 * ms / W.numel():.3f}", f"{ms / base_ms:.2f}x"] for n, ms in rows])
    print(f"(hot cache: the same {side}x{side} NF4 weight, {wq.packed.numel() / 2 ** 20:.1f} MiB, at every call, no copies "
          f"cycled; the float32 limit at "
          f"{bw:.0f} GB/s would be {1000 * W.numel() * 4 / (bw * 1e9):.2f} ms)")

# ---- 6. decoding with the base model -------------------------------------------------------------
header("6. Decoding with the base model (batch 1, greedy, KV cache)")
model, tok = load_base(device=DEV)
prompt = torch.tensor([tok.encode("the capital of")], device=DEV)
n_new = 16 if FAST else 64


def tokens_per_s(m):
    m.generate(prompt, 4)                                           # warm-up
    best = float("inf")
    for _ in range(2 if FAST else 3):
        course.sync()                                               # a GPU's queued work is done (no-op on the CPU)
        t0 = time.perf_counter()
        out = m.generate(prompt, n_new)
        course.sync()
        best = min(best, time.perf_counter() - t0)
    return n_new / best, out


with torch.no_grad():
    rate_f, out_f = tokens_per_s(model)
    quantize_model(model)
    rate_k, out_k = tokens_per_s(model)
    with ops.reference_path("timing the reference"):                # every NF4 layer: PyTorch ops
        rate_r, out_r = tokens_per_s(model)


def n_same(a, b):
    """How many generated tokens two runs share before the first difference (generate returns only the
    new tokens)."""
    d = (a[0] != b[0]).nonzero()
    return int(d[0, 0]) if len(d) else n_new


table(["model", "tokens / s", "vs float32", f"same first tokens as float32 (of {n_new})", "as the reference path"],
      [["float32", f"{rate_f:.0f}", "1.00x", "-", "-"],
       ["NF4 (+ double quant), fused kernel" if ext is not None else "NF4, (no extension: reference)", f"{rate_k:.0f}",
        f"{rate_k / rate_f:.2f}x", n_same(out_k, out_f), n_same(out_k, out_r)],
       ["NF4 (+ double quant), dequantize-then-matmul", f"{rate_r:.0f}", f"{rate_r / rate_f:.2f}x", n_same(out_r, out_f), "-"]])
print(f"generated ({n_new} tokens, the NF4 model, default path): {tok.decode(out_k[0].tolist())!r}")
print(f"\ntotal {course.elapsed():.1f}s")
