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
// and blocks run one after another (a cooperative grid: one host thread per block), so each block
// has it to itself while it runs. Kernels declare theirs through CUBN_SHARED (kernels/platform.cuh)
// to have it poisoned per block and checked for races (SharedArray below).
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
/// A number that differs for every block a host thread runs: shared memory declared through
/// SharedArray resets itself when it sees a new one.
std::uint64_t block_serial();
/// A grid-wide barrier of a cooperative launch (every thread of every block calls it).
void grid_sync(const char* file, int line);

/// What the race check keeps per element of checked shared memory: the barrier epoch and thread
/// of its last write, and of its last reads (reader -2: several threads).
struct SharedShadow {
  std::uint64_t write_epoch = UINT64_MAX, read_epoch = UINT64_MAX;
  int writer = -1, reader = -1;
};
/// Checks and records an access of element `index` of the checked shared array `name` by the
/// calling thread; a fault on a race with another thread since the last __syncthreads().
void shared_access(SharedShadow& shadow, const char* name, std::size_t index, bool write);
/// The shadow of the running block's dynamic shared memory seen as elements of `elem_bytes`
/// (reset for every block), and its element count.
SharedShadow* dynamic_shadow(std::size_t elem_bytes, std::size_t& count);

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

// ---- checked shared memory -------------------------------------------------------------------
namespace cubn::sim {

/// One element of checked shared memory: reading converts to T, assigning writes; each is checked
/// for races (detail::shared_access). Copy the element out (T v = a[i]) to use its members.
template <class T>
class SharedRef {
 public:
  SharedRef(T* p, detail::SharedShadow& sh, const char* name, std::size_t i)
      : p_(p), sh_(sh), name_(name), i_(i) {}
  operator T() const {
    detail::shared_access(sh_, name_, i_, false);
    T v;
    std::memcpy(static_cast<void*>(&v), static_cast<const void*>(p_), sizeof(T));
    return v;
  }
  const SharedRef& operator=(const T& v) const {
    detail::shared_access(sh_, name_, i_, true);
    std::memcpy(static_cast<void*>(p_), static_cast<const void*>(&v), sizeof(T));
    return *this;
  }
  const SharedRef& operator=(const SharedRef& o) const { return *this = static_cast<T>(o); }

 private:
  T* p_;
  detail::SharedShadow& sh_;
  const char* name_;
  std::size_t i_;
};

/// Static shared memory of N elements of T, checked: poisoned (0xCD bytes) and its race record
/// cleared at the first access of each block.
template <class T, std::size_t N>
class SharedArray {
 public:
  explicit SharedArray(const char* name) : name_(name) {}
  SharedRef<T> operator[](std::size_t i) {
    refresh();
    if (i >= N) detail::fault("index past the end of a shared array");
    return SharedRef<T>(reinterpret_cast<T*>(bytes_) + i, shadow_[i], name_, i);
  }

 private:
  void refresh() {
    const std::uint64_t serial = detail::block_serial();
    if (serial == serial_) return;
    serial_ = serial;
    std::memset(bytes_, 0xCD, sizeof bytes_);
    for (auto& s : shadow_) s = detail::SharedShadow{};
  }
  alignas(T) alignas(16) unsigned char bytes_[sizeof(T) * N];
  detail::SharedShadow shadow_[N];
  std::uint64_t serial_ = UINT64_MAX;
  const char* name_;
};

/// A static shared object that kernels hand to a collective by reference (cub's TempStorage):
/// poisoned per block, not checked element by element (the collective checks its own contract).
template <class T>
class SharedObject {
 public:
  T& get() {
    const std::uint64_t serial = detail::block_serial();
    if (serial != serial_) {
      serial_ = serial;
      std::memset(bytes_, 0xCD, sizeof bytes_);
    }
    return *reinterpret_cast<T*>(bytes_);
  }

 private:
  alignas(T) alignas(16) unsigned char bytes_[sizeof(T)];
  std::uint64_t serial_ = UINT64_MAX;
};

/// The block's dynamic shared memory as checked elements of T.
template <class T>
class SharedSpan {
 public:
  explicit SharedSpan(const char* name)
      : p_(static_cast<T*>(detail::dynamic_shared_memory())),
        shadow_(detail::dynamic_shadow(sizeof(T), count_)),
        name_(name) {}
  SharedRef<T> operator[](std::size_t i) const {
    if (i >= count_) detail::fault("index past the end of dynamic shared memory");
    return SharedRef<T>(p_ + i, shadow_[i], name_, i);
  }

 private:
  T* p_;
  std::size_t count_ = 0;
  detail::SharedShadow* shadow_;
  const char* name_;
};

}  // namespace cubn::sim

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
