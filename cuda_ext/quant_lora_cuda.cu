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
#include "quant_lora_common.cuh"
#include "quant_lora_mma.cuh"                                  // pack2: two values of T in one word

namespace minift_cuda {
namespace {

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

}  // namespace minift_cuda
