/// @file platform.cuh
/// @brief The one layer between kernel sources and the compiler that builds them: nvcc for the
/// CUDA library, the host compiler for the CPU executor (CUBN_SIM). Kernels include this and
/// nothing CUDA-specific besides.
#pragma once

#include <cstdint>

#if defined(CUBN_SIM)
#include "cubn/sim/device_runtime.hpp"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

/// Functions that run on both host and device.
#define CUBN_HOST_DEVICE __host__ __device__ __forceinline__
/// Device functions.
#define CUBN_DEVICE __device__ __forceinline__
/// Device functions kept out of line: code that runs once per channel (finishing statistics, with
/// IEEE division and square root) gets its own registers instead of crowding the streaming loops
/// of the kernel that calls it.
#if defined(CUBN_SIM)
#define CUBN_DEVICE_NOINLINE __attribute__((noinline))
#else
#define CUBN_DEVICE_NOINLINE __device__ __noinline__
#endif
/// Kernel entry points: hidden visibility so two libraries built from these sources do not
/// clash (cuCollections does the same).
#define CUBN_KERNEL __global__ __attribute__((visibility("hidden")))

/// Unrolls the loop that follows: loops over register arrays indexed by the loop variable stay in
/// registers only when unrolled (ptxas otherwise puts the array in local memory).
#if defined(__CUDACC__)
#define CUBN_UNROLL _Pragma("unroll")
#else
#define CUBN_UNROLL _Pragma("GCC unroll 16")
#endif

/// Keeps the loop that follows rolled: tail and edge loops that run a few times per thread, where
/// an unrolled copy would only grow the code (and look like a main loop to bench/sass_report.py).
#if defined(__CUDACC__)
#define CUBN_NO_UNROLL _Pragma("unroll 1")
#else
#define CUBN_NO_UNROLL
#endif

/// Declares `name` as a `T*` to the block's dynamic shared memory (16-byte aligned).
#if defined(CUBN_SIM)
#define CUBN_DYNAMIC_SHARED(T, name) \
  T* name = static_cast<T*>(::cubn::sim::detail::dynamic_shared_memory())
#else
#define CUBN_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char cubn_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(cubn_dynamic_smem_)
#endif

namespace cubn::kernels {

/// x, unchanged, but opaque to the compiler: a value computed from it is recomputed where it is
/// used instead of hoisted out of a loop (where it would hold registers for the whole loop).
CUBN_DEVICE int opaque(int x) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+r"(x));
#endif
  return x;
}

/// The index of the calling thread within its block, counting x fastest.
CUBN_DEVICE unsigned linear_thread_index() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

}  // namespace cubn::kernels
