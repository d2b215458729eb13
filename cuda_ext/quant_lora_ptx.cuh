// The four PTX instructions the tensor-core path (quant_lora_mma.cu) issues, each behind a small function:
// asynchronous 16-byte copies into shared memory (cp.async, sm_80+) and one mma.sync.m16n8k16. Kept apart so
// that cuda_ext/emulator/ can put a CPU version of the same four functions in their place and run the kernels'
// logic without a GPU.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace minift_cuda {
namespace {

// 16 bytes from global to shared memory without passing through registers (sm_80+), in the current group of
// copies; valid = false writes 16 zero bytes and reads nothing (src must still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {   // all but the newest PENDING groups landed
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
#endif
}

// D += A B, one m16n8k16 with float32 accumulators. The two dtypes differ only in the PTX type name (TY).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define MINIFT_MMA16816(TY)                                                                                       \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "  \
               "{%0,%1,%2,%3};\n"                                                                                  \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
#else
#define MINIFT_MMA16816(TY)
#endif
template <typename T> __device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], const uint32_t b[2]);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  MINIFT_MMA16816("bf16");
}
template <> __device__ __forceinline__ void mma16816<__half>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  MINIFT_MMA16816("f16");
}
#undef MINIFT_MMA16816

}  // namespace
}  // namespace minift_cuda
