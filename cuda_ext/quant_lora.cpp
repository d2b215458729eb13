// The fused quantized-LoRA matmul, CPU (lesson 13). One translation unit, built by cuda_ext/loader.py.
//
//     y = x · dequant(W_q)ᵀ + s · (x Aᵀ) Bᵀ + bias          x (N, in), W_q (out, in), A (r, in), B (out, r)
//
// W_q is never expanded to float32 in full. NF4: packed 4-bit indices (element 2i in the HIGH nibble of
// byte i, minift's packing), a 16-float code table, one absmax per block of `bs` consecutive weights of
// the flattened (out, in) matrix, optionally double-quantized (c_b = q8_b · scale_{b / dq} + mean).
// int8: one absmax scale per output row, ŵ = q · scale_o.
//
// Paths (chosen per call):
//   N <= SMALL_N   GEMV / small batch: parallel over output rows; each row is decoded ONCE per tile of
//                  up to 4 inputs and multiplied as it is decoded (AVX2 + FMA, or the scalar path).
//                  at::parallel_for is an OpenMP loop: the loader compiles with -fopenmp.
//   N >  SMALL_N   big batch: rows are decoded a tile of TILE_ROWS at a time into a small float buffer,
//                  then multiplied by at::mm (the BLAS GEMM); the full float weight never exists
// The LoRA branch rides along: z = s · x Aᵀ (N, r) is computed first, and each output row adds z · B_o.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

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

// ---- the op -------------------------------------------------------------------------------------------

void check_f32(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dims, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

torch::Tensor finish(const Weight& W, const torch::Tensor& x, const torch::Tensor& A, const torch::Tensor& B,
                     double scaling, const torch::Tensor& bias, bool vec) {
  const int64_t N = x.size(0), out = W.out, in = W.in;
  const bool lora = A.numel() > 0;
  int64_t r = 0;
  if (lora) {
    check_f32(A, "A", 2);
    check_f32(B, "B", 2);
    r = A.size(0);
    TORCH_CHECK(A.size(1) == in, "A must be (r, in=", in, "), got ", A.sizes());
    TORCH_CHECK(B.size(0) == out && B.size(1) == r, "B must be (out=", out, ", r=", r, "), got ", B.sizes());
  }
  if (bias.numel() > 0) {
    check_f32(bias, "bias", 1);
    TORCH_CHECK(bias.size(0) == out, "bias must be (out=", out, ",), got ", bias.sizes());
  }
  auto y = torch::empty({N, out}, x.options());
  torch::Tensor z;                                              // s · x Aᵀ  (N, r)
  if (lora) z = (at::mm(x, A.t()) * scaling).contiguous();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* zp = lora ? z.data_ptr<float>() : nullptr;
  const float* Bp = lora ? B.data_ptr<float>() : nullptr;
  const float* bp = bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
#if MINIFT_AVX2
  std::unique_ptr<Decoder> dec;
  if (vec && W.nf4) dec.reset(new Decoder(W.code));            // the pair table: once per call
  const Decoder* decp = dec.get();
  std::vector<float> xperm;                                     // x in the shuffle decoder's order
  if (decp && decp->mode == 0 && W.bs % 32 == 0 && N <= SMALL_N) {
    xperm.resize(N * in);
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
      std::vector<float> acc(N);
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
    return y;
  }
  auto tile = torch::empty({std::min(TILE_ROWS, out), in}, x.options());   // big batch: decode a tile,
  float* tp = tile.data_ptr<float>();                                         // then BLAS
  for (int64_t t0 = 0; t0 < out; t0 += TILE_ROWS) {
    const int64_t R = std::min(TILE_ROWS, out - t0);
    at::parallel_for(0, R, 8, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) decode_row(W, t0 + i, tp + i * in, vec, decp);   // ŵ rows t0 .. t0+R
    });
    y.narrow(1, t0, R).copy_(at::mm(x, tile.narrow(0, 0, R).t()));        // x ŵ_tileᵀ  (N, R)
  }
  if (lora) y.add_(at::mm(z, B.t()));                                      // + s (x Aᵀ) Bᵀ
  if (bp) y.add_(bias);
  return y;
}

}  // namespace

// x (N, in) f32; packed (ceil(out·in / 2),) u8; absmax (n_blocks,) f32, or absmax_q (n_blocks,) i8 with
// dq_scales (ceil(n_blocks / dq),) f32 and dq_mean; code (16,) f32. A, B, bias: empty tensors for "none".
torch::Tensor nf4_lora_matmul(torch::Tensor x, torch::Tensor packed, int64_t out, int64_t in, torch::Tensor absmax,
                              torch::Tensor absmax_q, torch::Tensor dq_scales, double dq_mean, int64_t dq_block,
                              torch::Tensor code, int64_t block_size, torch::Tensor A, torch::Tensor B,
                              double scaling, torch::Tensor bias, bool vectorize) {
  check_f32(x, "x", 2);
  TORCH_CHECK(x.size(1) == in, "x has in=", x.size(1), " features but the weight is (", out, ", ", in, ")");
  TORCH_CHECK(out > 0 && in > 0, "out=", out, " and in=", in, " must be positive");
  TORCH_CHECK(block_size >= 2 && block_size % 2 == 0, "block_size=", block_size, " must be even and >= 2");
  TORCH_CHECK((out * in) % block_size == 0, "block_size=", block_size, " must divide out·in=", out * in);
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == torch::kUInt8 && packed.dim() == 1 &&
              packed.is_contiguous(), "packed must be a contiguous 1-D uint8 CPU tensor");
  TORCH_CHECK(packed.numel() == (out * in + 1) / 2, "packed has ", packed.numel(), " bytes; (out=", out,
              ") x (in=", in, ") needs ", (out * in + 1) / 2);
  check_f32(code, "code", 1);
  TORCH_CHECK(code.numel() == 16, "code must have 16 values, got ", code.numel());
  const int64_t nb = out * in / block_size;
  Weight W{true, packed.data_ptr<uint8_t>(), code.data_ptr<float>(), Absmax{}, block_size, nullptr, nullptr, out, in};
  if (absmax.numel() > 0) {
    check_f32(absmax, "absmax", 1);
    TORCH_CHECK(absmax.numel() == nb, "absmax has ", absmax.numel(), " values, expected n_blocks=", nb);
    W.am.absmax = absmax.data_ptr<float>();
  } else {
    TORCH_CHECK(absmax_q.device().is_cpu() && absmax_q.scalar_type() == torch::kInt8 && absmax_q.dim() == 1 &&
                absmax_q.is_contiguous(), "absmax_q must be a contiguous 1-D int8 CPU tensor");
    TORCH_CHECK(absmax_q.numel() == nb, "absmax_q has ", absmax_q.numel(), " values, expected n_blocks=", nb);
    TORCH_CHECK(dq_block > 0, "dq_block=", dq_block, " must be positive");
    check_f32(dq_scales, "dq_scales", 1);
    TORCH_CHECK(dq_scales.numel() == (nb + dq_block - 1) / dq_block, "dq_scales has ", dq_scales.numel(),
                " values, expected ", (nb + dq_block - 1) / dq_block);
    W.am.q8 = absmax_q.data_ptr<int8_t>();
    W.am.scales = dq_scales.data_ptr<float>();
    W.am.mean = static_cast<float>(dq_mean);
    W.am.dq = dq_block;
  }
  const bool vec = vectorize && MINIFT_AVX2 && block_size % 8 == 0 && in % block_size == 0;
  return finish(W, x, A, B, scaling, bias, vec);
}

// x (N, in) f32; q (out, in) i8; scale (out,) f32: ŵ_o = q_o · scale_o.
torch::Tensor int8_lora_matmul(torch::Tensor x, torch::Tensor q, torch::Tensor scale, torch::Tensor A,
                               torch::Tensor B, double scaling, torch::Tensor bias, bool vectorize) {
  check_f32(x, "x", 2);
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == torch::kInt8 && q.dim() == 2 && q.is_contiguous(),
              "q must be a contiguous 2-D int8 CPU tensor");
  TORCH_CHECK(q.size(1) == x.size(1), "x has in=", x.size(1), " features but the weight has ", q.size(1));
  check_f32(scale, "scale", 1);
  TORCH_CHECK(scale.numel() == q.size(0), "scale must be (out=", q.size(0), ",), got ", scale.sizes());
  Weight W{false, nullptr, nullptr, Absmax{}, 1, q.data_ptr<int8_t>(), scale.data_ptr<float>(), q.size(0), q.size(1)};
  return finish(W, x, A, B, scaling, bias, vectorize && MINIFT_AVX2);
}

#ifdef MINIFT_WITH_CUDA
// The CUDA path (quant_lora_cuda.cu): COMPILED-BUT-UNVERIFIED, no GPU was available when it was written.
void launch_nf4_lora_gemv(const float* x, int64_t N, int64_t in, int64_t out, const uint8_t* packed,
                          const float* absmax, const float* code, int64_t block_size, const float* z,
                          const float* B, int64_t r, const float* bias, float* y, void* stream);

torch::Tensor nf4_lora_matmul_cuda(torch::Tensor x, torch::Tensor packed, int64_t out, torch::Tensor absmax,
                                   torch::Tensor code, int64_t block_size, torch::Tensor A, torch::Tensor B,
                                   double scaling, torch::Tensor bias) {
  TORCH_CHECK(x.is_cuda() && packed.is_cuda() && absmax.is_cuda() && code.is_cuda(),
              "nf4_lora_matmul_cuda: x, packed, absmax and code must be CUDA tensors");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(), "x must be contiguous 2-D float32");
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous(), "packed must be contiguous uint8");
  TORCH_CHECK(absmax.scalar_type() == torch::kFloat32 && code.scalar_type() == torch::kFloat32 && code.numel() == 16,
              "absmax and code (16 values) must be float32");
  const int64_t N = x.size(0), in = x.size(1);
  TORCH_CHECK(packed.numel() == (out * in + 1) / 2 && absmax.numel() == out * in / block_size,
              "packed / absmax sizes do not match (out=", out, ", in=", in, ", block_size=", block_size, ")");
  auto y = torch::empty({N, out}, x.options());
  torch::Tensor z;
  int64_t r = 0;
  if (A.numel() > 0) {
    TORCH_CHECK(A.is_cuda() && B.is_cuda() && A.size(1) == in && B.size(0) == out && B.size(1) == A.size(0),
                "A (r, in) and B (out, r) must be CUDA tensors of matching shapes");
    z = (at::mm(x, A.t()) * scaling).contiguous();             // s · x Aᵀ  (N, r)
    r = A.size(0);
  }
  auto Bc = r ? B.contiguous() : B;
  auto bc = bias.numel() ? bias.contiguous() : bias;
  launch_nf4_lora_gemv(x.data_ptr<float>(), N, in, out, packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(),
                       code.data_ptr<float>(), block_size, r ? z.data_ptr<float>() : nullptr,
                       r ? Bc.data_ptr<float>() : nullptr, r, bias.numel() ? bc.data_ptr<float>() : nullptr,
                       y.data_ptr<float>(), nullptr);
  return y;
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "minift cuda_ext: fused dequantize + matmul + LoRA for NF4 and int8 weights (lesson 13)";
  m.def("nf4_lora_matmul", &nf4_lora_matmul, "y = x dequant(W_nf4)^T + s (x A^T) B^T + bias (CPU)");
  m.def("int8_lora_matmul", &int8_lora_matmul, "y = x dequant(W_int8)^T + s (x A^T) B^T + bias (CPU)");
  m.attr("avx2") = static_cast<bool>(MINIFT_AVX2);
#ifdef MINIFT_WITH_CUDA
  m.def("nf4_lora_matmul_cuda", &nf4_lora_matmul_cuda, "the same op on CUDA (compiled-but-unverified)");
  m.attr("cuda") = true;
#else
  m.attr("cuda") = false;
#endif
}
