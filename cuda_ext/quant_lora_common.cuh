// What the two kernel files (quant_lora_cuda.cu: the GEMV and dequantize; quant_lora_mma.cu: the tensor-core
// path) share: dtype conversions, the fast divisor, the absmax decoder, launch bookkeeping and the checks of
// an NF4Weight. Everything is in an unnamed namespace: each file compiles its own copy, and the two compile
// in parallel.
#pragma once

#include "quant_lora_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>

namespace minift_cuda {
namespace {

// ---- small helpers -----------------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// n / d for a divisor fixed per launch: a shift when d is a power of two (bs/32 = 1, 2, 4, 8; dq_block =
// 256), else the hardware division. Unsigned 32-bit: the caller checks that n fits.
struct Div {
  uint32_t d;
  int shift;                                                   // log2 d, or -1
  __device__ __forceinline__ uint32_t operator()(uint32_t n) const { return shift >= 0 ? n >> shift : n / d; }
};
Div make_div(int64_t d) {
  int s = 0;
  while ((int64_t{1} << s) < d) ++s;
  return Div{static_cast<uint32_t>(d), (int64_t{1} << s) == d ? s : -1};
}

// The kernels' view of NF4Weight.am: c_b for block b.
struct Scales {
  const float* absmax;                                         // plain, or null
  const int8_t* absmax_q;                                      // double-quantized
  const float* dq_scales;
  float dq_mean;
  int64_t dq_block;
  __device__ __forceinline__ float at(int64_t b) const {       // c_b, 64-bit block index
    if (absmax) return __ldg(absmax + b);
    return __fadd_rn(__fmul_rn(static_cast<float>(__ldg(absmax_q + b)), __ldg(dq_scales + b / dq_block)), dq_mean);
  }
  __device__ __forceinline__ float at(uint32_t b, Div dq) const {   // the same, 32-bit index, fast division
    if (absmax) return __ldg(absmax + b);
    return __fadd_rn(__fmul_rn(static_cast<float>(__ldg(absmax_q + b)), __ldg(dq_scales + dq(b))), dq_mean);
  }
};

Scales scales_of(const NF4Weight& W) {
  return Scales{W.am.absmax, W.am.absmax_q, W.am.dq_scales, W.am.dq_mean, W.am.dq_block};
}

const char* launched() {                                       // the launch's error, or nullptr
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Lets `kernel` take up to `smem` bytes of dynamic shared memory (above 48 KiB a kernel must opt in). The
// attribute belongs to a kernel on a device, so it is set once per (kernel, device) and remembered in `done`,
// one flag per device the caller keeps for its kernel: a decoding step launches every layer, and the driver
// call would cost each launch a few µs.
template <typename Kernel>
const char* allow_smem(Kernel* kernel, size_t smem, std::atomic<bool> (&done)[64]) {
  if (smem <= 48 * 1024) return nullptr;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return cudaGetErrorString(cudaGetLastError());   // read and cleared
  const bool cached = dev >= 0 && dev < 64;
  if (cached && done[dev].load(std::memory_order_acquire)) return nullptr;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return cudaGetErrorString(e);
  if (cached) done[dev].store(true, std::memory_order_release);
  return nullptr;
}

const char* check(const NF4Weight& W) {                        // what the kernels assume; the wrapper checks first
  if (W.out < 0 || W.in < 1 || W.block_size < 2 || W.block_size % 2 || (W.out * W.in) % W.block_size)
    return "minift_cuda: need in >= 1 and an even block_size >= 2 dividing out*in";
  if (!W.packed || !W.code || (!W.am.absmax && (!W.am.absmax_q || !W.am.dq_scales || W.am.dq_block < 1)))
    return "minift_cuda: packed, code and the absmax (plain, or absmax_q + dq_scales + dq_block >= 1) are required";
  return nullptr;
}

}  // namespace
}  // namespace minift_cuda
