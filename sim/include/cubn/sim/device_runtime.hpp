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

#include <cuda/std/atomic>  // cuda::memory_order (the kernels' atomics take libcu++'s orders)
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

/// A place in the kernel's source: each call site of a barrier or warp collective is one site,
/// two calls on one line included (`id` tells them apart; 0 where it is not needed).
struct Site {
  const char* file;
  int line, id;
};
void syncthreads(Site site);
std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width,
                              Site site);
unsigned active_mask();
void* dynamic_shared_memory();
/// The linear index of the calling thread within its block.
unsigned linear_thread_index();
/// Stops the kernel with a kernel fault (for contract checks in sim-side collectives).
[[noreturn]] void fault(const char* what);
/// Records a global-memory access of `bytes` at `p` by the calling thread (kernels/memory.cuh).
void record_global(const void* p, std::size_t bytes, bool write);
/// A block collective's use of its temporary storage (CUB's rule: reuse only after a
/// __syncthreads() that follows the previous use): collective_enter before it, which faults when
/// the storage was used since the last barrier; collective_leave after the barrier inside it.
void collective_enter(const void* storage);
void collective_leave(const void* storage);
/// A grid-wide barrier of a cooperative launch (every thread of every block calls it).
void grid_sync(Site site);

/// The executor's side of every atomic operation and fence in device code (the CUDA atomic
/// intrinsics, __threadfence(), and cubn::kernels::DeviceAtomicRef / device_fence of
/// kernels/platform.cuh), called around the operation itself:
///  - atomic_write(p, release) before an atomic write of p: under ThreadSanitizer, a release on p
///    when the write has release order or the thread executed a release fence before (what makes a
///    relaxed write after __threadfence() a release: the fence-to-atomic synchronization of the
///    CUDA and C++ memory models, which ThreadSanitizer does not model by itself);
///  - atomic_read(p, acquire, changed, site) after an atomic read of p (an RMW too, `changed` when
///    it wrote a new value): an acquire on p under ThreadSanitizer for acquire order, else p is
///    remembered for the thread's next acquire fence; a read that changed nothing (a load, a
///    failed compare-and-swap) gives the other threads of the block a turn, so that a spin-wait
///    whose writer is another warp completes, and counts towards the watchdog, which faults the
///    kernel when no thread of the grid makes progress for watchdog_seconds();
///  - fence(release, acquire): a __threadfence() is both.
void atomic_write(const void* p, bool release);
void atomic_read(const void* p, bool acquire, bool changed, Site site);
void fence(bool release, bool acquire);
/// A static shared array's storage on the calling host thread, and its start of a block: `store`
/// (null before the array's first use on this thread) gets `n` bytes of data followed by `count`
/// race records (at shadow_offset(n)), allocated here and freed when the thread ends; when `serial`
/// is not the running block's serial number, sets it, fills the data with 0xCD and clears the
/// records. Returns the data. Outside ThreadSanitizer's view: the executor's bookkeeping, not a
/// kernel's access (the block's threads, fibers of one host thread, all read `store`).
void* refresh_shared(std::uint64_t& serial, void*& store, std::size_t n, std::size_t count);
/// Where the race records of a static shared array of `n` data bytes start in its storage.
constexpr std::size_t shadow_offset(std::size_t n) { return (n + 15) / 16 * 16; }

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
///
/// Constant-initialized (a constexpr constructor) and trivially destructible, so that a block's
/// threads never meet at the initialization of a function-local static (whose guard the first
/// thread to pass would set, with no barrier before the others read it: a race under
/// ThreadSanitizer). Its elements live on the heap (detail::refresh_shared allocates them at the
/// array's first use on a host thread), not in the thread_local object itself: every kernel
/// instantiation declares such arrays, and held inline they made the binaries' static TLS (which
/// every host thread's stack must hold) megabytes that grow with each instantiation.
template <class T, std::size_t N>
class SharedArray {
 public:
  constexpr explicit SharedArray(const char* name) : name_(name) {}
  SharedRef<T> operator[](std::size_t i) {
    auto* data = static_cast<unsigned char*>(detail::refresh_shared(serial_, store_, kBytes, N));
    if (i >= N) detail::fault("index past the end of a shared array");
    auto* shadow = reinterpret_cast<detail::SharedShadow*>(data + detail::shadow_offset(kBytes));
    return SharedRef<T>(reinterpret_cast<T*>(data) + i, shadow[i], name_, i);
  }

 private:
  static_assert(alignof(T) <= 16, "the executor's shared storage is 16-byte aligned");
  static constexpr std::size_t kBytes = sizeof(T) * N;
  void* store_ = nullptr;
  std::uint64_t serial_ = UINT64_MAX;
  const char* name_;
};

/// A collective's temporary storage (the executor's cubn::kernels::BlockReduce): N checked
/// elements of T, like a CUBN_SHARED array. Declared with CUBN_SHARED_OBJECT (or a plain
/// __shared__ in tests), it is checked and poisoned like CUBN_SHARED memory.
struct SharedStorageBase {};
template <class T, std::size_t N>
class SharedStorage : public SharedArray<T, N>, public SharedStorageBase {
 public:
  constexpr SharedStorage() : SharedArray<T, N>("collective temp storage") {}
};

/// A static shared object that kernels hand to a collective by reference (its TempStorage). In the
/// executor that storage is a SharedStorage, checked element by element and poisoned per block.
template <class T>
class SharedObject {
  static_assert(std::is_base_of_v<SharedStorageBase, T>,
                "CUBN_SHARED_OBJECT takes a collective's temp storage (a sim::SharedStorage in the "
                "executor); declare other shared memory with CUBN_SHARED, which is checked");

 public:
  T& get() { return object_; }

 private:
  T object_{};
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
// Each call site is a site of its own (where the executor checks that the threads meet, and what
// its messages name), two calls on one line included: the intrinsics are macros that pass their
// file, line and a number unique to the expansion (__COUNTER__) to the executor.
namespace cubn::sim::detail {

struct At {
  Site site;
  void syncthreads() const { detail::syncthreads(site); }
  void syncwarp(unsigned mask = 0xffffffffu) const {
    warp_collective(WarpOp::kSync, mask, 0, 0, 32, site);
  }
  template <class T>
  T shfl(WarpOp op, unsigned mask, T var, int arg, int width) const {
    return from_bits<T>(warp_collective(op, mask, to_bits(var), arg, width, site));
  }
  template <class T>
  T shfl_idx(unsigned mask, T var, int src, int width = 32) const {
    return shfl(WarpOp::kShflIdx, mask, var, src, width);
  }
  template <class T>
  T shfl_up(unsigned mask, T var, unsigned delta, int width = 32) const {
    return shfl(WarpOp::kShflUp, mask, var, static_cast<int>(delta), width);
  }
  template <class T>
  T shfl_down(unsigned mask, T var, unsigned delta, int width = 32) const {
    return shfl(WarpOp::kShflDown, mask, var, static_cast<int>(delta), width);
  }
  template <class T>
  T shfl_xor(unsigned mask, T var, int lane_mask, int width = 32) const {
    return shfl(WarpOp::kShflXor, mask, var, lane_mask, width);
  }
  unsigned ballot(unsigned mask, int pred) const {
    return static_cast<unsigned>(warp_collective(WarpOp::kBallot, mask, pred != 0, 0, 32, site));
  }
  int all(unsigned mask, int pred) const {
    return static_cast<int>(warp_collective(WarpOp::kAll, mask, pred != 0, 0, 32, site));
  }
  int any(unsigned mask, int pred) const {
    return static_cast<int>(warp_collective(WarpOp::kAny, mask, pred != 0, 0, 32, site));
  }
};

}  // namespace cubn::sim::detail

#define CUBN_SIM_AT \
  ::cubn::sim::detail::At { ::cubn::sim::detail::Site{__FILE__, __LINE__, __COUNTER__} }
#define __syncthreads() CUBN_SIM_AT.syncthreads()
#define __syncwarp(...) CUBN_SIM_AT.syncwarp(__VA_ARGS__)
#define __shfl_sync(...) CUBN_SIM_AT.shfl_idx(__VA_ARGS__)
#define __shfl_up_sync(...) CUBN_SIM_AT.shfl_up(__VA_ARGS__)
#define __shfl_down_sync(...) CUBN_SIM_AT.shfl_down(__VA_ARGS__)
#define __shfl_xor_sync(...) CUBN_SIM_AT.shfl_xor(__VA_ARGS__)
#define __ballot_sync(...) CUBN_SIM_AT.ballot(__VA_ARGS__)
#define __all_sync(...) CUBN_SIM_AT.all(__VA_ARGS__)
#define __any_sync(...) CUBN_SIM_AT.any(__VA_ARGS__)
inline unsigned __activemask() { return cubn::sim::detail::active_mask(); }

// The atomics' call sites (named by the watchdog): file and line.
#define CUBN_SIM_SITE_PARAMS const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define CUBN_SIM_SITE \
  cubn::sim::detail::Site { file, line, 0 }

// ---- atomics and fences ---------------------------------------------------------------------
namespace cubn::sim::detail {

constexpr int gcc_order(cuda::std::memory_order o) {
  switch (o) {
    case cuda::std::memory_order_relaxed: return __ATOMIC_RELAXED;
    case cuda::std::memory_order_consume: return __ATOMIC_CONSUME;
    case cuda::std::memory_order_acquire: return __ATOMIC_ACQUIRE;
    case cuda::std::memory_order_release: return __ATOMIC_RELEASE;
    case cuda::std::memory_order_acq_rel: return __ATOMIC_ACQ_REL;
    default: return __ATOMIC_SEQ_CST;
  }
}
constexpr bool releases(cuda::std::memory_order o) {
  return o == cuda::std::memory_order_release || o == cuda::std::memory_order_acq_rel ||
         o == cuda::std::memory_order_seq_cst;
}
constexpr bool acquires(cuda::std::memory_order o) {
  return o == cuda::std::memory_order_acquire || o == cuda::std::memory_order_consume ||
         o == cuda::std::memory_order_acq_rel || o == cuda::std::memory_order_seq_cst;
}

/// An atomic read-modify-write of *p to f(old) with order `o` (a compare-and-swap loop), seen by
/// the executor (atomic_write before, atomic_read after). Returns the old value.
template <class T, class F>
T atomic_rmw(T* p, F f, cuda::std::memory_order o, Site site) {
  atomic_write(p, releases(o));
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T desired = f(old);
  while (!__atomic_compare_exchange(p, &old, &desired, false, gcc_order(o), __ATOMIC_RELAXED))
    desired = f(old);
  atomic_read(p, acquires(o), std::memcmp(&old, &desired, sizeof(T)) != 0, site);
  return old;
}

}  // namespace cubn::sim::detail

namespace cubn::sim {

/// cuda::atomic_ref<T, cuda::thread_scope_device> as the executor runs it (kernels name it
/// cubn::kernels::DeviceAtomicRef): the same operations and orders, each seen by the executor
/// (detail::atomic_write, detail::atomic_read), so that ThreadSanitizer gets the orders right with
/// fences and a spin on load() lets other threads run.
template <class T>
class AtomicRef {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "an atomic word of 1 to 8 bytes");

 public:
  explicit AtomicRef(T& ref) : p_(&ref) {}
  T load(cuda::std::memory_order o = cuda::std::memory_order_seq_cst,
         CUBN_SIM_SITE_PARAMS) const {
    T v;
    __atomic_load(p_, &v, detail::gcc_order(o));
    detail::atomic_read(p_, detail::acquires(o), false, CUBN_SIM_SITE);
    return v;
  }
  void store(T v, cuda::std::memory_order o = cuda::std::memory_order_seq_cst) const {
    detail::atomic_write(p_, detail::releases(o));
    __atomic_store(p_, &v, detail::gcc_order(o));
  }
  T fetch_add(T v, cuda::std::memory_order o = cuda::std::memory_order_seq_cst,
              CUBN_SIM_SITE_PARAMS) const {
    return detail::atomic_rmw(p_, [v](T old) { return static_cast<T>(old + v); }, o,
                              CUBN_SIM_SITE);
  }
  T fetch_and(T v, cuda::std::memory_order o = cuda::std::memory_order_seq_cst,
              CUBN_SIM_SITE_PARAMS) const {
    return detail::atomic_rmw(p_, [v](T old) { return static_cast<T>(old & v); }, o,
                              CUBN_SIM_SITE);
  }
  T fetch_or(T v, cuda::std::memory_order o = cuda::std::memory_order_seq_cst,
             CUBN_SIM_SITE_PARAMS) const {
    return detail::atomic_rmw(p_, [v](T old) { return static_cast<T>(old | v); }, o,
                              CUBN_SIM_SITE);
  }
  T exchange(T v, cuda::std::memory_order o = cuda::std::memory_order_seq_cst,
             CUBN_SIM_SITE_PARAMS) const {
    return detail::atomic_rmw(p_, [v](T) { return v; }, o, CUBN_SIM_SITE);
  }
  /// A failed exchange (expected then holds the value found) is a read: a spin-wait.
  bool compare_exchange_weak(T& expected, T desired, cuda::std::memory_order success,
                             cuda::std::memory_order failure, CUBN_SIM_SITE_PARAMS) const {
    detail::atomic_write(p_, detail::releases(success));
    const T before = expected;
    const bool ok = __atomic_compare_exchange(p_, &expected, &desired, true,
                                              detail::gcc_order(success), detail::gcc_order(failure));
    detail::atomic_read(p_, detail::acquires(ok ? success : failure),
                        ok && std::memcmp(&before, &desired, sizeof(T)) != 0, CUBN_SIM_SITE);
    return ok;
  }

 private:
  T* p_;
};

/// cuda::atomic_thread_fence(o, cuda::thread_scope_device) as the executor runs it.
inline void device_fence(cuda::std::memory_order o) {
  detail::fence(detail::releases(o), detail::acquires(o));
}

}  // namespace cubn::sim

// The CUDA atomic intrinsics: relaxed, device scope.
template <class T>
T atomicAdd(T* address, T val, CUBN_SIM_SITE_PARAMS) {
  return cubn::sim::detail::atomic_rmw(address, [val](T old) { return static_cast<T>(old + val); },
                                       cuda::std::memory_order_relaxed, CUBN_SIM_SITE);
}
template <class T>
T atomicCAS(T* address, T compare, T val, CUBN_SIM_SITE_PARAMS) {
  static_assert(std::is_integral_v<T>, "atomicCAS takes integer types");
  return cubn::sim::detail::atomic_rmw(
      address, [compare, val](T old) { return old == compare ? val : old; },
      cuda::std::memory_order_relaxed, CUBN_SIM_SITE);
}
template <class T>
T atomicExch(T* address, T val, CUBN_SIM_SITE_PARAMS) {
  return cubn::sim::detail::atomic_rmw(address, [val](T) { return val; },
                                       cuda::std::memory_order_relaxed, CUBN_SIM_SITE);
}
template <class T>
T atomicMax(T* address, T val, CUBN_SIM_SITE_PARAMS) {
  return cubn::sim::detail::atomic_rmw(address, [val](T old) { return old < val ? val : old; },
                                       cuda::std::memory_order_relaxed, CUBN_SIM_SITE);
}
template <class T>
T atomicMin(T* address, T val, CUBN_SIM_SITE_PARAMS) {
  return cubn::sim::detail::atomic_rmw(address, [val](T old) { return val < old ? val : old; },
                                       cuda::std::memory_order_relaxed, CUBN_SIM_SITE);
}
/// A sequentially consistent fence at device scope: both a release and an acquire fence.
inline void __threadfence() { cubn::sim::detail::fence(true, true); }
/// A fence at block scope. The executor treats it as __threadfence() (an over-approximation: a
/// block-scope fence used to order memory between blocks is not reported).
inline void __threadfence_block() { cubn::sim::detail::fence(true, true); }

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
