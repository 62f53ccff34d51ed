/// @file executor.hpp
/// @brief The SIMT executor: runs CUDA kernel sources on the CPU, for tests and debugging.
///
/// This is a test and debugging backend, not a fast CPU path. Each CUDA thread of a block runs as
/// a fiber (a stack switch) on a host thread; a block's fibers run one after another until each
/// reaches a barrier, a warp collective, an atomic read that changed nothing (a spin-wait) or its
/// end. The blocks of an ordinary launch run one after another on the calling host thread (in
/// order or shuffled), or with BlockOrder::kConcurrent on kConcurrentWorkers host threads at once;
/// a cooperative launch runs every block at once, each on a host thread of its own. Several host
/// threads may launch at once: each runs its own launches with its own fibers.
///
/// What it checks, reporting a cubn::Error with Status::kKernelFault instead of hanging:
///  - a __syncthreads() that not every thread of the block reaches (threads that returned count as
///    not reaching it), or that threads reach at different call sites (two calls on one line are
///    two sites);
///  - a warp intrinsic (__shfl*_sync, __ballot_sync, __all_sync, __any_sync, __syncwarp) whose mask
///    does not include the calling lane, names lanes that do not exist or have returned, or names
///    lanes that never arrive at the same call site with the same mask; a shuffle reading a lane
///    outside the mask; a width that is not a power of two up to 32;
///  - a block collective used against its contract (cubn::kernels::BlockReduce: the result read
///    outside thread 0, temporary storage reused without a barrier in between);
///  - launch shapes a device refuses (more than 1024 threads, too much shared memory, grid limits);
///    a cooperative grid larger than the blocks that can be resident together (a GPU's
///    cudaErrorCooperativeLaunchTooLarge);
///  - in a cooperative launch, a block that returns, or waits at a different grid sync, while
///    others wait at a grid sync;
///  - races on shared memory declared through CUBN_SHARED, CUBN_SHARED_OBJECT (a collective's
///    storage) or CUBN_DYNAMIC_SHARED (kernels/platform.cuh), compute-sanitizer racecheck's job: a
///    write and a read, or two writes, of one element by different threads with no
///    __syncthreads() between them. That shared memory starts each block poisoned (0xCD bytes), as
///    dynamic shared memory does;
///  - a wait that cannot end: a thread that waits through atomic reads (a spin on
///    DeviceAtomicRef::load, a failing compare-and-swap) while no thread of the grid makes progress
///    for watchdog_seconds() (the flag of a block that runs later, or of no thread). A wait that
///    can end on a GPU completes: the waiting thread gives the others a turn at each read (across
///    the warps of a block; between the co-resident blocks of a cooperative launch); and, as the
///    last resort, a launch whose grid makes no progress at all for 6 x watchdog_seconds() (a
///    spin on plain or volatile loads, which the executor cannot preempt): a message on stderr
///    naming the kernel, and the process aborts.
/// Out-of-bounds global memory access is caught by building with AddressSanitizer (preset `asan`).
///
/// Under ThreadSanitizer (preset `tsan`) memory is ordered as the CUDA memory model orders it, not
/// as the fibers happen to run: the threads of a block are ordered only by __syncthreads(),
/// __syncwarp() (among its lanes), atomics and fences; blocks only by atomics and fences (and grid
/// syncs, and a launch's start and end). An atomic with release or acquire order is one for
/// ThreadSanitizer; a __threadfence() (or device_fence) is both a release fence, which makes the
/// thread's later atomic writes releases, and an acquire fence, which acquires what the thread's
/// earlier atomic reads read (the fence-to-atomic synchronization of the C++ and PTX models, which
/// ThreadSanitizer does not model by itself). So a race between blocks (kConcurrent, cooperative
/// launches) or between threads of a block (a non-atomic read-modify-write of global memory by
/// several threads) is reported, and a correctly ordered protocol is not.
///
/// What it cannot show: timing of any kind; orderings a GPU allows and host threads never produce
/// (x86 keeps stores in order: a reader that sees a flag but stale data on a GPU, or a third block
/// that sees two writes in different orders, never happens here, so such a bug shows only as the
/// missing synchronization ThreadSanitizer reports); blocks of one worker of a kConcurrent launch
/// are ordered one after another (a race between two such blocks is missed; across workers it is
/// not); a release fence releases the thread's accesses up to its next atomic write, not up to the
/// fence (an access in between is not reported), and an acquire fence acquires from the latest
/// release of a location, not the one its read saw; scopes (a block-scope fence or atomic counts
/// as device scope); warp scheduling and lockstep execution (threads run one at a time, so code
/// that relies on lockstep without __syncwarp gets wrong results here, which tests then catch, but
/// the converse is not shown); warp-synchronous shared memory (lanes ordered by __syncwarp alone
/// are reported as racing by the shared-memory check: the kernels do not rely on it); a wait on
/// plain or volatile loads ends the process (above), never a kernel fault; shared memory declared with
/// a plain __shared__ is neither poisoned nor checked by the executor (ThreadSanitizer still sees
/// its races; tests/cmake/kernel_sources_test.cmake keeps kernels/ and host/ free of it).
#pragma once

#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cubn/detail/launch_shape.hpp"

namespace cubn::sim {

/// The SM count the executor reports by default, like an H100 SXM (132 SMs).
constexpr int kSmCount = 132;

/// The executor device's SM count for the calling host thread: kSmCount unless set_sm_count chose
/// another. A smaller device keeps cooperative grids (one host thread per block) small in tests.
int sm_count() noexcept;
/// Sets the calling host thread's SM count (1 to kSmCount; 0 restores kSmCount). Plans made on
/// this thread from then on see that many SMs.
void set_sm_count(int sms) noexcept;

/// What one SM of the executor device holds (an H100's figures): the limits that decide how many
/// blocks can be resident together.
struct SmLimits {
  int max_threads = 2048;
  int max_blocks = 32;
  int registers = 65536;
  std::size_t shared_bytes = 233472;            ///< 228 KB
  std::size_t shared_per_block_optin = 232448;  ///< 227 KB, with the opt-in attribute
  std::size_t reserved_per_block = 1024;        ///< shared memory the system keeps per block
};
const SmLimits& sm_limits() noexcept;

/// Blocks of `block` threads with `dynamic_smem` bytes of dynamic shared memory that one SM holds
/// at once, from the threads, blocks and shared memory of sm_limits(). The executor knows neither
/// a kernel's registers nor its static shared memory: a GPU's occupancy API may report fewer.
int cooperative_blocks_per_sm(dim3 block, std::size_t dynamic_smem) noexcept;

/// The limits of the device the executor stands in for (an H100-like part; constant).
const cubn::detail::LaunchLimits& device_limits() noexcept;

/// Counters of the calling host thread's executor, for benchmarks and tests.
struct Counters {
  std::uint64_t launches = 0;
  std::uint64_t blocks = 0;
  std::uint64_t threads = 0;
  std::uint64_t switches = 0;  ///< fiber context switches (into a fiber and back count as two)
  std::uint64_t global_read_bytes = 0;   ///< through kernels::load_pack (kernels/memory.cuh)
  std::uint64_t global_write_bytes = 0;  ///< through kernels::store_pack
};
/// The calling host thread's counters.
Counters& counters() noexcept;

/// The order in which a block's runnable threads are resumed. Reversing it changes which thread
/// reaches a sync point first, which shakes out kernels that depend on thread order.
enum class Schedule { kForward, kReverse };
/// Sets the calling host thread's schedule (default kForward).
void set_schedule(Schedule s) noexcept;

/// The order in which a grid's blocks run. On a GPU blocks run in any order and concurrently, so a
/// kernel whose result depends on which block finishes first (a ticket taken, partials merged in
/// arrival order) is wrong; running the blocks in a shuffled order shows it. kConcurrent runs them
/// shuffled on kConcurrentWorkers host threads at once, blocks dealt round the workers in the
/// shuffled order, with nothing synchronizing the workers but what the kernel itself does (its
/// atomics and fences), so that ThreadSanitizer checks what crosses between blocks (tickets,
/// flags) as it does between the blocks of a cooperative launch.
enum class BlockOrder { kInOrder, kShuffled, kConcurrent };
/// Sets the calling host thread's block order (default kInOrder, or what the environment variable
/// CUBN_SIM_BLOCKS says: in-order, shuffled, concurrent). kShuffled and kConcurrent draw a
/// permutation of each launch's blocks from `seed` and the thread's launch count, so the order is
/// reproducible (kConcurrent's interleaving is not).
void set_block_order(BlockOrder order, std::uint64_t seed = 0) noexcept;
/// Host threads of a kConcurrent launch.
constexpr unsigned kConcurrentWorkers = 4;

/// Seconds without progress after which the executor faults a kernel (default 10, or the
/// environment variable CUBN_SIM_WATCHDOG_S): progress is a barrier or warp collective completed,
/// an atomic write that changed memory, a block started or finished, anywhere in the grid. Seen by
/// threads that wait through atomic loads (DeviceAtomicRef::load, a compare-and-swap that fails):
/// the executor gives other threads a turn at each, and faults the kernel when the wait has lasted
/// this long with no progress (a flag that a block the schedule runs later, or no thread, would
/// set). A wait through plain or volatile loads is not seen (the executor cannot preempt a thread
/// that never calls it; CUDA too requires atomics there): a launch that makes no progress for 6 x
/// this ends the process with a message naming the kernel.
double watchdog_seconds() noexcept;
/// Sets the watchdog for every host thread (seconds > 0; 0 restores the default).
void set_watchdog_seconds(double seconds) noexcept;

/// Variants of the kernels' ticket (kernels/channel_ops.cuh take_ticket), for the executor's own
/// tests that ThreadSanitizer sees each ordering the ticket needs: kFences is cubn's (release
/// fence, relaxed fetch_add, acquire fence in the last block); kAcqRel an equally correct one (an
/// acq_rel fetch_add, no fences); the others are mutations: a fence removed, the fetch_add relaxed
/// with no fence, the partials read before the ticket (the plane reductions). Process-wide; set it
/// only in a test process of its own (a death test).
enum class TicketVariant {
  kFences,
  kAcqRel,
  kNoReleaseFence,
  kNoAcquireFence,
  kRelaxedTicket,
  kReadBeforeTicket
};
TicketVariant ticket_variant() noexcept;
void set_ticket_variant(TicketVariant v) noexcept;

/// Global-memory traffic of one launch, from the kernels' load and store helpers
/// (kernels/memory.cuh); plain pointer accesses (the per-channel vectors of the finalization
/// kernels) are not seen.
struct LaunchProfile {
  std::string name;
  std::uint64_t read_bytes = 0, write_bytes = 0;
  /// Warp-wide accesses: the k-th helper access of each lane of a warp taken together (lanes run
  /// the same sequence of accesses in these kernels; a lane that has stopped drops out).
  std::uint64_t warp_accesses = 0;
  /// Accesses by single lanes (each load_pack or store_pack call).
  std::uint64_t lane_accesses = 0;
  /// Bytes per lane access: 16 when every access moves a whole 16-byte vector.
  double bytes_per_lane_access() const {
    return lane_accesses == 0 ? 0.0 : static_cast<double>(read_bytes + write_bytes) / lane_accesses;
  }
  std::uint64_t sectors_touched = 0;  ///< distinct 32-byte sectors those accesses touch
  std::uint64_t sectors_needed = 0;   ///< ceil(bytes requested / 32), per warp access
  /// sectors_needed / sectors_touched: 1 when every warp access is contiguous and aligned.
  double sector_efficiency() const {
    return sectors_touched == 0 ? 1.0 : static_cast<double>(sectors_needed) / sectors_touched;
  }
};

/// While alive, records a LaunchProfile of every launch the calling host thread makes (one
/// scope at a time per thread). Recording each access costs time: tests of the proxies use it.
class ProfileScope {
 public:
  ProfileScope();
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;
  const std::vector<LaunchProfile>& launches() const { return launches_; }

 private:
  friend struct ProfileAccess;
  std::vector<LaunchProfile> launches_;
};

/// Runs body(ctx) as every thread of a grid (blocks in the order set_block_order chose) of `grid`
/// blocks of `block` threads, with `dynamic_smem` bytes of dynamic shared memory per block.
/// Synchronous. Throws cubn::Error (kInvalidLaunch for a shape the device refuses, kKernelFault for
/// a broken CUDA rule).
void run_grid(dim3 grid, dim3 block, std::size_t dynamic_smem, void (*body)(void*), void* ctx,
              const char* name = "kernel");

namespace detail {
/// A kernel and its arguments, converted to its parameter types, run by each thread.
template <class... P>
struct KernelCall {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> params;
  static void invoke(void* self) {
    auto* call = static_cast<KernelCall*>(self);
    std::apply(call->kernel, call->params);  // by-value parameters: each thread copies
  }
};
}  // namespace detail

/// Launches `kernel` like kernel<<<grid, block, dynamic_smem>>>(args...): each thread gets its own
/// copy of the arguments, converted to the kernel's parameter types. Synchronous.
template <class... P, class... A>
void launch_named(const char* name, void (*kernel)(P...), dim3 grid, dim3 block,
                  std::size_t dynamic_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  detail::KernelCall<P...> call{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  run_grid(grid, block, dynamic_smem, &detail::KernelCall<P...>::invoke, &call, name);
}

/// Runs body(ctx) as a cooperative grid: every block resident at once on a host thread of its own,
/// so that grid_sync() works. Throws cubn::Error(kInvalidLaunch) when the grid exceeds
/// cooperative_blocks_per_sm(block, dynamic_smem) x sm_count() blocks, kKernelFault for a broken
/// rule (the first block's fault; blocks abandoned because of it say nothing more).
void run_cooperative_grid(dim3 grid, dim3 block, std::size_t dynamic_smem, void (*body)(void*),
                          void* ctx, const char* name = "kernel");

/// Launches `kernel` like cudaLaunchCooperativeKernel: run_cooperative_grid with each thread's own
/// copy of the arguments. Synchronous.
template <class... P, class... A>
void launch_cooperative_named(const char* name, void (*kernel)(P...), dim3 grid, dim3 block,
                              std::size_t dynamic_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  detail::KernelCall<P...> call{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  run_cooperative_grid(grid, block, dynamic_smem, &detail::KernelCall<P...>::invoke, &call, name);
}

/// launch_named with the name "kernel".
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t dynamic_smem, A&&... args) {
  launch_named("kernel", kernel, grid, block, dynamic_smem, std::forward<A>(args)...);
}

}  // namespace cubn::sim
