// The SIMT executor: CUDA threads as fibers on the calling host thread.
//
// Fibers beat host threads here: a 1024-thread block with 20 barriers takes milliseconds as
// fibers and far longer as 1024 host threads on 2 cores (bench/executor_backends.cu measures
// both), and fibers need no ThreadSanitizer, since a block never runs on two host threads.
// Cooperative launches run each block on a host thread of its own (its fibers on that thread), so
// that blocks meet at grid syncs and ThreadSanitizer sees what crosses between blocks.
#include <pthread.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
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

// ThreadSanitizer follows fiber switches through its fiber API; each switch synchronizes (flags 0),
// so the threads of one block, which never run at once, are not reported against each other: the
// checked shared memory does that job (detail::shared_access).
#if defined(CUBN_SIM_TSAN)
#include <sanitizer/tsan_interface.h>
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

std::string where(const char* file, int line) {
  return std::string(file ? file : "?") + ":" + std::to_string(line);
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

void switch_context(Context& from, Context& to) { cubn_sim_switch_stack(&from.sp, to.sp); }

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

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

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
  const char* file = nullptr;  // where it waits
  int line = 0;
  bool grid = false;  // the barrier it waits at is a grid_sync()
  // the warp collective it waits in
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  std::uint64_t value = 0;
  int arg = 0;
  int width = 32;
  std::uint64_t result = 0;
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
  const char* file = nullptr;  // where the blocks wait
  int line = 0;
  std::string first_waiter, first_finished;
  std::string fault;  // the first block's fault: every block then abandons
};

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
  BlockOrder block_order = BlockOrder::kInOrder;
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
  __tsan_switch_to_fiber(f.tsan_fiber, 0);
#endif
  switch_context(e.sched_ctx, f.ctx);
#if defined(CUBN_SIM_ASAN)
  __sanitizer_finish_switch_fiber(e.sched_fake_stack, nullptr, nullptr);
#endif
  e.current = nullptr;
}

// Fiber -> scheduler. `final` when the fiber will never be resumed.
void yield(Engine& e, bool final = false) {
  Fiber& f = *e.current;
  ++e.counters.switches;
#if defined(CUBN_SIM_ASAN)
  __sanitizer_start_switch_fiber(final ? nullptr : &f.fake_stack, e.sched_bottom, e.sched_size);
#else
  (void) final;
#endif
#if defined(CUBN_SIM_TSAN)
  __tsan_switch_to_fiber(e.tsan_sched, 0);
#endif
  switch_context(f.ctx, e.sched_ctx);
#if defined(CUBN_SIM_ASAN)
  __sanitizer_finish_switch_fiber(f.fake_stack, &e.sched_bottom, &e.sched_size);
#endif
  if (e.aborting) throw Abandon{};
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
                     where(o.file, o.line) + " is not reached by every thread: " + thread_name(f) +
                     " returned while " + std::to_string(e.at_barrier) + " thread(s) wait there");
      }
    }
  }
  const unsigned warp0 = f.linear / kWarp * kWarp;
  const unsigned lane = f.linear % kWarp;
  for (unsigned i = warp0; i < std::min(warp0 + kWarp, e.nthreads); ++i) {
    const Fiber& o = e.fibers[i];
    if (o.state == State::kWarp && (o.mask >> lane & 1u)) {
      raise(e, std::string(op_name(o.op)) + " at " + where(o.file, o.line) + " with mask " +
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
  e.current->started = true;
  try {
    e.body(e.body_ctx);
    on_exit(e);
  } catch (const Abandon&) {
    e.current->unwound = true;
  } catch (const std::exception& ex) {
    if (e.fault.empty()) e.fault = thread_name(*e.current) + " threw: " + ex.what();
  }
  e.current->started = false;
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
           " thread(s) wait at __syncthreads() at " + where(at->file, at->line) + ";";
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
                      where(o.file, o.line) + ")";
      }
      msg += " warp " + std::to_string(w) + ": " + op_name(f.op) + " at " + where(f.file, f.line) +
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
  }
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
           void* ctx) {
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
    c.fault = "cubn executor: grid_sync() at " + where(c.file, c.line) +
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
void coop_wait(Engine& e, const char* file, int line) {
  if (e.coop == nullptr)
    raise(e, "grid_sync() at " + where(file, line) +
                 " in a kernel that was not launched cooperatively");
  Coop& c = *e.coop;
  std::unique_lock<std::mutex> lock(c.m);
  const auto abandon = [&] {
    lock.unlock();
    raise(e, "abandoned: another block of the cooperative launch faulted");
  };
  if (!c.fault.empty()) abandon();
  if (c.finished > 0) {
    c.fault = "cubn executor: grid_sync() at " + where(file, line) +
              " is not reached by every block: block " + c.first_finished +
              " returned before it (block " + coords(blockIdx) + " waits there)";
    c.cv.notify_all();
    abandon();
  }
  if (c.arrived == 0) {
    c.file = file;
    c.line = line;
    c.first_waiter = coords(blockIdx);
  } else if (c.line != line || std::strcmp(c.file, file) != 0) {
    c.fault = "cubn executor: blocks wait at different grid syncs: block " + c.first_waiter +
              " at " + where(c.file, c.line) + ", block " + coords(blockIdx) + " at " +
              where(file, line);
    c.cv.notify_all();
    abandon();
  }
  if (++c.arrived == c.blocks) {
    c.arrived = 0;
    ++c.generation;
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
  static constexpr std::size_t kStack = std::size_t{8} << 20;

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
    void* stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return nullptr;
#if defined(CUBN_SIM_ASAN)
    unpoison_stacks(stack, kStack);
#endif
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) {
      munmap(stack, kStack);
      return nullptr;
    }
    pthread_t tid{};
    const bool ok = pthread_attr_setstack(&attr, stack, kStack) == 0 &&
                    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                    pthread_create(&tid, &attr, &loop, t.get()) == 0;
    pthread_attr_destroy(&attr);
    if (!ok) {
      munmap(stack, kStack);
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
  LaunchProfile* profile = new_launch_profile(parent, name);
  Coop coop;
  coop.blocks = static_cast<unsigned>(blocks);
  struct Result {
    Counters counters;
    LaunchProfile profile;
  };
  std::vector<Result> results(blocks);
  const Schedule schedule = parent.schedule;
  const auto work = [&](std::uint64_t b) {
    Engine& e = g_engine;  // the block thread's own, kept from its earlier blocks
    e.schedule = schedule;
    e.coop = &coop;
    e.counters = Counters{};
    setup(e, grid, block, dynamic_smem, body, ctx);
    use_launch_profile(e, profile != nullptr ? &results[b].profile : nullptr);
    blockIdx = block_coords(b, grid);
    e.running = true;
    try {
      if (!e.region || e.region->stacks() < e.nthreads) {  // too few so far: map them all anew
        for (Fiber& f : e.fibers) f.bottom = nullptr;
        e.region.reset();
        e.region = std::make_unique<StackRegion>(e.nthreads);
      }
      run_block(e);
    } catch (const std::exception& ex) {  // out of memory for stacks, say
      if (e.fault.empty()) e.fault = ex.what();
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
  for (std::uint64_t b = 0; b < blocks; ++b) {
    const Counters& c = results[b].counters;
    parent.counters.blocks += c.blocks;
    parent.counters.threads += c.threads;
    parent.counters.switches += c.switches;
    parent.counters.global_read_bytes += c.global_read_bytes;
    parent.counters.global_write_bytes += c.global_write_bytes;
    if (profile != nullptr) add_profile(*profile, results[b].profile);
  }
  if (!coop.fault.empty()) throw Error(Status::kKernelFault, coop.fault);
}

void run_grid(dim3 grid, dim3 block, std::size_t dynamic_smem, void (*body)(void*), void* ctx,
              const char* name) {
  cubn::detail::check_launch_shape("kernel (executor)", grid, block, dynamic_smem, device_limits());
  Engine& e = g_engine;
  if (e.running)
    throw_fault("a kernel launched another kernel; dynamic parallelism is not supported");
  setup(e, grid, block, dynamic_smem, body, ctx);
  ++e.counters.launches;
  use_launch_profile(e, new_launch_profile(e, name));
  const std::uint64_t blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  const bool shuffled = e.block_order == BlockOrder::kShuffled;
  if (shuffled) {
    e.block_perm.resize(blocks);
    std::iota(e.block_perm.begin(), e.block_perm.end(), std::uint64_t{0});
    std::mt19937_64 rng(e.block_seed * 0x9E3779B97F4A7C15ull + e.counters.launches);
    std::shuffle(e.block_perm.begin(), e.block_perm.end(), rng);
  }
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
void block_barrier(const char* file, int line, bool grid) {
  const char* what = grid ? "grid_sync()" : "__syncthreads()";
  Engine& e = engine_in_kernel(what);
  Fiber& f = *e.current;
  f.file = file;
  f.line = line;
  f.grid = grid;
  if (e.exited > 0) {
    for (unsigned i = 0; i < e.nthreads; ++i) {
      if (e.fibers[i].state == State::kDone) {
        raise(e, std::string(what) + " at " + where(file, line) +
                     " is not reached by every thread: " + std::to_string(e.exited) +
                     " thread(s) returned before it, e.g. " + thread_name(e.fibers[i]));
      }
    }
  }
  f.state = State::kBarrier;
  if (++e.at_barrier < e.nthreads) {
    yield(e);
    return;
  }
  // the last to arrive: every thread is here; all must be at the same barrier
  for (unsigned i = 0; i < e.nthreads; ++i) {
    const Fiber& o = e.fibers[i];
    // one call site's file is one string literal: compare the pointers before the characters
    if (o.line != line || (o.file != file && std::strcmp(o.file, file) != 0) || o.grid != grid) {
      raise(e, "threads of block " + coords(blockIdx) +
                   " wait at different barriers: " + thread_name(o) + " at " +
                   (o.grid ? "grid_sync() " : "__syncthreads() ") + where(o.file, o.line) + ", " +
                   thread_name(f) + " at " + what + " " + where(file, line));
    }
  }
  if (grid) coop_wait(e, file, line);
  for (unsigned i = 0; i < e.nthreads; ++i) e.fibers[i].state = State::kRunnable;
  e.at_barrier = 0;
  ++e.epoch;
}

}  // namespace

void syncthreads(const char* file, int line) { block_barrier(file, line, false); }

void grid_sync(const char* file, int line) { block_barrier(file, line, true); }

std::uint64_t block_serial() { return engine_in_kernel("shared memory").serial; }

void shared_access(SharedShadow& sh, const char* name, std::size_t index, bool write) {
  Engine& e = engine_in_kernel("shared memory access");
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
                              const char* file, int line) {
  Engine& e = engine_in_kernel(op_name(op));
  Fiber& f = *e.current;
  const unsigned lane = f.linear % kWarp;
  const unsigned base = f.linear - lane;
  const unsigned lanes = std::min(kWarp, e.nthreads - base);
  const unsigned exists = lanes == kWarp ? kFullMask : (1u << lanes) - 1u;
  const std::string at =
      std::string(op_name(op)) + " at " + where(file, line) + " with mask " + hex(mask);
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
        (op != WarpOp::kSync && (o.line != line || std::strcmp(o.file, file) != 0)))
      raise(e, "lanes of warp " + std::to_string(base / kWarp) + " disagree: lane " +
                   std::to_string(l) + " waits in " + op_name(o.op) + " at " +
                   where(o.file, o.line) + " with mask " + hex(o.mask) + ", lane " +
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
  f.file = file;
  f.line = line;
  f.state = State::kWarp;
  arrived |= 1u << lane;
  if (arrived != mask) {
    yield(e);
    return f.result;
  }
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
  return 1u << (engine_in_kernel("__activemask").current->linear % kWarp);
}

void* dynamic_shared_memory() {
  Engine& e = engine_in_kernel("dynamic shared memory");
  return e.smem.empty() ? nullptr : e.smem.data();
}

unsigned linear_thread_index() { return engine_in_kernel("linear_thread_index").current->linear; }

void fault(const char* what) {
  Engine& e = engine_in_kernel("fault");
  raise(e, thread_name(*e.current) + ": " + what);
}

void record_global(const void* p, std::size_t bytes, bool write) {
  Engine& e = engine_in_kernel("global memory access");
  (write ? e.counters.global_write_bytes : e.counters.global_read_bytes) += bytes;
  if (e.launch_profile == nullptr) return;
  (write ? e.launch_profile->write_bytes : e.launch_profile->read_bytes) += bytes;
  ++e.launch_profile->lane_accesses;
  e.lane_accesses[e.current->linear].push_back({reinterpret_cast<std::uintptr_t>(p), bytes});
}

std::uint64_t barrier_epoch() { return engine_in_kernel("barrier_epoch").epoch; }

std::uint64_t& collective_tag(const void* storage) {
  Engine& e = engine_in_kernel("collective_tag");
  return e.tags.try_emplace(storage, UINT64_MAX).first->second;
}

}  // namespace detail
}  // namespace cubn::sim
