// The fused NF4-LoRA matmul on CUDA (lesson 13): the kernels behind cuda_ext/quant_lora_cuda.h.
//
//     y[n, o] = Σ_k x[n, k] · ŵ[o, k]  +  Σ_i z[n, i] · B[o, i]  +  bias[o]        z = s · x Aᵀ  (N, r)
//     ŵ[o, k] = NF4[q_j] · c_{j / bs}     j = o·in + k (the flat index), bs = block_size
//     c_b     = absmax[b]   or, double-quantized,   c_b = absmax_q[b] · dq_scales[b / dq_block] + dq_mean
//
// Layout: packed[i] holds q_{2i} in its high nibble and q_{2i+1} in its low one; a row starts at byte
// o·in/2, mid-byte when in is odd. bs is even, so a block never starts mid-byte.
//
// nf4_lora_gemv (batches 1..16, decoding: memory-bound). Fast path when in % 32 == 0, bs % 32 == 0 and
// packed is 16-byte aligned: a lane reads one uint4 = 16 bytes = 32 weights ("a chunk") of a row per
// load; a chunk lies inside one absmax block (bs % 32 == 0), so c_b is decoded once per chunk. A warp
// owns R rows and walks their k range, lane l taking chunks l, l+32, ...; its R chunks at the same k
// share the activations, which the block stages (converted to float32) in shared memory, NB inputs ×
// KT columns per tile. Each warp's partial sums are added over the 32 lanes with shuffles; the LoRA term
// (lanes split i) and the bias join in the epilogue; y is written in the activation dtype. The generic
// path takes any shape: one warp per row, a lane per weight, c_b re-decoded only when the block changes.
//
// nf4_dequantize (larger batches): ŵ in (out, in) of the dtype, one pass; a thread decodes 4 packed bytes
// (8 weights, one block when bs % 8 == 0) and writes them with one or two 16-byte stores.
//
// Float32 accumulation everywhere. c_b is computed with explicit _rn operations (no FMA contraction), so it
// is bit-identical to the Python definition (minift/quant/nf4.py: dequantize_absmax), and so is ŵ in the
// generic GEMV path and in nf4_dequantize.
#include "quant_lora_cuda.h"
#include "quant_lora_mma.cuh"

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

// ---- the GEMV, fast path -------------------------------------------------------------------------------

// Tile width (columns of x staged per pass): NB·KT floats = 32 KiB of data (+1/8 padding), except NB = 16,
// which keeps KT = 1024 so that a tile still holds 32 chunks per row (one per lane): 72 KiB, opt-in smem.
template <int NB> __host__ __device__ constexpr int kTile() { return NB >= 8 ? 1024 : 8192 / NB; }
// x in shared memory: column k of input n at n·stride + k + 4·(k / 32): 4 floats of padding per 32, so that
// the 8 lanes of a quarter-warp, reading float4 at chunks c..c+7 (144 bytes apart), hit all 32 banks once.
__device__ __forceinline__ int xs_index(int k) { return k + 4 * (k >> 5); }

// Rows per warp R and warps per block W: 16 rows per block either way (4096 rows = 256 blocks > 132 SMs).
// R rows share each x value read from shared memory: R = 4 keeps the FMA pipe, not smem, the limit at N ≥ 4.
template <int NB> struct Cfg {
  static constexpr int R = NB <= 2 ? 2 : 4;
  static constexpr int W = NB <= 2 ? 8 : 4;
  static constexpr bool LATE = NB <= 2;    // scale per chunk (p · c_b) instead of per weight (code · c_b)
};

template <typename T, int NB>
__global__ void __launch_bounds__(32 * Cfg<NB>::W)
gemv_fast(const T* __restrict__ x, bool xvec, int N, int in, int out, const uint4* __restrict__ packed,
          Scales sc, Div chunks_per_block, Div dq, const float* __restrict__ code,
          const float* __restrict__ z, const float* __restrict__ Bl, int r, const float* __restrict__ bias,
          T* __restrict__ y) {
  constexpr int R = Cfg<NB>::R, W = Cfg<NB>::W, KT = kTile<NB>();
  extern __shared__ float4 xs_raw[];                           // float4: 16-byte aligned for the float4 reads
  float* xs = reinterpret_cast<float*>(xs_raw);                // (NB, stride) float32
  __shared__ float table[16];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = blockIdx.y * NB;
  const int nt = min(NB, N - n0);                              // inputs of this block (>= 1)
  const int row0 = (blockIdx.x * W + warp) * R;                // this warp's rows row0 .. row0+R-1
  const bool active = row0 < out;                              // whole warp: skips the math, not the syncs
  const int kt_max = min(KT, in);
  const int stride = xs_index(kt_max);                         // floats per staged input (kt_max % 32 == 0)
  const int cpr = in >> 5;                                     // chunks per row (in % 32 == 0)
  if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];

  const uint4* rowp[R];                                        // row starts, as uint4 (16-byte aligned)
#pragma unroll
  for (int i = 0; i < R; ++i) rowp[i] = packed + static_cast<int64_t>(min(row0 + i, out - 1)) * cpr;  // clamped: valid memory, result dropped

  float acc[R][NB];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int n = 0; n < NB; ++n) acc[i][n] = 0.f;

  for (int k0 = 0; k0 < in; k0 += KT) {                        // tiles of KT columns
    const int ktile = min(KT, in - k0), ct = ktile >> 5;       // columns, chunks in this tile
    const int c00 = k0 >> 5;                                   // the tile's first chunk in the row
    // The first weights are requested before the staging, so their latency overlaps it.
    uint4 q[R];
    float s[R];
    auto load = [&](int c) {                                   // chunk c of the tile, all R rows
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const int rr = min(row0 + i, out - 1);
        q[i] = __ldg(rowp[i] + c00 + c);
        s[i] = sc.at(chunks_per_block(static_cast<uint32_t>(rr) * cpr + c00 + c), dq);   // c_b, once per chunk
      }
    };
    if (active && lane < ct) load(lane);
    __syncthreads();                                           // the previous tile's xs is no longer read
    if (xvec) {                                                // 16-byte loads: V elements, one 32-column group
      constexpr int V = 16 / sizeof(T);                        // 4 floats or 8 bf16/fp16; V | 32 | ktile
#pragma unroll
      for (int n = 0; n < NB; ++n)
        for (int k = threadIdx.x * V; k < ktile; k += 32 * W * V) {
          uint4 raw = make_uint4(0, 0, 0, 0);                  // inputs n >= nt stage zeros
          if (n < nt) raw = __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(n0 + n) * in + k0 + k));
          const T* e = reinterpret_cast<const T*>(&raw);
          float4* dst = reinterpret_cast<float4*>(xs + n * stride + xs_index(k));   // k % 4 == 0: 16-byte aligned
#pragma unroll
          for (int v = 0; v < V; v += 4) dst[v / 4] = make_float4(to_f(e[v]), to_f(e[v + 1]), to_f(e[v + 2]), to_f(e[v + 3]));
        }
    } else {
#pragma unroll
      for (int n = 0; n < NB; ++n)
        for (int k = threadIdx.x; k < ktile; k += 32 * W)      // coalesced: consecutive threads, consecutive k
          xs[n * stride + xs_index(k)] = n < nt ? to_f(x[static_cast<int64_t>(n0 + n) * in + k0 + k]) : 0.f;
    }
    __syncthreads();

    if (active) {
      for (int c = lane; c < ct; c += 32) {
        uint4 qc[R];
        float sc_[R];
#pragma unroll
        for (int i = 0; i < R; ++i) { qc[i] = q[i]; sc_[i] = s[i]; }
        if (c + 32 < ct) load(c + 32);                         // prefetch the next chunk while this one runs
        float p[Cfg<NB>::LATE ? R : 1][NB];                    // LATE: Σ x · code over the chunk, then · c_b
        if (Cfg<NB>::LATE) {
#pragma unroll
          for (int i = 0; i < R; ++i)
#pragma unroll
            for (int n = 0; n < NB; ++n) p[Cfg<NB>::LATE ? i : 0][n] = 0.f;
        }
        const float* xc = xs + 36 * c;                         // = xs_index(32 c): the chunk's 32 columns
#pragma unroll
        for (int wd = 0; wd < 4; ++wd) {                       // word wd: weights 8wd .. 8wd+7 of the chunk
          float w[R][8];
#pragma unroll
          for (int i = 0; i < R; ++i) {
            const uint32_t u = wd == 0 ? qc[i].x : wd == 1 ? qc[i].y : wd == 2 ? qc[i].z : qc[i].w;
#pragma unroll
            for (int b = 0; b < 4; ++b) {                      // byte b (little-endian) = weights 2b, 2b+1
              const float hi = table[(u >> (8 * b + 4)) & 15], lo = table[(u >> (8 * b)) & 15];
              w[i][2 * b] = Cfg<NB>::LATE ? hi : hi * sc_[i];
              w[i][2 * b + 1] = Cfg<NB>::LATE ? lo : lo * sc_[i];
            }
          }
#pragma unroll
          for (int n = 0; n < NB; ++n) {
            const float4 a = *reinterpret_cast<const float4*>(xc + n * stride + 8 * wd);        // x[k .. k+3]
            const float4 b = *reinterpret_cast<const float4*>(xc + n * stride + 8 * wd + 4);    // x[k+4 .. k+7]
#pragma unroll
            for (int i = 0; i < R; ++i) {
              float& t = Cfg<NB>::LATE ? p[Cfg<NB>::LATE ? i : 0][n] : acc[i][n];
              t = fmaf(a.x, w[i][0], t); t = fmaf(a.y, w[i][1], t); t = fmaf(a.z, w[i][2], t); t = fmaf(a.w, w[i][3], t);
              t = fmaf(b.x, w[i][4], t); t = fmaf(b.y, w[i][5], t); t = fmaf(b.z, w[i][6], t); t = fmaf(b.w, w[i][7], t);
            }
          }
        }
        if (Cfg<NB>::LATE) {
#pragma unroll
          for (int i = 0; i < R; ++i)
#pragma unroll
            for (int n = 0; n < NB; ++n) acc[i][n] = fmaf(sc_[i], p[Cfg<NB>::LATE ? i : 0][n], acc[i][n]);  // + c_b Σ x code
        }
      }
    }
  }
  if (!active) return;                                         // no __syncthreads below

  // Epilogue: + Σ_i z[n, i] · B[o, i] (lanes split i), the sum over lanes, + bias, the write.
  for (int t = lane; t < r; t += 32)
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const float bv = Bl[static_cast<int64_t>(min(row0 + i, out - 1)) * r + t];
#pragma unroll
      for (int n = 0; n < NB; ++n)
        if (n < nt) acc[i][n] = fmaf(z[static_cast<int64_t>(n0 + n) * r + t], bv, acc[i][n]);
    }
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int n = 0; n < NB; ++n) {
      float v = acc[i][n];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);   // all lanes get the sum
      const int o = row0 + i;
      if (lane == (i * NB + n) % 32 && o < out && n < nt) {    // spread the writes over the lanes
        if (bias) v += bias[o];
        y[static_cast<int64_t>(n0 + n) * out + o] = from_f<T>(v);
      }
    }
}

// ---- the GEMV, generic path (any shape) ----------------------------------------------------------------

constexpr int GW = 8;                                          // warps (rows) per block
constexpr int GNB = 8;                                         // inputs per block (gridDim.y covers the rest)

template <typename T>
__global__ void __launch_bounds__(32 * GW)
gemv_generic(const T* __restrict__ x, int N, int64_t in, int64_t out, const uint8_t* __restrict__ packed,
             Scales sc, int64_t bs, const float* __restrict__ code, const float* __restrict__ z,
             const float* __restrict__ Bl, int64_t r, const float* __restrict__ bias, T* __restrict__ y) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * GW + (threadIdx.x >> 5);
  const int n0 = blockIdx.y * GNB, nt = min(GNB, N - n0);
  if (o >= out) return;                                        // whole warps leave together
  float acc[GNB];
#pragma unroll
  for (int n = 0; n < GNB; ++n) acc[n] = 0.f;
  int64_t b_end = -1;                                          // c holds c_b for flat indices < b_end
  float c = 0.f;
  for (int64_t k = lane; k < in; k += 32) {
    const int64_t j = o * in + k;                              // flat index
    if (j >= b_end || j < b_end - bs) {                        // entered a new block: decode c_b once
      const int64_t b = j / bs;
      b_end = (b + 1) * bs;
      c = sc.at(b);
    }
    const uint8_t byte = __ldg(packed + (j >> 1));
    const float w = table[(j & 1) ? (byte & 15) : (byte >> 4)] * c;   // ŵ_j, exactly as the definition
#pragma unroll
    for (int n = 0; n < GNB; ++n)
      if (n < nt) acc[n] = fmaf(to_f(x[(n0 + n) * in + k]), w, acc[n]);
  }
  for (int64_t t = lane; t < r; t += 32) {                     // + Σ_i z[n, i] B[o, i]
    const float bv = Bl[o * r + t];
#pragma unroll
    for (int n = 0; n < GNB; ++n)
      if (n < nt) acc[n] = fmaf(z[(n0 + n) * r + t], bv, acc[n]);
  }
#pragma unroll
  for (int n = 0; n < GNB; ++n) {
    float v = acc[n];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == n && n < nt) {
      if (bias) v += bias[o];
      y[(n0 + n) * out + o] = from_f<T>(v);
    }
  }
}

// ---- dispatch ------------------------------------------------------------------------------------------

template <typename T, int NB>
const char* launch_fast(const T* x, int64_t N, const NF4Weight& W, const float* z, const float* B, int64_t r,
                        const float* bias, T* y, cudaStream_t st) {
  using C = Cfg<NB>;
  const int kt = static_cast<int>(W.in < kTile<NB>() ? W.in : kTile<NB>());
  const size_t smem = sizeof(float) * NB * (kt + kt / 8);      // (NB, kt + padding) float32
  static std::atomic<bool> opted[64];                          // NB = 16: above the default limit, opt in once
  if (const char* e = allow_smem(gemv_fast<T, NB>, sizeof(float) * NB * (kTile<NB>() + kTile<NB>() / 8), opted))
    return e;                                                  // (for the widest tile, so any in fits)
  const dim3 grid(static_cast<unsigned>((W.out + C::R * C::W - 1) / (C::R * C::W)),
                  static_cast<unsigned>((N + NB - 1) / NB));
  gemv_fast<T, NB><<<grid, 32 * C::W, smem, st>>>(
      x, reinterpret_cast<uintptr_t>(x) % 16 == 0, static_cast<int>(N), static_cast<int>(W.in), static_cast<int>(W.out),
      reinterpret_cast<const uint4*>(W.packed), scales_of(W), make_div(W.block_size / 32), make_div(W.am.dq_block),
      W.code, z, B, static_cast<int>(r), bias, y);
  return launched();
}

template <typename T>
const char* gemv_typed(const T* x, int64_t N, const NF4Weight& W, const float* z, const float* B, int64_t r,
                       const float* bias, T* y, cudaStream_t st) {
  // Fast path: every row starts 16-byte aligned (in % 32 == 0, packed aligned), chunks never straddle a
  // block (bs % 32 == 0), the chunk, row and input indices fit 32 bits, dq_block does too.
  const bool fast = W.in % 32 == 0 && W.block_size % 32 == 0 && reinterpret_cast<uintptr_t>(W.packed) % 16 == 0 &&
                    W.out * W.in / 32 < (int64_t{1} << 32) && W.out < (int64_t{1} << 31) &&
                    W.in < (int64_t{1} << 31) && N < (int64_t{1} << 31) && r < (int64_t{1} << 31) &&
                    W.am.dq_block < (int64_t{1} << 32);
  if (fast) {
    if (N <= 1) return launch_fast<T, 1>(x, N, W, z, B, r, bias, y, st);
    if (N <= 2) return launch_fast<T, 2>(x, N, W, z, B, r, bias, y, st);
    if (N <= 4) return launch_fast<T, 4>(x, N, W, z, B, r, bias, y, st);
    if (N <= 8) return launch_fast<T, 8>(x, N, W, z, B, r, bias, y, st);
    return launch_fast<T, 16>(x, N, W, z, B, r, bias, y, st);            // N > 16: gridDim.y covers it
  }
  const dim3 grid(static_cast<unsigned>((W.out + GW - 1) / GW), static_cast<unsigned>((N + GNB - 1) / GNB));
  gemv_generic<T><<<grid, 32 * GW, 0, st>>>(x, static_cast<int>(N), W.in, W.out, W.packed, scales_of(W),
                                             W.block_size, W.code, z, B, r, bias, y);
  return launched();
}

// ---- dequantize ----------------------------------------------------------------------------------------

// Fast: a thread decodes packed word g (bytes 4g .. 4g+3 = weights 8g .. 8g+7, one block since bs % 8 == 0).
template <typename T>
__global__ void dequant_vec8(const uint32_t* __restrict__ packed, int64_t groups, Scales sc, Div groups_per_block,
                             Div dq, const float* __restrict__ code, T* __restrict__ w) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  const uint32_t u = __ldg(packed + g);
  const float c = sc.at(groups_per_block(static_cast<uint32_t>(g)), dq);   // c_b, once per 8 weights (g < 2³²)
  float v[8];
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    v[2 * b] = table[(u >> (8 * b + 4)) & 15] * c;             // ŵ_{8g+2b}: high nibble of byte b
    v[2 * b + 1] = table[(u >> (8 * b)) & 15] * c;             // ŵ_{8g+2b+1}: low nibble
  }
  if constexpr (sizeof(T) == 4) {                              // float: two 16-byte stores (32 bytes)
    float4* dst = reinterpret_cast<float4*>(w) + 2 * g;
    dst[0] = make_float4(v[0], v[1], v[2], v[3]);
    dst[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {                                                     // bf16 / fp16: one 16-byte store
    reinterpret_cast<uint4*>(w)[g] = make_uint4(mma::pack2<T>(v[0], v[1]), mma::pack2<T>(v[2], v[3]),
                                                mma::pack2<T>(v[4], v[5]), mma::pack2<T>(v[6], v[7]));
  }
}

// Generic: a thread per packed byte i (weights 2i, 2i+1: one block since bs is even).
template <typename T>
__global__ void dequant_byte(const uint8_t* __restrict__ packed, int64_t nbytes, Scales sc, int64_t bs,
                             const float* __restrict__ code, T* __restrict__ w) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nbytes) return;
  const uint8_t byte = __ldg(packed + i);
  const float c = sc.at(2 * i / bs);
  w[2 * i] = from_f<T>(table[byte >> 4] * c);
  w[2 * i + 1] = from_f<T>(table[byte & 15] * c);
}

template <typename T>
const char* dequant_typed(const NF4Weight& W, T* w, cudaStream_t st) {
  const int64_t n = W.out * W.in;                              // even: bs divides it and is even
  constexpr int TPB = 256;
  if (W.block_size % 8 == 0 && reinterpret_cast<uintptr_t>(W.packed) % 4 == 0 &&
      reinterpret_cast<uintptr_t>(w) % 16 == 0 && n / 8 < (int64_t{1} << 32) && W.am.dq_block < (int64_t{1} << 32)) {
    const int64_t groups = n / 8;                              // exact: 8 | bs | n
    dequant_vec8<T><<<static_cast<unsigned>((groups + TPB - 1) / TPB), TPB, 0, st>>>(
        reinterpret_cast<const uint32_t*>(W.packed), groups, scales_of(W), make_div(W.block_size / 8),
        make_div(W.am.dq_block), W.code, w);
  } else {
    const int64_t nbytes = n / 2;
    dequant_byte<T><<<static_cast<unsigned>((nbytes + TPB - 1) / TPB), TPB, 0, st>>>(
        W.packed, nbytes, scales_of(W), W.block_size, W.code, w);
  }
  return launched();
}

// ---- the tensor-core path (sm_80+, bfloat16 / float16 x) ----------------------------------------------
//
// mma_gemm: y = x Ŵᵀ (+ LoRA, + bias) with Ŵ decoded straight into mma.sync registers (quant_lora_mma.cuh: the
// layout). A block owns BM = 16·MT·WM rows of Ŵ and BN = 8·NT inputs; its WM × WK warps split the rows (WM)
// and k (WK): warp (wm, wk) multiplies 16·MT rows by BN inputs over span wk of every tile of KT = 128·WK
// columns. The block stages x[n0 .. n0+BN, tile] (already in T: no conversion) in shared memory with
// asynchronous copies (cp.async), two buffers: tile i+1 is on its way while tile i is multiplied. Each warp
// streams its weights from global memory into registers (the next tile's load is issued before this tile's
// math), decodes them once and uses each decoded register NT times. With WK > 1 the warps' partial
// sums meet in shared memory at the end. Ŵ is rounded to T, as nf4_dequantize's; products are exact and
// accumulate in float32, so the result has the error bound of dequantize-then-cuBLAS.

template <int MT, int NT, int WM, int WK>
struct MmaCfg {
  static constexpr int BM = 16 * MT * WM, BN = 8 * NT, KT = mma::SPAN * WK;
  static constexpr int UNITS = KT / 8;                         // 16-byte units (8 values of T) per staged row
  static constexpr int THREADS = 32 * WM * WK;
  static constexpr int E = MT * NT * 4;                        // accumulators per lane
  static constexpr size_t XS = size_t{BN} * KT * 2;            // one x tile, bytes (two are staged)
  static constexpr size_t RED = WK > 1 ? size_t{WK} * WM * E * 32 * 4 : 0;   // the partial sums, bytes
  static constexpr size_t SMEM = 2 * XS > RED ? 2 * XS : RED;
};

// 16 bytes from global to shared memory without passing through registers (sm_80+), in the current group of
// copies; valid = false writes 16 zero bytes and reads nothing (src must still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {   // all but the newest PENDING groups landed
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
#endif
}

// D += A B, one m16n8k16 with float32 accumulators.
template <typename T> __device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], const uint32_t b[2]);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
template <> __device__ __forceinline__ void mma16816<__half>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <typename T, int MT, int NT, int WM, int WK>
__global__ void __launch_bounds__(32 * WM * WK)
mma_gemm(const T* __restrict__ x, int N, int in, int out, const uint4* __restrict__ packed, Scales sc,
         Div chunks_per_block, Div dq, const float* __restrict__ code, const float* __restrict__ z,
         const float* __restrict__ Bl, int r, const float* __restrict__ bias, T* __restrict__ y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();                                                    // never launched: nf4_mma_unsupported checks the arch
#else
  using C = MmaCfg<MT, NT, WM, WK>;
  extern __shared__ uint4 smem[];                              // 2 x tiles (BN, UNITS) swizzled; then the partial sums
  __shared__ float table[16];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp % WM, wk = warp / WM;
  const int g = lane >> 2, t = lane & 3;                       // the lane's group and place in it
  const int n0 = blockIdx.y * C::BN;                           // the block's first input
  const int row0 = blockIdx.x * C::BM + wm * 16 * MT;          // the warp's first row
  const int cpr = in >> 5;                                     // 32-weight chunks per row (32 | in)
  const int spans = in / mma::SPAN;                            // 128 | in
  const int tiles = (spans + WK - 1) / WK;
  if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];

  int rowc[MT][2];                                             // rows g and g+8 of each 16-row slice, clamped:
#pragma unroll                                                 // valid memory, their results dropped
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) rowc[mt][h] = min(row0 + 16 * mt + 8 * h + g, out - 1);

  // The lane's 16 bytes of rows g, g+8 in span (tile·WK + wk), and their c_b (one block: 32 | bs).
  auto load = [&](int tile, uint4 (&q)[MT][2], float (&c)[MT][2]) {
    const uint32_t chunk = static_cast<uint32_t>((tile * WK + wk) * 4 + t);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t ch = static_cast<uint32_t>(rowc[mt][h]) * cpr + chunk;
        q[mt][h] = __ldg(packed + ch);
        c[mt][h] = sc.at(chunks_per_block(ch), dq);
      }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;

  // Stage tile i of x into buffer i % 2: unit v of input n (x[n0+n, k0+8v .. +8]) at row n, place swizzle(n, v);
  // inputs past N are zeros (their source clamped to a real row, read not at all).
  auto stage = [&](int i) {
    const int k0 = i * C::KT, units = min(C::KT, in - k0) / 8;      // units per row in this tile (16 | units)
    uint4* buf = smem + (i & 1) * C::BN * C::UNITS;
    for (int idx = threadIdx.x; idx < C::BN * units; idx += C::THREADS) {   // coalesced 16-byte copies
      const int n = idx / units, v = idx - n * units;
      const T* src = x + static_cast<int64_t>(min(n0 + n, N - 1)) * in + k0 + 8 * v;
      cp_async16(buf + n * C::UNITS + mma::swizzle(n, v), src, n0 + n < N);
    }
    cp_async_commit();
  };

  uint4 q[MT][2];
  float c[MT][2];
  if (wk < spans) load(0, q, c);
  stage(0);
  for (int i = 0; i < tiles; ++i) {                            // every warp runs every tile: the syncs match
    if (i + 1 < tiles) {
      stage(i + 1);                                            // into the buffer tile i-1 left (synced below)
      cp_async_wait<1>();                                      // tile i has landed (i+1 may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();                                           // ... for every thread's copies
    const uint4* xs = smem + (i & 1) * C::BN * C::UNITS;
    uint4 qn[MT][2];
    float cn[MT][2];
    const bool next = i + 1 < tiles && (i + 1) * WK + wk < spans;
    if (next) load(i + 1, qn, cn);                             // in flight while this tile's math runs
    if (i * WK + wk < spans) {
#pragma unroll
      for (int j = 0; j < mma::STEPS / 2; ++j) {               // k-steps 2j, 2j+1: one x unit per input
        uint32_t a0[MT][4], a1[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {                      // decode once, use NT times
          mma::a_frag<T>(q[mt][0], q[mt][1], c[mt][0], c[mt][1], 2 * j, table, a0[mt]);
          mma::a_frag<T>(q[mt][0], q[mt][1], c[mt][0], c[mt][1], 2 * j + 1, table, a1[mt]);
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int n = nt * 8 + g;
          const uint4 u = xs[n * C::UNITS + mma::swizzle(n, mma::unit_of(wk, t, j))];
          uint32_t b[2];
          mma::b_frag(u, 2 * j, b);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma16816<T>(acc[mt][nt], a0[mt], b);
          mma::b_frag(u, 2 * j + 1, b);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma16816<T>(acc[mt][nt], a1[mt], b);
        }
      }
    }
    if (next) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) { q[mt][h] = qn[mt][h]; c[mt][h] = cn[mt][h]; }
    }
    __syncthreads();                                           // buffer i % 2 is read: tile i+2 may go there
  }

  if constexpr (WK > 1) {                                      // split k: warps wk > 0 hand their sums to wk = 0
    float* red = reinterpret_cast<float*>(smem);               // (WK, WM, E, 32) float32, over the x buffers
    if (wk > 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            red[(((wk * WM + wm) * C::E) + (mt * NT + nt) * 4 + e) * 32 + lane] = acc[mt][nt][e];
    }
    __syncthreads();
    if (wk > 0) return;                                        // no sync below
    for (int w = 1; w < WK; ++w)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][e] += red[(((w * WM + wm) * C::E) + (mt * NT + nt) * 4 + e) * 32 + lane];
  }

  // Epilogue: + Σ_i z[n, i] B[o, i] (i outer: a lane loads 2·MT + 2·NT values per i), + bias, the write.
  int nc[NT][2];                                               // the lane's inputs, clamped
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) nc[nt][e] = min(n0 + nt * 8 + mma::d_col(lane, e), N - 1);
  for (int i = 0; i < r; ++i) {
    float bo[MT][2], zn[NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) bo[mt][h] = __ldg(Bl + static_cast<int64_t>(rowc[mt][h]) * r + i);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) zn[nt][e] = __ldg(z + static_cast<int64_t>(nc[nt][e]) * r + i);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] = fmaf(zn[nt][e & 1], bo[mt][e >> 1], acc[mt][nt][e]);
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int o = row0 + 16 * mt + mma::d_row(lane, e);
      if (o >= out) continue;
      const float bv = bias ? bias[o] : 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = n0 + nt * 8 + mma::d_col(lane, e);
        if (n < N) y[static_cast<int64_t>(n) * out + o] = from_f<T>(acc[mt][nt][e] + bv);
      }
    }
#endif
}

template <typename T, int MT, int NT, int WM, int WK>
const char* launch_mma(const T* x, int64_t N, const NF4Weight& W, const float* z, const float* B, int64_t r,
                       const float* bias, T* y, cudaStream_t st) {
  using C = MmaCfg<MT, NT, WM, WK>;
  static std::atomic<bool> opted[64];
  if (const char* e = allow_smem(mma_gemm<T, MT, NT, WM, WK>, C::SMEM, opted)) return e;
  const dim3 grid(static_cast<unsigned>((W.out + C::BM - 1) / C::BM), static_cast<unsigned>((N + C::BN - 1) / C::BN));
  mma_gemm<T, MT, NT, WM, WK><<<grid, C::THREADS, C::SMEM, st>>>(
      x, static_cast<int>(N), static_cast<int>(W.in), static_cast<int>(W.out), reinterpret_cast<const uint4*>(W.packed),
      scales_of(W), make_div(W.block_size / 32), make_div(W.am.dq_block), W.code, z, B, static_cast<int>(r), bias, y);
  return launched();
}

// The block shape per batch. Decoding (N <= 16): 16 rows a block, its 8 warps split k (4096 rows = 256 blocks,
// 8 warps each streaming weights). Larger batches: more rows and inputs a block, so each decoded weight
// feeds more mma (NT of them) and each staged x value more rows: the largest shape that N fills (BN <= N,
// so few mma multiply padding) and that still makes at least one block per SM. (128 × 128 with MT = 2 needs
// more than 255 registers a lane and spills: not offered.)
template <typename T>
const char* mma_typed(const T* x, int64_t N, const NF4Weight& W, const float* z, const float* B, int64_t r,
                      const float* bias, T* y, cudaStream_t st, int sms) {
  if (N <= 8) return launch_mma<T, 1, 1, 1, 8>(x, N, W, z, B, r, bias, y, st);
  if (N <= 16) return launch_mma<T, 1, 2, 1, 8>(x, N, W, z, B, r, bias, y, st);
  auto blocks = [&](int64_t bm, int64_t bn) { return ((W.out + bm - 1) / bm) * ((N + bn - 1) / bn); };
  if (N >= 64 && blocks(128, 64) >= sms) return launch_mma<T, 2, 8, 4, 1>(x, N, W, z, B, r, bias, y, st);
  if (N >= 64 && blocks(64, 64) >= sms) return launch_mma<T, 2, 8, 2, 2>(x, N, W, z, B, r, bias, y, st);
  return launch_mma<T, 1, 4, 2, 4>(x, N, W, z, B, r, bias, y, st);     // 32 x 32; gridDim.y covers N
}

// What the tensor-core path asks the driver about a GPU, once per device (a few µs of calls), then remembers:
// whether the GPU and the kernel's binary for it are sm_80+ (state 0 not asked yet, 1 yes, 2 the GPU is
// older, 3 the binary is), and its SM count.
std::atomic<int> mma_state[64], mma_sms[64];

const char* mma_arch_unsupported(int dev, int* sms) {
  static const char* const why[] = {nullptr, nullptr, "the tensor-core path needs a GPU of compute capability 8.0 or newer",
                                    "the extension was not compiled for sm_80 or newer"};
  const bool cached = dev >= 0 && dev < 64;
  if (cached && mma_state[dev].load() != 0) {
    *sms = mma_sms[dev].load();
    return why[mma_state[dev].load()];
  }
  int major = 0;
  cudaFuncAttributes fa{};
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaFuncGetAttributes(&fa, mma_gemm<__nv_bfloat16, 1, 1, 1, 8>) != cudaSuccess)
    return cudaGetErrorString(cudaGetLastError());             // read and cleared: no later launch reports it
  const int k = major < 8 ? 2 : (fa.ptxVersion < 80 || fa.binaryVersion < 80) ? 3 : 1;
  if (cached) {
    mma_sms[dev].store(*sms);
    mma_state[dev].store(k);
  }
  return why[k];
}

const char* mma_unsupported(Dtype dtype, const void* x, int64_t N, const NF4Weight& W, int* sms) {
  if (dtype != BF16 && dtype != F16) return "the tensor-core path takes bfloat16 or float16 activations";
  if (W.in % mma::SPAN) return "the tensor-core path needs in % 128 == 0";
  if (W.block_size % 32) return "the tensor-core path needs a block size that is a multiple of 32";
  if (reinterpret_cast<uintptr_t>(W.packed) % 16 || reinterpret_cast<uintptr_t>(x) % 16)
    return "the tensor-core path needs packed and x 16-byte aligned";
  if (W.out * W.in / 32 >= (int64_t{1} << 32) || W.out >= (int64_t{1} << 31) || W.in >= (int64_t{1} << 31) ||
      (N + 31) / 32 > 65535 || W.am.dq_block >= (int64_t{1} << 32))
    return "the tensor-core path takes at most 2^32 chunks, 2^31 rows and columns, 2^21 inputs";
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return cudaGetErrorString(cudaGetLastError());   // read and cleared
  return mma_arch_unsupported(dev, sms);
}

const char* check(const NF4Weight& W) {                        // what the kernels assume; the wrapper checks first
  if (W.out < 0 || W.in < 1 || W.block_size < 2 || W.block_size % 2 || (W.out * W.in) % W.block_size)
    return "minift_cuda: need in >= 1 and an even block_size >= 2 dividing out*in";
  if (!W.packed || !W.code || (!W.am.absmax && (!W.am.absmax_q || !W.am.dq_scales || W.am.dq_block < 1)))
    return "minift_cuda: packed, code and the absmax (plain, or absmax_q + dq_scales + dq_block >= 1) are required";
  return nullptr;
}

}  // namespace

// ---- the exported entry points (quant_lora_cuda.h) -----------------------------------------------------

const char* nf4_lora_gemv(Dtype dtype, const void* x, int64_t N, const NF4Weight& W, const float* z,
                          const float* B, int64_t r, const float* bias, void* y, void* stream) {
  if (N <= 0 || W.out == 0) return nullptr;                    // nothing to compute: never a zero-sized grid
  if (const char* e = check(W)) return e;
  if ((N + GNB - 1) / GNB > 65535) return "minift_cuda: nf4_lora_gemv takes at most 65535*8 inputs";
  if (!z || !B) r = 0;                                         // the LoRA term is absent
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return gemv_typed(static_cast<const float*>(x), N, W, z, B, r, bias, static_cast<float*>(y), st);
    case BF16: return gemv_typed(static_cast<const __nv_bfloat16*>(x), N, W, z, B, r, bias,
                                 static_cast<__nv_bfloat16*>(y), st);
    case F16: return gemv_typed(static_cast<const __half*>(x), N, W, z, B, r, bias, static_cast<__half*>(y), st);
  }
  return "minift_cuda: unknown dtype";
}

const char* nf4_dequantize(Dtype dtype, const NF4Weight& W, void* w, void* stream) {
  if (W.out == 0) return nullptr;
  if (const char* e = check(W)) return e;
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return dequant_typed(W, static_cast<float*>(w), st);
    case BF16: return dequant_typed(W, static_cast<__nv_bfloat16*>(w), st);
    case F16: return dequant_typed(W, static_cast<__half*>(w), st);
  }
  return "minift_cuda: unknown dtype";
}

const char* nf4_mma_unsupported(Dtype dtype, const void* x, int64_t N, const NF4Weight& W) {
  int sms = 0;
  return mma_unsupported(dtype, x, N, W, &sms);
}

const char* nf4_lora_mma(Dtype dtype, const void* x, int64_t N, const NF4Weight& W, const float* z,
                         const float* B, int64_t r, const float* bias, void* y, void* stream) {
  if (N <= 0 || W.out == 0) return nullptr;
  if (const char* e = check(W)) return e;
  int sms = 0;
  if (const char* e = mma_unsupported(dtype, x, N, W, &sms)) return e;
  if (!z || !B) r = 0;
  if (r >= (int64_t{1} << 31)) return "minift_cuda: nf4_lora_mma takes a LoRA rank below 2^31";
  auto st = static_cast<cudaStream_t>(stream);
  if (dtype == BF16)
    return mma_typed(static_cast<const __nv_bfloat16*>(x), N, W, z, B, r, bias, static_cast<__nv_bfloat16*>(y), st, sms);
  return mma_typed(static_cast<const __half*>(x), N, W, z, B, r, bias, static_cast<__half*>(y), st, sms);
}

}  // namespace minift_cuda
