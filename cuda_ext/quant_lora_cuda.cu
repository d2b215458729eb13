// The fused NF4-LoRA matmul on CUDA (lesson 13). COMPILED-BUT-UNVERIFIED: no GPU was available when this
// was written; it has been compiled with nvcc (see lessons/13_kernels/README.md) but never run. It is built
// only when torch has CUDA (cuda_ext/loader.py), and ops.py never dispatches to it unless x is on a GPU.
//
//     y[n, o] = Σ_k x[n, k] · NF4[q(o, k)] · c_{block(o, k)}  +  z[n] · B[o]  +  bias[o]     z = s · x Aᵀ
//
// One warp per output row o. Each lane reads 4 packed bytes (8 weights) at a time, decodes them with the
// 16-value code table held in shared memory, and multiplies them into up to MAX_N inputs kept in
// registers; fp32 accumulation; a warp shuffle sums the 32 partial dots. Inputs beyond MAX_N are
// handled by more blocks along gridDim.y. Plain C++/CUDA, no torch headers: the torch wrapper is in
// quant_lora.cpp (MINIFT_WITH_CUDA), so this file compiles on its own with `nvcc -c`.
#include <cstdint>
#include <cuda_runtime.h>

namespace {

constexpr int WARPS = 8;            // rows per block of 256 threads
constexpr int MAX_N = 8;            // inputs per block (gridDim.y covers the rest)

__device__ __forceinline__ int nibble(const uint8_t* packed, int64_t j) {
  const uint8_t byte = packed[j >> 1];
  return (j & 1) ? (byte & 0x0F) : (byte >> 4);                 // element 2i in the high nibble
}

__global__ void nf4_lora_gemv_kernel(const float* __restrict__ x, int N, int64_t in, int64_t out,
                                     const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                     const float* __restrict__ code, int64_t bs, const float* __restrict__ z,
                                     const float* __restrict__ B, int64_t r, const float* __restrict__ bias,
                                     float* __restrict__ y) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * WARPS + (threadIdx.x >> 5);
  const int n0 = blockIdx.y * MAX_N;
  const int nt = min(MAX_N, N - n0);
  if (o >= out || nt <= 0) return;                              // whole warps leave together
  float acc[MAX_N];
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) acc[n] = 0.f;
  const int64_t j0 = o * in;                                    // row o in the flat weight
  const bool aligned = (in % 8 == 0) && (bs % 8 == 0);          // 8-chunks never straddle a block or a row
  if (aligned) {
    const uint32_t* words = reinterpret_cast<const uint32_t*>(packed + j0 / 2);   // j0 % 8 == 0: 4-byte aligned
    for (int64_t c = lane; c < in / 8; c += 32) {               // chunk c = weights 8c .. 8c+7 of the row
      const uint32_t u = words[c];                              // bytes b0 b1 b2 b3 (little-endian)
      const float s = absmax[(j0 + 8 * c) / bs];                // c_b
      float w[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t byte = (u >> (8 * i)) & 0xFF;
        w[2 * i] = table[byte >> 4] * s;                        // element 2i: high nibble
        w[2 * i + 1] = table[byte & 0x0F] * s;                  // element 2i+1: low nibble
      }
#pragma unroll
      for (int n = 0; n < MAX_N; ++n) {
        if (n < nt) {
          const float4* xv = reinterpret_cast<const float4*>(x + (n0 + n) * in + 8 * c);
          const float4 a = xv[0], b = xv[1];
          acc[n] += a.x * w[0] + a.y * w[1] + a.z * w[2] + a.w * w[3] + b.x * w[4] + b.y * w[5] + b.z * w[6] + b.w * w[7];
        }
      }
    }
  } else {                                                      // any shape: one weight per lane per step
    for (int64_t k = lane; k < in; k += 32) {
      const float w = table[nibble(packed, j0 + k)] * absmax[(j0 + k) / bs];
#pragma unroll
      for (int n = 0; n < MAX_N; ++n)
        if (n < nt) acc[n] += x[(n0 + n) * in + k] * w;
    }
  }
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    float v = acc[n];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);   // warp sum
    if (lane == 0 && n < nt) {
      if (z) for (int64_t i = 0; i < r; ++i) v += z[(n0 + n) * r + i] * B[o * r + i];    // + s (x Aᵀ)_n · B_o
      if (bias) v += bias[o];
      y[(n0 + n) * out + o] = v;
    }
  }
}

}  // namespace

void launch_nf4_lora_gemv(const float* x, int64_t N, int64_t in, int64_t out, const uint8_t* packed,
                          const float* absmax, const float* code, int64_t block_size, const float* z,
                          const float* B, int64_t r, const float* bias, float* y, void* stream) {
  const dim3 grid(static_cast<unsigned>((out + WARPS - 1) / WARPS), static_cast<unsigned>((N + MAX_N - 1) / MAX_N));
  nf4_lora_gemv_kernel<<<grid, 32 * WARPS, 0, static_cast<cudaStream_t>(stream)>>>(
      x, static_cast<int>(N), in, out, packed, absmax, code, block_size, z, B, r, bias, y);
}
