// The tensor-core path's data layout (lesson 13, "On a GPU"): which weights and activations each lane of a
// warp puts into the registers of one mma.sync.m16n8k16. Everything here is __host__ __device__, so that
// cuda_ext/test_quant_lora_cuda.cu can check it on the CPU against the PTX ISA's fragment layout, with no GPU.
//
// One mma multiplies A (16 × 16) by B (16 × 8) into D (16 × 8, float32). We "swap A and B": A is a 16-row slice
// of Ŵ (rows o, columns k), B is 8 inputs of x transposed (rows k, columns n), D = yᵀ for those rows and inputs.
// Lane l = 4g + t (g = l / 4 its group, t = l % 4) holds, in the PTX ISA's layout for .bf16 / .f16:
//
//     A: reg 0 = row g,   cols 2t, 2t+1       reg 1 = row g+8, cols 2t, 2t+1
//        reg 2 = row g,   cols 2t+8, 2t+9     reg 3 = row g+8, cols 2t+8, 2t+9     (low half = the first col)
//     B: reg 0 = rows 2t, 2t+1 of col g       reg 1 = rows 2t+8, 2t+9 of col g
//     D: d0, d1 = row g, cols 2t, 2t+1        d2, d3 = row g+8, cols 2t, 2t+1
//
// A sum over k does not care which actual k a logical column stands for, as long as A and B agree on it.
// We choose the one that lets a lane load its weights whole. A *span* is 128 consecutive k of a row: 64
// packed bytes. Lane t loads bytes 16t .. 16t+15 of the span (weights 32t .. 32t+31) of rows g and g+8, one
// 16-byte load each. In k-step s = 0..7 of the span, its logical columns stand for
//
//     2t, 2t+1    ->  k = 32t + 4s + 0, 1     packed byte 2s      (high nibble = the even k = the low half)
//     2t+8, 2t+9  ->  k = 32t + 4s + 2, 3     packed byte 2s + 1
//
// so B needs x[n, 32t + 4s .. 32t + 4s + 3] of input n = g: 8 bytes, and two k-steps 16 bytes, one "unit"
// of 8 values, read from the block's x tile in shared memory (swizzled: see swizzle below).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <cstring>

namespace minift_cuda {
namespace mma {

#define MINIFT_HD __host__ __device__ __forceinline__

constexpr int SPAN = 128;            // k per span: one 16-byte weight load per lane and row
constexpr int STEPS = SPAN / 16;     // mma k-steps per span (8)

// Two floats as the dtype's pair, a in the low half (the lower address): a register of A or B.
template <typename T> MINIFT_HD uint32_t pack2(float a, float b);
template <> MINIFT_HD uint32_t pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(a, b);
  uint32_t u;
  memcpy(&u, &p, 4);                 // not a pointer cast: the host compiler may assume those never alias
  return u;
}
template <> MINIFT_HD uint32_t pack2<__half>(float a, float b) {
  const __half2 p = __floats2half2_rn(a, b);
  uint32_t u;
  memcpy(&u, &p, 4);
  return u;
}

// Byte β (0..15) of a 16-byte chunk as loaded (little-endian words). β is a constant in the unrolled loops.
MINIFT_HD uint32_t byte_of(uint4 q, int beta) {
  const uint32_t w = beta < 4 ? q.x : beta < 8 ? q.y : beta < 12 ? q.z : q.w;
  return (w >> (8 * (beta & 3))) & 0xffu;
}

// The two weights of one packed byte, ŵ = fl32(code[q] · c), rounded to T: weight 2i (high nibble) low.
template <typename T> MINIFT_HD uint32_t decode_pair(uint32_t byte, const float* table, float c) {
  return pack2<T>(table[byte >> 4] * c, table[byte & 15] * c);
}

// A for k-step s: lo / hi = this lane's 16 bytes of rows g and g+8 in the span, c_lo / c_hi their c_b (the
// 32 weights of a lane lie in one absmax block: 32 | block_size and 32 | in).
template <typename T>
MINIFT_HD void a_frag(uint4 lo, uint4 hi, float c_lo, float c_hi, int s, const float* table, uint32_t a[4]) {
  a[0] = decode_pair<T>(byte_of(lo, 2 * s), table, c_lo);          // row g,   k = 32t + 4s + 0, 1
  a[1] = decode_pair<T>(byte_of(hi, 2 * s), table, c_hi);          // row g+8, the same k
  a[2] = decode_pair<T>(byte_of(lo, 2 * s + 1), table, c_lo);      // row g,   k = 32t + 4s + 2, 3
  a[3] = decode_pair<T>(byte_of(hi, 2 * s + 1), table, c_hi);      // row g+8
}

// B for k-step s, from the unit u = x[n, 32t + 8(s/2) .. + 8] (four 32-bit pairs: k-steps s = 2j and 2j+1).
MINIFT_HD void b_frag(uint4 u, int s, uint32_t b[2]) {
  b[0] = (s & 1) ? u.z : u.x;                                      // x[n, 32t + 4s + 0, 1]
  b[1] = (s & 1) ? u.w : u.y;                                      // x[n, 32t + 4s + 2, 3]
}

// The unit lane t reads in k-step pair j (k-steps 2j, 2j+1) of span w of the tile: x[n, 128w + 32t + 8j ..].
MINIFT_HD int unit_of(int w, int t, int j) { return 16 * w + 4 * t + j; }

// Where unit v of input row n sits within that row of the shared tile. A quarter-warp (8 lanes: g = 2h, 2h+1,
// t = 0..3) reads units 4t + j of two rows at once; unswizzled, lanes t and t+2 are 128 bytes apart and hit the
// same banks. XOR-ing the unit's low two bits with (t >> 1) = bit 3 of v and with (n & 1) spreads the 8 lanes
// over the 8 16-byte bank groups. A bijection on every aligned group of 4 units, so a row stays in place.
MINIFT_HD int swizzle(int n, int v) { return v ^ (((v >> 3) & 1) | ((n & 1) << 1)); }

// The (row, col) of D that accumulator e (0..3) of lane l holds.
MINIFT_HD int d_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
MINIFT_HD int d_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

#undef MINIFT_HD

}  // namespace mma
}  // namespace minift_cuda
