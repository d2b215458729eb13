"""`minift bench kernels --device cuda` (minift/bench_gpu.py): the arithmetic of the bandwidth limit, the
judgement of the kernel's targets on made-up tables, and the argument handling, all on the CPU; the
CUDA timing itself only where there is a GPU."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minift import bench, bench_gpu
from minift.bench_gpu import BF16, DEQUANT, MMA, OP, PATHS, RAW, judge, n_copies, nf4_bytes
from minift.quant.nf4 import quantize_nf4


# ---- the bandwidth limit ---------------------------------------------------------------------------

def test_nf4_bytes_of_a_4096_square_weight_counted_by_hand():
    # packed 4096²/2, one int8 absmax per block of 64, one float32 scale per 256 blocks, one float32 mean
    assert nf4_bytes(4096, 4096) == 8388608 + 262144 + 4 * 1024 + 4
    assert nf4_bytes(4096, 4096, double_quant=False) == 8388608 + 4 * 262144


@given(out_f=st.integers(1, 40), half_in=st.integers(1, 20), bs=st.sampled_from([2, 4, 6, 64]),
       dq=st.booleans(), dq_block=st.sampled_from([1, 3, 256]))
def test_nf4_bytes_is_what_quantize_nf4_stores(out_f, half_in, bs, dq, dq_block):
    in_f = 2 * half_in + (1 - out_f % 2)                    # odd rows when out is even: out·in even
    if (out_f * in_f) % bs:
        bs = 2                                              # the block must divide out·in
    stored = quantize_nf4(torch.randn(out_f, in_f), bs, double_quant=dq, dq_block_size=dq_block)
    n = sum(t.numel() * t.element_size() for t in stored.tensors().values())
    assert nf4_bytes(out_f, in_f, bs, dq, dq_block) == n


def test_copy_bandwidth_and_limit_arithmetic():
    assert bench_gpu.copy_gbps(10 ** 9, 1000.0) == pytest.approx(2.0)       # 1 GB read + 1 GB written in 1 s
    assert bench_gpu.copy_gbps(2 ** 30, 0.5) == pytest.approx(2 * 2 ** 30 / 5e-4 / 1e9)
    assert bench_gpu.limit_us(4_000_000, 4000.0) == pytest.approx(1.0)      # 4 MB at 4 TB/s: 1 µs
    assert bench_gpu.limit_us(8654852, 4000.0) == pytest.approx(8654852 / 4e3 / 1e3)


@given(n_bytes=st.integers(1, 2 ** 31), l2=st.integers(1, 2 ** 28))
def test_weight_copies_total_at_least_twice_l2_and_no_more_than_needed(n_bytes, l2):
    k = n_copies(n_bytes, l2)
    assert k >= 1 and k * n_bytes >= 2 * l2
    assert k == 1 or (k - 1) * n_bytes < 2 * l2


# ---- the targets ----------------------------------------------------------------------------------

def _table(shapes, batches, fused: float, dequant: float = 1.2, op: float = 1.05, limit: float = 0.5):
    """A made-up run: bf16 takes 10 µs everywhere, the raw kernel 10/fused µs, the others relative to it."""
    rows = []
    for shape in shapes:
        for N in batches:
            raw = 10 / fused
            t = {BF16: 10.0, RAW: raw, DEQUANT: raw * dequant, OP: raw * op}
            rows += [{"shape": shape, "batch": N, "path": p, "us": t.get(p, 20.0), "limit_us": raw * limit}
                     for p in PATHS]
    return rows


SHAPES = ["4096x4096", "8192x8192", "14336x4096", "4096x14336", "28672x8192"]


def test_a_table_that_meets_every_target_is_judged_met_and_names_each_target():
    rows = _table(SHAPES, [1, 8, 16, 32, 128], fused=3.0, limit=0.8)
    v = judge(rows)
    # batch 1: 2 for each of the three big shapes, 1 at 4096², 1 dispatch target per shape;
    # batch 8 and 16: one per shape each; batch 128: two per shape; batch 32: none
    assert len(v) == 3 * 2 + 1 + 5 + 5 * 2 + 5 * 2
    assert all(x["met"] for x in v), [x for x in v if not x["met"]]
    assert not any("batch 32" in x["target"] for x in v)


@pytest.mark.parametrize("change, broken", [
    (dict(fused=2.4), "8192x8192, batch 1: raw kernel vs bf16 cuBLAS"),            # 2.4x < 2.5x
    (dict(limit=0.6), "28672x8192, batch 1: raw kernel time / bandwidth limit"),  # 1/0.6 = 1.67x > 1.5x
    (dict(op=1.2), "4096x4096, batch 1: quant_lora_matmul time / raw kernel time"),
])
def test_one_missed_target_at_batch_1_is_judged_no(change, broken):
    kw = {**dict(fused=3.0, limit=0.8), **change}
    shape = broken.split(",")[0]
    v = {x["target"]: x for x in judge(_table([shape], [1], **kw))}
    assert not v[broken]["met"]
    assert all(x["met"] for t, x in v.items() if t != broken)


def test_batch_8_16_and_128_targets():
    v = {x["target"]: x["met"] for x in judge(_table(["4096x14336"], [8, 16, 128], fused=1.4))}
    assert v == {"4096x14336, batch 8: raw kernel vs bf16 cuBLAS": False,      # 1.4x < 1.5x
                 "4096x14336, batch 16: raw kernel vs bf16 cuBLAS": False,
                 "4096x14336, batch 128: raw kernel vs bf16 cuBLAS": True,     # >= 0.8x
                 "4096x14336, batch 128: raw kernel vs dequantize-then-matmul": True}
    slow = judge(_table(["4096x14336"], [128], fused=0.79, dequant=1.0))       # 0.79x; as slow as dequant
    assert [x["met"] for x in slow] == [False, False]


def test_mma_from_is_the_start_of_the_batches_where_the_tensor_cores_win_everywhere():
    def rows(mma_us):                                   # {(shape, N): tensor-core µs}; the automatic choice: 10 µs
        return [{"shape": sh, "batch": N, "path": p, "us": t, "limit_us": 1.0}
                for (sh, N), m in mma_us.items() for p, t in ((RAW, 10.0), (MMA, m))]
    wins_from_16 = {("a", 1): 12.0, ("a", 8): 9.0, ("a", 16): 5.0, ("a", 128): 4.0,
                    ("b", 1): 11.0, ("b", 8): 11.0, ("b", 16): 9.9, ("b", 128): 2.0}
    assert bench_gpu.mma_from(rows(wins_from_16)) == 16                 # "a" wins from 8 on, "b" only from 16
    assert bench_gpu.mma_from(rows({**wins_from_16, ("b", 8): 9.0})) == 8
    assert bench_gpu.mma_from(rows({**wins_from_16, ("a", 8): 9.0, ("b", 8): 9.0, ("b", 16): 10.0})) == 128   # a tail
    assert bench_gpu.mma_from(rows({**wins_from_16, ("a", 128): 10.0})) is None        # a tie at the top: never
    unmeasured = rows(wins_from_16)
    next(r for r in unmeasured if r["path"] == MMA and r["batch"] == 128)["us"] = None
    assert bench_gpu.mma_from(unmeasured) is None


def test_a_row_that_was_not_measured_is_judged_no_with_na():
    rows = _table(["8192x8192"], [1], fused=3.0, limit=0.8)
    for r in rows:
        if r["path"] == RAW:
            r["us"] = None
    v = judge(rows)
    assert v and all(not x["met"] and x["measured"] == "n/a" for x in v)


# ---- the arguments ----------------------------------------------------------------------------------

@pytest.fixture
def fake_benches(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "BENCHES", {n: (lambda fast, n=n: calls.append((n, fast))) for n in bench.BENCHES})
    return calls


def _refused(capsys, *args, **kwargs) -> str:
    with pytest.raises(SystemExit) as e:
        bench.run(*args, **kwargs)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_cpu_is_the_default_and_runs_the_named_benchmark(fake_benches):
    assert bench.run("kernels") == 0 and bench.run("train", fast=True, device="cpu") == 0
    assert fake_benches == [("kernels", False), ("train", True)]


def test_bad_names_and_devices_are_one_line_and_exit_status_2(fake_benches, capsys, monkeypatch):
    assert "unknown benchmark 'nope'" in _refused(capsys, "nope")
    assert "--device 'tpu:x'" in _refused(capsys, "kernels", device="tpu:x")
    assert "--device 'meta'" in _refused(capsys, "kernels", device="meta")
    assert "for `minift bench kernels` only" in _refused(capsys, "train", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: torch.cuda.is_available() is False" in _refused(capsys, "kernels", device="cuda")
    assert fake_benches == []


def test_the_command_line_passes_device_to_the_bench(fake_benches, capsys, monkeypatch):
    from minift.cli import main
    assert main(["bench", "kernels", "--fast", "--device", "cpu"]) == 0
    assert fake_benches == [("kernels", True)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(["bench", "kernels", "--device", "cuda"])
    assert e.value.code == 2 and "torch.cuda.is_available() is False" in capsys.readouterr().err
    assert fake_benches == [("kernels", True)]


# ---- on a GPU ---------------------------------------------------------------------------------------

def test_cuda_timing_measures_a_copy(cuda_device):
    a = torch.empty(2 ** 26, device=cuda_device)                               # 256 MiB
    b = torch.empty_like(a)
    us, host = bench_gpu.time_us([lambda: b.copy_(a)], repeat=20)
    assert us > 0 and host > 0
    assert 50 < bench_gpu.copy_gbps(a.numel() * 4, us / 1e3) < 20_000          # GB/s of any GPU memory


def test_the_fast_cuda_bench_measures_every_row_and_judges_three_targets(cuda_device, capsys):
    from minift.quant import ops
    ext = ops.extension()
    res = bench_gpu.bench_kernels_cuda(fast=True, device=cuda_device)
    out = capsys.readouterr().out
    assert "measured copy bandwidth" in out and "targets met" in out
    rows = res["rows"]
    assert {(r["batch"], r["path"]) for r in rows} == {(N, p) for N in (1, 16) for p in PATHS}
    fused_too = ext is not None and bool(ext.cuda)                             # the extension was built with CUDA
    tensor_cores = fused_too and torch.cuda.get_device_capability(cuda_device) >= (8, 0)
    for r in rows:
        if r["path"] not in (RAW, MMA, OP) or (fused_too and r["path"] != MMA) or tensor_cores:
            assert r["us"] is not None and r["us"] > 0 and r["GBps"] > 0, (r, res["skipped"])
    assert len(res["verdicts"]) == 3 and res["copy_GBps"] > 0


def test_the_cuda_bench_runs_through_on_the_cpu_with_a_stand_in_clock(monkeypatch, capsys):
    """Everything of bench_kernels_cuda but the GPU: CUDA events replaced by a host clock, a tiny shape,
    a stand-in extension (the raw row records and replays whatever entry point ops calls)."""
    import time
    from types import SimpleNamespace
    from minift.quant import ops

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return 1e3 * (end.t - self.t)                                       # ms, as CUDA's

    calls = []

    class FakeExt:
        avx2 = cuda = False

        def __getattr__(self, name):
            return lambda *a, **k: calls.append(name) or torch.zeros(a[0].shape[0], 16)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: None, raising=False)
    monkeypatch.setattr(bench_gpu, "_CYCLES_PER_US", [])                      # calibrated on the stand-in only
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: SimpleNamespace(name="stand-in", multi_processor_count=1, L2_cache_size=2 ** 16))
    monkeypatch.setattr(ops, "extension", lambda: FakeExt())
    monkeypatch.setattr(ops, "backend", lambda: "stand-in")
    monkeypatch.setattr(bench_gpu, "FAST_SHAPES", [(16, 64)])
    monkeypatch.setattr(bench_gpu, "COPY_BYTES", 2 ** 20)
    res = bench_gpu.bench_kernels_cuda(fast=True, device="cpu")
    out = capsys.readouterr().out
    rows = res["rows"]
    assert [(r["batch"], r["path"]) for r in rows] == [(N, p) for N in (1, 16) for p in PATHS]
    raw = [r for r in rows if r["path"] in (RAW, MMA)]
    assert calls and all(r["us"] > 0 for r in raw)                             # the recorded calls, replayed
    for r in rows:
        if r["path"] not in (RAW, MMA, OP):
            assert r["us"] > 0 and r["host_us"] > 0 and r["vs_bf16"] > 0
        if r["path"] == BF16:
            assert r["vs_bf16"] == 1.0
    assert res["l2_bytes"] == 2 ** 16 and len(res["verdicts"]) == 2               # 16x64: batch 1 op, batch 16
    assert "16x64" in out and "targets met" in out
