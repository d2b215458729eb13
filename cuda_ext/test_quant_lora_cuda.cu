// Standalone check of the CUDA kernels (quant_lora_cuda.cu, quant_lora_mma.cu) on a GPU: plain CUDA + C++, no
// torch, so it runs even where the extension does not build. Build and run (from the repository root):
//
//     nvcc -std=c++17 -O3 -arch=sm_90 cuda_ext/test_quant_lora_cuda.cu cuda_ext/quant_lora_cuda.cu \
//          cuda_ext/quant_lora_mma.cu -o /tmp/t && /tmp/t
//
// (`/tmp/t --no-timings [N] [--big]`: the correctness part alone, N random cases; --big adds the bench's shapes.)
// Without a GPU, `python cuda_ext/emulator/build.py` builds and runs the correctness part on the CPU emulator.
// Part 1, correctness: random cases (every dtype, fast and generic paths, every template width N = 1..16 and
// beyond, plain and double-quantized absmax, LoRA and bias on and off, odd in, small blocks, a misaligned
// packed pointer, k tiled) against a float64 loop on the CPU:
//
//     y64[n, o] = Σ_k x[n, k] ŵ[o, k] + Σ_i z[n, i] B[o, i] + bias[o]        ŵ = fl32(code[q] · c_b)
//     |y - y64| <= 2 (in + r + 2) 2⁻²⁴ (Σ|x||ŵ| + Σ|z||B| + |bias|) + u_T (|y64| + that) + tiny_T
//
// (the extension's float32 bound, ops.error_bound, plus the output's rounding to the dtype: u = 2⁻⁸ bf16,
// 2⁻¹¹ fp16; tiny = 2⁻²⁴ for fp16 subnormals). nf4_dequantize must equal fl_T(ŵ) exactly.
// Part 2, timings (CUDA events, the L2 flushed before each run by a 512 MiB memset): the GEMV at 4096² and
// 8192², batches 1, 8, 16, and nf4_dequantize (what batch 128 pays before cuBLAS, which is not linked
// here), each against the bandwidth limit = bytes read once / the measured device-to-device copy bandwidth.
// The tensor-core cases of part 1 (nf4_lora_mma; bf16 / fp16, in % 128 == 0, 32 | bs) are held to the same
// bound with ŵ replaced by fl_T(ŵ), which is exactly what they multiply. Part 2 times them beside the GEMV.
// Exit status 0 iff every case passed.
#include "quant_lora_cuda.h"
#include "test_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace minift_cuda;
using namespace minift_test;

#define CK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
  std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); std::exit(2); } } while (0)

static size_t esize(Dtype d) { return d == F32 ? 4 : 2; }
static void store(Dtype d, void* p, size_t i, float v) {
  if (d == F32) static_cast<float*>(p)[i] = v;
  else if (d == BF16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<__half*>(p)[i] = __float2half_rn(v);
}
static float load(Dtype d, const void* p, size_t i) {
  if (d == F32) return static_cast<const float*>(p)[i];
  if (d == BF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return __half2float(static_cast<const __half*>(p)[i]);
}

struct Case { int64_t out, in, bs, N, r; bool dq, bias; Dtype dt; int64_t offset; bool mma = false; };   // offset: bytes before packed

// A random weight on the host: packed nibbles, absmax (plain or double-quantized), and its ŵ (float32).
struct HostW {
  std::vector<uint8_t> packed;
  std::vector<float> absmax, dq_scales, what;
  std::vector<int8_t> absmax_q;
  float dq_mean = 0.f;
  int64_t dq_block = 0;
};

static HostW make_weight(const Case& c) {
  HostW h;
  const int64_t n = c.out * c.in, nb = n / c.bs;
  h.packed.resize((n + 1) / 2);
  for (auto& b : h.packed) b = static_cast<uint8_t>(irand(0, 255));
  std::vector<float> cb(nb);
  if (c.dq) {
    h.dq_block = std::vector<int64_t>{3, 64, 256}[irand(0, 2)];
    h.dq_mean = unif(0.5f, 1.5f);
    h.dq_scales.resize((nb + h.dq_block - 1) / h.dq_block);
    for (auto& s : h.dq_scales) s = unif(0.001f, 0.004f);
    h.absmax_q.resize(nb);
    for (int64_t b = 0; b < nb; ++b) {
      h.absmax_q[b] = static_cast<int8_t>(irand(-127, 127));
      volatile float t = static_cast<float>(h.absmax_q[b]) * h.dq_scales[b / h.dq_block];   // two roundings,
      cb[b] = t + h.dq_mean;                                                               // as the definition
    }
  } else {
    h.absmax.resize(nb);
    for (auto& a : h.absmax) a = unif(0.05f, 2.f);
    cb = h.absmax;
  }
  h.what.resize(n);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t byte = h.packed[j >> 1];
    h.what[j] = NF4[(j & 1) ? (byte & 15) : (byte >> 4)] * cb[j / c.bs];                     // fl32(code · c_b)
  }
  return h;
}

template <typename V> static V* dev(const std::vector<V>& v) {
  if (v.empty()) return nullptr;
  V* p;
  CK(cudaMalloc(&p, v.size() * sizeof(V)));
  CK(cudaMemcpy(p, v.data(), v.size() * sizeof(V), cudaMemcpyHostToDevice));
  return p;
}

static bool run_case(const Case& c, double* worst) {
  HostW h = make_weight(c);
  // packed at a chosen byte offset (offset 1: misaligned, the generic paths must take it)
  std::vector<uint8_t> pk(c.offset + h.packed.size());
  std::memcpy(pk.data() + c.offset, h.packed.data(), h.packed.size());
  uint8_t* d_pk = dev(pk);
  float *d_am = dev(h.absmax), *d_sc = dev(h.dq_scales), *d_code;
  int8_t* d_q8 = dev(h.absmax_q);
  CK(cudaMalloc(&d_code, 64));
  CK(cudaMemcpy(d_code, NF4, 64, cudaMemcpyHostToDevice));
  NF4Weight W{d_pk + c.offset, c.out, c.in, c.bs, Absmax{}, d_code};
  if (c.dq) W.am = Absmax{nullptr, d_q8, d_sc, h.dq_mean, h.dq_block};
  else W.am.absmax = d_am;

  const size_t es = esize(c.dt);
  std::vector<uint8_t> x(c.N * c.in * es);
  std::vector<float> xf(c.N * c.in), z(c.N * c.r), B(c.out * c.r), bias(c.bias ? c.out : 0);
  for (int64_t i = 0; i < c.N * c.in; ++i) { xf[i] = round_to(c.dt, unif(-1.f, 1.f)); store(c.dt, x.data(), i, xf[i]); }
  for (auto& v : z) v = unif(-1.f, 1.f);
  for (auto& v : B) v = unif(-0.5f, 0.5f);
  for (auto& v : bias) v = unif(-1.f, 1.f);
  uint8_t* d_x = dev(x);
  float *d_z = dev(z), *d_B = dev(B), *d_bias = dev(bias);
  void *d_y, *d_w;
  CK(cudaMalloc(&d_y, c.N * c.out * es + 1));
  CK(cudaMalloc(&d_w, c.out * c.in * es));
  CK(cudaMemset(d_y, 0xFF, c.N * c.out * es));                  // NaN everywhere: an unwritten output fails

  bool ok = true;
  const char* e = c.mma ? nf4_lora_mma(c.dt, d_x, c.N, W, d_z, d_B, c.r, d_bias, d_y, nullptr)
                        : nf4_lora_gemv(c.dt, d_x, c.N, W, d_z, d_B, c.r, d_bias, d_y, nullptr);
  if (!e) e = nf4_dequantize(c.dt, W, d_w, nullptr);
  if (!e && cudaDeviceSynchronize() != cudaSuccess) e = cudaGetErrorString(cudaGetLastError());
  double ratio = 0;                                              // worst |err| / bound
  if (e) {
    ok = false;
    std::printf("  error: %s\n", e);
  } else {
    std::vector<uint8_t> y(c.N * c.out * es), w(c.out * c.in * es);
    CK(cudaMemcpy(y.data(), d_y, y.size(), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(w.data(), d_w, w.size(), cudaMemcpyDeviceToHost));
    const double u = c.dt == BF16 ? 0x1p-8 : c.dt == F16 ? 0x1p-11 : 0.0, tiny = c.dt == F16 ? 0x1p-24 : 0.0;
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t o = 0; o < c.out; ++o) {
        double s = 0, mag = 0;
        for (int64_t k = 0; k < c.in; ++k) {
          const float wk = c.mma ? round_to(c.dt, h.what[o * c.in + k]) : h.what[o * c.in + k];   // what it multiplies
          const double p = static_cast<double>(xf[n * c.in + k]) * wk;
          s += p; mag += std::fabs(p);
        }
        for (int64_t i = 0; i < c.r; ++i) {
          const double p = static_cast<double>(z[n * c.r + i]) * B[o * c.r + i];
          s += p; mag += std::fabs(p);
        }
        if (c.bias) { s += bias[o]; mag += std::fabs(bias[o]); }
        const double b32 = 2.0 * (c.in + c.r + 2) * 0x1p-24 * mag;
        const double bound = b32 + u * (std::fabs(s) + b32) + tiny;
        const double got = load(c.dt, y.data(), n * c.out + o), err = std::fabs(got - s);
        if (!(err <= bound)) {                                   // NaN fails too
          if (ok) std::printf("  y[%lld, %lld] = %.9g, want %.9g (bound %.3g)\n", (long long)n, (long long)o, got, s, bound);
          ok = false;
        }
        ratio = std::max(ratio, bound > 0 ? err / bound : 0.0);
      }
    for (int64_t j = 0; j < c.out * c.in; ++j) {
      const float want = round_to(c.dt, h.what[j]), got = load(c.dt, w.data(), j);
      if (!(got == want)) {
        if (ok) std::printf("  w[%lld] = %.9g, want %.9g\n", (long long)j, got, want);
        ok = false;
        break;
      }
    }
  }
  *worst = std::max(*worst, ratio);
  std::printf("%s %s out=%lld in=%lld bs=%lld N=%lld r=%lld dq=%d bias=%d %s offset=%lld  (worst err/bound %.3f)\n",
              ok ? "PASS" : "FAIL", c.mma ? "mma " : "gemv", (long long)c.out, (long long)c.in, (long long)c.bs, (long long)c.N, (long long)c.r,
              c.dq, c.bias, dname(c.dt), (long long)c.offset, ratio);
  for (void* p : {(void*)d_pk, (void*)d_am, (void*)d_sc, (void*)d_code, (void*)d_q8, (void*)d_x, (void*)d_z,
                  (void*)d_B, (void*)d_bias, d_y, d_w})
    if (p) CK(cudaFree(p));
  return ok;
}

static int64_t random_bs(int64_t n, bool fast) {               // an even block size dividing n (32 | it if fast)
  std::vector<int64_t> opts;
  for (int64_t b = 2; b <= 256; b += 2)
    if (n % b == 0 && (!fast || b % 32 == 0)) opts.push_back(b);
  return opts.empty() ? 0 : opts[irand(0, opts.size() - 1)];
}

// ---- timings -------------------------------------------------------------------------------------------

static void timings() {
  void* flush;                                                   // > the 60 MiB L2 of an H100/H200
  const size_t FL = size_t{512} << 20;
  CK(cudaMalloc(&flush, FL));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  void* big2;
  CK(cudaMalloc(&big2, FL));
  float ms = 0;
  CK(cudaMemcpy(big2, flush, FL, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(a)); CK(cudaMemcpy(big2, flush, FL, cudaMemcpyDeviceToDevice)); CK(cudaEventRecord(b));
  CK(cudaEventSynchronize(b)); CK(cudaEventElapsedTime(&ms, a, b));
  const double bw = 2.0 * FL / (ms * 1e-3);                      // read + write bytes per second
  std::printf("\ncopy bandwidth: %.0f GB/s (device-to-device, 512 MiB)\n", bw / 1e9);
  CK(cudaFree(big2));
  auto timed = [&](auto fn) {                                     // median of 15 cold-L2 runs, µs
    std::vector<float> t;
    for (int i = 0; i < 16; ++i) {
      CK(cudaMemsetAsync(flush, i, FL));
      CK(cudaEventRecord(a)); const char* e = fn(); CK(cudaEventRecord(b));
      if (e) { std::printf("  error: %s\n", e); return -1.0; }
      CK(cudaEventSynchronize(b)); CK(cudaEventElapsedTime(&ms, a, b));
      if (i) t.push_back(ms * 1e3f);
    }
    std::sort(t.begin(), t.end());
    return static_cast<double>(t[t.size() / 2]);
  };
  for (int64_t s : {4096, 8192})
    for (bool dq : {true, false}) {
      const int64_t out = s, in = s, bs = 64, nb = out * in / bs;
      uint8_t* pk; float *am, *sc, *code; int8_t* q8; void *x, *y, *w;
      CK(cudaMalloc(&pk, out * in / 2)); CK(cudaMemset(pk, 0x5A, out * in / 2));
      CK(cudaMalloc(&am, nb * 4)); CK(cudaMemset(am, 0, nb * 4));
      CK(cudaMalloc(&q8, nb)); CK(cudaMemset(q8, 1, nb));
      CK(cudaMalloc(&sc, nb / 256 * 4 + 4)); CK(cudaMemset(sc, 0, nb / 256 * 4 + 4));
      CK(cudaMalloc(&code, 64)); CK(cudaMemcpy(code, NF4, 64, cudaMemcpyHostToDevice));
      CK(cudaMalloc(&x, 128 * in * 2)); CK(cudaMemset(x, 0, 128 * in * 2));
      CK(cudaMalloc(&y, 128 * out * 2)); CK(cudaMalloc(&w, out * in * 2));
      NF4Weight W{pk, out, in, bs, Absmax{}, code};
      if (dq) W.am = Absmax{nullptr, q8, sc, 0.f, 256};
      else W.am.absmax = am;
      const double bytes = out * in / 2.0 + nb * (dq ? 1.0 : 4.0);   // packed + absmax, read once
      const double limit = bytes / bw * 1e6;                         // µs
      for (int64_t N : {1, 8, 16}) {
        const double t = timed([&] { return nf4_lora_gemv(BF16, x, N, W, nullptr, nullptr, 0, nullptr, y, nullptr); });
        std::printf("gemv bf16 %lldx%lld dq=%d N=%-3lld %8.1f us   %.2fx the bandwidth limit (%.1f us)\n",
                    (long long)out, (long long)in, dq, (long long)N, t, t / limit, limit);
      }
      for (int64_t N : {1, 8, 16, 32, 128}) {
        const double t = timed([&] { return nf4_lora_mma(BF16, x, N, W, nullptr, nullptr, 0, nullptr, y, nullptr); });
        std::printf("mma  bf16 %lldx%lld dq=%d N=%-3lld %8.1f us   %.2fx the bandwidth limit (%.1f us)\n",
                    (long long)out, (long long)in, dq, (long long)N, t, t / limit, limit);
      }
      const double t = timed([&] { return nf4_dequantize(BF16, W, w, nullptr); });
      const double lim_dq = (bytes + out * in * 2.0) / bw * 1e6;
      std::printf("dequantize bf16 %lldx%lld dq=%d (batch 128 pays this + cuBLAS) %8.1f us   %.2fx its limit (%.1f us)\n",
                  (long long)out, (long long)in, dq, t, t / lim_dq, lim_dq);
      for (void* p : {(void*)pk, (void*)am, (void*)sc, (void*)code, (void*)q8, x, y, w}) CK(cudaFree(p));
    }
  CK(cudaFree(flush));
}

int main(int argc, char** argv) {
  const bool timing = !(argc > 1 && std::strcmp(argv[1], "--no-timings") == 0);   // --no-timings: correctness only
  bool big = false;                                              // --big: also the bench's shapes (host time:
  for (int i = 1; i < argc; ++i) big = big || std::strcmp(argv[i], "--big") == 0;   // half a minute)
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) { std::printf("no CUDA device\n"); return 2; }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::vector<Case> cases;
  const Dtype dts[3] = {F32, BF16, F16};
  // Hand-picked: the edges of each path.
  for (Dtype dt : dts) {
    cases.push_back({1, 2, 2, 1, 0, false, false, dt, 0});          // the smallest weight
    cases.push_back({2, 5, 10, 2, 1, false, true, dt, 0});          // in odd: row 1 starts mid-byte, one block
    cases.push_back({3, 6, 6, 3, 0, true, false, dt, 0});           // bs = in
    cases.push_back({8, 33, 22, 3, 2, true, true, dt, 0});          // odd in: rows start mid-byte, bs % in != 0
    cases.push_back({5, 64, 32, 16, 4, true, true, dt, 0});         // fast, N = 16
    cases.push_back({37, 96, 96, 5, 3, false, true, dt, 0});        // fast, bs = 96 (not a power of two)
    cases.push_back({19, 160, 32, 9, 0, true, false, dt, 1});       // misaligned packed: generic
    cases.push_back({8, 1056, 64, 16, 0, false, true, dt, 0});      // NB = 16: 2 tiles (KT = 1024)
    cases.push_back({8, 8192 + 96, 256, 1, 1, true, false, dt, 0}); // NB = 1: 2 tiles (KT = 8192)
    cases.push_back({4, 4096 + 64, 64, 2, 0, false, false, dt, 0}); // NB = 2: 2 tiles (KT = 4096)
    cases.push_back({33, 2048 + 32, 32, 4, 2, true, true, dt, 0});  // NB = 4: 2 tiles (KT = 2048)
    cases.push_back({17, 1024 + 32, 32, 7, 0, true, false, dt, 0}); // NB = 8: 2 tiles
    cases.push_back({16, 64, 64, 40, 3, true, true, dt, 0});        // N > 16: gridDim.y
    cases.push_back({300, 36, 4, 21, 0, false, true, dt, 0});       // generic, N > 8
  }
  // The tensor-core path: batches of every regime (the small rows here take the 8-, 16- and 32-input blocks;
  // the last two cases count rows from the SMs to take 64 x 64 and 128 x 64), split k with spans past the end
  // (in / 128 not a multiple of WK), rows and inputs past the end, dq, LoRA, bias; fp16 and bf16.
  for (Dtype dt : {BF16, F16}) {
    Case m{};
    m.dt = dt; m.mma = true;
    for (int64_t N : {1, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 300}) {
      m.out = 16 * irand(1, 12) + irand(0, 15); m.in = 128 * irand(1, 11); m.bs = 64;
      m.N = N; m.r = N % 2 ? 0 : irand(1, 24); m.dq = N % 3 != 0; m.bias = N % 4 != 1;
      cases.push_back(m);
    }
    cases.push_back({1, 128, 32, 3, 0, false, false, dt, 0, true});            // one row: 15 of 16 clamped
    cases.push_back({40, 1024 + 128, 256, 16, 5, true, true, dt, 0, true});    // 9 spans over 8 split-k warps
    cases.push_back({130, 128 * 3, 96, 100, 7, true, true, dt, 0, true});      // bs = 96, 3 spans
    const int64_t sms = prop.multiProcessorCount;                              // the big block shapes are taken
    cases.push_back({64 * sms - 32, 384, 64, 64, 3, true, true, dt, 0, true});  // when every SM gets a block:
    cases.push_back({128 * ((sms + 1) / 2) + 5, 256, 64, 128, 0, false, true, dt, 0, true});   // 64 x 64, 128 x 64
  }
  // --big: the bench's shapes (lesson 13: an 8B and a 70B model's layers), batches 1, 16 and 33: the widest k tiles,
  // grids of hundreds of blocks, up to 2^26 weights.
  if (big)
    for (Dtype dt : {BF16, F16}) {
      cases.push_back({14336, 4096, 64, 1, 16, true, true, dt, 0});            // GEMV, NB = 1: 896 blocks
      cases.push_back({4096, 14336, 64, 16, 0, true, false, dt, 0});           // GEMV, NB = 16: 14 k tiles
      cases.push_back({8192, 8192, 64, 1, 0, false, true, dt, 0, true});       // tensor cores, 512 blocks
      cases.push_back({4096, 14336, 64, 16, 8, true, true, dt, 0, true});      // 112 spans over 8 split-k warps
      cases.push_back({4096, 4096, 64, 33, 0, true, false, dt, 0, true});      // 32 x 32 blocks, 2 of inputs
    }
  // Random: half on the fast path (in % 32 == 0, 32 | bs), half anywhere.
  const int n_random = argc > 2 ? std::atoi(argv[2]) : 150;      // `/tmp/t --no-timings 20`: fewer random cases
  for (int t = 0; t < n_random; ++t) {
    Case c{};
    const bool fast = t % 2 == 0;
    do {
      c.out = irand(1, 300);
      c.in = fast ? 32 * irand(1, 16) : irand(2, 520);
      c.bs = random_bs(c.out * c.in, fast);
    } while (c.bs == 0);
    c.N = t % 5 == 0 ? irand(17, 40) : irand(1, 16);
    c.r = irand(0, 1) ? irand(1, 40) : 0;
    c.dq = irand(0, 1); c.bias = irand(0, 1);
    c.dt = dts[t % 3];
    c.offset = irand(0, 9) == 0 ? 1 : 0;
    cases.push_back(c);
  }
  for (int t = 0; t < n_random / 3; ++t) {                       // the tensor-core path, random
    Case c{};
    c.mma = true;
    c.dt = t % 2 ? F16 : BF16;
    c.out = irand(1, 300);
    c.in = 128 * irand(1, 12);
    std::vector<int64_t> opts;
    for (int64_t b = 32; b <= 256; b += 32) if ((c.out * c.in) % b == 0) opts.push_back(b);
    c.bs = opts[irand(0, opts.size() - 1)];                      // 32 always divides out·in
    c.N = irand(0, 2) ? irand(1, 40) : irand(41, 300);
    c.r = irand(0, 1) ? irand(1, 40) : 0;
    c.dq = irand(0, 1); c.bias = irand(0, 1);
    cases.push_back(c);
  }
  int fails = 0;
  double worst = 0;
  for (const Case& c : cases)                                    // the test's own precondition
    if (c.bs < 2 || c.bs % 2 || (c.out * c.in) % c.bs) {
      std::printf("BAD CASE out=%lld in=%lld bs=%lld\n", (long long)c.out, (long long)c.in, (long long)c.bs);
      return 2;
    }
  for (const Case& c : cases) fails += !run_case(c, &worst);
  std::printf("\n%d of %zu cases passed (worst err/bound %.3f)\n", static_cast<int>(cases.size()) - fails,
              cases.size(), worst);
  if (timing) timings();
  std::printf("\n%s\n", fails ? "FAIL" : "PASS");
  return fails ? 1 : 0;
}
