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
from hypothesis import assume, given
from hypothesis import strategies as st

from minift.quant import ops
from minift.quant.int8 import Int8Tensor, quantize_absmax, quantize_zeropoint
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


def _np_definition(x, wq, A, B, s, bias):
    """y = x Ŵᵀ + s (x Aᵀ) Bᵀ + b in float64 numpy, from the tensors' own values (any dtype)."""
    x64 = x.double().numpy()
    exp = x64 @ _np_dequant(wq).T
    if A is not None:
        exp = exp + s * (x64 @ A.double().numpy().T) @ B.double().numpy().T
    if bias is not None:
        exp = exp + bias.double().numpy()
    return exp


@given(p=problems())
def test_reference_matches_float64_numpy(p):
    x, wq, A, B, s, bias = p
    y = ops.quant_lora_matmul_reference(x, wq, A, B, s, bias).double().numpy()
    exp = _np_definition(x, wq, A, B, s, bias)
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


@given(p=problems(), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       same_dtype_lora=st.booleans(), use_ext=st.booleans())
def test_every_dtype_matches_the_float64_definition(p, dtype, same_dtype_lora, use_ext):
    """x in float32 / bfloat16 / float16 (A, B, bias in x's dtype or float32), through the extension
    (GEMV, tiled GEMM and scalar paths, NF4 and int8): y in x's dtype, within error_bound(weight_rounded=
    False) of the float64 definition (the CPU kernel never rounds Ŵ). The reference in bfloat16 / float16
    rounds Ŵ and every LoRA step: checked without LoRA and bias, where error_bound's default covers it."""
    x, wq, A, B, s, bias = p
    use_ext = use_ext and ops.extension() is not None
    ldt = dtype if same_dtype_lora else torch.float32
    x = x.to(dtype)
    A, B, bias = (None if t is None or (not use_ext and dtype != torch.float32) else t.to(ldt) for t in (A, B, bias))
    exp = _np_definition(x, wq, A, B, s, bias)                                 # from the rounded inputs
    assume(bool(np.all(np.abs(exp) < 6e4)))                                    # float16 overflows at 65504
    y = ops.quant_lora_matmul(x, wq, A, B, s, bias, use_extension=use_ext)
    assert y.dtype == dtype and y.shape == exp.shape
    tol = ops.error_bound(x, wq, A, B, s, bias, weight_rounded=not use_ext).numpy() + 1e-5 * np.abs(exp)
    err = np.abs(y.double().numpy() - exp)
    assert np.all(err <= tol), float(np.max(err - tol))


def test_the_bfloat16_bound_catches_bfloat16_accumulation():
    """With positive x and Ŵ (no cancellation, |y| = M), summing in bfloat16 breaks error_bound while
    the op's float32 sum rounded once to bfloat16 stays inside it (so the dtype test above can fail);
    Ŵ rounded to bfloat16 first (the GPU's large-batch path) stays inside the default bound."""
    g = torch.Generator().manual_seed(0)
    wq = quantize_nf4(torch.rand(16, 256, generator=g) + 0.5, 64)              # positive: NF4 codes > 0
    x = (torch.rand(4, 256, generator=g) + 0.5).to(torch.bfloat16)
    exp = _np_definition(x, wq, None, None, 1.0, None)
    tol = ops.error_bound(x, wq, weight_rounded=False).numpy()
    W = ops.dequantize(wq)                                                     # (16, 256) float32
    once = (x.float() @ W.T).to(torch.bfloat16).double().numpy()
    acc = torch.zeros(4, 16, dtype=torch.bfloat16)
    for k in range(256):                                                       # y += x_k ŵ_k, in bfloat16
        acc = (acc.float() + x[:, k:k + 1].float() * W[:, k]).to(torch.bfloat16)
    w_rounded = (x.float() @ W.to(torch.bfloat16).float().T).to(torch.bfloat16).double().numpy()
    assert np.all(np.abs(once - exp) <= tol)
    assert not np.all(np.abs(acc.double().numpy() - exp) <= tol)
    assert np.all(np.abs(w_rounded - exp) <= ops.error_bound(x, wq).numpy())


def test_lora_and_bias_in_any_float_dtype_are_converted_once(ext):
    """float64 / bfloat16 A, B, bias into the kernel: the same bits as passing them converted to float32."""
    g = torch.Generator().manual_seed(1)
    for wq in (quantize_nf4(torch.randn(12, 32, generator=g), 16, True), quantize_absmax(torch.randn(12, 32, generator=g), "row")):
        for N in (3, 20):
            x = torch.randn(N, 32, generator=g)
            for dt in (torch.float64, torch.bfloat16):
                A, B, b = torch.randn(2, 32, dtype=dt), torch.randn(12, 2, dtype=dt), torch.randn(12, dtype=dt)
                y = ops.quant_lora_matmul(x, wq, A, B, 0.5, b, use_extension=True)
                assert torch.equal(y, ops.quant_lora_matmul(x, wq, A.float(), B.float(), 0.5, b.float(), use_extension=True))


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


def test_reference_path_block_switches_the_extension_off_and_back(monkeypatch):
    """Inside `with ops.reference_path(why)`: the reference bit for bit, use_extension=True names `why`,
    blocks nest, and on leaving, the backend is what it was (the extension when it is built)."""
    monkeypatch.delenv("MINIFT_NO_EXT", raising=False)
    before = ops.backend()
    wq = quantize_nf4(torch.randn(8, 16), 8, True)
    x, A, B = torch.randn(3, 16), torch.randn(2, 16), torch.randn(8, 2)
    with ops.reference_path("counting FLOPs"):
        assert ops.extension() is None and ops.backend() == "reference (counting FLOPs)"
        assert torch.equal(ops.quant_lora_matmul(x, wq, A, B, 0.5), ops.quant_lora_matmul_reference(x, wq, A, B, 0.5))
        with ops.reference_path("inner"):
            assert ops.backend() == "reference (inner)"
        assert ops.backend() == "reference (counting FLOPs)"
        with pytest.raises(RuntimeError, match="counting FLOPs"):
            ops.quant_lora_matmul(x, wq, use_extension=True)
    assert ops.backend() == before
    with pytest.raises(KeyError):                    # an exception inside the block still closes it
        with ops.reference_path("raising"):
            raise KeyError("x")
    assert ops.backend() == before


@pytest.mark.parametrize("value", ["x", "0", "-3", "1.5", str(2 ** 63)])
def test_a_bad_mma_batch_in_the_environment_is_an_error_before_anything_loads(value, monkeypatch):
    """MINIFT_MMA_AUTO_MIN_N (the CUDA wrapper's tensor-core batch, for trying the bench's suggestion without
    a rebuild) must be an integer >= 1: anything else raises, naming the variable, before the extension is
    loaded, and again at the next call (it is not marked as tried)."""
    monkeypatch.delenv("MINIFT_NO_EXT", raising=False)
    monkeypatch.setattr(ops, "_ext_tried", False)
    monkeypatch.setenv(ops.MMA_ENV, value)
    for _ in range(2):
        with pytest.raises(ValueError, match=f"MINIFT_MMA_AUTO_MIN_N={value!r} must be a batch size"):
            ops.extension()
    assert ops._ext_tried is False
    assert ops.mma_batch("12") == 12


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
        y, ref, bound = torch.load(path, weights_only=True)
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


def _raw_nf4_args(wq, x, device="cpu"):
    """The raw entry points' arguments for an NF4State, as keyword overrides can replace them."""
    e, e8 = torch.empty(0, device=device), torch.empty(0, dtype=torch.int8, device=device)
    dq = wq.double_quant
    return dict(x=x, packed=wq.packed, out=wq.shape[0], in_=wq.shape[1], absmax=e if dq else wq.absmax,
                absmax_q=wq.absmax_q if dq else e8, dq_scales=wq.absmax_scales if dq else e,
                dq_mean=float(wq.absmax_mean) if dq else 0.0, dq_block=wq.dq_block_size,
                code=torch.tensor(NF4_PUBLISHED, dtype=torch.float32, device=device), block_size=wq.block_size,
                A=e, B=e, scaling=1.0, bias=e)


def _raw_call(fn, a, *extra):
    return fn(a["x"], a["packed"], a["out"], a["in_"], a["absmax"], a["absmax_q"], a["dq_scales"], a["dq_mean"],
              a["dq_block"], a["code"], a["block_size"], a["A"], a["B"], a["scaling"], a["bias"], *extra)


def _bad_raw_inputs(wq, wq_dq, dev):
    """(label, weight, overrides) for an (8, 16) NF4 weight with block 8: each one a bad input that the
    raw NF4 entry points must refuse with a RuntimeError."""
    def r(*shape, device=dev, dtype=torch.float32):
        return torch.randn(*shape, device=device, dtype=dtype)
    meta, f64 = "meta", torch.float64
    return [
        ("x float64", wq, dict(x=r(2, 16, dtype=f64))), ("x int", wq, dict(x=torch.ones(2, 16, dtype=torch.int32, device=dev))),
        ("x transposed", wq, dict(x=r(16, 2).T)), ("x 1-D", wq, dict(x=r(16))), ("x 3-D", wq, dict(x=r(1, 2, 16))),
        ("x on meta", wq, dict(x=r(2, 16, device=meta))), ("x wrong in", wq, dict(x=r(2, 15))),
        ("out, in swapped", wq, dict(out=16, in_=8)), ("out negative", wq, dict(out=-8)),
        ("out·in overflows", wq, dict(out=2 ** 62)), ("block 0", wq, dict(block_size=0)), ("block odd", wq, dict(block_size=3)),
        ("block not dividing", wq, dict(block_size=6)), ("packed short", wq, dict(packed=wq.packed[:-1])),
        ("packed int8", wq, dict(packed=wq.packed.to(torch.int8))), ("packed 2-D", wq, dict(packed=wq.packed.reshape(8, 8))),
        ("packed strided", wq, dict(packed=torch.zeros(128, dtype=torch.uint8, device=dev)[::2])),
        ("packed on meta", wq, dict(packed=wq.packed.to(meta))), ("absmax short", wq, dict(absmax=wq.absmax[:-1])),
        ("absmax float64", wq, dict(absmax=wq.absmax.double())), ("absmax on meta", wq, dict(absmax=wq.absmax.to(meta))),
        ("code short", wq, dict(code=r(8))), ("code float64", wq, dict(code=r(16, dtype=f64))),
        ("code on meta", wq, dict(code=r(16, device=meta))),
        ("no absmax at all", wq_dq, dict(absmax_q=torch.empty(0, dtype=torch.int8, device=dev))),
        ("absmax_q short", wq_dq, dict(absmax_q=wq_dq.absmax_q[:-1])),
        ("absmax_q uint8", wq_dq, dict(absmax_q=wq_dq.absmax_q.to(torch.uint8))),
        ("dq_block 0", wq_dq, dict(dq_block=0)), ("dq_scales short", wq_dq, dict(dq_block=4)),
        ("dq_block huge", wq_dq, dict(dq_block=2 ** 63 - 1)),
        ("dq_scales on meta", wq_dq, dict(dq_scales=wq_dq.absmax_scales.to(meta))),
        ("A without B", wq, dict(A=r(2, 16))), ("B without A", wq, dict(B=r(8, 2))),
        ("A wrong in", wq, dict(A=r(2, 15), B=r(8, 2))), ("B wrong r", wq, dict(A=r(2, 16), B=r(8, 3))),
        ("A 1-D", wq, dict(A=r(32), B=r(8, 2))), ("A int", wq, dict(A=torch.ones(2, 16, dtype=torch.int64, device=dev), B=r(8, 2))),
        ("A on meta", wq, dict(A=r(2, 16, device=meta), B=r(8, 2))), ("B on meta", wq, dict(A=r(2, 16), B=r(8, 2, device=meta))),
        ("bias short", wq, dict(bias=r(9))), ("bias 2-D", wq, dict(bias=r(1, 8))),
        ("bias int", wq, dict(bias=torch.ones(8, dtype=torch.int32, device=dev))), ("bias on meta", wq, dict(bias=r(8, device=meta))),
    ]


def test_the_raw_kernel_checks_its_inputs(ext):
    """TORCH_CHECKs in quant_lora.cpp, before any pointer is read: a Python RuntimeError for each bad input
    of either CPU entry point, never a crash; the good call gives the same result after them."""
    g = torch.Generator().manual_seed(0)
    wq, wq_dq = quantize_nf4(torch.randn(8, 16, generator=g), 8), quantize_nf4(torch.randn(8, 16, generator=g), 8, True, dq_block_size=2)
    x = torch.randn(2, 16, generator=g)
    good = _raw_call(ext.nf4_lora_matmul, _raw_nf4_args(wq, x), True)
    assert good.shape == (2, 8)
    for label, w, kw in _bad_raw_inputs(wq, wq_dq, "cpu"):
        with pytest.raises(RuntimeError):
            _raw_call(ext.nf4_lora_matmul, {**_raw_nf4_args(w, x), **kw}, True)
            pytest.fail(f"no error for {label}")
    assert torch.equal(_raw_call(ext.nf4_lora_matmul, _raw_nf4_args(wq, x), True), good)
    e, q, one = torch.empty(0), torch.zeros(8, 16, dtype=torch.int8), torch.ones(8)
    for label, args in [("q wrong in", (x, torch.zeros(8, 15, dtype=torch.int8), one, e, e)),
                        ("scale short", (x, q, torch.ones(7), e, e)), ("scale float64", (x, q, one.double(), e, e)),
                        ("q uint8", (x, q.to(torch.uint8), one, e, e)), ("q transposed", (x[:, :8], q.T, torch.ones(16), e, e)),
                        ("q on meta", (x, q.to("meta"), one, e, e)), ("x on meta", (x.to("meta"), q, one, e, e)),
                        ("x float64", (x.double(), q, one, e, e)), ("x 1-D", (x[0], q, one, e, e)),
                        ("A without B", (x, q, one, torch.randn(2, 16), e)),
                        ("B wrong", (x, q, one, torch.randn(2, 16), torch.randn(7, 2)))]:
        with pytest.raises(RuntimeError):
            ext.int8_lora_matmul(*args, 1.0, e, True)
            pytest.fail(f"no error for {label}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_raw_kernels_take_an_empty_batch_and_every_dtype(ext, dtype):
    """N = 0 (an empty tensor's data pointer is null) and each activation dtype: y (N, out) in x's dtype."""
    wq = quantize_nf4(torch.randn(8, 16), 8, True, dq_block_size=2)
    for N in (0, 1, 17):
        x = torch.randn(N, 16).to(dtype)
        y = _raw_call(ext.nf4_lora_matmul, _raw_nf4_args(wq, x), True)
        assert y.dtype == dtype and y.shape == (N, 8)
        w8 = Int8Tensor(torch.ones(8, 16, dtype=torch.int8), torch.ones(8), None, "row", 16)   # ŵ = 1
        y8 = ext.int8_lora_matmul(x, w8.q, w8.scale, torch.empty(0), torch.empty(0), 1.0, torch.empty(0), True)
        assert y8.dtype == dtype and y8.shape == (N, 8)
        exp = x.double().sum(1, keepdim=True).expand(N, 8)                            # Σ_k x_k
        assert bool(((y8.double() - exp).abs() <= ops.error_bound(x, w8, weight_rounded=False)).all())


def test_the_cuda_entry_point_exists_only_in_a_cuda_build(ext):
    assert hasattr(ext, "nf4_lora_matmul_cuda") == bool(ext.cuda)


# ---- the CUDA kernels (tests/conftest.py's cuda_device: skipped where there is no GPU) ---------------

def _on(wq, dev):
    return ops.NF4State(**{**wq.__dict__, **{k: v.to(dev) for k, v in wq.tensors().items()}})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_the_float64_definition(ext, cuda_device, dtype):
    """Both CUDA paths (GEMV for N <= 16, dequantize + cuBLAS above), with and without double
    quantization, LoRA and bias, ragged shapes: within error_bound of the float64 definition."""
    if not ext.cuda:
        pytest.skip("the extension was built without CUDA")
    g = torch.Generator().manual_seed(0)
    cases = [(384, 128, 1, 64, True), (96, 64, 9, 64, False), (10, 6, 3, 2, True), (1, 40, 5, 8, False),
             (33, 24, 16, 6, True), (17, 100, 17, 10, True), (64, 256, 40, 64, False), (5, 18, 130, 2, True)]
    on = lambda t: None if t is None else t.to(cuda_device)  # noqa: E731
    for out_f, in_f, N, bs, dq in cases:
        wq = quantize_nf4(torch.randn(out_f, in_f, generator=g), bs, dq, dq_block_size=3)
        x = torch.randn(N, in_f, generator=g).to(dtype)
        for lora in (False, True):
            A, B, b = (torch.randn(3, in_f, generator=g), torch.randn(out_f, 3, generator=g),
                       torch.randn(out_f, generator=g)) if lora else (None, None, None)
            exp = _np_definition(x, wq, A, B, 0.5, b)
            y = ops.quant_lora_matmul(on(x), _on(wq, cuda_device), on(A), on(B), 0.5, on(b), use_extension=True)
            assert y.dtype == dtype and y.device.type == "cuda" and y.shape == (N, out_f)
            tol = ops.error_bound(x, wq, A, B, 0.5, b).numpy() + 1e-5 * np.abs(exp)
            err = np.abs(y.cpu().double().numpy() - exp)
            assert np.all(err <= tol), (out_f, in_f, N, bs, dq, lora, float(np.max(err - tol)))


def _cuda_ext_module(relpath: str, name: str):
    """A script of cuda_ext/ (not a package) imported fresh as module `name`: the loader, the emulator's build.py."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "cuda_ext" / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _host_toolchain():
    """(CUDA include folder, host C++ compiler), either None where missing: the CPU emulator's own lookup
    (cuda_ext/emulator/build.py), which the layout test shares."""
    emu = _cuda_ext_module("emulator/build.py", "minift_emulator_build")
    return emu.cuda_include(), emu.compiler()


def test_the_tensor_core_layout_is_the_ptx_fragment_layout(tmp_path):
    """cuda_ext/test_mma_layout.cu, built by the host C++ compiler against the CUDA headers and run on the CPU
    (no GPU, no nvcc needed: everything it checks is host code): the registers each lane builds for mma.sync,
    placed by the PTX ISA's fragment layout, multiply to Σ_k fl_T(ŵ) x; the x tile's swizzle is free of bank
    conflicts. Skips where no CUDA toolkit's headers are installed."""
    inc, cxx = _host_toolchain()
    if inc is None or cxx is None:
        pytest.skip("no CUDA toolkit headers (cuda_bf16.h) or no C++ compiler here")
    exe = tmp_path / "layout"
    src = Path(__file__).resolve().parents[1] / "cuda_ext" / "test_mma_layout.cu"
    build = subprocess.run([cxx, "-x", "c++", "-std=c++17", "-O1", f"-I{inc}", str(src), "-o", str(exe)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip().endswith("PASS"), run.stdout[-3000:]
    assert run.stdout.count("PASS tensor-core layout") == 2                      # bf16 and fp16


def test_the_cuda_entry_point_checks_its_inputs(ext, cuda_device):
    """The CUDA wrapper: every bad input (also a CPU or meta x, a tensor on another device) is a
    RuntimeError; an empty batch and an x at an odd offset (not 16-byte aligned) work."""
    if not ext.cuda:
        pytest.skip("the extension was built without CUDA")
    g = torch.Generator().manual_seed(0)
    wq, wq_dq = quantize_nf4(torch.randn(8, 16, generator=g), 8), quantize_nf4(torch.randn(8, 16, generator=g), 8, True, dq_block_size=2)
    gq, gq_dq = _on(wq, cuda_device), _on(wq_dq, cuda_device)
    x = torch.randn(2, 16, generator=g)
    xg = x.to(cuda_device)
    good = _raw_call(ext.nf4_lora_matmul_cuda, _raw_nf4_args(gq, xg, cuda_device), 0)
    assert torch.allclose(good.cpu(), _raw_call(ext.nf4_lora_matmul, _raw_nf4_args(wq, x), True), rtol=1e-5, atol=1e-5)
    bad = _bad_raw_inputs(gq, gq_dq, cuda_device) + [
        ("x on the CPU", gq, dict(x=x)), ("packed on the CPU", gq, dict(packed=wq.packed)),
        ("absmax on the CPU", gq, dict(absmax=wq.absmax)), ("code on the CPU", gq, dict(code=torch.zeros(16))),
        ("A on the CPU", gq, dict(A=torch.randn(2, 16), B=torch.randn(8, 2, device=cuda_device))),
        ("bias on the CPU", gq, dict(bias=torch.randn(8)))]
    for label, w, kw in bad:
        with pytest.raises(RuntimeError):
            _raw_call(ext.nf4_lora_matmul_cuda, {**_raw_nf4_args(w, xg, cuda_device), **kw}, 0)
            torch.cuda.synchronize()
            pytest.fail(f"no error for {label}")
    with pytest.raises(RuntimeError):                                  # a CUDA x into the CPU entry point
        _raw_call(ext.nf4_lora_matmul, _raw_nf4_args(wq, xg), True)
    empty = _raw_call(ext.nf4_lora_matmul_cuda, _raw_nf4_args(gq, torch.empty(0, 16, device=cuda_device), cuda_device), 0)
    assert empty.shape == (0, 8)
    odd = torch.randn(2 * 16 + 1, device=cuda_device)[1:].view(2, 16)             # 4 bytes past an allocation
    y_odd = _raw_call(ext.nf4_lora_matmul_cuda, _raw_nf4_args(gq, odd, cuda_device), 0)
    assert torch.equal(y_odd, _raw_call(ext.nf4_lora_matmul_cuda, _raw_nf4_args(gq, odd.clone(), cuda_device), 0))
    torch.cuda.synchronize()
    assert torch.equal(_raw_call(ext.nf4_lora_matmul_cuda, _raw_nf4_args(gq, xg, cuda_device), 0), good)
    # kernel: only 0, 1, 2; the tensor cores (2) refuse a float32 x, and in = 16 (128 must divide in)
    for label, kernel, xx in (("kernel 3", 3, xg), ("kernel -1", -1, xg), ("tensor cores, float32 x", 2, xg),
                              ("tensor cores, in = 16", 2, xg.bfloat16())):
        with pytest.raises(RuntimeError):
            _raw_call(ext.nf4_lora_matmul_cuda, _raw_nf4_args(gq, xx, cuda_device), kernel)
            torch.cuda.synchronize()
            pytest.fail(f"no error for {label}")


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
    import torch.utils.cpp_extension as cpp
    loader = _cuda_ext_module("loader.py", "loader_under_test")
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


def test_the_cuda_build_copies_every_header_its_sources_include():
    """The loader compiles in a build folder holding copies of quant_lora.cpp and CUDA_FILES only: a local header
    missing from that list breaks the CUDA build, which no CPU machine runs. Every `#include "..."` reachable
    from those files must be in the list (and exist)."""
    import re
    loader = _cuda_ext_module("loader.py", "loader_files")
    listed = {"quant_lora.cpp", *loader.CUDA_FILES}
    todo, seen = list(listed), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        text = (ROOT / "cuda_ext" / f).read_text()
        todo += re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.M)
    assert seen - listed == set(), f"included but not copied into the build: {sorted(seen - listed)}"


@pytest.mark.skipif(os.name != "posix", reason="the stand-in nvcc is a shell script")
def test_the_cuda_half_is_built_only_with_a_toolkit_that_has_its_headers(tmp_path, monkeypatch):
    """torch guesses CUDA_HOME as two folders above the nvcc on PATH; a wrapper script (/usr/local/bin/nvcc
    exec-ing the real one) makes that /usr/local, and a CUDA build then fails on its first #include, so
    on a GPU machine the whole extension was lost. The loader builds the CUDA half only with headers there,
    and names the toolkit that nvcc itself reports (`nvcc -dryrun`: TOP=...), for CUDA_HOME."""
    import torch.utils.cpp_extension as cpp
    loader = _cuda_ext_module("loader.py", "loader_toolkit")
    real = tmp_path / "cuda-99.0"
    (real / "bin").mkdir(parents=True)
    wrapper = tmp_path / "wrap" / "bin" / "nvcc"                       # a wrapper, as on some images
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\necho "#$ TOP={real}/bin/.." >&2\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp, "CUDA_HOME", str(tmp_path / "wrap"))     # torch's guess from the wrapper

    assert "no CUDA toolkit" in loader.cuda_toolkit_problem(None)
    problem = loader.cuda_toolkit_problem(cpp.CUDA_HOME)              # nvcc's own toolkit has no headers either
    assert "has no include/cuda_runtime_api.h" in problem and "set CUDA_HOME" in problem
    assert "-DMINIFT_WITH_CUDA" not in loader.plan()[2] and loader.plan()[1] == ["quant_lora.cpp"]

    (real / "include").mkdir()
    (real / "include" / "cuda_runtime_api.h").write_text("")
    assert loader.nvcc_toolkit() == str(real.resolve())
    assert loader.cuda_toolkit_problem(cpp.CUDA_HOME).endswith(f"export CUDA_HOME={real.resolve()}")
    assert "-DMINIFT_WITH_CUDA" not in loader.plan()[2]                # torch's own guess is still the wrong one

    monkeypatch.setattr(cpp, "CUDA_HOME", str(real))                  # what `export CUDA_HOME=...` gives torch
    assert loader.cuda_toolkit_problem(cpp.CUDA_HOME) is None
    name, files, cflags, _ = loader.plan()
    assert "-DMINIFT_WITH_CUDA" in cflags and name.endswith("_cuda") and files == ["quant_lora.cpp", *loader.CUDA_FILES]
