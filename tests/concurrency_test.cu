// What the executor sees of code that crosses threads and blocks: the blocks of an ordinary launch
// on several host threads at once (BlockOrder::kConcurrent), the memory model it gives
// ThreadSanitizer (fences, atomics, barriers), the watchdog, warp-collective sites, checked
// collective storage; and cubn's own tickets on every ticket path, with concurrent blocks (under
// ThreadSanitizer in the tsan preset), and mutated, each mutation reported. CPU build only.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "block_reduce.cuh"
#include "cubn/cubn.hpp"
#include "cubn/sim/executor.hpp"
#include "device_info.hpp"
#include "plan.hpp"
#include "platform.cuh"
#include "problem.hpp"
#include "support/executor_checks.hpp"

namespace {

using cubn::Error;
using cubn::Status;
using cubn::kernels::DeviceAtomicRef;
namespace sim = cubn::sim;

using cubn::test::fault_of;
using cubn::test::SmallDevice;

// The calling thread's block order and the watchdog while alive.
struct Blocks {
  explicit Blocks(sim::BlockOrder o, std::uint64_t seed = 0) { sim::set_block_order(o, seed); }
  ~Blocks() { sim::set_block_order(sim::BlockOrder::kInOrder); }
};
struct Watchdog {
  explicit Watchdog(double s) { sim::set_watchdog_seconds(s); }
  ~Watchdog() { sim::set_watchdog_seconds(0); }
};

// ---- concurrent blocks ------------------------------------------------------------------------

std::mutex g_seen_mutex;
std::set<std::thread::id> g_seen;

__global__ void count_runs(int* runs) {
  if (threadIdx.x == 0) {
    DeviceAtomicRef<int>(runs[blockIdx.x]).fetch_add(1, cuda::std::memory_order_relaxed);
    const std::lock_guard<std::mutex> lock(g_seen_mutex);
    g_seen.insert(std::this_thread::get_id());
  }
}

TEST(ConcurrentBlocks, EveryBlockRunsOnceOnSeveralHostThreads) {
  const Blocks order(sim::BlockOrder::kConcurrent, 3);
  std::vector<int> runs(64);
  g_seen.clear();
  sim::launch(count_runs, dim3(64), dim3(32), 0, runs.data());
  for (int r : runs) EXPECT_EQ(r, 1);
  EXPECT_EQ(g_seen.size(), std::size_t{sim::kConcurrentWorkers});
  EXPECT_EQ(g_seen.count(std::this_thread::get_id()), 0u);
  EXPECT_EQ(sim::counters().launches > 0, true);
}

__global__ void fault_in_block(int bad) {
  if (static_cast<int>(blockIdx.x) == bad && threadIdx.x == 3) __syncthreads();
}

TEST(ConcurrentBlocks, AFaultInOneBlockIsTheLaunchsFault) {
  const Blocks order(sim::BlockOrder::kConcurrent, 5);
  const std::string msg = fault_of([] { sim::launch(fault_in_block, dim3(16), dim3(32), 0, 11); });
  EXPECT_NE(msg.find("block (11,0,0)"), std::string::npos) << msg;
}

// ---- the watchdog -----------------------------------------------------------------------------

// Block 0 waits for a flag that block 1 sets: on a GPU a deadlock whenever block 1 cannot start
// before block 0 finishes (an ordinary launch promises nothing about that).
__global__ void wait_for_a_later_block(unsigned* flag, int* out) {
  if (threadIdx.x != 0) return;
  if (blockIdx.x == 0) {
    while (DeviceAtomicRef<unsigned>(*flag).load(cuda::std::memory_order_acquire) == 0) {
    }
    out[0] = 1;
  } else {
    DeviceAtomicRef<unsigned>(*flag).store(1u, cuda::std::memory_order_release);
  }
}

TEST(Watchdog, AWaitForALaterBlockIsAKernelFaultNamingTheKernel) {
  const Watchdog dog(0.3);
  unsigned flag = 0;
  int out = 0;
  const std::string msg = fault_of([&] {
    sim::launch_named("wait_for_a_later_block", wait_for_a_later_block, dim3(2), dim3(32), 0,
                      &flag, &out);
  });
  EXPECT_NE(msg.find("kernel wait_for_a_later_block made no progress"), std::string::npos) << msg;
  EXPECT_NE(msg.find("watchdog"), std::string::npos) << msg;
  EXPECT_NE(msg.find("concurrency_test.cu"), std::string::npos) << msg;  // where it waits
  EXPECT_EQ(out, 0);
}

// Warp 1 waits for what warp 0 publishes: legal since Volta (independent thread scheduling).
__global__ void wait_across_warps(unsigned* flag, int* data, int* out) {
  if (threadIdx.x == 0) {
    data[0] = 42;
    DeviceAtomicRef<unsigned>(*flag).store(1u, cuda::std::memory_order_release);
  }
  if (threadIdx.x == 32) {
    while (DeviceAtomicRef<unsigned>(*flag).load(cuda::std::memory_order_acquire) == 0) {
    }
    out[0] = data[0];
  }
}

TEST(Watchdog, ASpinAcrossWarpsOfOneBlockCompletes) {
  for (const sim::Schedule s : {sim::Schedule::kForward, sim::Schedule::kReverse}) {
    sim::set_schedule(s);
    unsigned flag = 0;
    int data = 0, out = 0;
    sim::launch(wait_across_warps, dim3(1), dim3(64), 0, &flag, &data, &out);
    EXPECT_EQ(out, 42);
  }
  sim::set_schedule(sim::Schedule::kForward);
}

// The last block of a cooperative launch waits for a flag the first sets: every block is
// resident, so this completes on a GPU.
__global__ void wait_across_resident_blocks(unsigned* flag, int* data, int* out) {
  if (threadIdx.x != 0) return;
  if (blockIdx.x == 0) {
    data[0] = 7;
    DeviceAtomicRef<unsigned>(*flag).store(1u, cuda::std::memory_order_release);
  } else if (blockIdx.x + 1 == gridDim.x) {
    while (DeviceAtomicRef<unsigned>(*flag).load(cuda::std::memory_order_acquire) == 0) {
    }
    out[0] = data[0];
  }
}

TEST(Watchdog, AFlagBetweenBlocksOfACooperativeLaunchCompletes) {
  const SmallDevice device(2);
  unsigned flag = 0;
  int data = 0, out = 0;
  sim::launch_cooperative_named("flag", wait_across_resident_blocks, dim3(4), dim3(32), 0, &flag,
                                &data, &out);
  EXPECT_EQ(out, 7);
}

// A thread that waits on a plain (volatile) load: the executor cannot give the others a turn, so
// the monitor of stalled launches ends the process, naming the kernel: never a silent hang.
__global__ void spin_on_a_plain_load(volatile unsigned* flag) {
  if (threadIdx.x == 0) {
    while (*flag == 0) {
    }
  }
}

void spin_forever() {
  sim::set_watchdog_seconds(0.2);  // the monitor's limit: 6 x 0.2 s
  static unsigned flag = 0;
  sim::launch_named("spin_on_a_plain_load", spin_on_a_plain_load, dim3(1), dim3(32), 0, &flag);
}

TEST(Watchdog, ASpinOnPlainLoadsEndsTheProcessNamingTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(spin_forever(), "kernel spin_on_a_plain_load made no progress for 1.2 s");
}

// ---- warp-collective sites and collective storage -----------------------------------------------

// Even lanes and odd lanes call two different shuffles that share a line.
__global__ void two_shuffles_on_one_line(int* out) {
  const int v = static_cast<int>(threadIdx.x);
  // clang-format off
  out[threadIdx.x] = (threadIdx.x & 1) ? __shfl_xor_sync(0xffffffffu, v, 1) : __shfl_xor_sync(0xffffffffu, v, 2);
  // clang-format on
}

TEST(WarpSites, TwoShufflesOnOneLineAreTwoSites) {
  std::vector<int> out(32);
  const std::string msg =
      fault_of([&] { sim::launch(two_shuffles_on_one_line, dim3(1), dim3(32), 0, out.data()); });
  EXPECT_NE(msg.find("disagree"), std::string::npos) << msg;
}

using Reduce = cubn::kernels::BlockReduce<int, 64>;

// Threads write their own element of the collective's storage and read their neighbour's.
template <bool Barrier>
__global__ void neighbour_through_collective_storage(int* out) {
  CUBN_SHARED_OBJECT(Reduce::TempStorage, storage);
  const unsigned t = threadIdx.x;
  storage[t] = static_cast<int>(t);
  if (Barrier) __syncthreads();
  out[t] = storage[(t + 1) % 64];
}

__global__ void read_collective_storage_first(int* out) {
  CUBN_SHARED_OBJECT(Reduce::TempStorage, storage);
  out[threadIdx.x] = storage[threadIdx.x];
  __syncthreads();
  storage[threadIdx.x] = 5;
}

TEST(CollectiveStorage, IsRaceCheckedLikeSharedArrays) {
  std::vector<int> out(64);
  sim::launch(neighbour_through_collective_storage<true>, dim3(1), dim3(64), 0, out.data());
  EXPECT_EQ(out[0], 1);
  const std::string msg = fault_of([&] {
    sim::launch(neighbour_through_collective_storage<false>, dim3(1), dim3(64), 0, out.data());
  });
  EXPECT_NE(msg.find("shared memory race on collective temp storage"), std::string::npos) << msg;
}

TEST(CollectiveStorage, StartsEachBlockPoisoned) {
  std::vector<int> out(64);
  sim::launch(read_collective_storage_first, dim3(2), dim3(64), 0, out.data());
  int poison = 0;
  std::memset(&poison, 0xCD, sizeof poison);
  for (int v : out) EXPECT_EQ(v, poison);  // block 1 too: not block 0's 5s
}

#if defined(CUBN_TEST_TSAN)
// ---- the memory model under ThreadSanitizer (a report exits 66) -------------------------------

template <class Kernel, class... A>
void run_and_exit(sim::BlockOrder order, Kernel kernel, dim3 grid, dim3 block, A... args) {
  sim::set_block_order(order, 9);
  sim::launch(kernel, grid, block, 0, args...);
  std::exit(0);
}

constexpr int kReport = cubn::test::kTsanReportExit;

// A last-block sum as CUDA programs write it: thread 0 of each block stores its block's value,
// takes a ticket, and the last block reads every block's value. Release and Acquire choose the
// fences around the ticket; NonAtomic takes it with a plain increment.
template <bool Release, bool Acquire, bool NonAtomic>
__global__ void last_block_sum(int* parts, unsigned* ticket, int* sum) {
  if (threadIdx.x != 0) return;
  parts[blockIdx.x] = static_cast<int>(blockIdx.x) + 1;
  if (Release) __threadfence();
  const unsigned t = NonAtomic ? (*ticket)++ : atomicAdd(ticket, 1u);
  if (t + 1 != gridDim.x) return;
  if (Acquire) __threadfence();
  int s = 0;
  for (unsigned b = 0; b < gridDim.x; ++b) s += parts[b];
  *sum = s;
}

template <bool Release, bool Acquire, bool NonAtomic>
void run_last_block_sum() {
  static int parts[16], sum;
  static unsigned ticket;
  run_and_exit(sim::BlockOrder::kConcurrent, last_block_sum<Release, Acquire, NonAtomic>,
               dim3(16), dim3(32), parts, &ticket, &sum);
}

class MemoryModel : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(MemoryModel, FencesOnBothSidesOfARelaxedTicketAreClean) {
  EXPECT_EXIT((run_last_block_sum<true, true, false>()), ::testing::ExitedWithCode(0), "");
}
TEST_F(MemoryModel, ATicketWithoutFencesIsReported) {
  EXPECT_EXIT((run_last_block_sum<false, false, false>()), ::testing::ExitedWithCode(kReport),
              "ThreadSanitizer: data race");
}
TEST_F(MemoryModel, ATicketWithoutTheReleaseFenceIsReported) {
  EXPECT_EXIT((run_last_block_sum<false, true, false>()), ::testing::ExitedWithCode(kReport),
              "ThreadSanitizer: data race");
}
TEST_F(MemoryModel, ATicketWithoutTheAcquireFenceIsReported) {
  EXPECT_EXIT((run_last_block_sum<true, false, false>()), ::testing::ExitedWithCode(kReport),
              "ThreadSanitizer: data race");
}
TEST_F(MemoryModel, ANonAtomicTicketIsReported) {
  EXPECT_EXIT((run_last_block_sum<true, true, true>()), ::testing::ExitedWithCode(kReport),
              "ThreadSanitizer: data race");
}

// Threads of one block add to one word of global memory: a plain read-modify-write loses updates
// on a GPU; atomics do not.
template <bool Atomic>
__global__ void add_from_every_thread(int* p) {
  if (Atomic) {
    atomicAdd(p, 1);
  } else {
    *p = *p + 1;
  }
}

void run_adds(bool atomic) {
  static int p;
  if (atomic) {
    run_and_exit(sim::BlockOrder::kInOrder, add_from_every_thread<true>, dim3(1), dim3(256), &p);
  } else {
    run_and_exit(sim::BlockOrder::kInOrder, add_from_every_thread<false>, dim3(1), dim3(256), &p);
  }
}

TEST_F(MemoryModel, APlainReadModifyWriteByThreadsOfABlockIsReported) {
  EXPECT_EXIT(run_adds(false), ::testing::ExitedWithCode(kReport), "ThreadSanitizer: data race");
}
TEST_F(MemoryModel, AtomicAddsByThreadsOfABlockAreClean) {
  EXPECT_EXIT(run_adds(true), ::testing::ExitedWithCode(0), "");
}

// Thread 0 writes global memory, the block synchronizes, every thread reads it: ordered.
template <bool Barrier>
__global__ void publish_through_barrier(int* p, int* out) {
  if (threadIdx.x == 0) *p = 3;
  if (Barrier) __syncthreads();
  out[threadIdx.x] = *p;
}

void run_publish(bool barrier) {
  static int p, out[64];
  if (barrier) {
    run_and_exit(sim::BlockOrder::kInOrder, publish_through_barrier<true>, dim3(1), dim3(64), &p,
                 out);
  } else {
    run_and_exit(sim::BlockOrder::kInOrder, publish_through_barrier<false>, dim3(1), dim3(64), &p,
                 out);
  }
}

// Thread 0 decides, the block reads its decision from shared memory between two barriers (as
// kernels/channel_ops.cuh block_arrive does), in every block of a concurrent launch.
__global__ void decide_in_shared_memory(int* out) {
  CUBN_SHARED(int, flag, 1);
  __syncthreads();
  if (threadIdx.x == 0) flag[0] = static_cast<int>(blockIdx.x);
  __syncthreads();
  const int f = flag[0];
  out[blockIdx.x * blockDim.x + threadIdx.x] = f;
  __syncthreads();
}

void run_decide() {
  static int out[32 * 64];
  run_and_exit(sim::BlockOrder::kConcurrent, decide_in_shared_memory, dim3(32), dim3(64), out);
}

TEST_F(MemoryModel, SharedMemoryThroughBarriersIsClean) {
  EXPECT_EXIT(run_decide(), ::testing::ExitedWithCode(0), "");
}

TEST_F(MemoryModel, GlobalMemoryThroughABarrierIsClean) {
  EXPECT_EXIT(run_publish(true), ::testing::ExitedWithCode(0), "");
}
TEST_F(MemoryModel, GlobalMemoryWithoutTheBarrierIsReported) {
  EXPECT_EXIT(run_publish(false), ::testing::ExitedWithCode(kReport), "ThreadSanitizer: data race");
}
#endif  // CUBN_TEST_TSAN

// ---- cubn's tickets on every ticket path ------------------------------------------------------

using cubn::DataType;
using cubn::MemoryOrder;
using cubn::TensorDesc;

cubn::detail::Problem problem_of(const TensorDesc& d) {
  return cubn::detail::canonicalize("test", "x", d);
}

template <class T>
std::vector<T> random_tensor(std::int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.0f, 3.0f);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = static_cast<T>(u(rng));
  return v;
}

// The bytes of every output of one call.
using Outputs = std::vector<std::vector<unsigned char>>;

template <class V>
void add_bytes(Outputs& out, const std::vector<V>& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  out.emplace_back(p, p + v.size() * sizeof(V));
}

// A case: a call on generated data, returning its outputs; and what its plan must show.
struct TicketCase {
  std::string name;
  std::function<Outputs()> run;
};

// Training forward (optionally with ReLU and a residual), then the training backward of the
// same tensor (optionally through the ReLU), all outputs.
template <class T>
Outputs forward_and_backward(const TensorDesc& d, bool relu) {
  using P = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const auto p = problem_of(d);
  const auto x = random_tensor<T>(p.numel, 1), dy = random_tensor<T>(p.numel, 2),
             z = random_tensor<T>(p.numel, 3);
  const std::size_t c = static_cast<std::size_t>(p.c);
  std::vector<T> y(x.size()), dx(x.size());
  std::vector<P> scale(c, P(1.5)), offset(c, P(-0.25)), rmean(c), rvar(c, P(1)), smean(c),
      sinvstd(c), dscale(c), doffset(c);
  std::vector<unsigned char> ws(std::max(cubn::forward_training_workspace_size(d),
                                         cubn::backward_workspace_size(d)) +
                                16);
  std::vector<unsigned char> reserve(relu ? cubn::activation_reserve_size(d, cubn::Activation::kRelu)
                                          : 0);
  cubn::TrainingForwardArgs<P> f;
  f.affine = {scale.data(), offset.data()};
  f.running = {rmean.data(), rvar.data()};
  f.saved = {smean.data(), sinvstd.data()};
  if (relu) {
    f.epilogue.activation = cubn::Activation::kRelu;
    f.epilogue.residual = z.data();
    f.epilogue.reserve = {reserve.data(), reserve.size()};
  }
  cubn::forward_training(d, x.data(), y.data(), f, {ws.data(), ws.size()}, nullptr);
  cubn::TrainingBackwardArgs<P> b;
  b.scale = scale.data();
  b.saved = {smean.data(), sinvstd.data()};
  b.grads = {dscale.data(), doffset.data()};
  if (relu) {
    b.epilogue.activation = cubn::Activation::kRelu;
    b.epilogue.residual = z.data();
    b.epilogue.reserve = {reserve.data(), reserve.size()};
  }
  cubn::backward_training(d, x.data(), dy.data(), dx.data(), b, {ws.data(), ws.size()}, nullptr);
  Outputs out;
  add_bytes(out, y);
  add_bytes(out, dx);
  for (const auto* v : {&rmean, &rvar, &smean, &sinvstd, &dscale, &doffset}) add_bytes(out, *v);
  add_bytes(out, reserve);
  return out;
}

// The split-phase local phases (statistics, then gradient sums) of one rank: their records.
template <class T>
Outputs local_phases(const TensorDesc& d) {
  using P = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const auto p = problem_of(d);
  const auto x = random_tensor<T>(p.numel, 4), dy = random_tensor<T>(p.numel, 5);
  const std::size_t c = static_cast<std::size_t>(p.c);
  std::vector<P> scale(c, P(0.5)), smean(c, P(0.1)), sinvstd(c, P(2));
  std::vector<unsigned char> stats(cubn::local_stats_bytes(d)), sums(cubn::local_grad_sums_bytes(d));
  std::vector<unsigned char> ws(std::max(cubn::forward_training_workspace_size(d),
                                         cubn::backward_workspace_size(d)));
  cubn::forward_training_local(d, x.data(), {stats.data(), stats.size()}, {ws.data(), ws.size()},
                               nullptr);
  cubn::TrainingBackwardArgs<P> b;
  b.scale = scale.data();
  b.saved = {smean.data(), sinvstd.data()};
  cubn::backward_training_local(d, x.data(), dy.data(), b, {sums.data(), sums.size()},
                                {ws.data(), ws.size()}, nullptr);
  Outputs out;
  add_bytes(out, stats);
  add_bytes(out, sums);
  return out;
}

constexpr int kSms = 8;  // a small executor device: few blocks per launch, still split

// Training calls of the calling thread on the streaming path (the one with tickets) while alive.
struct Streaming {
  Streaming() : before_(cubn::detail::forced_path()) {
    cubn::detail::force_path(cubn::detail::Path::kStreaming);
  }
  ~Streaming() { cubn::detail::force_path(before_); }
  Streaming(const Streaming&) = delete;
  Streaming& operator=(const Streaming&) = delete;

 private:
  cubn::detail::Path before_;
};

// Every reduction path that ends in a ticket, each checked to take it on the kSms-SM device.
std::vector<TicketCase> ticket_cases() {
  const auto& dev = cubn::detail::current_device_info();
  std::vector<TicketCase> cases;
  const auto training = [&](const TensorDesc& d) {
    return cubn::detail::plan_training(problem_of(d), dev, true, true);
  };
  const auto backward = [&](const TensorDesc& d) {
    return cubn::detail::plan_backward(problem_of(d), dev, true, true);
  };
  const auto split = [&](const TensorDesc& d, bool bwd) {
    return cubn::detail::plan_split(problem_of(d), dev, bwd, true, true);
  };
  {  // channels-first planes, several splits per channel: statistics and gradient sums
    const auto d = TensorDesc(DataType::kFloat16, MemoryOrder::kChannelsFirst, {64, 2, 32, 32});
    EXPECT_GT(training(d).stats.splits, 1);
    EXPECT_TRUE(training(d).stats.planes);
    EXPECT_GT(backward(d).sums.splits, 1);
    cases.push_back({"planes fp16", [d] { return forward_and_backward<__half>(d, false); }});
  }
  {  // channels-last, channels spanning column blocks: the second-level ticket
    const auto d = TensorDesc(DataType::kBFloat16, MemoryOrder::kChannelsLast, {64, 100, 3, 3});
    EXPECT_GT(training(d).stats.splits, 1);
    EXPECT_GT(training(d).stats.totals, 0u);
    EXPECT_GT(backward(d).sums.totals, 0u);
    cases.push_back({"channels-last totals bf16",
                     [d] { return forward_and_backward<__nv_bfloat16>(d, false); }});
  }
  {  // channels-last, several column blocks, each split
    const auto d = TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsLast, {256, 512});
    EXPECT_GT(training(d).stats.grid.x, 1u);
    EXPECT_GT(training(d).stats.splits, 1);
    cases.push_back({"column blocks fp32", [d] { return forward_and_backward<float>(d, false); }});
  }
  {  // statistics and gradient sums with the fused epilogue (ReLU, a residual), both orders,
     // fp64: the reductions of 3 blocks per SM (kernels::reduce_blocks_per_sm)
    const auto cf = TensorDesc(DataType::kFloat64, MemoryOrder::kChannelsFirst, {32, 2, 16, 16});
    const auto cl = TensorDesc(DataType::kFloat64, MemoryOrder::kChannelsLast, {512, 3, 3, 3});
    for (const auto& d : {cf, cl}) {
      EXPECT_GT(cubn::detail::plan_training(problem_of(d), dev, true, true, 3).stats.splits, 1);
      EXPECT_GT(cubn::detail::plan_backward(problem_of(d), dev, true, true, 3).sums.splits, 1);
    }
    cases.push_back({"fused relu fp64 channels-first",
                     [cf] { return forward_and_backward<double>(cf, true); }});
    cases.push_back({"fused relu fp64 channels-last",
                     [cl] { return forward_and_backward<double>(cl, true); }});
  }
  {  // the split-phase local reductions, both orders
    const auto cf = TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {16, 2, 32, 32});
    const auto cl = TensorDesc(DataType::kFloat16, MemoryOrder::kChannelsLast, {512, 40, 2, 2});
    EXPECT_GT(split(cf, false).reduce.splits, 1);
    EXPECT_GT(split(cf, true).reduce.splits, 1);
    EXPECT_GT(split(cl, false).reduce.splits, 1);
    EXPECT_GT(split(cl, true).reduce.splits, 1);
    cases.push_back({"local phases fp32 channels-first", [cf] { return local_phases<float>(cf); }});
    cases.push_back({"local phases fp16 channels-last", [cl] { return local_phases<__half>(cl); }});
  }
  return cases;
}

// Each path's every output is the same, bit for bit, with blocks in order and with blocks on
// several host threads at once (under ThreadSanitizer in the tsan preset: no report).
TEST(TicketPaths, ConcurrentBlocksGiveTheInOrderResultsBitForBit) {
  const SmallDevice device(kSms);
  const Streaming streaming;
  for (const TicketCase& c : ticket_cases()) {
    Outputs in_order, concurrent;
    {
      const Blocks order(sim::BlockOrder::kInOrder);
      in_order = c.run();
    }
    for (std::uint64_t seed : {1u, 2u}) {
      const Blocks order(sim::BlockOrder::kConcurrent, seed);
      concurrent = c.run();
      ASSERT_EQ(concurrent.size(), in_order.size());
      for (std::size_t i = 0; i < in_order.size(); ++i)
        EXPECT_TRUE(concurrent[i] == in_order[i]) << c.name << ", output " << i << ", seed " << seed;
    }
  }
}

#if defined(CUBN_TEST_TSAN)
// cubn's own ticket (kernels/channel_ops.cuh take_ticket), mutated: each mutation that leaves the
// protocol without an ordering it needs is reported; its correct forms are not. The plane
// reductions of a training forward and backward, blocks on several host threads.
void run_cubn_ticket(sim::TicketVariant v) {
  sim::set_ticket_variant(v);
  sim::set_sm_count(kSms);
  cubn::detail::force_path(cubn::detail::Path::kStreaming);
  sim::set_block_order(sim::BlockOrder::kConcurrent, 11);
  const TensorDesc d(DataType::kFloat16, MemoryOrder::kChannelsFirst, {64, 2, 32, 32});
  for (int i = 0; i < 2; ++i) forward_and_backward<__half>(d, false);
  std::exit(0);
}

using TicketMutations = MemoryModel;

TEST_F(TicketMutations, CubnsTicketIsClean) {
  EXPECT_EXIT(run_cubn_ticket(sim::TicketVariant::kFences), ::testing::ExitedWithCode(0), "");
}
TEST_F(TicketMutations, AnAcqRelTicketWithoutFencesIsClean) {
  EXPECT_EXIT(run_cubn_ticket(sim::TicketVariant::kAcqRel), ::testing::ExitedWithCode(0), "");
}
TEST_F(TicketMutations, TheReleaseFenceRemovedIsReported) {
  EXPECT_EXIT(run_cubn_ticket(sim::TicketVariant::kNoReleaseFence),
              ::testing::ExitedWithCode(kReport), "ThreadSanitizer: data race");
}
TEST_F(TicketMutations, TheAcquireFenceRemovedIsReported) {
  EXPECT_EXIT(run_cubn_ticket(sim::TicketVariant::kNoAcquireFence),
              ::testing::ExitedWithCode(kReport), "ThreadSanitizer: data race");
}
TEST_F(TicketMutations, ARelaxedFetchAddWithoutFencesIsReported) {
  EXPECT_EXIT(run_cubn_ticket(sim::TicketVariant::kRelaxedTicket),
              ::testing::ExitedWithCode(kReport), "ThreadSanitizer: data race");
}
TEST_F(TicketMutations, PartialsReadBeforeTheTicketAreReported) {
  EXPECT_EXIT(run_cubn_ticket(sim::TicketVariant::kReadBeforeTicket),
              ::testing::ExitedWithCode(kReport), "ThreadSanitizer: data race");
}
#endif  // CUBN_TEST_TSAN

}  // namespace
