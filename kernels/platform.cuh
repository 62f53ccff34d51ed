/// @file platform.cuh
/// @brief The one layer between kernel sources and the compiler that builds them: nvcc for the
/// CUDA library, the host compiler for the CPU executor (CUBN_SIM). Kernels include this and
/// nothing CUDA-specific besides.
#pragma once

#include <cstdint>

#if defined(CUBN_SIM)
#include "cubn/sim/device_runtime.hpp"
#else
#include <cooperative_groups.h>
#include <cuda/atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

/// Functions that run on both host and device, and device functions: forced inline under nvcc
/// (the streaming loops' register arrays and vector accesses must see through every helper). In
/// the executor build only `inline`: the host compiler inlines as it judges, and the results are
/// the same. Forced inlining there, with CUBN_UNROLL's unrolling, cost the four kernel sources 390
/// s of g++ -O2 and 940 s of clang's ASan build per cold CI run: every kernel's every helper
/// copied into it, each copy instrumented (one fp16 source: 145 s of g++ -O2 forced, 56 s not; one
/// fp32 source under clang -O1 with ASan and UBSan: 206 s forced, 121 s not).
#if defined(CUBN_SIM)
#define CUBN_HOST_DEVICE inline
#define CUBN_DEVICE inline
#else
#define CUBN_HOST_DEVICE __host__ __device__ __forceinline__
#define CUBN_DEVICE __device__ __forceinline__
#endif
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
/// registers only when unrolled (ptxas otherwise puts the array in local memory). A host has no
/// such registers: the executor build leaves unrolling to the compiler (see CUBN_DEVICE).
#if defined(__CUDACC__)
#define CUBN_UNROLL _Pragma("unroll")
#else
#define CUBN_UNROLL
#endif

/// Keeps the loop that follows rolled: tail and edge loops that run a few times per thread, where
/// an unrolled copy would only grow the code (and look like a main loop to bench/sass_report.py).
#if defined(__CUDACC__)
#define CUBN_NO_UNROLL _Pragma("unroll 1")
#else
#define CUBN_NO_UNROLL
#endif

/// Shared memory, declared only through these macros (compute-sanitizer racecheck's job, done by
/// the executor): under nvcc plain __shared__ memory; in the executor checked arrays that start
/// each block poisoned and report, as a kernel fault, a write and a read or two writes of one
/// element by different threads with no __syncthreads() between them. Elements are read by copying
/// them out
/// (`State s = rows[i];`), written by assignment. T may not contain a comma (use an alias).
///  - CUBN_SHARED(T, name, N): a static array of N elements, 16-byte aligned on the GPU (so that
///    a thread's run of elements loads as 16-byte vectors: the channels-last reductions read V
///    slots' channel constants with 6 LDS.128 instead of 24 LDS, which put SiLU's gradient sums on
///    sm_100 at 65 instructions per 16 bytes where the compiler had not aligned the array itself);
///  - CUBN_SHARED_OBJECT(T, name): one object handed by reference to a collective (cub's
///    TempStorage; in the executor a sim::SharedStorage, checked and poisoned like CUBN_SHARED);
///  - CUBN_DYNAMIC_SHARED(T, name): the block's dynamic shared memory (16-byte aligned) as T.
#if defined(CUBN_SIM)
#define CUBN_SHARED(T, name, N) static thread_local ::cubn::sim::SharedArray<T, N> name(#name)
#define CUBN_SHARED_OBJECT(T, name)                                       \
  static thread_local ::cubn::sim::SharedObject<T> name##_shared_object_; \
  T& name = name##_shared_object_.get()
#define CUBN_DYNAMIC_SHARED(T, name) const ::cubn::sim::SharedSpan<T> name(#name)
#else
#define CUBN_SHARED(T, name, N) __shared__ __align__(16) T name[N]
#define CUBN_SHARED_OBJECT(T, name) __shared__ T name
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

/// Atomic access to a word other blocks also access, at device scope: cuda::atomic_ref on the GPU;
/// in the executor the same operations and orders, seen by it (sim::AtomicRef: ThreadSanitizer
/// then models fences, and a spin on load() lets other threads run). Kernels take every atomic and
/// fence through these two (tests/lint checks that kernels/ names no other).
#if defined(CUBN_SIM)
template <class T>
using DeviceAtomicRef = sim::AtomicRef<T>;
inline void device_fence(cuda::std::memory_order o) { sim::device_fence(o); }
#else
template <class T>
using DeviceAtomicRef = cuda::atomic_ref<T, cuda::thread_scope_device>;
CUBN_DEVICE void device_fence(cuda::std::memory_order o) {
  cuda::atomic_thread_fence(o, cuda::thread_scope_device);
}
#endif

/// Waits until every thread of a cooperative grid (launched with cudaLaunchCooperativeKernel, or
/// the executor's launch_cooperative_named) arrives; what any thread wrote before it is visible to
/// every thread after it (cooperative groups' grid sync fences at device scope).
#if defined(CUBN_SIM)
inline void grid_sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sim::detail::grid_sync({file, line, 0});
}
#else
CUBN_DEVICE void grid_sync() { cooperative_groups::this_grid().sync(); }
#endif

/// The index of the calling thread within its block, counting x fastest.
CUBN_DEVICE unsigned linear_thread_index() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

}  // namespace cubn::kernels
