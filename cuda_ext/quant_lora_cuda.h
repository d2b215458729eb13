// The CUDA half of the fused NF4-LoRA matmul: what quant_lora_cuda.cu exports to the torch wrapper in
// quant_lora.cpp. Plain C++ (no torch, no CUDA headers), so both compilers read it.
//
//     y[n, o] = Σ_k x[n, k] · NF4[q(o, k)] · c_{block(o, k)}  +  Σ_i z[n, i] · B[o, i]  +  bias[o]
//
// Activations x and outputs y share one dtype (Dtype); everything else is fixed: packed uint8 (element
// 2i in the high nibble of byte i), code float32[16], z = s · x Aᵀ float32 (N, r), B float32 (out, r),
// bias float32 (out,). Accumulation is float32 everywhere. Null z/B (r = 0) or bias: that term is absent.
#pragma once
#include <cstdint>

namespace minift_cuda {

enum Dtype : int { F32 = 0, BF16 = 1, F16 = 2 };

// The block absmax c_b, plain (absmax != nullptr) or double-quantized (absmax == nullptr):
//     c_b = absmax_q[b] · dq_scales[b / dq_block] + dq_mean
struct Absmax {
  const float* absmax = nullptr;     // (n_blocks,) float32, or null
  const int8_t* absmax_q = nullptr;  // (n_blocks,) int8
  const float* dq_scales = nullptr;  // (ceil(n_blocks / dq_block),) float32
  float dq_mean = 0.f;
  int64_t dq_block = 256;
};

struct NF4Weight {
  const uint8_t* packed;             // (ceil(out·in / 2),)
  int64_t out, in, block_size;       // block_size divides out·in, even
  Absmax am;
  const float* code;                 // (16,)
};

// Batches 1..16: the memory-bound GEMV with the LoRA branch and bias fused. x (N, in), y (N, out), both
// in dtype. Returns nullptr on success, else the CUDA error's text (the wrapper raises it in Python).
const char* nf4_lora_gemv(Dtype dtype, const void* x, int64_t N, const NF4Weight& W, const float* z,
                          const float* B, int64_t r, const float* bias, void* y, void* stream);

// Larger batches: dequantize the whole weight once into w (out, in) of dtype; the wrapper then
// multiplies with cuBLAS (at::mm) and adds the LoRA branch and bias. Returns as above.
const char* nf4_dequantize(Dtype dtype, const NF4Weight& W, void* w, void* stream);

// The largest batch nf4_lora_gemv takes (the wrapper switches to nf4_dequantize + cuBLAS above it).
constexpr int64_t GEMV_MAX_N = 16;

// Any batch of bfloat16 / float16 activations on sm_80+: the tensor-core path (mma.sync, Ŵ decoded into the
// mma's registers, rounded to the dtype like nf4_dequantize's; LoRA and bias fused). Same arguments and
// return as nf4_lora_gemv; it also refuses (returns the reason) what nf4_mma_unsupported refuses.
const char* nf4_lora_mma(Dtype dtype, const void* x, int64_t N, const NF4Weight& W, const float* z,
                         const float* B, int64_t r, const float* bias, void* y, void* stream);

// nullptr when nf4_lora_mma takes these arguments on the current GPU, else why not: a float32 x, in % 128,
// block_size % 32, a pointer not 16-byte aligned, a GPU or a build older than sm_80.
const char* nf4_mma_unsupported(Dtype dtype, const void* x, int64_t N, const NF4Weight& W);

// The smallest batch at which the wrapper's automatic choice (kernel = "auto") takes nf4_lora_mma, where it is
// supported. Never, until the tensor-core path has been checked and timed on a GPU (minift bench kernels
// --device cuda: its row is "NF4 fused, tensor cores"); then the batch from which that row beats "raw kernel".
// The built-in value: the wrapper's set_mma_auto_min_n (MINIFT_MMA_AUTO_MIN_N) changes it for one process.
constexpr int64_t MMA_AUTO_MIN_N = INT64_MAX;

}  // namespace minift_cuda
