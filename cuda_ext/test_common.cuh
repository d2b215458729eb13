// What the two test programs (test_quant_lora_cuda.cu, test_mma_layout.cu) share: a seeded random source,
// the NF4 code table and the dtype's rounding on the host. Not part of the extension.
#pragma once
#include "quant_lora_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <random>

namespace minift_test {

using minift_cuda::BF16;
using minift_cuda::Dtype;
using minift_cuda::F16;
using minift_cuda::F32;

inline std::mt19937_64 rng(1234);
inline float unif(float a, float b) { return std::uniform_real_distribution<float>(a, b)(rng); }
inline int64_t irand(int64_t a, int64_t b) { return std::uniform_int_distribution<int64_t>(a, b)(rng); }

inline const float NF4[16] = {-1.0f, -0.6961928f, -0.5250730f, -0.3949175f, -0.2844414f, -0.1848449f,
                              -0.0910500f, 0.0f, 0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f,
                              0.4407098f, 0.5626170f, 0.7229568f, 1.0f};

// float -> the dtype -> float, on the host (cuda_bf16.h / cuda_fp16.h conversions are host-callable).
inline float round_to(Dtype d, float v) {
  if (d == BF16) return __bfloat162float(__float2bfloat16_rn(v));
  if (d == F16) return __half2float(__float2half_rn(v));
  return v;
}
inline const char* dname(Dtype d) { return d == F32 ? "f32" : d == BF16 ? "bf16" : "f16"; }

}  // namespace minift_test
