// The tensor-core path of the fused NF4-LoRA matmul on CUDA (lesson 13), for bfloat16 / float16 x on sm_80+:
// nf4_lora_mma and nf4_mma_unsupported of cuda_ext/quant_lora_cuda.h. y, ŵ and c_b are defined as in
// quant_lora_cuda.cu; the data layout (which lane holds which weight and input in which register) is
// quant_lora_mma.cuh, which cuda_ext/test_mma_layout.cu checks on the CPU against the PTX ISA.
#include "quant_lora_common.cuh"
#include "quant_lora_mma.cuh"
#include "quant_lora_ptx.cuh"                                   // cp_async16, cp_async_commit, cp_async_wait, mma16816

namespace minift_cuda {
namespace {

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

}  // namespace

// ---- the exported entry points (quant_lora_cuda.h) -----------------------------------------------------

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
