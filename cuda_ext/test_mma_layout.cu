// The tensor-core path's data layout (cuda_ext/quant_lora_mma.cuh), checked on the CPU: no GPU, no torch.
//
//     c++ -x c++ -std=c++17 -I/usr/local/cuda/include cuda_ext/test_mma_layout.cu -o /tmp/layout && /tmp/layout
//     (or nvcc -std=c++17 cuda_ext/test_mma_layout.cu -o /tmp/layout: everything here is host code)
//
// For each lane of a warp, the registers a_frag / b_frag build for one span (16 rows of Ŵ × 128 k, 8 inputs,
// x staged through the swizzle as mma_gemm stages it) are placed where the PTX ISA's m16n8k16 fragment layout
// says that lane's elements go (written out again below from the ISA's formulas, not from the header); the
// eight mma k-steps are then done in float64 and must give Σ_k fl_T(ŵ[o, k]) x[n, k] over the span. Also:
// d_row / d_col name the ISA's accumulator elements, and the swizzle gives every quarter-warp 8 different
// 16-byte bank groups when it reads (each k-step pair, each tile width) and writes x. tests/test_ops.py builds
// and runs this wherever the CUDA headers are installed. Exit status 0 iff every check passed.
#include "quant_lora_mma.cuh"
#include "test_common.cuh"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

using namespace minift_cuda;
using namespace minift_test;

// The PTX ISA's m16n8k16 (.bf16 / .f16) fragments, element by element: lane l = 4g + t, element i of A (0..7),
// B (0..3), D (0..3). Written from the ISA's formulas, not from quant_lora_mma.cuh.
static void ptx_a(int lane, int i, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3;
  *row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  *col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
static void ptx_b(int lane, int i, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3;
  *row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
  *col = g;
}
static void ptx_d(int lane, int i, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3;
  *row = i < 2 ? g : g + 8;
  *col = t * 2 + (i & 1);
}
template <typename T> static float half_of(uint32_t reg, int hi) {    // element hi (0 low, 1 high) of a pair
  const uint16_t bits = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else return __bfloat162float(v);
}

// One warp's span (16 rows × 128 k, 8 inputs) through a_frag / b_frag / swizzle and a float64 mma per k-step,
// against Σ_k fl_T(ŵ) x. Also: every D element has one (lane, e) and d_row / d_col name it as the ISA does;
// the swizzle is a bijection and every quarter-warp's reads (each j, each tile width) and writes hit 8
// different 16-byte bank groups. Returns the number of failures.
template <typename T> static int host_layout_check(Dtype dt) {
  int fails = 0;
  auto fail = [&](const char* what) { if (fails++ < 5) std::printf("  layout (%s): %s\n", dname(dt), what); };
  std::vector<uint8_t> pk(16 * 64);                             // rows o = 0..15, 64 bytes (128 weights) each
  for (auto& b : pk) b = static_cast<uint8_t>(irand(0, 255));
  float c[16][4];                                                // c_b of row o, lane t's 32 weights
  for (auto& row : c) for (float& v : row) v = unif(0.05f, 2.f);
  std::vector<float> xs(8 * 128);                                // x[n, k], already in T
  for (float& v : xs) v = round_to(dt, unif(-1.f, 1.f));
  auto what = [&](int o, int k) {                                // fl_T(fl32(code · c_b)): what the mma multiplies
    const uint8_t byte = pk[o * 64 + k / 2];
    return round_to(dt, NF4[(k & 1) ? (byte & 15) : (byte >> 4)] * c[o][k / 32]);
  };
  // x staged as the kernel does: unit v of row n (x[n, 8v .. 8v+8]) at row n, place swizzle(n, v).
  std::vector<uint4> tile(8 * 16);
  std::vector<int> seen(16, 0);
  for (int n = 0; n < 8; ++n) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int v = 0; v < 16; ++v) {
      uint16_t e[8];
      for (int i = 0; i < 8; ++i) {
        const uint32_t pair = mma::pack2<T>(xs[n * 128 + 8 * v + i], 0.f);
        e[i] = static_cast<uint16_t>(pair & 0xffffu);
      }
      uint4 u;
      std::memcpy(&u, e, 16);
      const int p = mma::swizzle(n, v);
      if (p < 0 || p >= 16 || seen[p]++) fail("swizzle is not a bijection on a row");
      else tile[n * 16 + p] = u;
    }
  }
  double D[16][8] = {};
  for (int s = 0; s < mma::STEPS; ++s) {
    double A[16][16], B[16][8];
    int cntA[16][16] = {}, cntB[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      uint4 lo, hi;
      std::memcpy(&lo, &pk[g * 64 + 16 * t], 16);
      std::memcpy(&hi, &pk[(g + 8) * 64 + 16 * t], 16);
      uint32_t a[4], b[2];
      mma::a_frag<T>(lo, hi, c[g][t], c[g + 8][t], s, NF4, a);
      mma::b_frag(tile[g * 16 + mma::swizzle(g, mma::unit_of(0, t, s / 2))], s, b);
      for (int i = 0; i < 8; ++i) {
        int r, col;
        ptx_a(lane, i, &r, &col);
        A[r][col] = half_of<T>(a[i / 2], i & 1);
        ++cntA[r][col];
      }
      for (int i = 0; i < 4; ++i) {
        int r, col;
        ptx_b(lane, i, &r, &col);
        B[r][col] = half_of<T>(b[i / 2], i & 1);
        ++cntB[r][col];
      }
    }
    for (auto& row : cntA) for (int v : row) if (v != 1) fail("A is not covered once");
    for (auto& row : cntB) for (int v : row) if (v != 1) fail("B is not covered once");
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n)
        for (int kk = 0; kk < 16; ++kk) D[r][n] += A[r][kk] * B[kk][n];
  }
  for (int o = 0; o < 16; ++o)
    for (int n = 0; n < 8; ++n) {
      double want = 0, mag = 0;
      for (int k = 0; k < 128; ++k) {
        const double p = static_cast<double>(what(o, k)) * xs[n * 128 + k];
        want += p; mag += std::fabs(p);
      }
      if (!(std::fabs(D[o][n] - want) <= 1e-12 * mag)) {
        char msg[160];
        std::snprintf(msg, sizeof msg, "D[%d, %d] = %.9g, want %.9g", o, n, D[o][n], want);
        fail(msg);
      }
    }
  int cntD[16][8] = {};
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) {
      int r, col;
      ptx_d(lane, e, &r, &col);
      if (r != mma::d_row(lane, e) || col != mma::d_col(lane, e)) fail("d_row / d_col differ from the ISA");
      ++cntD[r][col];
    }
  for (auto& row : cntD) for (int v : row) if (v != 1) fail("D is not covered once");
  for (int WK : {1, 2, 4, 8}) {                                  // tile widths: rows of 16·WK units
    const int units = 16 * WK;
    for (int q = 0; q < 4; ++q)                                  // reads: quarter-warp q, any n-tile, span, pair
      for (int nt = 0; nt < 2; ++nt)
        for (int w = 0; w < WK; ++w)
          for (int j = 0; j < 4; ++j) {
            int used = 0;
            for (int lane = 8 * q; lane < 8 * q + 8; ++lane) {
              const int n = nt * 8 + (lane >> 2);
              used |= 1 << ((n * units + mma::swizzle(n, mma::unit_of(w, lane & 3, j))) % 8);
            }
            if (used != 0xff) fail("a quarter-warp's x reads share a bank group");
          }
    for (int n = 0; n < 2; ++n)                                  // writes: 8 consecutive units of a row
      for (int v0 = 0; v0 < units; v0 += 8) {
        int used = 0;
        for (int v = v0; v < v0 + 8; ++v) used |= 1 << ((n * units + mma::swizzle(n, v)) % 8);
        if (used != 0xff) fail("a quarter-warp's x writes share a bank group");
      }
  }
  std::printf("%s tensor-core layout, %s\n", fails ? "FAIL" : "PASS", dname(dt));
  return fails;
}

int main() {
  const int fails = host_layout_check<__nv_bfloat16>(BF16) + host_layout_check<__half>(F16);
  std::printf("%s\n", fails ? "FAIL" : "PASS");
  return fails ? 1 : 0;
}
