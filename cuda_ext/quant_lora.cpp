// The fused quantized-LoRA matmul, CPU (lesson 13), and the torch wrapper of its CUDA kernels. One
// translation unit (+ quant_lora_cuda.cu when torch has CUDA), built by cuda_ext/loader.py.
//
//     y = x · dequant(W_q)ᵀ + s · (x Aᵀ) Bᵀ + bias          x (N, in), W_q (out, in), A (r, in), B (out, r)
//
// W_q is never expanded to float32 in full. NF4: packed 4-bit indices (element 2i in the HIGH nibble of
// byte i, minift's packing), a 16-float code table, one absmax per block of `bs` consecutive weights of
// the flattened (out, in) matrix, optionally double-quantized (c_b = q8_b · scale_{b / dq} + mean).
// int8: one absmax scale per output row, ŵ = q · scale_o.
//
// dtypes: x is float32, bfloat16 or float16 and y comes back in x's dtype; accumulation is float32
// (on the CPU x is widened to float32 once per call and y rounded to x's dtype once at the end).
// A, B and bias may be any float dtype: they are converted to float32 once per call.
//
// CPU paths (chosen per call):
//   N <= SMALL_N   GEMV / small batch: parallel over output rows; each row is decoded ONCE per tile of
//                  up to 4 inputs and multiplied as it is decoded (AVX2 + FMA, or the scalar path).
//                  at::parallel_for is an OpenMP loop: the loader compiles with -fopenmp.
//   N >  SMALL_N   big batch: rows are decoded a tile of TILE_ROWS at a time into a small float buffer,
//                  then multiplied by at::mm (the BLAS GEMM); the full float weight never exists
// The LoRA branch rides along: z = s · x Aᵀ (N, r) is computed first, and each output row adds z · B_o.
// A bad input is a TORCH_CHECK (a Python RuntimeError), checked before any pointer is taken.
#include <ATen/ATen.h>                                        // tensors, at::empty, TORCH_CHECK
#include <torch/python.h>                                      // pybind11 + torch.Tensor conversions (not the
                                                               // whole C++ frontend of torch/extension.h: 1/3 less to compile)
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef MINIFT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>                              // (not ATen/cuda/CUDAContext.h: it needs cuSPARSE/cuBLAS headers)
#include <c10/cuda/CUDAGuard.h>

#include "quant_lora_cuda.h"
#endif

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#elif __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
#if defined(TORCH_VERSION_MAJOR) && defined(TORCH_VERSION_MINOR)
#define MINIFT_TORCH_VERSION (TORCH_VERSION_MAJOR * 100 + TORCH_VERSION_MINOR)
#else
#define MINIFT_TORCH_VERSION 0
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MINIFT_AVX2 1
#else
#define MINIFT_AVX2 0
#endif

namespace {

constexpr int64_t SMALL_N = 16;     // up to this batch: the fused GEMV path
constexpr int64_t TILE_ROWS = 256;  // big batch: rows decoded per GEMM tile (256 x in floats)

struct Absmax {                     // c_b, plain or double-quantized
  const float* absmax = nullptr;
  const int8_t* q8 = nullptr;
  const float* scales = nullptr;
  float mean = 0.f;
  int64_t dq = 256;
  inline float operator()(int64_t b) const {
    return absmax ? absmax[b] : static_cast<float>(q8[b]) * scales[b / dq] + mean;
  }
};

inline int nibble(const uint8_t* packed, int64_t j) {          // code index of flat element j
  const uint8_t byte = packed[j >> 1];
  return (j & 1) ? (byte & 0x0F) : (byte >> 4);                 // 2i high, 2i+1 low
}

// ---- scalar path: any shape, any block size, rows starting mid-byte or mid-block --------------------

void nf4_row_scalar(const float* x, int64_t N, int64_t in, const uint8_t* packed, const float* code,
                    const Absmax& am, int64_t bs, int64_t o, float* acc /* (N,) */) {
  const int64_t j0 = o * in;                                    // row o starts at flat index o·in
  for (int64_t n = 0; n < N; ++n) acc[n] = 0.f;
  for (int64_t k = 0; k < in;) {
    const int64_t b = (j0 + k) / bs;                            // block of element (o, k)
    const int64_t end = std::min(in, (b + 1) * bs - j0);        // this block's part of the row
    const float c = am(b);                                      // c_b
    for (int64_t n = 0; n < N; ++n) {
      const float* xn = x + n * in;
      float s = 0.f;
      for (int64_t kk = k; kk < end; ++kk) s += xn[kk] * code[nibble(packed, j0 + kk)];   // Σ x_k NF4[q_k]
      acc[n] += s * c;                                          // · c_b
    }
    k = end;
  }
}

void int8_row_scalar(const float* x, int64_t N, int64_t in, const int8_t* q, float scale, int64_t o,
                     float* acc) {
  const int8_t* w = q + o * in;
  for (int64_t n = 0; n < N; ++n) {
    const float* xn = x + n * in;
    float s = 0.f;
    for (int64_t k = 0; k < in; ++k) s += xn[k] * static_cast<float>(w[k]);
    acc[n] = s * scale;                                         // s_o Σ x_k q_k
  }
}

#if MINIFT_AVX2
// ---- AVX2 + FMA path: 8 weights per step ------------------------------------------------------------

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct Decoder {                    // packed bytes -> floats NF4[q]
  // Default ("shuffle", blocks of a multiple of 32): 16 bytes -> 32 weights with vpshufb. The 16-value
  // table is split into 4 BYTE PLANES (byte k of every float), vpshufb looks up 32 indices in each
  // plane at once, and unpacks reassemble the floats, in the order [1 3 5 7 0 2 4 6] within each 8
  // (x is permuted the same way once per call, so the dot product does not care). Two alternatives,
  // for the lesson's comparison: MINIFT_EXT_DECODE=permute (8 weights per step: two vpermps on the
  // 16 floats held in two registers, and a blend on bit 3) and MINIFT_EXT_DECODE=lut (a 256-entry
  // table of float pairs, one per byte value, 2 KiB in L1; four 8-byte loads fill 8 lanes).
  __m256 lo, hi;                    // code[0:8], code[8:16]
  __m256i shifts;
  __m256i planes[4];                // byte k of code[0..15], in both 128-bit lanes
  int mode;                         // 0 shuffle, 1 permute, 2 lut
  alignas(32) float pair[256][2];   // (NF4[byte >> 4], NF4[byte & 15])
  explicit Decoder(const float* code)
      : lo(_mm256_loadu_ps(code)), hi(_mm256_loadu_ps(code + 8)),
        shifts(_mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24)),   // lane 2i: high nibble of byte i
        mode(requested_mode()) {
    for (int b = 0; b < 256; ++b) {
      pair[b][0] = code[b >> 4];                                // element 2i: high nibble
      pair[b][1] = code[b & 0x0F];                              // element 2i+1: low nibble
    }
    alignas(16) uint8_t plane[4][16];
    for (int v = 0; v < 16; ++v) {
      uint32_t bits;
      std::memcpy(&bits, code + v, 4);
      for (int k = 0; k < 4; ++k) plane[k][v] = static_cast<uint8_t>(bits >> (8 * k));
    }
    for (int k = 0; k < 4; ++k)
      planes[k] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(plane[k])));
  }
  static int requested_mode() {
    static const int m = [] {
      const char* e = std::getenv("MINIFT_EXT_DECODE");
      const std::string v = e ? e : "";
      return v == "permute" ? 1 : v == "lut" ? 2 : 0;
    }();
    return m;
  }
  // 16 bytes -> 32 weights, f[m] = ŵ at [8m+1, 8m+3, 8m+5, 8m+7, 8m, 8m+2, 8m+4, 8m+6]
  inline void shuffle32(const uint8_t* p, __m256 f[4]) const {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i low = _mm_and_si128(v, m4);                   // byte i: q_{2i+1}
    const __m128i high = _mm_and_si128(_mm_srli_epi16(v, 4), m4);  // byte i: q_{2i}
    const __m256i idx = _mm256_set_m128i(high, low);
    const __m256i b0 = _mm256_shuffle_epi8(planes[0], idx), b1 = _mm256_shuffle_epi8(planes[1], idx);
    const __m256i b2 = _mm256_shuffle_epi8(planes[2], idx), b3 = _mm256_shuffle_epi8(planes[3], idx);
    const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);   // 16-bit halves
    const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
    f[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));                        // whole floats
    f[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
    f[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
    f[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
  }
  inline __m256 perm(const uint8_t* p) const {
    uint32_t u;
    std::memcpy(&u, p, 4);                                      // bytes b0..b3, little-endian
    const __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)), shifts);  // nibble in bits 0-3
    const __m256 a = _mm256_permutevar8x32_ps(lo, idx);         // code[idx & 7]
    const __m256 b = _mm256_permutevar8x32_ps(hi, idx);         // code[8 + (idx & 7)]
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign: picks b
  }
  inline __m256 lut(const uint8_t* p) const {
    const double* t = reinterpret_cast<const double*>(pair);
    const __m128d a = _mm_loadh_pd(_mm_load_sd(t + p[0]), t + p[1]);   // ŵ_0 .. ŵ_3
    const __m128d b = _mm_loadh_pd(_mm_load_sd(t + p[2]), t + p[3]);   // ŵ_4 .. ŵ_7
    return _mm256_castpd_ps(_mm256_insertf128_pd(_mm256_castpd128_pd256(a), b, 1));
  }
  inline __m256 operator()(const uint8_t* p) const { return mode == 2 ? lut(p) : perm(p); }
};

constexpr int PERM8[8] = {1, 3, 5, 7, 0, 2, 4, 6};   // the shuffle decoder's order within each 8

// As nf4_row_avx2 below, with the shuffle decoder: needs bs % 32 == 0 and in % bs == 0, and x already
// permuted (xp[8g + t] = x[8g + PERM8[t]]).
template <int NT>
void nf4_row_shuffle(const float* xp, int64_t in, const uint8_t* packed, const Decoder& dec, const Absmax& am,
                     int64_t bs, int64_t o, float* acc) {
  __m256 tot[NT];
  for (int n = 0; n < NT; ++n) tot[n] = _mm256_setzero_ps();
  const uint8_t* p = packed + (o * in) / 2;
  for (int64_t k = 0, b = (o * in) / bs; k < in; k += bs, ++b) {
    __m256 s0[NT], s1[NT];
    for (int n = 0; n < NT; ++n) s0[n] = s1[n] = _mm256_setzero_ps();
    for (int64_t kk = k; kk < k + bs; kk += 32, p += 16) {
      __m256 f[4];
      dec.shuffle32(p, f);                                      // 32 weights NF4[q]
      for (int n = 0; n < NT; ++n) {
        const float* xn = xp + n * in + kk;
        s0[n] = _mm256_fmadd_ps(_mm256_loadu_ps(xn), f[0], s0[n]);
        s1[n] = _mm256_fmadd_ps(_mm256_loadu_ps(xn + 8), f[1], s1[n]);
        s0[n] = _mm256_fmadd_ps(_mm256_loadu_ps(xn + 16), f[2], s0[n]);
        s1[n] = _mm256_fmadd_ps(_mm256_loadu_ps(xn + 24), f[3], s1[n]);
      }
    }
    const __m256 c = _mm256_set1_ps(am(b));                     // c_b
    for (int n = 0; n < NT; ++n) tot[n] = _mm256_fmadd_ps(_mm256_add_ps(s0[n], s1[n]), c, tot[n]);
  }
  for (int n = 0; n < NT; ++n) acc[n] = hsum(tot[n]);
}

// NT inputs at once (1..4): row o is decoded once and multiplied into NT accumulators. Needs in % bs == 0
// and bs % 8 == 0, so that every row starts on a byte and a block, and every block is whole 8-chunks.
template <int NT>
void nf4_row_avx2(const float* x, int64_t in, const uint8_t* packed, const Decoder& dec, const Absmax& am,
                  int64_t bs, int64_t o, float* acc /* (NT,) */) {
  __m256 tot[NT];
  for (int n = 0; n < NT; ++n) tot[n] = _mm256_setzero_ps();
  const uint8_t* p = packed + (o * in) / 2;
  const int64_t b0 = (o * in) / bs;
  for (int64_t k = 0, b = b0; k < in; k += bs, ++b) {
    __m256 s0[NT], s1[NT];                                      // two chains: hides the FMA latency
    for (int n = 0; n < NT; ++n) s0[n] = s1[n] = _mm256_setzero_ps();
    int64_t kk = k;
    for (; kk + 16 <= k + bs; kk += 16, p += 8) {
      const __m256 w0 = dec(p), w1 = dec(p + 4);                // 16 weights NF4[q]
      for (int n = 0; n < NT; ++n) {
        s0[n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + n * in + kk), w0, s0[n]);
        s1[n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + n * in + kk + 8), w1, s1[n]);
      }
    }
    if (kk < k + bs) {                                          // bs = 8 mod 16: one chunk left
      const __m256 w0 = dec(p);
      for (int n = 0; n < NT; ++n) s0[n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + n * in + kk), w0, s0[n]);
      p += 4;
    }
    const __m256 c = _mm256_set1_ps(am(b));                     // c_b
    for (int n = 0; n < NT; ++n) tot[n] = _mm256_fmadd_ps(_mm256_add_ps(s0[n], s1[n]), c, tot[n]);
  }
  for (int n = 0; n < NT; ++n) acc[n] = hsum(tot[n]);
}

template <int NT>
void int8_row_avx2(const float* x, int64_t in, const int8_t* q, float scale, int64_t o, float* acc) {
  const int8_t* w = q + o * in;
  __m256 s[NT];
  for (int n = 0; n < NT; ++n) s[n] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + k));   // 8 int8
    const __m256 wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    for (int n = 0; n < NT; ++n) s[n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + n * in + k), wv, s[n]);
  }
  for (int n = 0; n < NT; ++n) {
    float t = hsum(s[n]);
    for (int64_t kk = k; kk < in; ++kk) t += x[n * in + kk] * static_cast<float>(w[kk]);  // tail
    acc[n] = t * scale;
  }
}
#endif

// ---- one output row for all N inputs, whichever path fits --------------------------------------------

struct Weight {
  bool nf4;
  const uint8_t* packed;            // NF4
  const float* code;
  Absmax am;
  int64_t bs;
  const int8_t* q;                  // int8
  const float* scale;
  int64_t out, in;
};

struct Decoder;

void row_all_inputs(const Weight& W, const float* x, int64_t N, int64_t o, float* acc, bool vec,
                    const Decoder* decp, const float* xperm) {
  (void)vec;
  (void)decp;
  (void)xperm;
#if MINIFT_AVX2
  if (vec) {
    for (int64_t n = 0; n < N;) {
      const int64_t t = std::min<int64_t>(4, N - n);
      const float* xn = x + n * W.in;
      float* an = acc + n;
      if (W.nf4) {
        const Decoder& dec = *decp;                             // built once per call
        if (xperm) {                                            // the shuffle decoder
          const float* xq = xperm + n * W.in;
          switch (t) {
            case 1: nf4_row_shuffle<1>(xq, W.in, W.packed, dec, W.am, W.bs, o, an); break;
            case 2: nf4_row_shuffle<2>(xq, W.in, W.packed, dec, W.am, W.bs, o, an); break;
            case 3: nf4_row_shuffle<3>(xq, W.in, W.packed, dec, W.am, W.bs, o, an); break;
            default: nf4_row_shuffle<4>(xq, W.in, W.packed, dec, W.am, W.bs, o, an);
          }
          n += t;
          continue;
        }
        switch (t) {
          case 1: nf4_row_avx2<1>(xn, W.in, W.packed, dec, W.am, W.bs, o, an); break;
          case 2: nf4_row_avx2<2>(xn, W.in, W.packed, dec, W.am, W.bs, o, an); break;
          case 3: nf4_row_avx2<3>(xn, W.in, W.packed, dec, W.am, W.bs, o, an); break;
          default: nf4_row_avx2<4>(xn, W.in, W.packed, dec, W.am, W.bs, o, an);
        }
      } else {
        switch (t) {
          case 1: int8_row_avx2<1>(xn, W.in, W.q, W.scale[o], o, an); break;
          case 2: int8_row_avx2<2>(xn, W.in, W.q, W.scale[o], o, an); break;
          case 3: int8_row_avx2<3>(xn, W.in, W.q, W.scale[o], o, an); break;
          default: int8_row_avx2<4>(xn, W.in, W.q, W.scale[o], o, an);
        }
      }
      n += t;
    }
    return;
  }
#endif
  if (W.nf4) nf4_row_scalar(x, N, W.in, W.packed, W.code, W.am, W.bs, o, acc);
  else int8_row_scalar(x, N, W.in, W.q, W.scale[o], o, acc);
}

void decode_row(const Weight& W, int64_t o, float* dst /* (in,) */, bool vec, const Decoder* decp) {
  (void)vec;                                                    // ŵ_o, for the GEMM path
  (void)decp;
  if (!W.nf4) {
    const int8_t* w = W.q + o * W.in;
    const float s = W.scale[o];
    for (int64_t k = 0; k < W.in; ++k) dst[k] = static_cast<float>(w[k]) * s;
    return;
  }
  const int64_t j0 = o * W.in;
#if MINIFT_AVX2
  if (vec) {
    const Decoder& dec = *decp;
    const uint8_t* p = W.packed + j0 / 2;
    for (int64_t k = 0, b = j0 / W.bs; k < W.in; k += W.bs, ++b) {
      const __m256 c = _mm256_set1_ps(W.am(b));
      for (int64_t kk = k; kk < k + W.bs; kk += 8, p += 4) _mm256_storeu_ps(dst + kk, _mm256_mul_ps(dec(p), c));
    }
    return;
  }
#endif
  for (int64_t k = 0; k < W.in; ++k) dst[k] = W.code[nibble(W.packed, j0 + k)] * W.am((j0 + k) / W.bs);
}

// ---- the op: every input is checked (device, dtype, shape, contiguity) before any data_ptr ------------

bool is_act_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

void check_x(const torch::Tensor& x, const char* where) {       // x (N, in) f32 / bf16 / f16, contiguous
  TORCH_CHECK(x.dim() == 2, where, ": x must be 2-D (N, in), got shape ", x.sizes());
  TORCH_CHECK(is_act_dtype(x.scalar_type()), where, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), where, ": x must be contiguous");
}

void check_on(const torch::Tensor& t, const char* name, const c10::Device& dev) {
  TORCH_CHECK(t.device() == dev, name, " must be on ", dev, " (where x is), got ", t.device());
}

// A tensor of the stored weight: exactly this dtype, contiguous 1-D, n values, on x's device.
void check_1d(const torch::Tensor& t, const char* name, at::ScalarType dtype, int64_t n, const c10::Device& dev) {
  check_on(t, name, dev);
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.is_contiguous(), name, " must be a contiguous 1-D tensor, got shape ", t.sizes(),
              t.dim() == 1 ? " (not contiguous)" : "");
  TORCH_CHECK(t.numel() == n, name, " has ", t.numel(), " values, expected ", n);
}

struct Lora {                       // A (r, in), B (out, r), bias (out,) in float32; r = 0: no LoRA
  torch::Tensor A, B, bias;
  int64_t r = 0;
};

// A, B, bias: empty tensors for "none", else any floating dtype on x's device, converted ONCE to float32.
Lora check_lora(const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& bias, int64_t out, int64_t in,
                const c10::Device& dev) {
  Lora L;
  TORCH_CHECK((A.numel() > 0) == (B.numel() > 0), "A and B come together: both empty (no LoRA) or both given, got A ",
              A.sizes(), " and B ", B.sizes());
  if (A.numel() > 0) {
    check_on(A, "A", dev);
    check_on(B, "B", dev);
    TORCH_CHECK(A.is_floating_point() && B.is_floating_point(), "A and B must be floating point, got ",
                A.scalar_type(), " and ", B.scalar_type());
    TORCH_CHECK(A.dim() == 2 && A.size(1) == in, "A must be (r, in=", in, "), got ", A.sizes());
    TORCH_CHECK(B.dim() == 2 && B.size(0) == out && B.size(1) == A.size(0), "B must be (out=", out, ", r=",
                A.size(0), "), got ", B.sizes());
    L.r = A.size(0);
    L.A = A.to(at::kFloat).contiguous();                        // no copy when already float32 and contiguous
    L.B = B.to(at::kFloat).contiguous();
  }
  if (bias.numel() > 0) {
    check_on(bias, "bias", dev);
    TORCH_CHECK(bias.is_floating_point(), "bias must be floating point, got ", bias.scalar_type());
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == out, "bias must be (out=", out, ",), got ", bias.sizes());
    L.bias = bias.to(at::kFloat).contiguous();
  }
  return L;
}

// The NF4 weight's tensors against (out, in, block_size), all on x's device. True: the absmax is
// double-quantized (absmax empty; absmax_q, dq_scales, dq_mean, dq_block describe it).
bool check_nf4(const torch::Tensor& x, const torch::Tensor& packed, int64_t out, int64_t in,
               const torch::Tensor& absmax, const torch::Tensor& absmax_q, const torch::Tensor& dq_scales,
               int64_t dq_block, const torch::Tensor& code, int64_t block_size) {
  const c10::Device dev = x.device();
  TORCH_CHECK(x.size(1) == in, "x has in=", x.size(1), " features but the weight is (", out, ", ", in, ")");
  TORCH_CHECK(out > 0 && in > 0 && out <= INT64_MAX / 2 / in, "out=", out, " and in=", in,
              " must be positive (and out·in must fit in int64)");
  TORCH_CHECK(block_size >= 2 && block_size % 2 == 0, "block_size=", block_size, " must be even and >= 2");
  TORCH_CHECK((out * in) % block_size == 0, "block_size=", block_size, " must divide out·in=", out * in);
  check_1d(packed, "packed", at::kByte, (out * in + 1) / 2, dev);   // 2 weights per byte
  check_1d(code, "code", at::kFloat, 16, dev);
  const int64_t nb = out * in / block_size;                     // n_blocks >= 1
  if (absmax.numel() > 0) {
    check_1d(absmax, "absmax", at::kFloat, nb, dev);
    return false;
  }
  check_1d(absmax_q, "absmax_q", at::kChar, nb, dev);
  TORCH_CHECK(dq_block > 0, "dq_block=", dq_block, " must be positive");
  check_1d(dq_scales, "dq_scales", at::kFloat, nb / dq_block + (nb % dq_block != 0), dev);   // ceil(nb / dq)
  return true;
}

// The CPU computation. x is widened to float32 ONCE per call (it is (N, in): small next to the weight),
// y is accumulated in float32 and rounded to x's dtype once, at the end.
torch::Tensor finish(const Weight& W, const torch::Tensor& x_in, const Lora& L, double scaling, bool vec) {
  const torch::Tensor x = x_in.to(at::kFloat).contiguous();    // (N, in) f32; no copy when x is f32
  const int64_t N = x.size(0), out = W.out, in = W.in, r = L.r;
  const bool lora = r > 0;
  auto y = at::empty({N, out}, x.options());                 // (N, out) f32
  torch::Tensor z;                                              // s · x Aᵀ  (N, r)
  if (lora) z = (at::mm(x, L.A.t()) * scaling).contiguous();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* zp = lora ? z.data_ptr<float>() : nullptr;
  const float* Bp = lora ? L.B.data_ptr<float>() : nullptr;
  const float* bp = L.bias.defined() ? L.bias.data_ptr<float>() : nullptr;
#if MINIFT_AVX2
  std::unique_ptr<Decoder> dec;
  if (vec && W.nf4) dec.reset(new Decoder(W.code));            // the pair table: once per call
  const Decoder* decp = dec.get();
  std::vector<float> xperm;                                     // x in the shuffle decoder's order
  if (decp && decp->mode == 0 && W.bs % 32 == 0 && N <= SMALL_N) {
    xperm.resize(N * in);                                       // in % 32 == 0 here: whole 8-groups
    for (int64_t i = 0; i < N * in; i += 8)
      for (int t = 0; t < 8; ++t) xperm[i + t] = xp[i + PERM8[t]];
  }
  const float* xpp = xperm.empty() ? nullptr : xperm.data();
#else
  const Decoder* decp = nullptr;
  const float* xpp = nullptr;
#endif

  if (N <= SMALL_N) {                                           // GEMV / small batch: fused
    at::parallel_for(0, out, 16, [&](int64_t o0, int64_t o1) {
      std::vector<float> acc(std::max<int64_t>(N, 1));
      for (int64_t o = o0; o < o1; ++o) {
        row_all_inputs(W, xp, N, o, acc.data(), vec, decp, xpp);            // x_n · ŵ_o for every n
        for (int64_t n = 0; n < N; ++n) {
          float v = acc[n];
          if (lora) {
            const float* zn = zp + n * r;
            const float* Bo = Bp + o * r;
            for (int64_t i = 0; i < r; ++i) v += zn[i] * Bo[i];  // + s (x Aᵀ)_n · B_o
          }
          if (bp) v += bp[o];                                    // + b_o
          yp[n * out + o] = v;
        }
      }
    });
    return y.to(x_in.scalar_type());                            // one rounding to x's dtype
  }
  auto tile = at::empty({std::min(TILE_ROWS, out), in}, x.options());   // big batch: decode a tile,
  float* tp = tile.data_ptr<float>();                                         // then BLAS
  for (int64_t t0 = 0; t0 < out; t0 += TILE_ROWS) {
    const int64_t R = std::min(TILE_ROWS, out - t0);
    at::parallel_for(0, R, 8, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) decode_row(W, t0 + i, tp + i * in, vec, decp);   // ŵ rows t0 .. t0+R
    });
    y.narrow(1, t0, R).copy_(at::mm(x, tile.narrow(0, 0, R).t()));        // x ŵ_tileᵀ  (N, R)
  }
  if (lora) y.add_(at::mm(z, L.B.t()));                                    // + s (x Aᵀ) Bᵀ
  if (bp) y.add_(L.bias);
  return y.to(x_in.scalar_type());                              // one rounding to x's dtype
}

}  // namespace

// x (N, in) f32 / bf16 / f16 (y comes back in x's dtype); packed (ceil(out·in / 2),) u8; absmax (n_blocks,)
// f32, or absmax_q (n_blocks,) i8 with dq_scales (ceil(n_blocks / dq),) f32 and dq_mean; code (16,) f32.
// A, B, bias: any float dtype, or empty tensors for "none". All on the CPU.
torch::Tensor nf4_lora_matmul(torch::Tensor x, torch::Tensor packed, int64_t out, int64_t in, torch::Tensor absmax,
                              torch::Tensor absmax_q, torch::Tensor dq_scales, double dq_mean, int64_t dq_block,
                              torch::Tensor code, int64_t block_size, torch::Tensor A, torch::Tensor B,
                              double scaling, torch::Tensor bias, bool vectorize) {
  check_x(x, "nf4_lora_matmul");
  TORCH_CHECK(x.device().is_cpu(), "nf4_lora_matmul is the CPU kernel: x must be on the CPU, got ", x.device(),
              x.is_cuda() ? " (nf4_lora_matmul_cuda takes CUDA tensors)" : "");
  const bool dq = check_nf4(x, packed, out, in, absmax, absmax_q, dq_scales, dq_block, code, block_size);
  const Lora L = check_lora(A, B, bias, out, in, x.device());
  Weight W{true, packed.data_ptr<uint8_t>(), code.data_ptr<float>(), Absmax{}, block_size, nullptr, nullptr, out, in};
  if (!dq) {
    W.am.absmax = absmax.data_ptr<float>();
  } else {
    W.am.q8 = absmax_q.data_ptr<int8_t>();
    W.am.scales = dq_scales.data_ptr<float>();
    W.am.mean = static_cast<float>(dq_mean);
    W.am.dq = dq_block;
  }
  const bool vec = vectorize && MINIFT_AVX2 && block_size % 8 == 0 && in % block_size == 0;
  return finish(W, x, L, scaling, vec);
}

// x (N, in) f32 / bf16 / f16; q (out, in) i8; scale (out,) f32: ŵ_o = q_o · scale_o. CPU.
torch::Tensor int8_lora_matmul(torch::Tensor x, torch::Tensor q, torch::Tensor scale, torch::Tensor A,
                               torch::Tensor B, double scaling, torch::Tensor bias, bool vectorize) {
  check_x(x, "int8_lora_matmul");
  TORCH_CHECK(x.device().is_cpu(), "int8_lora_matmul is the CPU kernel: x must be on the CPU, got ", x.device());
  check_on(q, "q", x.device());
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous(),
              "q must be a contiguous 2-D int8 tensor, got ", q.scalar_type(), " of shape ", q.sizes());
  TORCH_CHECK(q.size(1) == x.size(1), "x has in=", x.size(1), " features but the weight has ", q.size(1));
  check_1d(scale, "scale", at::kFloat, q.size(0), x.device());
  const Lora L = check_lora(A, B, bias, q.size(0), q.size(1), x.device());
  Weight W{false, nullptr, nullptr, Absmax{}, 1, q.data_ptr<int8_t>(), scale.data_ptr<float>(), q.size(0), q.size(1)};
  return finish(W, x, L, scaling, vectorize && MINIFT_AVX2);
}

#ifdef MINIFT_WITH_CUDA
// ---- the CUDA wrapper: checks, then the kernels of quant_lora_cuda.cu on the current stream -----------
// COMPILED-BUT-UNVERIFIED until the GPU tests of tests/test_ops.py have run on a GPU.
// kernel = 0 (auto) or 1 (CUDA cores):
//   N <= GEMV_MAX_N   nf4_lora_gemv: the GEMV with the LoRA branch (z = s·x Aᵀ, float32) and bias fused
//   N >  GEMV_MAX_N   nf4_dequantize into Ŵ (out, in) of x's dtype, y = x Ŵᵀ by cuBLAS (float32 output),
//                     + z Bᵀ + bias in float32, rounded to x's dtype once
// kernel = 2 (tensor cores): nf4_lora_mma, any N, bf16 / fp16 x on sm_80+ (an error where it cannot run).
// auto takes the tensor cores where they can run from batch mma_auto_min_n on: MMA_AUTO_MIN_N (never, for now),
// or what set_mma_auto_min_n made it (minift.quant.ops calls it with MINIFT_MMA_AUTO_MIN_N when it loads this).
namespace {

int64_t mma_auto_min_n = minift_cuda::MMA_AUTO_MIN_N;

minift_cuda::Dtype cuda_dtype(at::ScalarType t) {
  return t == at::kBFloat16 ? minift_cuda::BF16 : t == at::kHalf ? minift_cuda::F16 : minift_cuda::F32;
}

torch::Tensor aligned16(const torch::Tensor& t) {               // the GEMV's fast path reads x 16 bytes at
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 ? t.clone() : t;   // a time: an x at an odd offset is
}                                                               // copied (small); the kernels take any alignment

torch::Tensor mm_f32(const torch::Tensor& x, const torch::Tensor& wt) {   // x wᵀ (N, out), float32 output
  if (x.scalar_type() == at::kFloat) return at::mm(x, wt);
#if MINIFT_TORCH_VERSION >= 208                 // torch 2.8: mm(a, b, out_dtype)
  return at::mm(x, wt, at::kFloat);                             // bf16 / fp16 in, float32 accumulate and out
#else
  return at::mm(x, wt).to(at::kFloat);                          // old torch: cuBLAS rounds to x's dtype first
#endif
}

}  // namespace

torch::Tensor nf4_lora_matmul_cuda(torch::Tensor x, torch::Tensor packed, int64_t out, int64_t in, torch::Tensor absmax,
                                   torch::Tensor absmax_q, torch::Tensor dq_scales, double dq_mean, int64_t dq_block,
                                   torch::Tensor code, int64_t block_size, torch::Tensor A, torch::Tensor B,
                                   double scaling, torch::Tensor bias, int64_t kernel) {
  check_x(x, "nf4_lora_matmul_cuda");
  TORCH_CHECK(kernel >= 0 && kernel <= 2, "nf4_lora_matmul_cuda: kernel must be 0 (auto), 1 (CUDA cores) or 2 ",
              "(tensor cores), got ", kernel);
  TORCH_CHECK(x.is_cuda(), "nf4_lora_matmul_cuda: x must be a CUDA tensor, got ", x.device(),
              x.device().is_cpu() ? " (nf4_lora_matmul takes CPU tensors)" : "");
  const bool dq = check_nf4(x, packed, out, in, absmax, absmax_q, dq_scales, dq_block, code, block_size);
  const Lora L = check_lora(A, B, bias, out, in, x.device());  // everything checked: data_ptr from here on
  const c10::cuda::CUDAGuard guard(x.device());                 // allocations and the stream: x's GPU
  const int64_t N = x.size(0);
  if (N == 0) return at::empty({0, out}, x.options());      // an empty grid is a launch error
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dt = cuda_dtype(x.scalar_type());
  const torch::Tensor xa = aligned16(x);                       // (packed is never copied: it is the weight)
  minift_cuda::NF4Weight W;
  W.packed = packed.data_ptr<uint8_t>();
  W.out = out;
  W.in = in;
  W.block_size = block_size;
  W.code = code.data_ptr<float>();
  if (!dq) {
    W.am.absmax = absmax.data_ptr<float>();
  } else {
    W.am.absmax_q = absmax_q.data_ptr<int8_t>();               // decoded inside the kernel:
    W.am.dq_scales = dq_scales.data_ptr<float>();              //   c_b = q8_b · scale_{b / dq} + mean
    W.am.dq_mean = static_cast<float>(dq_mean);
    W.am.dq_block = dq_block;
  }
  torch::Tensor z;                                              // s · x Aᵀ  (N, r) float32
  if (L.r) z = at::mm(x.to(at::kFloat), L.A.t()).mul_(scaling).contiguous();
  const bool mma = kernel == 2 || (kernel == 0 && N >= mma_auto_min_n &&
                                    minift_cuda::nf4_mma_unsupported(dt, xa.data_ptr(), N, W) == nullptr);
  if (mma || N <= minift_cuda::GEMV_MAX_N) {
    auto y = at::empty({N, out}, x.options());               // (N, out) in x's dtype
    const auto fused = mma ? minift_cuda::nf4_lora_mma : minift_cuda::nf4_lora_gemv;
    const char* err = fused(dt, xa.data_ptr(), N, W, L.r ? z.data_ptr<float>() : nullptr,
                            L.r ? L.B.data_ptr<float>() : nullptr, L.r,
                            L.bias.defined() ? L.bias.data_ptr<float>() : nullptr, y.data_ptr(), stream);
    TORCH_CHECK(err == nullptr, mma ? "nf4_lora_mma" : "nf4_lora_gemv", " failed: ", err ? err : "");
    return y;
  }
  auto w = at::empty({out, in}, x.options());                // Ŵ (out, in) in x's dtype, once per call
  const char* err = minift_cuda::nf4_dequantize(dt, W, w.data_ptr(), stream);
  TORCH_CHECK(err == nullptr, "nf4_dequantize failed: ", err ? err : "");
  torch::Tensor y = mm_f32(xa, w.t());                          // x Ŵᵀ  (N, out) f32, cuBLAS
  if (L.r) y.addmm_(z, L.B.t());                                // + s (x Aᵀ) Bᵀ
  if (L.bias.defined()) y.add_(L.bias);                         // + b
  return y.to(x.scalar_type());                                 // one rounding to x's dtype
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "minift cuda_ext: fused dequantize + matmul + LoRA for NF4 and int8 weights (lesson 13)";
  m.def("nf4_lora_matmul", &nf4_lora_matmul, "y = x dequant(W_nf4)^T + s (x A^T) B^T + bias (CPU)");
  m.def("int8_lora_matmul", &int8_lora_matmul, "y = x dequant(W_int8)^T + s (x A^T) B^T + bias (CPU)");
  m.attr("avx2") = static_cast<bool>(MINIFT_AVX2);
#ifdef MINIFT_WITH_CUDA
  m.def("nf4_lora_matmul_cuda", &nf4_lora_matmul_cuda,
        "the same NF4 op on CUDA (same arguments; instead of vectorize, kernel: 0 auto, 1 CUDA cores, 2 tensor cores)");
  m.attr("cuda") = true;
  m.def("mma_auto_min_n", [] { return mma_auto_min_n; }, "the batch from which kernel 0 (auto) may take the tensor cores");
  m.def("set_mma_auto_min_n", [](int64_t n) {
        TORCH_CHECK(n >= 1, "set_mma_auto_min_n: the batch must be >= 1, got ", n);
        mma_auto_min_n = n;
      }, "change it for this process (MMA_AUTO_MIN_N in quant_lora_cuda.h is the built-in value)");
#else
  m.attr("cuda") = false;
#endif
}
