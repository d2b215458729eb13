"""The fused quantized-LoRA matmul (minift/quant/ops.py, cuda_ext/): the reference against float64
numpy, the C++ extension against the reference (when it builds; skipped with the reason when not),
gradients, the fallback path, and bad inputs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from minift.quant import ops
from minift.quant.int8 import quantize_absmax, quantize_zeropoint
from minift.quant.nf4 import NF4_PUBLISHED, dequantize_nf4, quantize_nf4
from minift.quant.ops import NF4Linear

pytestmark = pytest.mark.lesson13

ROOT = Path(__file__).resolve().parent.parent
NF4 = np.array(NF4_PUBLISHED, dtype=np.float64)


@pytest.fixture(scope="module")
def ext():
    """The built extension, or a skip that says why it is not there (no compiler, MINIFT_NO_EXT=1...)."""
    m = ops.extension()
    if m is None:
        pytest.skip(f"cuda_ext did not load: {ops.backend()}; the reference path is tested without it")
    return m


@st.composite
def problems(draw, quant=None, max_n=24):
    """A random op: shapes that are often NOT multiples of the block or of 8 (the scalar path) and
    sometimes are (the AVX2 path), batch 0..max_n (> 16 takes the tiled GEMM path), LoRA, bias, DQ."""
    quant = quant or draw(st.sampled_from(["nf4", "nf4", "int8"]))
    out_f = draw(st.integers(1, 12))
    if draw(st.booleans()):                                         # aligned: in % bs == 0, bs % 8 == 0
        bs = draw(st.sampled_from([8, 16, 24, 64]))
        in_f = bs * draw(st.integers(1, 3))
    else:
        bs = draw(st.sampled_from([2, 4, 6, 8, 10]))
        in_f = draw(st.integers(1, 40))
        while (out_f * in_f) % bs:
            in_f += 1
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g) * draw(st.sampled_from([0.02, 1.0, 30.0]))
    dq = draw(st.booleans())
    if quant == "nf4":
        wq = quantize_nf4(W, bs, dq, draw(st.sampled_from(["nf4", "nf4", "fp4"])), dq_block_size=draw(st.sampled_from([2, 3, 256])))
    else:
        wq = quantize_absmax(W, "row")
    lead = draw(st.sampled_from([(), (1,), (2,), (2, 3)]))
    N = draw(st.integers(0 if lead else 1, max_n))
    x = torch.randn(*lead, N, in_f, generator=g)
    r = draw(st.integers(1, 4))
    lora = draw(st.booleans())
    A = torch.randn(r, in_f, generator=g) if lora else None
    B = torch.randn(out_f, r, generator=g) if lora else None
    bias = torch.randn(out_f, generator=g) if draw(st.booleans()) else None
    s = draw(st.sampled_from([1.0, 0.5, 2.0, -3.0]))
    return x, wq, A, B, s, bias


def _np_dequant(wq):
    """Ŵ from the stored bytes, in float64 numpy, written from the format's definition."""
    if not isinstance(wq, ops.NF4State):
        return wq.q.numpy().astype(np.float64) * wq.scale.numpy().astype(np.float64)[:, None]
    out_f, in_f = wq.shape
    n = out_f * in_f
    b = wq.packed.numpy()
    codes = np.stack([b >> 4, b & 15], 1).reshape(-1)[:n]           # element 2i: high nibble
    table = NF4 if wq.code_name == "nf4" else np.r_[-np.array([6, 4, 3, 2, 1.5, 1, .5, 0.]), [0, .5, 1, 1.5, 2, 3, 4, 6]] / 6
    if wq.double_quant:
        q8 = wq.absmax_q.numpy().astype(np.float64)
        sc = np.repeat(wq.absmax_scales.numpy().astype(np.float64), wq.dq_block_size)[:q8.size]
        c = q8 * sc + float(wq.absmax_mean)                         # c = mean + s q8
    else:
        c = wq.absmax.numpy().astype(np.float64)
    return (table[codes] * np.repeat(c, wq.block_size)).reshape(out_f, in_f)


@given(p=problems())
def test_reference_matches_float64_numpy(p):
    x, wq, A, B, s, bias = p
    y = ops.quant_lora_matmul_reference(x, wq, A, B, s, bias).double().numpy()
    x64 = x.double().numpy()
    exp = x64 @ _np_dequant(wq).T
    if A is not None:
        exp = exp + s * (x64 @ A.double().numpy().T) @ B.double().numpy().T
    if bias is not None:
        exp = exp + bias.double().numpy()
    tol = ops.error_bound(x, wq, A, B, s, bias).numpy() + 1e-5 * np.abs(exp)   # + the float32 table/absmax
    assert y.shape == exp.shape
    assert np.all(np.abs(y - exp) <= tol), float(np.max(np.abs(y - exp) - tol))


@given(p=problems())
def test_extension_equals_reference_within_the_stated_bound(ext, p):
    x, wq, A, B, s, bias = p
    ref = ops.quant_lora_matmul_reference(x, wq, A, B, s, bias)
    y = ops.quant_lora_matmul(x, wq, A, B, s, bias, use_extension=True)
    assert y.shape == ref.shape and y.dtype == torch.float32
    bound = ops.error_bound(x, wq, A, B, s, bias).to(torch.float32) + 1e-30
    assert bool(((y - ref).abs() <= bound).all()), float(((y - ref).abs() - bound).max())


@pytest.mark.parametrize("N", [1, 3, 8, 16, 17, 130])
@pytest.mark.parametrize("quant", ["nf4", "nf4-dq", "int8"])
def test_extension_batches_at_gpt_shapes(ext, N, quant):
    """The model's own shapes (C=128, 4C=512, 3C=384) at every path: GEMV, small batch, tiled GEMM."""
    g = torch.Generator().manual_seed(N)
    for out_f, in_f in [(384, 128), (128, 512), (512, 128)]:
        W = torch.randn(out_f, in_f, generator=g) * 0.02
        wq = quantize_absmax(W, "row") if quant == "int8" else quantize_nf4(W, 64, quant == "nf4-dq")
        x, A, B = torch.randn(N, in_f, generator=g), torch.randn(4, in_f, generator=g), torch.randn(out_f, 4, generator=g)
        ref = ops.quant_lora_matmul_reference(x, wq, A, B, 2.0, None)
        y = ops.quant_lora_matmul(x, wq, A, B, 2.0, None, use_extension=True)
        assert bool(((y - ref).abs() <= ops.error_bound(x, wq, A, B, 2.0)).all())


@given(p=problems(max_n=20), use_ext=st.booleans())
def test_gradients_match_autograd_through_the_reference(p, use_ext):
    x, wq, A, B, s, bias = p
    if use_ext and ops.extension() is None:
        use_ext = False
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, A, B, bias)]
    twins = [t.clone().requires_grad_(True) if t is not None else None for t in (x, A, B, bias)]
    y = ops.quant_lora_matmul(leaves[0], wq, leaves[1], leaves[2], s, leaves[3], use_extension=use_ext)
    y_ref = ops.quant_lora_matmul_reference(twins[0], wq, twins[1], twins[2], s, twins[3])
    g = torch.randn_like(y_ref)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    for name, a, b in zip(("x", "A", "B", "bias"), leaves, twins):
        if a is not None:
            assert a.grad is not None, name
            assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), (name, (a.grad - b.grad).abs().max())


def test_backward_keeps_no_float_weight():
    """Only x, A, B are saved for backward (the base weight is re-dequantized): measured with hooks."""
    W = torch.randn(64, 32) * 0.02
    wq = quantize_nf4(W, 64, True)
    x, A, B = torch.randn(5, 32, requires_grad=True), torch.randn(2, 32, requires_grad=True), torch.zeros(64, 2, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        ops.quant_lora_matmul(x, wq, A, B, 2.0)
    assert (64, 32) not in saved and (32, 64) not in saved, saved


def test_fallback_when_disabled(monkeypatch):
    """MINIFT_NO_EXT=1: the reference path, bit for bit, and use_extension=True says why it cannot."""
    monkeypatch.setenv("MINIFT_NO_EXT", "1")
    wq = quantize_nf4(torch.randn(8, 16), 8, True)
    x, A, B, b = torch.randn(3, 16), torch.randn(2, 16), torch.randn(8, 2), torch.randn(8)
    assert ops.extension() is None and ops.backend() == "reference (MINIFT_NO_EXT=1)"
    assert torch.equal(ops.quant_lora_matmul(x, wq, A, B, 0.5, b), ops.quant_lora_matmul_reference(x, wq, A, B, 0.5, b))
    with pytest.raises(RuntimeError, match="MINIFT_NO_EXT=1"):
        ops.quant_lora_matmul(x, wq, use_extension=True)


def test_fallback_log_line_in_a_fresh_process():
    code = ("import torch; from minift.quant import ops; from minift.quant.nf4 import quantize_nf4; "
            "ops.quant_lora_matmul(torch.randn(2, 16), quantize_nf4(torch.randn(4, 16), 16)); "
            "ops.quant_lora_matmul(torch.randn(2, 16), quantize_nf4(torch.randn(4, 16), 16))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT),
                       env={**os.environ, "MINIFT_NO_EXT": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("minift.quant.ops:")]
    assert lines == ["minift.quant.ops: quant_lora_matmul uses the reference (MINIFT_NO_EXT=1) path"]


def test_reference_is_used_for_other_dtypes_and_devices(ext):
    """float64 (or a GPU tensor without the CUDA build) goes to the reference, not to a wrong kernel."""
    wq = quantize_nf4(torch.randn(4, 16), 16)
    x = torch.randn(2, 16, dtype=torch.float64)
    assert ops.quant_lora_matmul(x, wq).dtype == torch.float64
    with pytest.raises(RuntimeError, match="does not apply"):
        ops.quant_lora_matmul(x, wq, use_extension=True)


def test_every_decoder_equals_the_reference(ext):
    """MINIFT_EXT_DECODE=shuffle (the default), permute, lut: each within the bound, in a fresh process
    (the decoder is chosen once per process)."""
    code = ("import torch; from minift.quant import ops; from minift.quant.nf4 import quantize_nf4; "
            "g = torch.Generator().manual_seed(0); W = torch.randn(40, 192, generator=g); "
            "x = torch.randn(5, 192, generator=g); A = torch.randn(2, 192, generator=g); B = torch.randn(40, 2, generator=g); "
            "wq = quantize_nf4(W, 64, True); "
            "torch.save((ops.quant_lora_matmul(x, wq, A, B, 0.5, use_extension=True), "
            "ops.quant_lora_matmul_reference(x, wq, A, B, 0.5), ops.error_bound(x, wq, A, B, 0.5)), 'OUT')")
    for mode in ("shuffle", "permute", "lut"):
        path = ROOT / "build" / f"test_ops_{mode}.pt"
        path.parent.mkdir(exist_ok=True)
        r = subprocess.run([sys.executable, "-c", code.replace("OUT", str(path))], capture_output=True, text=True,
                           cwd=str(ROOT), env={**os.environ, "MINIFT_EXT_DECODE": mode}, timeout=120)
        assert r.returncode == 0, r.stderr
        y, ref, bound = torch.load(path)
        path.unlink()
        assert bool(((y - ref).abs() <= bound).all()), (mode, float(((y - ref).abs() - bound).max()))


def test_nf4_linear_and_qlora_use_the_op():
    """NF4Linear's forward is quant_lora_matmul: equal to the op called directly, and to the reference."""
    lin = nn.Linear(64, 24)
    m = NF4Linear(lin, 64, True)
    x = torch.randn(2, 5, 64)
    direct = ops.quant_lora_matmul(x, m.state(), bias=m.bias)
    assert torch.equal(m(x), direct)
    ref = x @ dequantize_nf4(m.state()).T + lin.bias
    assert bool(((m(x) - ref).abs() <= ops.error_bound(x, m.state(), bias=m.bias) + 1e-6).all())


# ---- bad inputs raise, never crash -----------------------------------------------------------------

def _nf4(out_f=8, in_f=16):
    return quantize_nf4(torch.randn(out_f, in_f), 8, True)


@pytest.mark.parametrize("call, err, match", [
    (lambda: ops.quant_lora_matmul(torch.randn(2, 15), _nf4()), ValueError, r"in=16"),
    (lambda: ops.quant_lora_matmul(torch.randint(0, 3, (2, 16)), _nf4()), TypeError, "floating-point"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16), torch.randn(8, 16)), TypeError, "NF4State"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16), quantize_absmax(torch.randn(8, 16), "tensor")), ValueError, "per row"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16), quantize_zeropoint(torch.randn(8, 16), "row")), ValueError, "zero point"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16), _nf4(), A=torch.randn(2, 16)), ValueError, "A and B"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16), _nf4(), torch.randn(2, 16), torch.randn(8, 3)), ValueError, r"B \(out=8, r\)"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16), _nf4(), bias=torch.randn(7)), ValueError, r"bias must be"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16, device="meta"), _nf4()), ValueError, "meta"),
    (lambda: ops.quant_lora_matmul(torch.randn(2, 16), _nf4(), scaling=float("nan")), TypeError, "scaling"),
])
def test_bad_inputs_raise(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_the_raw_kernel_checks_its_inputs(ext):
    """TORCH_CHECKs in quant_lora.cpp: a Python RuntimeError for each bad input, never a crash."""
    wq = quantize_nf4(torch.randn(8, 16), 8)
    e, e8 = torch.empty(0), torch.empty(0, dtype=torch.int8)
    code = torch.tensor(NF4_PUBLISHED, dtype=torch.float32)

    def call(x=None, packed=None, out=8, in_=16, absmax=None, A=e, B=e, bias=e, code_=code):
        x = torch.randn(2, 16) if x is None else x
        return ext.nf4_lora_matmul(x, wq.packed if packed is None else packed, out, in_,
                                   wq.absmax if absmax is None else absmax, e8, e, 0.0, 256, code_, 8, A, B, 1.0, bias, True)

    assert call().shape == (2, 8)
    bad = [dict(x=torch.randn(2, 16, dtype=torch.float64)), dict(x=torch.randn(16, 2).T),
           dict(x=torch.randn(2, 16, device="meta")), dict(packed=wq.packed[:-1]), dict(out=16, in_=8),
           dict(absmax=wq.absmax[:-1]), dict(A=torch.randn(2, 15), B=torch.randn(8, 2)),
           dict(A=torch.randn(2, 16), B=torch.randn(8, 3)), dict(bias=torch.randn(9)), dict(code_=code[:8])]
    for kw in bad:
        with pytest.raises(RuntimeError):
            call(**kw)
            pytest.fail(f"no error for {kw}")
    with pytest.raises(RuntimeError):
        ext.int8_lora_matmul(torch.randn(2, 16), torch.zeros(8, 15, dtype=torch.int8), torch.ones(8), e, e, 1.0, e, True)
    with pytest.raises(RuntimeError):
        ext.int8_lora_matmul(torch.randn(2, 16), torch.zeros(8, 16, dtype=torch.int8), torch.ones(7), e, e, 1.0, e, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: the CUDA kernel is compiled-but-unverified")
def test_cuda_kernel_matches_reference(ext):
    if not ext.cuda:
        pytest.skip("the extension was built without CUDA")
    for out_f, in_f, N in [(384, 128, 1), (96, 64, 9), (10, 6, 3)]:
        W = torch.randn(out_f, in_f)
        wq = quantize_nf4(W, 2 if in_f == 6 else 64, True)
        x, A, B, b = torch.randn(N, in_f), torch.randn(3, in_f), torch.randn(out_f, 3), torch.randn(out_f)
        ref = ops.quant_lora_matmul_reference(x, wq, A, B, 0.5, b)
        on = lambda t: t.cuda()  # noqa: E731
        wq_gpu = ops.NF4State(**{**wq.__dict__, **{k: on(v) for k, v in wq.tensors().items()}})
        y = ops.quant_lora_matmul(on(x), wq_gpu, on(A), on(B), 0.5, on(b), use_extension=True).cpu()
        assert bool(((y - ref).abs() <= ops.error_bound(x, wq, A, B, 0.5, b) + 1e-6).all())


def test_bench_kernels_fast_prints_ratios_against_dense_measured_in_the_same_run(capsys):
    from minift.bench import BENCHES, bench_kernels
    assert BENCHES["kernels"] is bench_kernels
    rows = bench_kernels(fast=True)
    out = capsys.readouterr().out
    assert "measured copy bandwidth" in out and "speed-up vs fp32" in out
    paths = {r["path"] for r in rows}
    assert {"float32 dense x Wᵀ", "NF4 dequantize-then-matmul"} <= paths
    assert ("NF4 fused kernel" in paths) == (ops.extension() is not None)
    for r in rows:
        assert r["ms"] > 0 and r["weight_GBps"] > 0 and r["vs_limit"] > 0
        if r["path"] == "float32 dense x Wᵀ":
            assert r["vs_dense"] == 1.0


def test_a_build_killed_half_way_does_not_block_later_loads(tmp_path, monkeypatch):
    """torch's build lock is a plain file that a killed build leaves behind (every later load would
    wait for it forever); the loader removes it once it holds its own lock, which the OS frees."""
    import importlib.util
    import torch.utils.cpp_extension as cpp
    spec = importlib.util.spec_from_file_location("loader_under_test", ROOT / "cuda_ext" / "loader.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    monkeypatch.setenv("MINIFT_EXT_DIR", str(tmp_path))
    seen = []

    def fake_load(name, build_directory, **kwargs):
        seen.append((Path(build_directory) / "lock").exists())
        return "module"

    monkeypatch.setattr(cpp, "load", fake_load)
    build = loader.plan()[3]
    assert build.parent == tmp_path                                   # MINIFT_EXT_DIR is honoured
    build.mkdir(parents=True)
    (build / "lock").write_text("")                                   # what a killed build leaves
    assert loader.load() == "module" and seen == [False]
