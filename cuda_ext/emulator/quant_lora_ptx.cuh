// The CPU emulator's version of cuda_ext/quant_lora_ptx.cuh: the same four functions, written from the PTX ISA's
// definitions (cuda_ext/emulator/build.py copies this file over the real one in the emulated build).
//
//   cp.async.cg.shared.global 16 bytes   the source is read when the copy is issued, and the destination is
//                                        filled with 0xFF (NaN) then: the bytes land only at the
//                                        cp.async.wait_group that completes their group. A kernel that reads a
//                                        tile before waiting for it, or restages a buffer that another warp
//                                        still reads, reads NaN (on a GPU the copy may land at any time between)
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}   D (16 x 8) += A (16 x 16) B (16 x 8), gathered from the 32
//                                        lanes' registers by the ISA's fragment layout (lane = 4 g + t):
//       A: a_i (i = 0..7, two per register, a_{2j} in the low half of register j): row g + 8 ((i >> 1) & 1),
//          column 2t + (i & 1) + 8 (i >> 2)
//       B: b_i (i = 0..3, two per register): row 2t + (i & 1) + 8 (i >> 1), column g
//       C, D: c_i (i = 0..3): row g + 8 (i >> 1), column 2t + (i & 1)
//     The products are exact; each 16-term dot product is summed in double and rounded once before it is added
//     to D in float32 (the hardware's own summation order is not specified; this is at least as accurate).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <type_traits>
#include <vector>

namespace minift_cuda {
namespace {

struct PendingCopy { void* dst; unsigned char bytes[16]; };
struct AsyncCopies {                                 // one thread's cp.async state
  std::vector<PendingCopy> open;                     // issued since the last commit
  std::deque<std::vector<PendingCopy>> groups;       // committed, oldest first
  unsigned long block = 0;                           // the block these belong to (a new block starts empty)
};
inline std::vector<AsyncCopies>& async_copies() {
  static std::vector<AsyncCopies> per_thread;
  const size_t n = static_cast<size_t>(blockDim.x) * blockDim.y * blockDim.z;
  if (per_thread.size() < n) per_thread.resize(n);
  AsyncCopies& a = per_thread[minift_emu::current];
  if (a.block != minift_emu::block_serial) a = AsyncCopies{{}, {}, minift_emu::block_serial};
  return per_thread;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16)
    minift_emu::die("cp.async of 16 bytes needs 16-byte aligned addresses");
  PendingCopy c{dst, {}};
  if (valid) std::memcpy(c.bytes, src, 16);          // src-size 0: zeros, nothing read
  std::memset(dst, 0xFF, 16);                        // in flight: neither the old bytes nor the new ones
  async_copies()[minift_emu::current].open.push_back(c);
}
__device__ __forceinline__ void cp_async_commit() {
  AsyncCopies& a = async_copies()[minift_emu::current];
  a.groups.push_back(std::move(a.open));
  a.open.clear();
}
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {
  AsyncCopies& a = async_copies()[minift_emu::current];
  while (a.groups.size() > static_cast<size_t>(PENDING)) {
    for (const PendingCopy& c : a.groups.front()) std::memcpy(c.dst, c.bytes, 16);
    a.groups.pop_front();
  }
}

template <typename T> inline float half_of(uint32_t reg, int hi) {   // element 0 (low 16 bits) or 1 of a pair
  const uint16_t bits = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return __half2float(v);
}

template <typename T> __device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  using namespace minift_emu;
  const int lane = current % 32, base = current - lane;
  uint32_t* mine = exchange_slot(current);
  for (int j = 0; j < 4; ++j) mine[j] = a[j];
  mine[4] = b[0];
  mine[5] = b[1];
  exchange_wait();                                   // every lane's fragments are published
  // This lane's D elements need rows g, g+8 of A and columns 2t, 2t+1 of B: each element is fetched from the lane
  // and register half that holds it, the layout above inverted (A: row & 7 = g', row >> 3 = (i >> 1) & 1,
  // (col & 7) >> 1 = t', col & 1 = i & 1, col >> 3 = i >> 2;  B: (k & 7) >> 1 = t', k & 1 = i & 1, k >> 3 = i >> 1).
  auto a_at = [&](int row, int col) {
    const int i = (col & 1) + 2 * (row >> 3) + 4 * (col >> 3);
    return half_of<T>(exchange_slot(base + 4 * (row & 7) + ((col & 7) >> 1))[i >> 1], i & 1);
  };
  auto b_at = [&](int k, int col) {
    const int i = (k & 1) + 2 * (k >> 3);
    return half_of<T>(exchange_slot(base + 4 * col + ((k & 7) >> 1))[4 + (i >> 1)], i & 1);
  };
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    double s = 0;
    for (int k = 0; k < 16; ++k) s += static_cast<double>(a_at(row, k)) * b_at(k, col);
    d[i] += static_cast<float>(s);
  }
  exchange_done();
}

}  // namespace
}  // namespace minift_cuda
