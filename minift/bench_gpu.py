"""`minift bench kernels --device cuda`: the fused NF4 kernel (cuda_ext) against cuBLAS on a GPU (lesson 13,
"On a GPU"). Every number is measured in the same run, on the same GPU.

    rows per (shape out x in, batch N), activations x (N, in):
      fp32 / bf16 / fp16 F.linear        the dense matmul in that dtype (cuBLAS; TF32 as torch's default, off)
      NF4 dequantize + bf16 F.linear     ops.quant_lora_matmul_reference: the pure-PyTorch definition
      NF4 fused, raw kernel              the extension's CUDA entry point, its arguments prepared once
                                         (kernel "auto": the GEMV to batch 16, then dequantize + cuBLAS)
      NF4 fused, tensor cores            the same entry point forced onto the tensor-core kernel (mma.sync;
                                         bf16 x, sm_80+), which "auto" does not take until it is measured
      NF4 fused, quant_lora_matmul       the public op (checks, dispatch), x in bf16

**Timing.** CUDA events around each call, the median of >= 20 calls after a warm-up. Each call reads
a different copy of its weight, the copies totalling >= 2 x L2, so no call finds its weight in L2
(decoding a model reads each layer once per token: from memory). The GPU is held busy just before
each timed call, so the events time the GPU work alone (as triton's do_bench does); "host µs" is the
CPU time to issue one call (Python, checks, launches): where it exceeds the GPU time, a loop of such
calls is bound by the host, not by the kernel.

**The bandwidth limit** of a shape: its NF4 bytes read once at the copy bandwidth measured here,

    t_limit = (packed bytes + absmax bytes) / BW,   BW = 2 · bytes copied / time of a 1 GiB copy     (13.9)

and every row is printed against it and against bf16 cuBLAS (t_bf16 / t: > 1 is faster).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(4096, 4096), (8192, 8192), (14336, 4096), (4096, 14336), (28672, 8192)]     # (out, in)
BATCHES = (1, 8, 16, 32, 128)
FAST_SHAPES, FAST_BATCHES = [(4096, 4096)], (1, 16)
BLOCK, DQ_BLOCK = 64, 256                     # NF4 block and double-quantization block (QLoRA's)
DEFAULT_L2 = 64 * 2 ** 20                     # when the device does not report its L2 size
COPY_BYTES = 2 ** 30                          # the copy that measures the bandwidth: far larger than any L2

FP32, BF16, FP16 = "fp32 F.linear", "bf16 F.linear", "fp16 F.linear"
DEQUANT, RAW, OP = "NF4 dequantize + bf16 F.linear", "NF4 fused, raw kernel", "NF4 fused, quant_lora_matmul"
MMA = "NF4 fused, tensor cores"
PATHS = (FP32, BF16, FP16, DEQUANT, RAW, MMA, OP)
BIG = ("8192x8192", "14336x4096", "28672x8192")   # the shapes of the 2.5x target at batch 1


# ---- arithmetic (no GPU needed) -------------------------------------------------------------------

def nf4_bytes(out_f: int, in_f: int, block_size: int = BLOCK, double_quant: bool = True,
              dq_block: int = DQ_BLOCK) -> int:
    """Bytes stored for an (out, in) NF4 weight: what one batch-1 call must read.
    packed ⌈out·in / 2⌉ + absmax: n_b float32, or n_b int8 + ⌈n_b / dq_block⌉ float32 scales + a float32
    mean (n_b = ⌈out·in / block_size⌉ blocks)."""
    n = out_f * in_f
    n_b = -(-n // block_size)                                                    # blocks
    absmax = n_b + 4 * -(-n_b // dq_block) + 4 if double_quant else 4 * n_b
    return -(-n // 2) + absmax


def copy_gbps(n_bytes: int, ms: float) -> float:
    """Bandwidth of a copy of n_bytes that took ms: it reads n_bytes and writes n_bytes."""
    return 2 * n_bytes / (ms / 1e3) / 1e9


def limit_us(n_bytes: int, gbps: float) -> float:
    """(13.9): the time to read n_bytes once at gbps GB/s, in µs."""
    return n_bytes / (gbps * 1e9) * 1e6


def n_copies(n_bytes: int, l2_bytes: int) -> int:
    """Copies of an n_bytes weight so that cycling through them never finds one in L2: >= 2 x L2 in all."""
    return max(1, -(-2 * l2_bytes // n_bytes))


def judge(rows: list[dict]) -> list[dict]:
    """The kernel's targets (lesson 13, "On a GPU"), judged on the rows of one run (row: shape "OUTxIN", batch, path, us, limit_us;
    us None = not measured). The kernel targets are judged on the raw kernel, the dispatch target on
    quant_lora_matmul against it. Returns [{target, wanted, measured, met}], in the rows' order."""
    at = {(r["shape"], r["batch"], r["path"]): r for r in rows}
    out = []

    def us(shape, N, path):
        r = at.get((shape, N, path))
        return None if r is None or r["us"] is None else r["us"]

    def add(target, wanted, value, ok, unit="x"):
        out.append({"target": target, "wanted": wanted, "measured": "n/a" if value is None else f"{value:.2f}{unit}",
                    "met": value is not None and ok(value)})

    def ratio(a, b):
        return None if a is None or b is None else a / b

    for shape, N in dict.fromkeys((r["shape"], r["batch"]) for r in rows):
        raw, bf16 = us(shape, N, RAW), us(shape, N, BF16)
        speed = ratio(bf16, raw)                                                 # > 1: faster than cuBLAS
        name = f"{shape}, batch {N}"
        if N == 1 and shape in BIG:
            add(f"{name}: raw kernel vs bf16 cuBLAS", ">= 2.50x faster", speed, lambda v: v >= 2.5)
            lim = at[(shape, N, RAW)]["limit_us"] if (shape, N, RAW) in at else None
            add(f"{name}: raw kernel time / bandwidth limit", "<= 1.50x", ratio(raw, lim), lambda v: v <= 1.5)
        if N == 1 and shape == "4096x4096":
            add(f"{name}: raw kernel vs bf16 cuBLAS", ">= 1.50x faster", speed, lambda v: v >= 1.5)
        if N in (8, 16):
            add(f"{name}: raw kernel vs bf16 cuBLAS", ">= 1.50x faster", speed, lambda v: v >= 1.5)
        if N == 128:
            add(f"{name}: raw kernel vs bf16 cuBLAS", ">= 0.80x", speed, lambda v: v >= 0.8)
            add(f"{name}: raw kernel vs dequantize-then-matmul", "> 1.00x faster",
                ratio(us(shape, N, DEQUANT), raw), lambda v: v > 1.0)
        if N == 1:
            add(f"{name}: quant_lora_matmul time / raw kernel time", "<= 1.10x", ratio(us(shape, N, OP), raw),
                lambda v: v <= 1.1)
    return out


def mma_from(rows: list[dict]) -> int | None:
    """The smallest batch from which the tensor-core kernel is faster than the automatic choice at every
    shape measured, at that batch and every larger one: what MMA_AUTO_MIN_N (cuda_ext/quant_lora_cuda.h)
    should be. None: no such batch (or a row not measured)."""
    at = {(r["shape"], r["batch"], r["path"]): r["us"] for r in rows}
    batches = sorted({r["batch"] for r in rows})
    shapes = list(dict.fromkeys(r["shape"] for r in rows))

    def wins(N):
        ts = [(at.get((sh, N, MMA)), at.get((sh, N, RAW))) for sh in shapes]
        return all(m is not None and a is not None and m < a for m, a in ts)

    best = None
    for N in reversed(batches):                                                  # the longest winning tail
        if not wins(N):
            break
        best = N
    return best


# ---- measuring (a GPU) ----------------------------------------------------------------------------

_CYCLES_PER_US: list = []


def _hold(us: float) -> None:
    """Keep the GPU busy for ~us µs (torch.cuda._sleep spins), so that the calls queued behind it start
    back to back and the events time the GPU work alone, not the host's launch gaps."""
    if not hasattr(torch.cuda, "_sleep"):
        return
    if not _CYCLES_PER_US:                                                      # calibrate once
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)
        start.record()
        torch.cuda._sleep(10 ** 6)
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end)
        _CYCLES_PER_US.append(10 ** 6 / (1e3 * ms) if ms > 0 else 2000.0)      # ~ the SM clock in MHz
    torch.cuda._sleep(int(us * _CYCLES_PER_US[0]))


def time_us(calls: list, repeat: int = 20, warmup: int = 5) -> tuple[float, float]:
    """Median µs of one call on the GPU (CUDA events) and median host µs to issue it; calls[i % len]
    is the i-th call (one per weight copy, so consecutive calls read different memory). Before each
    timed call the GPU is held busy for twice the call's host time, so the host work is hidden from
    the GPU time and shows in the host column instead."""
    host = []
    for i in range(warmup):
        t0 = time.perf_counter()
        calls[i % len(calls)]()
        host.append(1e6 * (time.perf_counter() - t0))
    torch.cuda.synchronize()
    hold = max(50.0, 2 * statistics.median(host)) if host else 50.0
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
    host = []
    for i, (start, end) in enumerate(ev):
        call = calls[(warmup + i) % len(calls)]
        _hold(hold)
        start.record()
        t0 = time.perf_counter()
        call()
        host.append(1e6 * (time.perf_counter() - t0))
        end.record()
    torch.cuda.synchronize()
    return 1e3 * statistics.median(s.elapsed_time(e) for s, e in ev), statistics.median(host)


def measure_copy_gbps(device: torch.device, n_bytes: int = 0, repeat: int = 10) -> float:
    """Device-to-device copy bandwidth of an n_bytes buffer (default COPY_BYTES, 1 GiB)."""
    n_bytes = n_bytes or COPY_BYTES
    a = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    us, _ = time_us([lambda: b.copy_(a)], repeat=repeat, warmup=2)                  # a, b freed on return
    return copy_gbps(n_bytes, us / 1e3)


def _quantized_copies(W: torch.Tensor, copies: int) -> list:
    """`copies` copies of quantize_nf4(W) on W's device (quantized on the CPU, then moved, if that fails)."""
    from .quant.nf4 import NF4State, quantize_nf4
    try:
        st = quantize_nf4(W, BLOCK, double_quant=True, dq_block_size=DQ_BLOCK)
    except RuntimeError as e:
        print(f"  quantize_nf4 on {W.device} failed ({str(e).splitlines()[0]}); quantized on the CPU instead")
        st = quantize_nf4(W.cpu(), BLOCK, double_quant=True, dq_block_size=DQ_BLOCK)

    def move(s):                                                               # a copy of every tensor, on W's device
        return NF4State(**{**s.__dict__, **{k: v.to(W.device, copy=True) for k, v in s.tensors().items()}})
    return [move(st) for _ in range(copies)]


class _Recorder:
    """Stands in for the extension module inside ops._ext_forward: records the entry point it calls and
    the arguments it prepares, so the raw row times that call alone, whatever its signature."""

    def __init__(self, ext):
        self._ext, self.call = ext, None

    def __getattr__(self, name):
        attr = getattr(self._ext, name)
        if not callable(attr):
            return attr

        def record(*args, **kwargs):
            self.call = (attr, args, kwargs)
            return attr(*args, **kwargs)
        return record


def _raw_calls(ops, ext, x: torch.Tensor, states: list, kernel: str = "auto") -> list:
    """One prepared call of the extension's CUDA entry point per weight copy (no LoRA, no bias)."""
    calls = []
    for st in states:
        rec = _Recorder(ext)
        with torch.no_grad():
            ops._ext_forward(rec, x, st, None, None, 1.0, None, kernel)
        fn, args, kwargs = rec.call
        calls.append(lambda fn=fn, args=args, kwargs=kwargs: fn(*args, **kwargs))
    return calls


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def bench_kernels_cuda(fast: bool = False, device="cuda", repeat: int = 20) -> dict:
    """Every path at every shape and batch on `device`, printed as measured, then the targets judged
    (met / NO). Returns {"rows", "verdicts", "copy_GBps", "l2_bytes", "skipped"}."""
    from .quant import ops

    device = torch.device(device)
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 0) or DEFAULT_L2
    ext = ops.extension()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {props.name}, {props.multi_processor_count} SMs, "
          f"L2 {l2 / 2 ** 20:.0f} MiB{'' if getattr(props, 'L2_cache_size', 0) else ' (assumed)'}; "
          f"kernel path: {ops.backend()}")
    bw = measure_copy_gbps(device)
    print(f"measured copy bandwidth {bw:.0f} GB/s ({COPY_BYTES / 2 ** 30:g} GiB device-to-device: read + write); "
          f"every weight cycled through copies totalling >= {2 * l2 / 2 ** 20:.0f} MiB (2 x L2); median of {repeat} "
          f"calls, CUDA events, the GPU held busy before each")
    shapes, batches = (FAST_SHAPES, FAST_BATCHES) if fast else (SHAPES, BATCHES)
    rows, skipped = [], {}
    _print_header()
    for out_f, in_f in shapes:
        shape = f"{out_f}x{in_f}"
        W = torch.randn(out_f, in_f, device=device) * 0.02                               # (out, in) fp32
        dense = {}
        for path, dt in ((FP32, torch.float32), (BF16, torch.bfloat16), (FP16, torch.float16)):
            dense[path] = [W.to(dt, copy=True) for _ in range(n_copies(W.numel() * dt.itemsize, l2))]
        states = _quantized_copies(W, n_copies(nf4_bytes(out_f, in_f), l2))
        nb = sum(t.numel() * t.element_size() for t in states[0].tensors().values())   # as stored
        del W
        lim = limit_us(nb, bw)
        for N in batches:
            xs = {dt: torch.randn(N, in_f, device=device).to(dt)                 # (N, in) in each dtype
                  for dt in (torch.float32, torch.bfloat16, torch.float16)}
            x = xs[torch.bfloat16]                                                      # (N, in) bf16
            cases = {p: [lambda w=w, x=xs[w.dtype]: F.linear(x, w) for w in ws] for p, ws in dense.items()}
            cases[DEQUANT] = [lambda s=s: ops.quant_lora_matmul_reference(x, s) for s in states]
            cases[OP] = [lambda s=s: ops.quant_lora_matmul(x, s, use_extension=True) for s in states]
            for path, kernel in ((RAW, "auto"), (MMA, "tensor")):
                try:
                    if ext is None:
                        raise RuntimeError(f"no extension ({ops.backend()})")
                    cases[path] = _raw_calls(ops, ext, x, states, kernel)
                except Exception as e:  # noqa: BLE001 (any failure: the row says why, the bench goes on)
                    skipped[path], cases[path] = _why(e), None
            for path in PATHS:
                t = host = None
                if cases.get(path) is not None:
                    try:
                        with torch.no_grad():
                            t, host = time_us(cases[path], repeat)
                    except Exception as e:  # noqa: BLE001
                        skipped[path] = _why(e)
                w_bytes = nb if path in (DEQUANT, RAW, MMA, OP) else out_f * in_f * {FP32: 4}.get(path, 2)
                rows.append({"shape": shape, "batch": N, "path": path, "us": t, "host_us": host, "limit_us": lim,
                             "GBps": None if t is None else w_bytes / (t * 1e3)})
            bf16 = next(r["us"] for r in rows if (r["shape"], r["batch"], r["path"]) == (shape, N, BF16))
            for r in rows[-len(PATHS):]:                                        # printed as measured
                r["vs_bf16"] = None if r["us"] is None or bf16 is None else bf16 / r["us"]
                _print_row(r)
        del dense, states, cases                                                 # free this shape's weights
        torch.cuda.empty_cache()
    _print_legend(rows, bw)
    for path, why in skipped.items():
        print(f"not measured: {path}: {why}")
    verdicts = judge(rows)
    _print_verdicts(verdicts)
    n_mma = mma_from(rows)
    print(f"the tensor-core kernel beats the automatic choice at every shape from batch "
          f"{n_mma} on: MMA_AUTO_MIN_N = {n_mma} would make it the automatic choice there" if n_mma is not None else
          "the tensor-core kernel does not beat the automatic choice at every shape at the largest batch: "
          "MMA_AUTO_MIN_N stays \"never\"")
    return {"rows": rows, "verdicts": verdicts, "copy_GBps": bw, "l2_bytes": l2, "skipped": skipped,
            "mma_from": n_mma}


def _f(v, width: int, spec: str, unit: str = "") -> str:
    return f"{'-' if v is None else f'{v:{spec}}{unit}':>{width}}"


def _print_header() -> None:
    print(f"\n{'shape':<12} {'batch':>5} {'path':<32} {'µs':>9} {'host µs':>8} {'vs bf16':>8} {'/ limit':>8} "
          f"{'weight GB/s':>12}", flush=True)


def _print_row(r: dict) -> None:
    vs_lim = None if r["us"] is None else r["us"] / r["limit_us"]
    print(f"{r['shape']:<12} {r['batch']:>5} {r['path']:<32} {_f(r['us'], 9, '.1f')} {_f(r['host_us'], 8, '.1f')} "
          f"{_f(r['vs_bf16'], 8, '.2f', 'x')} {_f(vs_lim, 8, '.2f', 'x')} {_f(r['GBps'], 12, '.0f')}", flush=True)


def _print_legend(rows: list[dict], bw: float) -> None:
    limits = {r["shape"]: r["limit_us"] for r in rows}
    print(f"vs bf16: bf16 cuBLAS time / this time (> 1: faster). / limit: this time / the NF4 bandwidth limit (13.9) at "
          f"{bw:.0f} GB/s: " + ", ".join(f"{s} {v:.1f} µs" for s, v in limits.items()) + ". weight GB/s: this path's "
          "weight bytes (fp32 4, bf16/fp16 2, NF4 packed + absmax) / time")


def _print_verdicts(verdicts: list[dict]) -> None:
    print("\nthe kernel's targets (judged on this run: on the raw kernel's automatic choice, activations bf16; the "
          "last on the op; the tensor-core row is not judged until \"auto\" takes it):")
    print(f"{'target':<64} {'wanted':>16} {'measured':>9} {'met':>4}")
    for v in verdicts:
        print(f"{v['target']:<64} {v['wanted']:>16} {v['measured']:>9} {'met' if v['met'] else 'NO':>4}")
    print(f"{sum(v['met'] for v in verdicts)} of {len(verdicts)} targets met")


__all__ = ["bench_kernels_cuda", "judge", "mma_from", "nf4_bytes", "limit_us", "copy_gbps", "n_copies", "time_us"]
