// The CPU emulator's <cuda_runtime.h>: what the kernels in cuda_ext/ and their test program take from the CUDA
// runtime and the device, done on the CPU, so that the kernels' logic (indices, tiles, layouts, barriers,
// shuffles, the mma fragments) runs where there is no GPU. cuda_ext/emulator/build.py puts this folder before the
// toolkit's include folder, so `#include <cuda_runtime.h>` finds this file; the toolkit's own cuda_bf16.h and
// cuda_fp16.h (host-callable conversions) and vector_types.h (uint4, float4, dim3) are used as they are.
//
// Execution model: one launch runs its blocks one after another; the threads of a block are fibers (ucontext) on
// this one OS thread, each on its own stack, switched only at a barrier (each thread runs until it waits, in
// thread order in one block and in reverse order in the next, so that a missing barrier shows whichever side of
// it the writer is on):
//   __syncthreads()        every thread of the block that has not returned is waiting -> all go on
//   exchange_wait() (shuffle, mma.sync)   all 32 lanes of the warp are waiting -> they go on; a lane that returned
//                          while its warp still exchanges is an error (the hardware would read garbage)
// Anything else (a thread waiting at __syncthreads while its warp's others wait in a shuffle) is a deadlock:
// the program stops with the states of the threads. Dynamic shared memory is filled with 0xFF bytes (NaN in
// every float type) at the start of each block, so reading what was never staged shows in the result.
// Not emulated: timing, memory coalescing, bank conflicts, caches, streams (a launch has finished when it
// returns) and events (they report "not available"). cp.async is emulated in quant_lora_ptx.cuh.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <math.h>                                   // fmaf: fused, as on the GPU
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#undef __shared__
#define __shared__ static          // one block runs at a time: a function-local static is the block's shared copy
#define __launch_bounds__(...)

// ---- the runtime API subset ------------------------------------------------------------------------------
// The toolkit's cuda_runtime_api.h (included by vector_functions.h) declares the functions and their types;
// runtime.cpp defines the few used here on the CPU (no CUDA runtime library is linked). The templates below are
// the real cuda_runtime.h's conveniences that the sources call.

namespace minift_emu {
constexpr int SMS = 4;                              // the emulated GPU: sm_90, 4 SMs, 48 KiB shared memory by
constexpr size_t SMEM_DEFAULT = 48 * 1024, SMEM_MAX = 227 * 1024;   // default, 227 KiB opted in (an H100's)
inline cudaError_t last_error = cudaSuccess;
inline std::map<const void*, size_t> smem_opt_in;   // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
inline cudaError_t fail(cudaError_t e) { last_error = e; return e; }
}  // namespace minift_emu

template <typename K> cudaError_t cudaFuncSetAttribute(K* k, cudaFuncAttribute a, int v) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(k), a, v);
}
template <typename K> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, K* k) {
  return cudaFuncGetAttributes(a, reinterpret_cast<const void*>(k));
}
template <typename T> cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }

// ---- the device: built-in variables, intrinsics ------------------------------------------------------------

inline uint3 threadIdx, blockIdx;                   // set by the scheduler before it resumes a thread
inline dim3 blockDim, gridDim;

inline int min(int a, int b) { return a < b ? a : b; }   // CUDA's integer min, the one the kernels call
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __fadd_rn(float a, float b) { return a + b; }     // built with -ffp-contract=off: no fused a*b+c
inline float __fmul_rn(float a, float b) { return a * b; }
[[noreturn]] inline void __trap() { std::fprintf(stderr, "minift_emu: __trap() in a kernel\n"); std::abort(); }

namespace minift_emu {

enum State { RUNNING, AT_SYNCTHREADS, AT_WARP_SYNC, DONE };
struct Fiber { ucontext_t ctx; State state = DONE; };

inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline std::vector<std::vector<char>> stacks;
inline int current = 0;                             // the running thread, flat index in the block
inline unsigned long block_serial = 0;              // counts the blocks run (per-thread state keyed by it resets)
inline std::vector<uint32_t> lane_slots;            // 2 sets x 16 words per thread: what warp-wide ops exchange
inline std::vector<unsigned> exchanges;             // per thread: the warp-wide exchanges it has done
inline std::vector<unsigned char> dynamic_shared;
inline const std::function<void()>* body = nullptr;
constexpr size_t STACK = 256 * 1024;

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "minift_emu: %s (block %u,%u thread %d)\n", what, blockIdx.x, blockIdx.y, current);
  std::exit(3);
}
inline void yield(State s) {
  fibers[current].state = s;
  swapcontext(&fibers[current].ctx, &scheduler);
}
inline void fiber_main() {
  (*body)();
  fibers[current].state = DONE;
  swapcontext(&fibers[current].ctx, &scheduler);
}
// A warp-wide exchange (a shuffle, an mma.sync): each lane writes its words to exchange_slot(its thread), waits in
// exchange_wait() until all 32 lanes have written, reads any lane's exchange_slot, then calls exchange_done().
// Consecutive exchanges of a warp alternate between two sets of slots, so one barrier each is enough: a lane
// writes a set again two exchanges later, and every lane has finished reading it before that (it read before it
// arrived at the barrier in between).
inline uint32_t* exchange_slot(int thread) { return lane_slots.data() + 16 * (2 * thread + (exchanges[current] & 1)); }
inline void exchange_wait() { yield(AT_WARP_SYNC); }
inline void exchange_done() { ++exchanges[current]; }

// Runs every thread of the current block to its end.
inline void run_block(int n) {
  for (int i = 0; i < n; ++i) {
    getcontext(&fibers[i].ctx);
    fibers[i].ctx.uc_stack.ss_sp = stacks[i].data();
    fibers[i].ctx.uc_stack.ss_size = STACK;
    fibers[i].ctx.uc_link = nullptr;
    makecontext(&fibers[i].ctx, fiber_main, 0);
    fibers[i].state = RUNNING;
  }
  exchanges.assign(n, 0);
  ++block_serial;
  std::memset(dynamic_shared.data(), 0xFF, dynamic_shared.size());
  const bool reverse = block_serial % 2 == 0;        // every other block runs its threads last to first
  for (;;) {
    for (int j = 0; j < n; ++j) {
      const int i = reverse ? n - 1 - j : j;
      while (fibers[i].state == RUNNING) {
        current = i;
        threadIdx = make_uint3(i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y));
        swapcontext(&scheduler, &fibers[i].ctx);
      }
    }
    bool released = false;
    for (int w = 0; w < (n + 31) / 32; ++w) {       // warp barriers: every lane of the warp waits
      int waiting = 0, done = 0, lanes = 0;
      for (int i = 32 * w; i < n && i < 32 * w + 32; ++i, ++lanes)
        waiting += fibers[i].state == AT_WARP_SYNC, done += fibers[i].state == DONE;
      if (waiting && waiting + done == lanes && done) { current = 32 * w; die("a lane returned while its warp shuffles"); }
      if (waiting == lanes) {
        for (int i = 32 * w; i < 32 * w + lanes; ++i) fibers[i].state = RUNNING;
        released = true;
      }
    }
    int at_sync = 0, done = 0;
    for (int i = 0; i < n; ++i) at_sync += fibers[i].state == AT_SYNCTHREADS, done += fibers[i].state == DONE;
    if (at_sync && at_sync + done == n) {           // __syncthreads: every thread that has not returned waits
      for (int i = 0; i < n; ++i)
        if (fibers[i].state == AT_SYNCTHREADS) fibers[i].state = RUNNING;
      released = true;
    }
    if (done == n) return;
    if (!released) {
      std::fprintf(stderr, "minift_emu: deadlock in block %u,%u; thread states (0 running, 1 __syncthreads, 2 warp op, 3 done):",
                   blockIdx.x, blockIdx.y);
      for (int i = 0; i < n; ++i) std::fprintf(stderr, "%s%d", i % 32 ? "" : " ", fibers[i].state);
      std::fprintf(stderr, "\n");
      std::exit(3);
    }
  }
}

struct Config {
  dim3 grid, block;
  size_t smem;
  Config(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
};

template <typename... P, typename... A>
void launch(Config c, void (*kernel)(P...), A&&... args) {
  const long n = static_cast<long>(c.block.x) * c.block.y * c.block.z;
  auto opt = smem_opt_in.find(reinterpret_cast<const void*>(kernel));
  const size_t limit = opt == smem_opt_in.end() ? SMEM_DEFAULT : (opt->second > SMEM_DEFAULT ? opt->second : SMEM_DEFAULT);
  if (n < 1 || n > 1024 || c.grid.x < 1 || c.grid.y < 1 || c.grid.y > 65535 || c.grid.z < 1 || c.grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (c.smem > limit) { fail(cudaErrorInvalidValue); return; }   // above 48 KiB a kernel must opt in
  const std::function<void()> f = [&] { kernel(static_cast<P>(args)...); };
  body = &f;
  blockDim = c.block;
  gridDim = c.grid;
  fibers.assign(n, Fiber{});
  if (stacks.size() < static_cast<size_t>(n)) stacks.resize(n, std::vector<char>(STACK));
  lane_slots.assign(2 * 16 * ((n + 31) / 32 * 32), 0);
  dynamic_shared.assign(c.smem + 16, 0);
  for (unsigned z = 0; z < c.grid.z; ++z)
    for (unsigned y = 0; y < c.grid.y; ++y)
      for (unsigned x = 0; x < c.grid.x; ++x) {
        blockIdx = make_uint3(x, y, z);
        run_block(static_cast<int>(n));
      }
  body = nullptr;
}

template <typename T> T* dynamic_smem() {           // extern __shared__ T name[]: 16-byte aligned
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(dynamic_shared.data() + 15) & ~uintptr_t{15});
}

}  // namespace minift_emu

inline void __syncthreads() { minift_emu::yield(minift_emu::AT_SYNCTHREADS); }

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
  using namespace minift_emu;
  if (mask != 0xffffffffu) die("__shfl_xor_sync with a partial mask (not emulated)");
  const int lane = current % 32, base = current - lane;
  std::memcpy(exchange_slot(current), &v, 4);
  exchange_wait();
  float r;
  std::memcpy(&r, exchange_slot(base + (lane ^ lane_mask)), 4);
  exchange_done();
  return r;
}
