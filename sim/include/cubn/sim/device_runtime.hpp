/// @file device_runtime.hpp
/// @brief What CUDA device code expects from the compiler, supplied for the host compiler, so that
/// kernels/ sources compile unchanged in the CPU executor build (CUBN_SIM).
///
/// Built-in variables (threadIdx, blockIdx, blockDim, gridDim, warpSize), barriers, warp
/// intrinsics, atomics, fences, shared memory and the math intrinsics kernels use. Each sync
/// point records its source location so the executor can say where a kernel went wrong.
/// __activemask() returns the calling lane alone: threads run one at a time here, and a GPU too
/// promises no more (code that takes its result as "the converged lanes" then faults on the
/// first shuffle that reads another lane).
#pragma once

#if defined(__CUDACC__)
#error "device_runtime.hpp is for the host compiler only (the CPU executor build)"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cubn/sim/executor.hpp"

// ---- keywords -------------------------------------------------------------------------------
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
// Static shared memory: one variable per host thread; a block's fibers all run on one host thread
// and blocks run one after another, so each block has it to itself while it runs.
#undef __shared__
#define __shared__ static thread_local

// ---- built-in variables ---------------------------------------------------------------------
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local uint3 blockDim;
extern thread_local uint3 gridDim;
constexpr int warpSize = 32;

namespace cubn::sim::detail {

enum class WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAll, kAny, kSync };

void syncthreads(const char* file, int line);
std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width,
                              const char* file, int line);
unsigned active_mask();
void* dynamic_shared_memory();
/// The linear index of the calling thread within its block.
unsigned linear_thread_index();
/// Stops the kernel with a kernel fault (for contract checks in sim-side collectives).
[[noreturn]] void fault(const char* what);
/// Records a global-memory access of `bytes` at `p` by the calling thread (kernels/memory.cuh).
void record_global(const void* p, std::size_t bytes, bool write);
/// Barrier epoch of the calling thread's block: how many __syncthreads() have completed.
std::uint64_t barrier_epoch();
/// The epoch recorded for a collective's temporary storage, or UINT64_MAX if none.
std::uint64_t& collective_tag(const void* storage);

template <class T>
std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "warp intrinsics move at most 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
T from_bits(std::uint64_t bits) {
  T v;
  std::memcpy(static_cast<void*>(&v), &bits, sizeof(T));
  return v;
}

}  // namespace cubn::sim::detail

// ---- barriers and warp intrinsics -----------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cubn::sim::detail::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  cubn::sim::detail::warp_collective(cubn::sim::detail::WarpOp::kSync, mask, 0, 0, 32, file, line);
}
inline unsigned __activemask() { return cubn::sim::detail::active_mask(); }

#define CUBN_SIM_SHUFFLE(NAME, OP, ARG_T)                                                      \
  template <class T>                                                                           \
  T NAME(unsigned mask, T var, ARG_T arg, int width = warpSize,                                \
         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {                   \
    using namespace cubn::sim::detail;                                                         \
    return from_bits<T>(warp_collective(WarpOp::OP, mask, to_bits(var), static_cast<int>(arg), \
                                        width, file, line));                                   \
  }
CUBN_SIM_SHUFFLE(__shfl_sync, kShflIdx, int)
CUBN_SIM_SHUFFLE(__shfl_up_sync, kShflUp, unsigned)
CUBN_SIM_SHUFFLE(__shfl_down_sync, kShflDown, unsigned)
CUBN_SIM_SHUFFLE(__shfl_xor_sync, kShflXor, int)
#undef CUBN_SIM_SHUFFLE

inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  using namespace cubn::sim::detail;
  return static_cast<unsigned>(
      warp_collective(WarpOp::kBallot, mask, pred != 0, 0, 32, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  using namespace cubn::sim::detail;
  return static_cast<int>(warp_collective(WarpOp::kAll, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  using namespace cubn::sim::detail;
  return static_cast<int>(warp_collective(WarpOp::kAny, mask, pred != 0, 0, 32, file, line));
}

// ---- atomics and fences ---------------------------------------------------------------------
template <class T>
T atomicAdd(T* address, T val) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(address, val, __ATOMIC_RELAXED);
  } else {
    T old;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    for (;;) {
      T desired = old + val;
      if (__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
        return old;
      }
    }
  }
}
template <class T>
T atomicCAS(T* address, T compare, T val) {
  static_assert(std::is_integral_v<T>, "atomicCAS takes integer types");
  __atomic_compare_exchange_n(address, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // holds the old value either way
}
template <class T>
T atomicExch(T* address, T val) {
  T old;
  __atomic_exchange(address, &val, &old, __ATOMIC_RELAXED);
  return old;
}
template <class T>
T atomicMax(T* address, T val) {
  return __atomic_fetch_max(address, val, __ATOMIC_RELAXED);
}
template <class T>
T atomicMin(T* address, T val) {
  return __atomic_fetch_min(address, val, __ATOMIC_RELAXED);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- loads and math intrinsics --------------------------------------------------------------
template <class T>
T __ldg(const T* p) {
  return *p;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline double __dsqrt_rn(double x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
