// The SIMT executor: CUDA threads as fibers on the calling host thread.
//
// Fibers beat host threads here: a 1024-thread block with 20 barriers takes milliseconds as
// fibers and far longer as 1024 host threads on 2 cores (bench/executor_backends.cu measures
// both), and fibers need no ThreadSanitizer, since a block never runs on two host threads.
// Cooperative launches run each block on a host thread of its own (its fibers on that thread), so
// that blocks meet at grid syncs and ThreadSanitizer sees what crosses between blocks.
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cubn/detail/launch_shape.hpp"
#include "cubn/error.hpp"
#include "cubn/sim/device_runtime.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define CUBN_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUBN_SIM_ASAN 1
#endif
#endif

#if defined(CUBN_SIM_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__SANITIZE_THREAD__)
#define CUBN_SIM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUBN_SIM_TSAN 1
#endif
#endif

// ThreadSanitizer follows fiber switches through its fiber API, and sees the threads of a block
// as CUDA orders them, not as the fibers happen to run: a switch into a thread's fiber does not
// synchronize, so only what CUDA orders within a block orders them (a __syncthreads() or
// __syncwarp(): each arriving thread releases, each leaving one acquires; atomics and fences, see
// detail::atomic_write), and a race between threads of one block on global memory (a non-atomic
// read-modify-write by several) is reported like one between blocks. The executor's own
// bookkeeping, which every fiber of a block touches, runs outside ThreadSanitizer's view
// (TsanIgnore); a switch back to the scheduler synchronizes, so the launching thread sees all.
#if defined(CUBN_SIM_TSAN)
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local uint3 blockDim;
thread_local uint3 gridDim;

namespace cubn::sim {
namespace {

using detail::WarpOp;

#if defined(CUBN_SIM_ASAN)
constexpr std::size_t kStackBytes = 1024 * 1024;  // sanitizer frames are larger
#else
constexpr std::size_t kStackBytes = 256 * 1024;
#endif
constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

[[noreturn]] void throw_fault(const std::string& msg) {
  throw Error(Status::kKernelFault, "cubn executor: " + msg);
}

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string where(detail::Site s) {
  return std::string(s.file ? s.file : "?") + ":" + std::to_string(s.line);
}

bool same_site(detail::Site a, detail::Site b) {
  // one call site's file is one string literal: compare the pointers before the characters
  return a.line == b.line && a.id == b.id &&
         (a.file == b.file ||
          (a.file != nullptr && b.file != nullptr && std::strcmp(a.file, b.file) == 0));
}

// While alive, ThreadSanitizer does not see the calling fiber's memory accesses (its
// synchronization it still sees): the executor's bookkeeping.
struct TsanIgnore {
#if defined(CUBN_SIM_TSAN)
  TsanIgnore() { __tsan_ignore_thread_begin(); }
  ~TsanIgnore() { __tsan_ignore_thread_end(); }
#else
  TsanIgnore() {}  // user-provided: no unused-variable warning where it does nothing
#endif
  TsanIgnore(const TsanIgnore&) = delete;
  TsanIgnore& operator=(const TsanIgnore&) = delete;
};

// A release (acquire) on the synchronization object at p, for ThreadSanitizer.
void tsan_release([[maybe_unused]] const void* p) {
#if defined(CUBN_SIM_TSAN)
  __tsan_release(const_cast<void*>(p));
#endif
}
void tsan_acquire([[maybe_unused]] const void* p) {
#if defined(CUBN_SIM_TSAN)
  __tsan_acquire(const_cast<void*>(p));
#endif
}

std::string coords(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kSync: return "__syncwarp";
  }
  return "?";
}

bool is_shuffle(WarpOp op) { return op <= WarpOp::kShflXor; }

#if defined(CUBN_SIM_ASAN)
// Clears AddressSanitizer's poison of [p, p + n) as ASan clears large ranges itself: the whole
// shadow pages in the middle go back to the kernel (madvise; they then read as zero, unpoisoned,
// and cost nothing until touched), ASan unpoisons the edges. __asan_unpoison_memory_region alone
// writes every shadow byte: 32 MB for a block's 256 fiber stacks of 1 MB, per host thread of a
// cooperative launch, which made the persistent tests spend a third of their time under ASan
// clearing fresh shadow pages.
void unpoison_stacks(void* p, std::size_t n) {
  std::size_t scale = 0, offset = 0;
  __asan_get_shadow_mapping(&scale, &offset);
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto beg = reinterpret_cast<std::uintptr_t>(p), end = beg + n;
  const std::uintptr_t shadow_beg = ((beg >> scale) + offset + page - 1) & ~(page - 1);
  const std::uintptr_t shadow_end = ((end >> scale) + offset) & ~(page - 1);
  if (shadow_end <= shadow_beg) {
    __asan_unpoison_memory_region(p, n);
    return;
  }
  const std::uintptr_t mid_beg = (shadow_beg - offset) << scale, mid_end = (shadow_end - offset)
                                                                           << scale;
  __asan_unpoison_memory_region(p, mid_beg - beg);
  madvise(reinterpret_cast<void*>(shadow_beg), shadow_end - shadow_beg, MADV_DONTNEED);
  __asan_unpoison_memory_region(reinterpret_cast<void*>(mid_end), end - mid_end);
}
#endif

// Fiber stacks of kStackBytes each in one mapping, a guard page below the lowest, mapped once and
// reused: one per fiber (each with its guard page) on a launching thread, one per block for the
// blocks of a cooperative launch, whose hundreds of blocks with a mapping per fiber would pass the
// kernel's limit on mappings (vm.max_map_count, 65530).
class StackRegion {
 public:
  explicit StackRegion(std::size_t stacks) : stacks_(stacks) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    total_ = stacks * kStackBytes + page;
    base_ = mmap(nullptr, total_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base_ == MAP_FAILED)
      throw Error(Status::kInvalidLaunch, "cubn executor: out of memory for fiber stacks");
    mprotect(base_, page, PROT_NONE);
    first_ = static_cast<char*>(base_) + page;
#if defined(CUBN_SIM_ASAN)
    // the addresses may have held stacks before, whose stale poison the shadow still carries
    unpoison_stacks(first_, stacks * kStackBytes);
#endif
  }
  StackRegion(const StackRegion&) = delete;
  StackRegion& operator=(const StackRegion&) = delete;
  ~StackRegion() { munmap(base_, total_); }
  void* bottom(std::size_t i) const { return first_ + i * kStackBytes; }
  std::size_t stacks() const { return stacks_; }

 private:
  std::size_t stacks_;
  void* base_;
  char* first_;
  std::size_t total_;
};

// ---- fiber contexts -------------------------------------------------------------------------
// On x86-64 a switch saves the callee-saved registers and the FP control words on the stack and
// swaps stack pointers (a few nanoseconds). Elsewhere ucontext, whose swapcontext makes a system
// call per switch and which AddressSanitizer slows down further by clearing the target stack's
// shadow on every switch.
#if defined(__x86_64__)

extern "C" void cubn_sim_switch_stack(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .type cubn_sim_switch_stack, @function
cubn_sim_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cubn_sim_switch_stack, .-cubn_sim_switch_stack
)");

struct Context {
  void* sp = nullptr;
};

// A context that starts `entry` (which never returns) on [bottom, bottom + size). Not
// instrumented: the stack's top still carries the poison of the last fiber_entry frame there
// (fiber_entry never returns), which each new frame then overwrites.
__attribute__((no_sanitize_address)) void make_context(Context& c, void* bottom, std::size_t size,
                                                       void (*entry)()) {
  auto top = (reinterpret_cast<std::uintptr_t>(bottom) + size) & ~std::uintptr_t{15};
  auto* slot = reinterpret_cast<std::uint64_t*>(top);
  *--slot = 0;                                       // entry's return address: none
  *--slot = reinterpret_cast<std::uint64_t>(entry);  // popped by ret
  for (int i = 0; i < 6; ++i) *--slot = 0;           // rbp rbx r12 r13 r14 r15
  *--slot = 0x1F80ull | (0x037Full << 32);           // MXCSR and x87 control word defaults
  c.sp = slot;
}

// Not seen by ThreadSanitizer: it reads the target's saved stack pointer after the switch of
// ThreadSanitizer's fiber, as the target (which did not write it: the scheduler's bookkeeping).
__attribute__((no_sanitize("thread"))) void switch_context(Context& from, Context& to) {
  cubn_sim_switch_stack(&from.sp, to.sp);
}

#else

struct Context {
  ucontext_t uc;
};

void make_context(Context& c, void* bottom, std::size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = bottom;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

__attribute__((no_sanitize("thread"))) void switch_context(Context& from, Context& to) {
  swapcontext(&from.uc, &to.uc);
}

#endif

enum class State { kRunnable, kBarrier, kWarp, kDone };

struct Fiber {
  Context ctx;
  std::unique_ptr<StackRegion> stack;  // its own mapping, or none when the engine's region holds it
  void* bottom = nullptr;              // the stack's lowest address
#if defined(CUBN_SIM_TSAN)
  void* tsan_fiber = nullptr;
#endif
  State state = State::kRunnable;
  bool started = false;  // has frames on its stack
  bool unwound = false;  // left through Abandon: AddressSanitizer may keep stale stack poison
  uint3 tid{};
  unsigned linear = 0;
  detail::Site site{};  // where it waits
  bool grid = false;  // the barrier it waits at is a grid_sync()
  // the warp collective it waits in
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  std::uint64_t value = 0;
  int arg = 0;
  int width = 32;
  std::uint64_t result = 0;
#if defined(CUBN_SIM_TSAN)
  // the memory model ThreadSanitizer is given (detail::atomic_write, detail::fence)
  bool released = false;                  // a release fence ran: later atomic writes release
  std::vector<const void*> read_atomics;  // read by relaxed atomic reads, for an acquire fence
#endif
#if defined(CUBN_SIM_ASAN)
  void* fake_stack = nullptr;
#endif
};

struct Access {
  std::uintptr_t addr;
  std::size_t bytes;
};

// What the blocks of one cooperative launch share.
struct Coop {
  std::mutex m;
  std::condition_variable cv;
  unsigned blocks = 0;
  unsigned arrived = 0;   // blocks waiting at the current grid sync
  unsigned finished = 0;  // blocks that returned
  std::uint64_t generation = 0;
  detail::Site site{};  // where the blocks wait
  std::string first_waiter, first_finished;
  std::string fault;  // the first block's fault: every block then abandons
  std::atomic<std::uint64_t> progress{0};  // the grid's (watchdog)
};

using Clock = std::chrono::steady_clock;

// How long a grid's progress count has stood still: what the in-kernel watchdog (detail::spin)
// and the monitor of stalled launches (Monitor) both ask.
class Stall {
 public:
  void start(const std::atomic<std::uint64_t>& progress) {
    seen_ = progress.load(std::memory_order_relaxed);
    since_ = Clock::now();
  }
  // Seconds since the count last moved (0 when it moved since the last look).
  double seconds(const std::atomic<std::uint64_t>& progress) {
    const std::uint64_t v = progress.load(std::memory_order_relaxed);
    const Clock::time_point now = Clock::now();
    if (v != seen_) {
      seen_ = v;
      since_ = now;
    }
    return std::chrono::duration<double>(now - since_).count();
  }

 private:
  std::uint64_t seen_ = 0;
  Clock::time_point since_{};
};

// What the environment variable CUBN_SIM_BLOCKS asks for (in-order, shuffled, concurrent).
BlockOrder default_block_order() {
  static const BlockOrder order = [] {
    const char* v = std::getenv("CUBN_SIM_BLOCKS");
    const std::string s = v != nullptr ? v : "";
    if (s == "shuffled") return BlockOrder::kShuffled;
    if (s == "concurrent") return BlockOrder::kConcurrent;
    if (!s.empty() && s != "in-order")
      std::fprintf(stderr, "cubn executor: CUBN_SIM_BLOCKS=%s is not in-order, shuffled or "
                   "concurrent; running blocks in order\n", v);
    return BlockOrder::kInOrder;
  }();
  return order;
}

// CUBN_SIM_SKIP_KERNELS=1: a measurement switch for host-cost benchmarks only
// (bench/host_cost.cpp, bench/torch_overhead.py). Every launch is checked and counted as usual,
// then returns without running a thread of its kernel: what a call costs its caller on the host
// (argument checks, planning, launch preparation) is then all that is timed. Outputs are left as
// they were, so nothing else may run with it set.
bool kernels_skipped() {
  static const bool skip = [] {
    const char* v = std::getenv("CUBN_SIM_SKIP_KERNELS");
    return v != nullptr && std::string(v) == "1";
  }();
  return skip;
}

// Everything of one host thread's executor.
struct Engine {
  // profiling (ProfileScope)
  ProfileScope* profile = nullptr;
  LaunchProfile* launch_profile = nullptr;
  std::vector<std::vector<Access>> lane_accesses;  // per thread of the running block

  std::vector<Fiber> fibers;
  // a cooperative block's fibers take their stacks from one mapping; others map their own each
  std::unique_ptr<StackRegion> region;
  std::vector<unsigned char> smem;                // dynamic shared memory of the running block
  std::vector<detail::SharedShadow> smem_shadow;  // its race record, per element of smem_elem
  std::size_t smem_elem = 0;
  std::uint64_t serial = 0;  // of the running block (block_serial)
  Coop* coop = nullptr;      // the cooperative launch the running block belongs to
  Counters counters;
  Schedule schedule = Schedule::kForward;
  BlockOrder block_order = default_block_order();
  std::uint64_t block_seed = 0;
  std::vector<std::uint64_t> block_perm;

  // the running block
  bool running = false;
  bool aborting = false;  // a fault was raised: resumed fibers unwind
  unsigned nthreads = 0;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  Fiber* current = nullptr;
  Context sched_ctx;
  unsigned at_barrier = 0;
  unsigned exited = 0;
  std::uint64_t epoch = 0;
  std::string fault;
  std::unordered_map<const void*, std::uint64_t> tags;
  const char* kernel = "kernel";  // the launch's name
  // the watchdog: the grid's progress count (its own for a launch on this thread alone), the value
  // a waiting thread last saw and since when
  std::atomic<std::uint64_t> own_progress{0};
  std::atomic<std::uint64_t>* progress = &own_progress;
  Stall stall;
  std::uint64_t spins = 0;
  // ThreadSanitizer's synchronization objects (their addresses): the block's start, its barrier,
  // its warps' __syncwarp()
  char block_start = 0, barrier_sync = 0;
  char warp_sync[32] = {};
#if defined(CUBN_SIM_ASAN)
  void* sched_fake_stack = nullptr;
  const void* sched_bottom = nullptr;
  std::size_t sched_size = 0;
#endif
#if defined(CUBN_SIM_TSAN)
  void* tsan_sched = nullptr;
  ~Engine() {
    for (Fiber& f : fibers)
      if (f.tsan_fiber != nullptr) __tsan_destroy_fiber(f.tsan_fiber);
  }
#endif
};

thread_local Engine g_engine;
std::atomic<double> g_watchdog_seconds{0.0};  // 0: the default
std::atomic<int> g_ticket_variant{0};
thread_local int g_sm_count = kSmCount;

// ---- switching ------------------------------------------------------------------------------

void fiber_entry();

// Thrown inside a fiber to leave it for good after a fault: unwinding to fiber_entry destroys the
// kernel's and the checks' locals, so an abandoned block leaks nothing.
struct Abandon {};

// Scheduler -> fiber.
void resume(Engine& e, Fiber& f) {
  e.current = &f;
  threadIdx = f.tid;
  ++e.counters.switches;
#if defined(CUBN_SIM_ASAN)
  __sanitizer_start_switch_fiber(&e.sched_fake_stack, f.bottom, kStackBytes);
#endif
#if defined(CUBN_SIM_TSAN)
  __tsan_switch_to_fiber(f.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  switch_context(e.sched_ctx, f.ctx);
#if defined(CUBN_SIM_ASAN)
  __sanitizer_finish_switch_fiber(e.sched_fake_stack, nullptr, nullptr);
#endif
  e.current = nullptr;
}

// Fiber -> scheduler. `final` when the fiber will never be resumed. Its bookkeeping is outside
// ThreadSanitizer's view, but not the switch itself: a final switch inside an ignored scope would
// leave the fiber ignored when it next runs a block.
void yield(Engine& e, bool final = false) {
  Fiber* f = nullptr;
  {
    const TsanIgnore ignore;
    f = e.current;
    ++e.counters.switches;
#if defined(CUBN_SIM_ASAN)
    __sanitizer_start_switch_fiber(final ? nullptr : &f->fake_stack, e.sched_bottom, e.sched_size);
#else
    (void) final;
#endif
  }
#if defined(CUBN_SIM_TSAN)
  __tsan_switch_to_fiber(e.tsan_sched, 0);
#endif
  switch_context(f->ctx, e.sched_ctx);
  bool aborting = false;
  {
    const TsanIgnore ignore;
#if defined(CUBN_SIM_ASAN)
    __sanitizer_finish_switch_fiber(f->fake_stack, &e.sched_bottom, &e.sched_size);
#endif
    aborting = e.aborting;
  }
  if (aborting) throw Abandon{};
}

// Records a fault; the scheduler then abandons the block.
[[noreturn]] void raise(Engine& e, std::string msg) {
  if (e.fault.empty()) e.fault = std::move(msg);
  throw Abandon{};
}

std::string thread_name(const Fiber& f) {
  return "thread " + coords(f.tid) + " of block " + coords(blockIdx);
}

// A thread returned: the barrier or warp collectives that wait for it can never complete.
void on_exit(Engine& e) {
  Fiber& f = *e.current;
  f.state = State::kDone;
  ++e.exited;
  if (e.at_barrier > 0) {
    for (unsigned i = 0; i < e.nthreads; ++i) {
      const Fiber& o = e.fibers[i];
      if (o.state == State::kBarrier) {
        raise(e, std::string(o.grid ? "grid_sync()" : "__syncthreads()") + " at " +
                     where(o.site) + " is not reached by every thread: " + thread_name(f) +
                     " returned while " + std::to_string(e.at_barrier) + " thread(s) wait there");
      }
    }
  }
  const unsigned warp0 = f.linear / kWarp * kWarp;
  const unsigned lane = f.linear % kWarp;
  for (unsigned i = warp0; i < std::min(warp0 + kWarp, e.nthreads); ++i) {
    const Fiber& o = e.fibers[i];
    if (o.state == State::kWarp && (o.mask >> lane & 1u)) {
      raise(e, std::string(op_name(o.op)) + " at " + where(o.site) + " with mask " +
                   hex(o.mask) + " names lane " + std::to_string(lane) + ", but " + thread_name(f) +
                   " returned without calling it");
    }
  }
}

void fiber_entry() {
  Engine& e = g_engine;
#if defined(CUBN_SIM_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &e.sched_bottom, &e.sched_size);
#endif
  tsan_acquire(&e.block_start);  // what the launch wrote before the block (its arguments, inputs)
  {
    const TsanIgnore ignore;
    e.current->started = true;
  }
  try {
    e.body(e.body_ctx);
    const TsanIgnore ignore;
    on_exit(e);
    e.progress->fetch_add(1, std::memory_order_relaxed);
  } catch (const Abandon&) {
    const TsanIgnore ignore;
    e.current->unwound = true;
  } catch (const std::exception& ex) {
    const TsanIgnore ignore;
    if (e.fault.empty()) e.fault = thread_name(*e.current) + " threw: " + ex.what();
  }
  {
    const TsanIgnore ignore;
    e.current->started = false;
  }
  yield(e, true);
  std::abort();  // never resumed
}

// ---- the block scheduler --------------------------------------------------------------------

std::string describe_deadlock(Engine& e) {
  std::string msg = "block " + coords(blockIdx) + " cannot make progress:";
  if (e.at_barrier > 0) {
    const Fiber* at = nullptr;
    for (unsigned i = 0; i < e.nthreads; ++i)
      if (e.fibers[i].state == State::kBarrier) {
        at = &e.fibers[i];
        break;
      }
    msg += " " + std::to_string(e.at_barrier) + " of " + std::to_string(e.nthreads) +
           " thread(s) wait at __syncthreads() at " + where(at->site) + ";";
  }
  for (unsigned w = 0; w * kWarp < e.nthreads; ++w) {
    for (unsigned i = w * kWarp; i < std::min((w + 1) * kWarp, e.nthreads); ++i) {
      const Fiber& f = e.fibers[i];
      if (f.state != State::kWarp) continue;
      unsigned missing = 0;
      std::string elsewhere;
      for (unsigned l = 0; l < kWarp; ++l) {
        if (!(f.mask >> l & 1u)) continue;
        const Fiber& o = e.fibers[w * kWarp + l];
        if (o.state == State::kWarp && o.mask == f.mask) continue;
        missing |= 1u << l;
        if (o.state == State::kBarrier && elsewhere.empty())
          elsewhere = " (lane " + std::to_string(l) + " waits at __syncthreads() at " +
                      where(o.site) + ")";
      }
      msg += " warp " + std::to_string(w) + ": " + op_name(f.op) + " at " + where(f.site) +
             " with mask " + hex(f.mask) + " waits for lanes " + hex(missing) +
             " that never call it" + elsewhere + ";";
      break;  // one line per warp
    }
  }
  return msg;
}

// Points the fiber's context at fiber_entry on its own stack. Kept out of run_block: getcontext
// (the ucontext path) returns twice, which would make the compiler distrust run_block's locals.
__attribute__((noinline)) void start_context(Fiber& f) {
  make_context(f.ctx, f.bottom, kStackBytes, &fiber_entry);
}

// After a fault: resumes every fiber that has frames on its stack so that it unwinds.
void unwind_all(Engine& e) {
  e.aborting = true;
  for (unsigned i = 0; i < e.nthreads; ++i) {
    Fiber& f = e.fibers[i];
    if (f.started) resume(e, f);
  }
  e.aborting = false;
}

// Groups each warp's k-th accesses into one warp access and counts the sectors they touch.
void analyze_accesses(Engine& e) {
  LaunchProfile& lp = *e.launch_profile;
  std::vector<std::uintptr_t> sectors;
  for (unsigned base = 0; base < e.nthreads; base += kWarp) {
    const unsigned end = std::min(base + kWarp, e.nthreads);
    std::size_t longest = 0;
    for (unsigned t = base; t < end; ++t) longest = std::max(longest, e.lane_accesses[t].size());
    for (std::size_t k = 0; k < longest; ++k) {
      sectors.clear();
      std::size_t requested = 0;
      for (unsigned t = base; t < end; ++t) {
        if (k >= e.lane_accesses[t].size()) continue;
        const Access& a = e.lane_accesses[t][k];
        requested += a.bytes;
        for (std::uintptr_t sct = a.addr / 32; sct <= (a.addr + a.bytes - 1) / 32; ++sct)
          sectors.push_back(sct);
      }
      std::sort(sectors.begin(), sectors.end());
      lp.sectors_touched +=
          static_cast<std::uint64_t>(std::unique(sectors.begin(), sectors.end()) - sectors.begin());
      lp.sectors_needed += (requested + 31) / 32;
      ++lp.warp_accesses;
    }
  }
  for (unsigned t = 0; t < e.nthreads; ++t) e.lane_accesses[t].clear();
}

void run_block(Engine& e) {
  const TsanIgnore ignore;  // the scheduler's bookkeeping (the fibers' own accesses are seen)
  e.at_barrier = 0;
  e.exited = 0;
  e.epoch = 0;
  e.tags.clear();
  ++e.serial;
  e.smem_shadow.clear();
  e.smem_elem = 0;
  std::fill(e.smem.begin(), e.smem.end(), static_cast<unsigned char>(0xCD));  // uninitialised
#if defined(CUBN_SIM_TSAN)
  e.tsan_sched = __tsan_get_current_fiber();
#endif
  for (unsigned i = 0; i < e.nthreads; ++i) {
    Fiber& f = e.fibers[i];
    if (f.bottom == nullptr) {
      if (e.region) {
        f.bottom = e.region->bottom(i);
      } else {
        f.stack = std::make_unique<StackRegion>(1);
        f.bottom = f.stack->bottom(0);
      }
    }
#if defined(CUBN_SIM_TSAN)
    if (f.tsan_fiber == nullptr) f.tsan_fiber = __tsan_create_fiber(0);
#endif
    start_context(f);
    f.state = State::kRunnable;
#if defined(CUBN_SIM_ASAN)
    // a fiber unwound after a fault may leave its frames poisoned
    if (f.unwound) unpoison_stacks(f.bottom, kStackBytes);
#endif
    f.unwound = false;
#if defined(CUBN_SIM_TSAN)
    f.released = false;
    f.read_atomics.clear();
#endif
  }
  tsan_release(&e.block_start);
  e.progress->fetch_add(1, std::memory_order_relaxed);
  ++e.counters.blocks;
  e.counters.threads += e.nthreads;
  const bool reverse = e.schedule == Schedule::kReverse;
  while (e.exited < e.nthreads) {
    bool progressed = false;
    for (unsigned k = 0; k < e.nthreads; ++k) {
      Fiber& f = e.fibers[reverse ? e.nthreads - 1 - k : k];
      if (f.state != State::kRunnable) continue;
      progressed = true;
      resume(e, f);
      if (!e.fault.empty()) {
        unwind_all(e);
        return;
      }
    }
    if (!progressed) {
      e.fault = describe_deadlock(e);
      unwind_all(e);
      return;
    }
  }
  if (e.launch_profile != nullptr) analyze_accesses(e);
}

Engine& engine_in_kernel(const char* what) {
  Engine& e = g_engine;
  if (!e.running || e.current == nullptr) {
    std::fprintf(stderr, "cubn executor: %s called outside a kernel launched by the executor\n",
                 what);
    std::abort();
  }
  return e;
}

}  // namespace

// ---- public API -----------------------------------------------------------------------------

const cubn::detail::LaunchLimits& device_limits() noexcept {
  static const cubn::detail::LaunchLimits limits;  // H100-like defaults
  return limits;
}

Counters& counters() noexcept { return g_engine.counters; }

void set_schedule(Schedule s) noexcept { g_engine.schedule = s; }

void set_block_order(BlockOrder order, std::uint64_t seed) noexcept {
  g_engine.block_order = order;
  g_engine.block_seed = seed;
}

double watchdog_seconds() noexcept {
  const double set = g_watchdog_seconds.load(std::memory_order_relaxed);
  if (set > 0) return set;
  static const double from_env = [] {
    const char* v = std::getenv("CUBN_SIM_WATCHDOG_S");
    const double d = v != nullptr ? std::atof(v) : 0.0;
    return d > 0 ? d : 10.0;
  }();
  return from_env;
}

void set_watchdog_seconds(double seconds) noexcept {
  g_watchdog_seconds.store(seconds > 0 ? seconds : 0.0, std::memory_order_relaxed);
}

TicketVariant ticket_variant() noexcept {
  return static_cast<TicketVariant>(g_ticket_variant.load(std::memory_order_relaxed));
}

void set_ticket_variant(TicketVariant v) noexcept {
  g_ticket_variant.store(static_cast<int>(v), std::memory_order_relaxed);
}

struct ProfileAccess {
  static std::vector<LaunchProfile>& launches(ProfileScope& p) { return p.launches_; }
};

ProfileScope::ProfileScope() {
  if (g_engine.profile != nullptr)
    throw Error(Status::kInvalidArgument,
                "cubn executor: a ProfileScope is already active on this thread");
  g_engine.profile = this;
}

ProfileScope::~ProfileScope() { g_engine.profile = nullptr; }

namespace {

// Readies the calling host thread's engine to run blocks of a launch.
void setup(Engine& e, dim3 grid, dim3 block, std::size_t dynamic_smem, void (*body)(void*),
           void* ctx, const char* name, std::atomic<std::uint64_t>* progress) {
  e.kernel = name;
  e.progress = progress != nullptr ? progress : &e.own_progress;
  e.stall.start(*e.progress);
  e.nthreads = block.x * block.y * block.z;
  if (e.fibers.size() < e.nthreads) e.fibers.resize(e.nthreads);
  for (unsigned i = 0; i < e.nthreads; ++i) {
    e.fibers[i].linear = i;
    e.fibers[i].tid = uint3{i % block.x, i / block.x % block.y, i / (block.x * block.y)};
  }
  // round up so vector loads of the last bytes stay inside the allocation
  e.smem.assign((dynamic_smem + 15) / 16 * 16, 0);
  e.body = body;
  e.body_ctx = ctx;
  e.fault.clear();
  blockDim = uint3{block.x, block.y, block.z};
  gridDim = uint3{grid.x, grid.y, grid.z};
}

// A new launch's profile when the engine's thread records them (ProfileScope), else null.
LaunchProfile* new_launch_profile(Engine& e, const char* name) {
  if (e.profile == nullptr) return nullptr;
  auto& launches = ProfileAccess::launches(*e.profile);
  launches.push_back(LaunchProfile{name});
  return &launches.back();
}

// Points the engine's running blocks at `profile` (null: none), with an empty access record per
// thread when there is one (a faulted launch leaves some behind).
void use_launch_profile(Engine& e, LaunchProfile* profile) {
  e.launch_profile = profile;
  if (profile == nullptr) return;
  if (e.lane_accesses.size() < e.nthreads) e.lane_accesses.resize(e.nthreads);
  for (auto& v : e.lane_accesses) v.clear();
}

uint3 block_coords(std::uint64_t b, dim3 grid) {
  return uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
               static_cast<unsigned>(b / (std::uint64_t{grid.x} * grid.y))};
}

void add_profile(LaunchProfile& to, const LaunchProfile& from) {
  to.read_bytes += from.read_bytes;
  to.write_bytes += from.write_bytes;
  to.warp_accesses += from.warp_accesses;
  to.lane_accesses += from.lane_accesses;
  to.sectors_touched += from.sectors_touched;
  to.sectors_needed += from.sectors_needed;
}

// A block of a cooperative launch returned: a grid sync that others wait at can never complete.
void coop_finished(Coop& c) {
  std::lock_guard<std::mutex> lock(c.m);
  ++c.finished;
  if (c.first_finished.empty()) c.first_finished = coords(blockIdx);
  if (c.arrived > 0 && c.fault.empty())
    c.fault = "cubn executor: grid_sync() at " + where(c.site) +
              " is not reached by every block: block " + coords(blockIdx) + " returned while " +
              std::to_string(c.arrived) + " block(s) wait there";
  c.cv.notify_all();
}

void coop_failed(Coop& c, const std::string& fault) {
  std::lock_guard<std::mutex> lock(c.m);
  if (c.fault.empty()) c.fault = "cubn executor: " + fault;
  c.cv.notify_all();
}

// Waits, in the last thread of a block to reach grid_sync(), until every block is there.
void coop_wait(Engine& e, detail::Site site) {
  if (e.coop == nullptr)
    raise(e, "grid_sync() at " + where(site) +
                 " in a kernel that was not launched cooperatively");
  Coop& c = *e.coop;
  std::unique_lock<std::mutex> lock(c.m);
  const auto abandon = [&] {
    lock.unlock();
    raise(e, "abandoned: another block of the cooperative launch faulted");
  };
  if (!c.fault.empty()) abandon();
  if (c.finished > 0) {
    c.fault = "cubn executor: grid_sync() at " + where(site) +
              " is not reached by every block: block " + c.first_finished +
              " returned before it (block " + coords(blockIdx) + " waits there)";
    c.cv.notify_all();
    abandon();
  }
  if (c.arrived == 0) {
    c.site = site;
    c.first_waiter = coords(blockIdx);
  } else if (!same_site(c.site, site)) {
    c.fault = "cubn executor: blocks wait at different grid syncs: block " + c.first_waiter +
              " at " + where(c.site) + ", block " + coords(blockIdx) + " at " + where(site);
    c.cv.notify_all();
    abandon();
  }
  if (++c.arrived == c.blocks) {
    c.arrived = 0;
    ++c.generation;
    c.progress.fetch_add(1, std::memory_order_relaxed);
    c.cv.notify_all();
    return;
  }
  const std::uint64_t gen = c.generation;
  c.cv.wait(lock, [&] { return c.generation != gen || !c.fault.empty(); });
  if (c.generation == gen) abandon();
}

}  // namespace

int sm_count() noexcept { return g_sm_count; }

void set_sm_count(int sms) noexcept { g_sm_count = sms >= 1 && sms <= kSmCount ? sms : kSmCount; }

const SmLimits& sm_limits() noexcept {
  static const SmLimits limits;
  return limits;
}

int cooperative_blocks_per_sm(dim3 block, std::size_t dynamic_smem) noexcept {
  const SmLimits& l = sm_limits();
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || dynamic_smem > l.shared_per_block_optin) return 0;
  std::uint64_t n = std::min<std::uint64_t>(static_cast<std::uint64_t>(l.max_blocks),
                                            static_cast<std::uint64_t>(l.max_threads) / threads);
  n = std::min<std::uint64_t>(n, l.shared_bytes / (dynamic_smem + l.reserved_per_block));
  return static_cast<int>(n);
}

// The stack of a host thread the executor starts. The C library puts a thread's static TLS at the
// top of its stack (its own stacks or one the caller maps), and the static TLS is mostly the
// kernels' shared arrays (CUBN_SHARED, thread_local): it grows with every kernel instantiated,
// 7.8 MB in the test binaries as of the split phases' variable-length kernels, when the 8 MiB
// default left the monitor's thread too little stack under ThreadSanitizer (a SIGSEGV at its guard
// page) and the block threads' fixed 8 MiB mappings fell under ThreadSanitizer's minimum. So it is
// measured: the PT_TLS segments of the modules loaded at start.
namespace {

std::size_t static_tls_bytes() {
  std::size_t total = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_TLS) *static_cast<std::size_t*>(data) += ph.p_memsz + ph.p_align;
        }
        return 0;
      },
      &total);
  return total;
}

// The static TLS, 8 MiB of stack (the C library's default), and 1 MiB for the C library's and the
// sanitizers' own TLS (ThreadSanitizer wants the TLS plus 128 KiB at least), in whole pages.
std::size_t thread_stack_bytes() {
  static const std::size_t bytes = [] {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t want = static_tls_bytes() + (std::size_t{9} << 20);
    return (want + page - 1) / page * page;
  }();
  return bytes;
}

// Starts entry(arg) on a detached thread with a stack of thread_stack_bytes(): the C library's, or
// `stack` (a mapping of that size) where given; false where the system has no thread or memory
// for it.
bool start_detached(void* arg, void* (*entry)(void*), void* stack = nullptr) {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return false;
  pthread_t tid{};
  const std::size_t bytes = thread_stack_bytes();
  const int sized = stack != nullptr ? pthread_attr_setstack(&attr, stack, bytes)
                                     : pthread_attr_setstacksize(&attr, bytes);
  const bool ok = sized == 0 && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                  pthread_create(&tid, &attr, entry, arg) == 0;
  pthread_attr_destroy(&attr);
  return ok;
}

}  // namespace

// The last resort against a hang: a launch whose grid makes no progress (detail::spin's count) for
// kStallFactor x watchdog_seconds() is reported on stderr, naming its kernel, and the process
// aborts. The in-kernel watchdog (detail::spin) faults a thread that waits through atomic reads
// long before; this catches what the executor cannot see or stop: a thread spinning on plain or
// volatile loads, or computing without end. A monitor thread, started at the first launch and
// never stopped, looks once a second at the launches running then.
constexpr double kStallFactor = 6;

class Monitor {
 public:
  // A launch, watched while alive.
  class Watch {
   public:
    Watch(const char* name, const std::atomic<std::uint64_t>* progress)
        : name_(name), progress_(progress) {
      Monitor& m = get();
      const std::lock_guard<std::mutex> lock(m.mutex_);
      stall_.start(*progress_);
      m.watches_.push_back(this);
    }
    ~Watch() {
      Monitor& m = get();
      const std::lock_guard<std::mutex> lock(m.mutex_);
      m.watches_.erase(std::find(m.watches_.begin(), m.watches_.end(), this));
    }
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

   private:
    friend class Monitor;
    const char* name_;
    const std::atomic<std::uint64_t>* progress_;
    Stall stall_;
  };

 private:
  static Monitor& get() {
    static Monitor* const m = [] {
      auto* mon = new Monitor;  // never destroyed: its thread outlives static destruction
      if (!start_detached(mon, [](void* self) -> void* { static_cast<Monitor*>(self)->loop(); }))
        std::fprintf(stderr,
                     "cubn executor: cannot start the monitor of stalled launches (out of host "
                     "threads or memory); a spinning kernel will hang\n");
      return mon;
    }();
    return *m;
  }

  [[noreturn]] void loop() {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      const std::lock_guard<std::mutex> lock(mutex_);
      const double limit = kStallFactor * watchdog_seconds();
      for (Watch* w : watches_) {
        if (w->stall_.seconds(*w->progress_) > limit) {
          std::fprintf(stderr,
                       "cubn executor: kernel %s made no progress for %g s (no barrier, warp "
                       "collective, atomic write or block finished in the grid): a thread spins "
                       "on plain or volatile loads, which the executor cannot preempt (wait "
                       "through atomics, as CUDA requires), or never ends; aborting\n",
                       w->name_, limit);
          std::abort();
        }
      }
    }
  }

  std::mutex mutex_;
  std::vector<Watch*> watches_;
};

// Host threads for the blocks of cooperative launches, started once and kept: a new thread costs
// the C library a clear of the whole static TLS, and every kernel's shared arrays are thread_local
// (CUBN_SHARED: 6 MB in the test binary), so a launch of 100 blocks on new threads spent most of
// its time faulting in and clearing those pages (perf: 98% of the test suite's page faults, two
// thirds of the persistent tests' CPU time in the kernel). A kept thread runs block after block
// like the launching thread of an ordinary launch. Each runs on a stack mapped here, not one from
// the C library's cache of stacks: AddressSanitizer then starts it with clean shadow (a cached
// stack can carry poison that fiber switches left behind; the static TLS lies in the same mapping).
// Threads are detached and never end; there are as many as the largest cooperative grid so far
// needed at once (each runs one block, since blocks wait for each other at grid syncs).
class BlockThreads {
 public:
  using Task = std::function<void(std::uint64_t)>;

  // Runs task(b) for b in [0, blocks), each on a thread of its own, all at once, and returns when
  // every one has returned; or runs none and returns false when the system has no more threads or
  // memory for them (some blocks alone would wait at a grid sync for the others for ever).
  static bool run(std::uint64_t blocks, const Task& task) {
    Latch done;
    std::vector<Thread*> taken;
    taken.reserve(blocks);
    for (std::uint64_t b = 0; b < blocks; ++b) {
      Thread* t = take();
      if (t == nullptr) break;
      taken.push_back(t);
    }
    if (taken.size() < blocks) {
      std::lock_guard<std::mutex> lock(idle_mutex());
      for (Thread* t : taken) idle().push_back(t);
      return false;
    }
    done.left = taken.size();
    for (std::size_t b = 0; b < taken.size(); ++b) {
      Thread& t = *taken[b];
      std::lock_guard<std::mutex> lock(t.m);
      t.task = &task;
      t.b = b;
      t.done = &done;
      t.cv.notify_one();
    }
    {
      std::unique_lock<std::mutex> lock(done.m);
      done.cv.wait(lock, [&] { return done.left == 0; });
    }
    std::lock_guard<std::mutex> lock(idle_mutex());
    for (Thread* t : taken) idle().push_back(t);
    return true;
  }

 private:
  struct Latch {
    std::mutex m;
    std::condition_variable cv;
    std::size_t left = 0;
  };
  struct Thread {
    std::mutex m;
    std::condition_variable cv;
    const Task* task = nullptr;  // set by run(); null while idle
    std::uint64_t b = 0;
    Latch* done = nullptr;
  };

  // Never destroyed: threads blocked on them outlive static destruction at exit.
  static std::mutex& idle_mutex() {
    static auto* m = new std::mutex;
    return *m;
  }
  static std::vector<Thread*>& idle() {
    static auto* v = new std::vector<Thread*>;
    return *v;
  }

  static Thread* take() {
    {
      std::lock_guard<std::mutex> lock(idle_mutex());
      if (!idle().empty()) {
        Thread* t = idle().back();
        idle().pop_back();
        return t;
      }
    }
    auto t = std::make_unique<Thread>();
    const std::size_t bytes = thread_stack_bytes();
    void* stack = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return nullptr;
#if defined(CUBN_SIM_ASAN)
    unpoison_stacks(stack, bytes);
#endif
    if (!start_detached(t.get(), &loop, stack)) {
      munmap(stack, bytes);
      return nullptr;
    }
    return t.release();  // the thread's for good
  }

  static void* loop(void* self) {
    auto& t = *static_cast<Thread*>(self);
    for (;;) {
      std::unique_lock<std::mutex> lock(t.m);
      t.cv.wait(lock, [&] { return t.task != nullptr; });
      const Task& task = *t.task;
      Latch& done = *t.done;
      const std::uint64_t b = t.b;
      t.task = nullptr;
      lock.unlock();
      task(b);
      std::lock_guard<std::mutex> done_lock(done.m);
      if (--done.left == 0) done.cv.notify_all();  // under the lock: run() may free it after
    }
  }
};

namespace {

// What a host thread that ran blocks of another thread's launch hands back.
struct WorkerResult {
  Counters counters;
  LaunchProfile profile;
  std::string fault;
};

// Readies the calling host thread's engine to run blocks of a launch made on another thread: the
// launching thread's schedule, fresh counters, stacks for every thread of a block in one mapping.
void start_worker(Engine& e, Schedule schedule, dim3 grid, dim3 block, std::size_t dynamic_smem,
                  void (*body)(void*), void* ctx, const char* name,
                  std::atomic<std::uint64_t>* progress, LaunchProfile* profile) {
  e.schedule = schedule;
  e.counters = Counters{};
  setup(e, grid, block, dynamic_smem, body, ctx, name, progress);
  use_launch_profile(e, profile);
  e.running = true;
  try {
    if (!e.region || e.region->stacks() < e.nthreads) {  // too few so far: map them all anew
      for (Fiber& f : e.fibers) f.bottom = nullptr;
      e.region.reset();
      e.region = std::make_unique<StackRegion>(e.nthreads);
    }
  } catch (const std::exception& ex) {  // out of memory for stacks
    e.fault = ex.what();
  }
}

// run_block, with an error of the host (out of memory) recorded as the block's fault.
void run_block_safely(Engine& e) {
  try {
    run_block(e);
  } catch (const std::exception& ex) {
    if (e.fault.empty()) e.fault = ex.what();
  }
}

// Adds the workers' counters and profiles to the launching thread's.
void gather(Engine& parent, LaunchProfile* profile, const std::vector<WorkerResult>& results) {
  for (const WorkerResult& r : results) {
    const Counters& c = r.counters;
    parent.counters.blocks += c.blocks;
    parent.counters.threads += c.threads;
    parent.counters.switches += c.switches;
    parent.counters.global_read_bytes += c.global_read_bytes;
    parent.counters.global_write_bytes += c.global_write_bytes;
    if (profile != nullptr) add_profile(*profile, r.profile);
  }
}

}  // namespace

void run_cooperative_grid(dim3 grid, dim3 block, std::size_t dynamic_smem, void (*body)(void*),
                          void* ctx, const char* name) {
  cubn::detail::LaunchLimits limits = device_limits();
  limits.max_shared_per_block = sm_limits().shared_per_block_optin;
  cubn::detail::check_launch_shape(name, grid, block, dynamic_smem, limits);
  Engine& parent = g_engine;
  if (parent.running)
    throw_fault("a kernel launched another kernel; dynamic parallelism is not supported");
  const std::uint64_t blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  const std::uint64_t most =
      static_cast<std::uint64_t>(cooperative_blocks_per_sm(block, dynamic_smem)) * sm_count();
  if (blocks > most)
    throw Error(Status::kInvalidLaunch,
                std::string("launch of ") + name + ": a cooperative grid of " +
                    std::to_string(blocks) + " blocks exceeds the " + std::to_string(most) +
                    " that can be resident together (" + std::to_string(sm_count()) +
                    " SMs; cudaErrorCooperativeLaunchTooLarge on a GPU)");
  ++parent.counters.launches;
  if (kernels_skipped()) return;
  LaunchProfile* profile = new_launch_profile(parent, name);
  Coop coop;
  coop.blocks = static_cast<unsigned>(blocks);
  const Monitor::Watch watch(name, &coop.progress);
  std::vector<WorkerResult> results(blocks);
  const Schedule schedule = parent.schedule;
  const auto work = [&](std::uint64_t b) {
    Engine& e = g_engine;  // the block thread's own, kept from its earlier blocks
    e.coop = &coop;
    start_worker(e, schedule, grid, block, dynamic_smem, body, ctx, name, &coop.progress,
                 profile != nullptr ? &results[b].profile : nullptr);
    if (e.fault.empty()) {
      blockIdx = block_coords(b, grid);
      run_block_safely(e);
    }
    e.running = false;
    if (e.fault.empty()) {
      coop_finished(coop);
    } else {
      coop_failed(coop, e.fault);
    }
    results[b].counters = e.counters;
  };
  if (!BlockThreads::run(blocks, work))
    throw Error(Status::kInvalidLaunch, std::string("launch of ") + name +
                                            ": cannot start a host thread per block (out of host "
                                            "threads or memory)");
  gather(parent, profile, results);
  if (!coop.fault.empty()) throw Error(Status::kKernelFault, coop.fault);
}

namespace {

// Runs the grid's blocks in the order `perm` on kConcurrentWorkers host threads at once, the i-th
// block of perm on worker i % workers. Nothing synchronizes the workers while they run (a fault
// stops the others through a relaxed flag): only the kernel's own atomics and fences order one
// block's memory accesses before another's, as on a GPU.
void run_grid_concurrently(Engine& parent, dim3 grid, dim3 block, std::size_t dynamic_smem,
                           void (*body)(void*), void* ctx, const char* name,
                           const std::vector<std::uint64_t>& perm) {
  const std::uint64_t blocks = perm.size();
  const unsigned workers =
      static_cast<unsigned>(std::min<std::uint64_t>(kConcurrentWorkers, blocks));
  LaunchProfile* profile = new_launch_profile(parent, name);
  std::vector<WorkerResult> results(workers);
  std::atomic<bool> failed{false};
  std::atomic<std::uint64_t> progress{0};
  const Monitor::Watch watch(name, &progress);
  const Schedule schedule = parent.schedule;
  const auto work = [&](std::uint64_t w) {
    Engine& e = g_engine;
    e.coop = nullptr;
    start_worker(e, schedule, grid, block, dynamic_smem, body, ctx, name, &progress,
                 profile != nullptr ? &results[w].profile : nullptr);
    for (std::uint64_t i = w; i < blocks && e.fault.empty(); i += workers) {
      if (failed.load(std::memory_order_relaxed)) break;
      blockIdx = block_coords(perm[i], grid);
      run_block_safely(e);
    }
    e.running = false;
    if (!e.fault.empty()) failed.store(true, std::memory_order_relaxed);
    results[w].counters = e.counters;
    results[w].fault = e.fault;
  };
  if (!BlockThreads::run(workers, work))
    throw Error(Status::kInvalidLaunch, std::string("launch of ") + name +
                                            ": cannot start its host threads (out of host "
                                            "threads or memory)");
  gather(parent, profile, results);
  for (const WorkerResult& r : results)
    if (!r.fault.empty()) throw_fault(r.fault);
}

}  // namespace

void run_grid(dim3 grid, dim3 block, std::size_t dynamic_smem, void (*body)(void*), void* ctx,
              const char* name) {
  cubn::detail::check_launch_shape("kernel (executor)", grid, block, dynamic_smem, device_limits());
  Engine& e = g_engine;
  if (e.running)
    throw_fault("a kernel launched another kernel; dynamic parallelism is not supported");
  ++e.counters.launches;
  if (kernels_skipped()) return;
  const std::uint64_t blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  const bool shuffled = e.block_order != BlockOrder::kInOrder;
  if (shuffled) {
    e.block_perm.resize(blocks);
    std::iota(e.block_perm.begin(), e.block_perm.end(), std::uint64_t{0});
    std::mt19937_64 rng(e.block_seed * 0x9E3779B97F4A7C15ull + e.counters.launches);
    std::shuffle(e.block_perm.begin(), e.block_perm.end(), rng);
  }
  if (e.block_order == BlockOrder::kConcurrent && blocks > 1) {
    run_grid_concurrently(e, grid, block, dynamic_smem, body, ctx, name, e.block_perm);
    return;
  }
  setup(e, grid, block, dynamic_smem, body, ctx, name, nullptr);
  use_launch_profile(e, new_launch_profile(e, name));
  const Monitor::Watch watch(name, e.progress);
  e.running = true;
  for (std::uint64_t i = 0; i < blocks; ++i) {
    const std::uint64_t b = shuffled ? e.block_perm[i] : i;
    blockIdx = block_coords(b, grid);
    run_block(e);
    if (!e.fault.empty()) {
      e.running = false;
      throw_fault(e.fault);
    }
  }
  e.running = false;
}

namespace detail {

namespace {

// A barrier of every thread of the block; with `grid`, the block then waits for the others.
void block_barrier(Site site, bool grid) {
  const char* what = grid ? "grid_sync()" : "__syncthreads()";
  Engine& e = engine_in_kernel(what);
  const TsanIgnore ignore;
  Fiber& f = *e.current;
  f.site = site;
  f.grid = grid;
  if (e.exited > 0) {
    for (unsigned i = 0; i < e.nthreads; ++i) {
      if (e.fibers[i].state == State::kDone) {
        raise(e, std::string(what) + " at " + where(site) +
                     " is not reached by every thread: " + std::to_string(e.exited) +
                     " thread(s) returned before it, e.g. " + thread_name(e.fibers[i]));
      }
    }
  }
  f.state = State::kBarrier;
  tsan_release(&e.barrier_sync);  // what this thread wrote before the barrier
  if (++e.at_barrier < e.nthreads) {
    yield(e);
    tsan_acquire(&e.barrier_sync);  // what every thread wrote before it
    return;
  }
  // the last to arrive: every thread is here; all must be at the same barrier
  for (unsigned i = 0; i < e.nthreads; ++i) {
    const Fiber& o = e.fibers[i];
    if (!same_site(o.site, site) || o.grid != grid) {
      raise(e, "threads of block " + coords(blockIdx) +
                   " wait at different barriers: " + thread_name(o) + " at " +
                   (o.grid ? "grid_sync() " : "__syncthreads() ") + where(o.site) + ", " +
                   thread_name(f) + " at " + what + " " + where(site));
    }
  }
  tsan_acquire(&e.barrier_sync);
  if (grid) {
    coop_wait(e, site);             // what every block wrote before it (the lock)
    tsan_release(&e.barrier_sync);  // passed on to this block's threads
  }
  for (unsigned i = 0; i < e.nthreads; ++i) e.fibers[i].state = State::kRunnable;
  e.at_barrier = 0;
  ++e.epoch;
  e.progress->fetch_add(1, std::memory_order_relaxed);
}

// Gives the other threads of the block a turn after an atomic read that changed nothing (a wait
// on memory), and faults the kernel when the whole grid has made no progress for
// watchdog_seconds() while a thread waits so.
void spin(Engine& e, Site site) {
  if (++e.spins % 64 == 0) {
    const double limit = watchdog_seconds();
    if (e.stall.seconds(*e.progress) > limit) {
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", limit);
      raise(e, "kernel " + std::string(e.kernel) + " made no progress for " + secs +
                   " s (watchdog): " + thread_name(*e.current) + " waits in an atomic read at " +
                   where(site) +
                   " for a write that no thread of the grid will make (on a GPU too it may never "
                   "come: a flag set by a block that runs later, by no thread, or by a thread "
                   "that waits itself)");
    }
  }
  yield(e);
}

}  // namespace

void syncthreads(Site site) { block_barrier(site, false); }

void grid_sync(Site site) { block_barrier(site, true); }

// The fence bookkeeping exists only for ThreadSanitizer: elsewhere the host's own atomics and
// fences (the operations themselves) are all the executor needs.
void atomic_write([[maybe_unused]] const void* p, [[maybe_unused]] bool release) {
  [[maybe_unused]] Engine& e = engine_in_kernel("an atomic operation");
#if defined(CUBN_SIM_TSAN)
  const TsanIgnore ignore;
  if (release || e.current->released) tsan_release(p);
#endif
}

void atomic_read([[maybe_unused]] const void* p, [[maybe_unused]] bool acquire, bool changed,
                 Site site) {
  Engine& e = engine_in_kernel("an atomic operation");
  const TsanIgnore ignore;
#if defined(CUBN_SIM_TSAN)
  Fiber& f = *e.current;
  if (acquire) {
    tsan_acquire(p);
  } else if (std::find(f.read_atomics.begin(), f.read_atomics.end(), p) == f.read_atomics.end()) {
    f.read_atomics.push_back(p);
  }
#endif
  if (changed) {
    e.progress->fetch_add(1, std::memory_order_relaxed);
  } else {
    spin(e, site);
  }
}

void fence([[maybe_unused]] bool release, [[maybe_unused]] bool acquire) {
  [[maybe_unused]] Engine& e = engine_in_kernel("a memory fence");
#if defined(CUBN_SIM_TSAN)
  {
    const TsanIgnore ignore;
    Fiber& f = *e.current;
    if (release) f.released = true;
    if (acquire)
      for (const void* p : f.read_atomics) tsan_acquire(p);
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);  // ThreadSanitizer models it as above
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

namespace {

// The static shared arrays' storage allocated on this host thread (refresh_shared), freed when it
// ends.
struct SharedStores {
  std::vector<void*> blocks;
  SharedStores() = default;
  SharedStores(const SharedStores&) = delete;
  SharedStores& operator=(const SharedStores&) = delete;
  ~SharedStores() {
    for (void* b : blocks) ::operator delete(b, std::align_val_t(16));
  }
};

}  // namespace

void* refresh_shared(std::uint64_t& serial, void*& store, std::size_t n, std::size_t count) {
  Engine& e = engine_in_kernel("shared memory");
  const TsanIgnore ignore;
  if (store == nullptr) {
    thread_local SharedStores stores;
    const std::size_t bytes = shadow_offset(n) + count * sizeof(SharedShadow);
    stores.blocks.reserve(stores.blocks.size() + 1);  // no leak if push_back would throw
    store = ::operator new(bytes, std::align_val_t(16));
    stores.blocks.push_back(store);
    new (static_cast<unsigned char*>(store) + shadow_offset(n)) SharedShadow[count];
    serial = UINT64_MAX;
  }
  auto* data = static_cast<unsigned char*>(store);
  if (serial == e.serial) return data;
  serial = e.serial;
  std::memset(data, 0xCD, n);
  auto* shadow = reinterpret_cast<SharedShadow*>(data + shadow_offset(n));
  std::fill(shadow, shadow + count, SharedShadow{});
  return data;
}

void shared_access(SharedShadow& sh, const char* name, std::size_t index, bool write) {
  Engine& e = engine_in_kernel("shared memory access");
  const TsanIgnore ignore;
  const int me = static_cast<int>(e.current->linear);
  const std::uint64_t epoch = e.epoch;
  const auto race = [&](const char* what, int other) {
    const std::string by =
        other == -2 ? std::string("several threads") : "thread " + coords(e.fibers[other].tid);
    raise(e, std::string("shared memory race on ") + name + "[" + std::to_string(index) +
                 "]: " + thread_name(*e.current) + " " + what + " " + by +
                 " with no __syncthreads() between");
  };
  if (sh.write_epoch == epoch && sh.writer != me)
    race(write ? "writes it after a write by" : "reads it after a write by", sh.writer);
  if (write) {
    if (sh.read_epoch == epoch && sh.reader != me) race("writes it after a read by", sh.reader);
    sh.write_epoch = epoch;
    sh.writer = me;
  } else if (sh.read_epoch != epoch) {
    sh.read_epoch = epoch;
    sh.reader = me;
  } else if (sh.reader != me) {
    sh.reader = -2;
  }
}

SharedShadow* dynamic_shadow(std::size_t elem_bytes, std::size_t& count) {
  Engine& e = engine_in_kernel("dynamic shared memory");
  const TsanIgnore ignore;
  if (e.smem_elem != elem_bytes) {
    if (e.smem_elem != 0)
      raise(e,
            "dynamic shared memory is checked as one element type per block; this block uses "
            "two sizes");
    e.smem_elem = elem_bytes;
    e.smem_shadow.assign(e.smem.size() / elem_bytes, SharedShadow{});
  }
  count = e.smem_shadow.size();
  return e.smem_shadow.data();
}

std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width,
                              Site site) {
  Engine& e = engine_in_kernel(op_name(op));
  const TsanIgnore ignore;
  Fiber& f = *e.current;
  const unsigned lane = f.linear % kWarp;
  const unsigned base = f.linear - lane;
  const unsigned lanes = std::min(kWarp, e.nthreads - base);
  const unsigned exists = lanes == kWarp ? kFullMask : (1u << lanes) - 1u;
  const std::string at =
      std::string(op_name(op)) + " at " + where(site) + " with mask " + hex(mask);
  if (!(mask >> lane & 1u))
    raise(e,
          at + " is called by lane " + std::to_string(lane) + ", which the mask does not include");
  if (mask & ~exists)
    raise(e, at + " names lanes " + hex(mask & ~exists) + " that do not exist (warp " +
                 std::to_string(base / kWarp) + " has " + std::to_string(lanes) + " threads)");
  if (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1)) != 0))
    raise(e, at + ": width " + std::to_string(width) + " is not a power of two from 1 to 32");
  unsigned done = 0, arrived = 0;
  for (unsigned l = 0; l < lanes; ++l) {
    const Fiber& o = e.fibers[base + l];
    if (o.state == State::kDone) done |= 1u << l;
    if (o.state != State::kWarp || !(o.mask & mask)) continue;
    if (o.mask != mask || o.op != op ||
        (op != WarpOp::kSync && !same_site(o.site, site)))
      raise(e, "lanes of warp " + std::to_string(base / kWarp) + " disagree: lane " +
                   std::to_string(l) + " waits in " + op_name(o.op) + " at " +
                   where(o.site) + " with mask " + hex(o.mask) + ", lane " +
                   std::to_string(lane) + " calls " + at);
    arrived |= 1u << l;
  }
  if (mask & done)
    raise(e, at + " names lanes " + hex(mask & done) + " that have already returned");
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.site = site;
  f.state = State::kWarp;
  arrived |= 1u << lane;
  // __syncwarp() orders memory among its lanes (each releases, each acquires); shuffles and votes
  // move values, not memory
  void* const warp_sync = &e.warp_sync[base / kWarp];
  if (op == WarpOp::kSync) tsan_release(warp_sync);
  if (arrived != mask) {
    yield(e);
    if (op == WarpOp::kSync) tsan_acquire(warp_sync);
    return f.result;
  }
  if (op == WarpOp::kSync) tsan_acquire(warp_sync);
  e.progress->fetch_add(1, std::memory_order_relaxed);
  // the last lane of the mask to arrive computes every lane's result
  std::uint64_t ballot = 0;
  bool all = true, any = false;
  for (unsigned l = 0; l < lanes; ++l) {
    if (!(mask >> l & 1u)) continue;
    const bool pred = e.fibers[base + l].value != 0;
    ballot |= static_cast<std::uint64_t>(pred) << l;
    all = all && pred;
    any = any || pred;
  }
  for (unsigned l = 0; l < lanes; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& o = e.fibers[base + l];
    o.state = State::kRunnable;
    const int seg = static_cast<int>(l) & ~(width - 1);
    // PTX shfl.sync: the lane field is 5 bits; up may not read below its segment, down, xor
    // and idx not above it (xor may read an earlier segment, as CUDA documents)
    const int b = arg & 31;
    int src = static_cast<int>(l);
    switch (op) {
      case WarpOp::kShflIdx: src = seg + (b & (width - 1)); break;
      case WarpOp::kShflUp: src = static_cast<int>(l) - b; break;
      case WarpOp::kShflDown: src = static_cast<int>(l) + b; break;
      case WarpOp::kShflXor: src = static_cast<int>(l) ^ b; break;
      case WarpOp::kBallot: o.result = ballot; continue;
      case WarpOp::kAll: o.result = all; continue;
      case WarpOp::kAny: o.result = any; continue;
      case WarpOp::kSync: o.result = 0; continue;
    }
    const bool valid = op == WarpOp::kShflUp ? src >= seg : src < seg + width;
    if (!valid) {  // the lane keeps its own value
      o.result = o.value;
      continue;
    }
    if (!(mask >> src & 1u))
      raise(e, at + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                   ", which the mask does not include");
    o.result = e.fibers[base + static_cast<unsigned>(src)].value;
  }
  return f.result;
}

unsigned active_mask() {
  // Threads run one at a time here, so the only lane known to be executing is the caller; on a
  // GPU too, __activemask() promises no more than that (it does not guarantee convergence).
  Engine& e = engine_in_kernel("__activemask");
  const TsanIgnore ignore;
  return 1u << (e.current->linear % kWarp);
}

void* dynamic_shared_memory() {
  Engine& e = engine_in_kernel("dynamic shared memory");
  const TsanIgnore ignore;
  return e.smem.empty() ? nullptr : e.smem.data();
}

unsigned linear_thread_index() {
  Engine& e = engine_in_kernel("linear_thread_index");
  const TsanIgnore ignore;
  return e.current->linear;
}

void fault(const char* what) {
  Engine& e = engine_in_kernel("fault");
  const TsanIgnore ignore;
  raise(e, thread_name(*e.current) + ": " + what);
}

void record_global(const void* p, std::size_t bytes, bool write) {
  Engine& e = engine_in_kernel("global memory access");
  const TsanIgnore ignore;
  (write ? e.counters.global_write_bytes : e.counters.global_read_bytes) += bytes;
  if (e.launch_profile == nullptr) return;
  (write ? e.launch_profile->write_bytes : e.launch_profile->read_bytes) += bytes;
  ++e.launch_profile->lane_accesses;
  e.lane_accesses[e.current->linear].push_back({reinterpret_cast<std::uintptr_t>(p), bytes});
}

void collective_enter(const void* storage) {
  Engine& e = engine_in_kernel("a block collective");
  const TsanIgnore ignore;
  const auto it = e.tags.find(storage);
  if (it != e.tags.end() && it->second == e.epoch)
    raise(e, thread_name(*e.current) +
                 ": BlockReduce temp storage reused without a __syncthreads() since its last use");
}

void collective_leave(const void* storage) {
  Engine& e = engine_in_kernel("a block collective");
  const TsanIgnore ignore;
  e.tags[storage] = e.epoch;
}

}  // namespace detail
}  // namespace cubn::sim
