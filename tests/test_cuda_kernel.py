"""The CUDA kernels (cuda_ext/quant_lora_cuda.cu, quant_lora_mma.cu) through quant_lora_matmul, against the float64 definition.

GPU-only: every test takes the `cuda_device` fixture and skips where torch sees no GPU. On a GPU with the
extension built with CUDA (cuda_ext/loader.py), x (N, in) in float32 / bfloat16 / float16 goes to

    N <= 16:  nf4_lora_gemv (fast path: in % 32 == 0 and 32 | block_size; else the generic path)
    N >  16:  nf4_dequantize to x's dtype, then cuBLAS + the LoRA branch + bias

(the automatic choice), and, forced with kernel="tensor", to nf4_lora_mma (bf16 / fp16 x, in % 128 == 0,
32 | block_size, sm_80+; Ŵ rounded to x's dtype)

and each result must lie within ops.error_bound of quant_lora_matmul_reference evaluated in float64 on the
CPU (the definition: y = x Ŵᵀ + s (x Aᵀ) Bᵀ + b). The standalone cuda_ext/test_quant_lora_cuda.cu checks
the same kernels without torch.
"""
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.quant import ops
from minift.quant.nf4 import quantize_nf4

pytestmark = pytest.mark.lesson13

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def cuda_ext():
    """The extension built with CUDA, or a skip saying why not."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU here (torch.cuda.is_available() is False)")
    m = ops.extension()
    if m is None or not getattr(m, "cuda", False):
        pytest.skip(f"cuda_ext is not built with CUDA here: {ops.backend()}")
    return m


def on(state, device):
    """The same NF4State with every tensor on `device` (quantized on the CPU, so the reference is CPU-only)."""
    return dataclasses.replace(state, **{k: v.to(device) for k, v in state.tensors().items()})


@st.composite
def problems(draw):
    """A random op. Half the draws take the GEMV's fast path (in % 32 == 0, block size a multiple of 32),
    half any shape (in odd: rows start mid-byte; blocks not dividing in; blocks of 2). N 1..40 covers
    every template width (1, 2, 4, 8, 16) and the dequantize + cuBLAS path (N > 16)."""
    fast = draw(st.booleans())
    out_f = draw(st.integers(1, 300))
    in_f = 32 * draw(st.integers(1, 16)) if fast else draw(st.integers(2, 520))
    sizes = [b for b in range(2, 257, 2) if (out_f * in_f) % b == 0 and (not fast or b % 32 == 0)]
    if not sizes:                                              # out·in odd: no even block divides it
        in_f += 1
        sizes = [b for b in range(2, 257, 2) if (out_f * in_f) % b == 0]
    bs = draw(st.sampled_from(sizes))
    N = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 9, 16]) if draw(st.booleans()) else st.integers(1, 40))
    return draw_op(draw, out_f, in_f, bs, N, DTYPES)


def draw_op(draw, out_f, in_f, bs, N, dtypes):
    """The rest of a random op of that shape: a weight (small or unit scale; plain or double-quantized
    absmax), x (N, in) in one of dtypes, a LoRA pair of rank 1..40 or none, a bias or none, a scaling."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    W = torch.randn(out_f, in_f, generator=g) * draw(st.sampled_from([0.02, 1.0]))
    wq = quantize_nf4(W, bs, draw(st.booleans()), dq_block_size=draw(st.sampled_from([3, 256])))
    x = torch.randn(N, in_f, generator=g).to(draw(st.sampled_from(dtypes)))
    r = draw(st.integers(1, 40))
    lora = draw(st.booleans())
    A = torch.randn(r, in_f, generator=g) if lora else None
    B = torch.randn(out_f, r, generator=g) if lora else None
    bias = torch.randn(out_f, generator=g) if draw(st.booleans()) else None
    return x, wq, A, B, draw(st.sampled_from([1.0, 0.5, -2.0])), bias


GEMV_MAX_N = 16                                                # cuda_ext/quant_lora_cuda.h


def assert_equals_definition(dev, x, wq, A, B, s, bias, ext=None):
    """y on the GPU vs the float64 definition on the CPU, within ops.error_bound for x's dtype. The GEMV
    (N <= GEMV_MAX_N) never rounds Ŵ, so it is held to the bound without that term (weight_rounded=False);
    above it (and from the extension's mma_auto_min_n on, for bf16 / fp16 x: the tensor cores may run)
    the wrapper rounds Ŵ to x's dtype, which error_bound's default covers (cuBLAS is
    held to float32 reductions by the no_reduced_precision fixture). ext given: its tensor-core kernel,
    which rounds Ŵ at every N, instead of quant_lora_matmul."""
    d64 = lambda t: None if t is None else t.double()          # noqa: E731
    ref = ops.quant_lora_matmul_reference(x.double(), wq, d64(A), d64(B), s, d64(bias))         # (N, out) float64
    cu = lambda t: None if t is None else t.to(dev)            # noqa: E731
    if ext is None:
        y = ops.quant_lora_matmul(x.to(dev), on(wq, dev), cu(A), cu(B), s, cu(bias), use_extension=True)
    else:
        y = ops._ext_forward(ext, x.to(dev), on(wq, dev), cu(A), cu(B), s, cu(bias), kernel="tensor")
    assert y.device.type == dev.type and y.dtype == x.dtype and y.shape == ref.shape
    mma_from = ops.extension().mma_auto_min_n()                # where "auto" may take the tensor cores
    rounded = ext is not None or x.shape[0] > GEMV_MAX_N or (x.dtype != torch.float32 and x.shape[0] >= mma_from)
    bound = ops.error_bound(x, wq, A, B, s, bias, weight_rounded=rounded)                       # (N, out) float64
    err = (y.cpu().double() - ref).abs()
    assert bool((err <= bound).all()), (f"N={x.shape[0]} out,in={tuple(wq.shape)} bs={wq.block_size} "
                                        f"dq={wq.double_quant} {x.dtype}: worst err - bound "
                                        f"{float((err - bound).max()):.3g}")


@pytest.fixture(autouse=True)
def no_reduced_precision(monkeypatch):
    """cuBLAS may otherwise add bf16/fp16 partial sums in that precision (torch's default), which no
    float32 bound covers; the kernels themselves always accumulate in float32."""
    m = torch.backends.cuda.matmul
    monkeypatch.setattr(m, "allow_bf16_reduced_precision_reduction", False)
    monkeypatch.setattr(m, "allow_fp16_reduced_precision_reduction", False)


@settings(max_examples=120, deadline=None)
@given(p=problems())
def test_cuda_kernel_equals_the_float64_definition(cuda_device, cuda_ext, p):
    assert_equals_definition(cuda_device, *p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 2, 3, 4, 7, 8, 12, 16, 17, 128])
def test_every_template_width_over_several_k_tiles(cuda_device, cuda_ext, N, dtype):
    """in = 8192 + 96 spans two k tiles at every width (KT = 8192 / NB, 1024 at NB >= 8); 38 rows leave a
    partly filled block of rows (16 a block); blocks of 64 weights straddle rows (in = 129.5 blocks; out·in
    must be a multiple of the block size); dq on, a LoRA pair and a bias."""
    g = torch.Generator().manual_seed(N)
    out_f, in_f = 38, 8192 + 96
    wq = quantize_nf4(torch.randn(out_f, in_f, generator=g), 64, True)
    x = torch.randn(N, in_f, generator=g).to(dtype)
    A, B, bias = torch.randn(8, in_f, generator=g), torch.randn(out_f, 8, generator=g), torch.randn(out_f, generator=g)
    assert_equals_definition(cuda_device, x, wq, A, B, 0.5, bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_misaligned_weight_takes_the_generic_path(cuda_device, cuda_ext, dtype):
    """packed as a view 1 byte into a buffer: no 16-byte loads possible; the result must not change."""
    g = torch.Generator().manual_seed(0)
    wq = quantize_nf4(torch.randn(64, 128, generator=g), 64, False)
    buf = torch.empty(wq.packed.numel() + 1, dtype=torch.uint8, device=cuda_device)
    buf[1:] = wq.packed.to(cuda_device)
    wq_gpu = dataclasses.replace(on(wq, cuda_device), packed=buf[1:])
    x = torch.randn(3, 128, generator=g).to(dtype)
    y = ops.quant_lora_matmul(x.to(cuda_device), wq_gpu, use_extension=True)
    ref = ops.quant_lora_matmul_reference(x.double(), wq)
    assert bool(((y.cpu().double() - ref).abs() <= ops.error_bound(x, wq, weight_rounded=False)).all())


def test_an_empty_batch_launches_nothing(cuda_device, cuda_ext):
    wq = on(quantize_nf4(torch.randn(8, 64), 64, True), cuda_device)
    y = ops.quant_lora_matmul(torch.empty(0, 64, device=cuda_device, dtype=torch.bfloat16), wq, use_extension=True)
    torch.cuda.synchronize()
    assert y.shape == (0, 8) and y.dtype == torch.bfloat16


# ---- the tensor-core kernel (nf4_lora_mma), forced: "auto" does not take it until it is measured ------

@pytest.fixture(scope="module")
def tensor_cores(cuda_device, cuda_ext):
    if torch.cuda.get_device_capability(cuda_device) < (8, 0):
        pytest.skip("the tensor-core kernel needs compute capability 8.0 or newer")
    return cuda_ext


def test_the_automatic_choice_takes_the_tensor_cores_from_the_batch_it_is_given(cuda_device, tensor_cores):
    """set_mma_auto_min_n (what MINIFT_MMA_AUTO_MIN_N sets as the extension loads) moves the batch from which
    "auto" takes the tensor-core kernel, where that kernel can run: from it on, auto's output is the tensor
    cores' bit for bit; below it, and for float32 x, it is the CUDA cores' path."""
    g = torch.Generator().manual_seed(0)
    wq = on(quantize_nf4(torch.randn(96, 256, generator=g), 64, True), cuda_device)
    before = tensor_cores.mma_auto_min_n()
    try:
        tensor_cores.set_mma_auto_min_n(8)
        assert tensor_cores.mma_auto_min_n() == 8
        for N, dtype, want in [(8, torch.bfloat16, "tensor"), (40, torch.float16, "tensor"),
                               (7, torch.bfloat16, "cores"), (40, torch.float32, "cores")]:
            x = torch.randn(N, 256, generator=g).to(dtype).to(cuda_device)
            run = lambda k: ops._ext_forward(tensor_cores, x, wq, None, None, 1.0, None, kernel=k)   # noqa: E731
            assert torch.equal(run("auto"), run(want)), (N, dtype, want)
        with pytest.raises(RuntimeError, match="must be >= 1"):
            tensor_cores.set_mma_auto_min_n(0)
    finally:
        tensor_cores.set_mma_auto_min_n(before)


@st.composite
def mma_problems(draw):
    """A random op the tensor-core kernel takes: in a multiple of 128, a block size a multiple of 32,
    x in bf16 / fp16; N 1..300 covers every block shape (N <= 8, 16, 32, 64, more) and several row tiles."""
    out_f = draw(st.integers(1, 300))
    in_f = 128 * draw(st.integers(1, 10))
    bs = draw(st.sampled_from([b for b in range(32, 257, 32) if (out_f * in_f) % b == 0]))
    N = draw(st.integers(1, 40) if draw(st.booleans()) else st.integers(41, 300))
    return draw_op(draw, out_f, in_f, bs, N, [torch.bfloat16, torch.float16])


@settings(max_examples=80, deadline=None)
@given(p=mma_problems())
def test_the_tensor_core_kernel_equals_the_float64_definition(cuda_device, tensor_cores, p):
    assert_equals_definition(cuda_device, *p, ext=tensor_cores)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", ["N<=8", "N<=16", "32x32", "64x64", "128x64"])
def test_the_tensor_core_kernel_at_every_block_shape(cuda_device, tensor_cores, shape, dtype):
    """Each block shape mma_typed picks, forced by the batch and by rows counted from this GPU's SMs (a shape is
    taken when it still gives every SM a block): in = 9 spans of 128, so the split-k warps (8, 4, 2 of them)
    meet a last tile they only partly fill; the rows leave a partly filled row tile; dq, LoRA and bias on."""
    sms = torch.cuda.get_device_properties(cuda_device).multi_processor_count
    N, out_f = {"N<=8": (7, 37), "N<=16": (13, 37), "32x32": (40, 37),
                "64x64": (64, 64 * sms - 32),                  # ⌈out/64⌉ = sms blocks; ⌈out/128⌉ < sms
                "128x64": (128, 128 * ((sms + 1) // 2) + 5)}[shape]   # 2⌈out/128⌉ >= sms blocks
    g = torch.Generator().manual_seed(N)
    in_f = 9 * 128
    wq = quantize_nf4(torch.randn(out_f, in_f, generator=g), 64, True)
    x = torch.randn(N, in_f, generator=g).to(dtype)
    A, B, bias = torch.randn(8, in_f, generator=g), torch.randn(out_f, 8, generator=g), torch.randn(out_f, generator=g)
    assert_equals_definition(cuda_device, x, wq, A, B, 0.5, bias, ext=tensor_cores)
