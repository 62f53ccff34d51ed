// The executor's cooperative launches (every block resident, one host thread each, grid_sync) and
// its shared-memory race check (CUBN_SHARED, CUBN_DYNAMIC_SHARED): what runs right, and each rule
// it catches. CPU build only. These run under ThreadSanitizer too (preset tsan), which then checks
// that what crosses blocks does so through the grid sync.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "cubn/sim/executor.hpp"
#include "platform.cuh"
#include "support/executor_checks.hpp"

namespace {

using cubn::Error;
using cubn::Status;
using cubn::kernels::grid_sync;
namespace sim = cubn::sim;

using cubn::test::SmallDevice;
template <class F>
std::string error_of(F&& f, Status status = Status::kKernelFault) {
  return cubn::test::fault_of(std::forward<F>(f), status);
}

// ---- cooperative launches -------------------------------------------------------------------

// Each block writes its own values, the grid synchronizes, then every block sums every block's.
__global__ void sum_after_grid_sync(int* slots, int* sums, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    if (threadIdx.x == 0) slots[blockIdx.x] = static_cast<int>(blockIdx.x) + 1 + r;
    grid_sync();
    if (threadIdx.x == 0) {
      int s = 0;
      for (unsigned b = 0; b < gridDim.x; ++b) s += slots[b];
      sums[r * gridDim.x + blockIdx.x] = s;
    }
    grid_sync();  // nobody overwrites a slot before every block has read it
  }
}

TEST(Cooperative, GridSyncMakesEveryBlocksWritesVisible) {
  // 64 blocks of 64 threads: ThreadSanitizer (preset tsan) counts each fiber as a thread, and
  // stops past 8128 at once
  const SmallDevice device(2);
  const unsigned blocks = 2 * static_cast<unsigned>(sim::cooperative_blocks_per_sm(dim3(64), 0));
  ASSERT_EQ(blocks, 64u);  // 2048 threads per SM / 64
  const int rounds = 3;
  std::vector<int> slots(blocks), sums(rounds * blocks, -1);
  for (auto schedule : {sim::Schedule::kForward, sim::Schedule::kReverse}) {
    sim::set_schedule(schedule);
    sim::launch_cooperative_named("sum", sum_after_grid_sync, dim3(blocks), dim3(64), 0,
                                  slots.data(), sums.data(), rounds);
    for (int r = 0; r < rounds; ++r)
      for (unsigned b = 0; b < blocks; ++b)
        ASSERT_EQ(sums[r * blocks + b], static_cast<int>(blocks * (blocks + 1) / 2 + r * blocks))
            << "round " << r << " block " << b;
  }
  sim::set_schedule(sim::Schedule::kForward);
}

TEST(Cooperative, CountsEveryBlocksTraffic) {
  const SmallDevice device(2);
  const auto before = sim::counters();
  std::vector<int> slots(8), sums(8);
  sim::launch_cooperative_named("sum", sum_after_grid_sync, dim3(8), dim3(32), 0, slots.data(),
                                sums.data(), 1);
  EXPECT_EQ(sim::counters().launches, before.launches + 1);
  EXPECT_EQ(sim::counters().blocks, before.blocks + 8);
  EXPECT_EQ(sim::counters().threads, before.threads + 8 * 32);
}

TEST(Cooperative, CoResidencyFollowsThreadsAndSharedMemory) {
  EXPECT_EQ(sim::cooperative_blocks_per_sm(dim3(256), 0), 8);
  EXPECT_EQ(sim::cooperative_blocks_per_sm(dim3(1024), 0), 2);
  EXPECT_EQ(sim::cooperative_blocks_per_sm(dim3(32), 0), 32);  // the block limit
  // 228 KB per SM, 1 KB of it reserved per block
  EXPECT_EQ(sim::cooperative_blocks_per_sm(dim3(256), 100 * 1024), 2);
  EXPECT_EQ(sim::cooperative_blocks_per_sm(dim3(256), 120 * 1024), 1);
  EXPECT_EQ(sim::cooperative_blocks_per_sm(dim3(256), 228 * 1024), 0);
}

TEST(CooperativeCatches, AGridLargerThanCanBeResident) {
  const SmallDevice device(2);
  std::vector<int> slots(17), sums(17);
  const std::string msg = error_of(
      [&] {
        sim::launch_cooperative_named("too_large", sum_after_grid_sync, dim3(17), dim3(256), 0,
                                      slots.data(), sums.data(), 1);
      },
      Status::kInvalidLaunch);
  EXPECT_NE(msg.find("17 blocks exceeds the 16"), std::string::npos) << msg;
  EXPECT_NE(msg.find("too_large"), std::string::npos) << msg;
}

__global__ void one_block_returns_early(int* out) {
  if (blockIdx.x == 2) return;
  grid_sync();
  out[blockIdx.x] = 1;
}

TEST(CooperativeCatches, ABlockThatReturnsWhileOthersWait) {
  const SmallDevice device(2);
  std::vector<int> out(6);
  const std::string msg = error_of([&] {
    sim::launch_cooperative_named("early", one_block_returns_early, dim3(6), dim3(32), 0,
                                  out.data());
  });
  EXPECT_NE(msg.find("not reached by every block"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(2,0,0)"), std::string::npos) << msg;
}

__global__ void blocks_at_different_syncs(int* out) {
  if (blockIdx.x == 1) {
    grid_sync();
  } else {
    grid_sync();
  }
  out[blockIdx.x] = 1;
}

TEST(CooperativeCatches, BlocksAtDifferentGridSyncs) {
  const SmallDevice device(2);
  std::vector<int> out(4);
  const std::string msg = error_of([&] {
    sim::launch_cooperative_named("different", blocks_at_different_syncs, dim3(4), dim3(32), 0,
                                  out.data());
  });
  EXPECT_NE(msg.find("different grid syncs"), std::string::npos) << msg;
}

__global__ void threads_of_a_block_at_grid_and_block_barriers(int* out) {
  if (threadIdx.x == 0) {
    grid_sync();
  } else {
    __syncthreads();
  }
  out[blockIdx.x] = 1;
}

TEST(CooperativeCatches, ThreadsOfABlockAtAGridSyncAndABarrier) {
  const SmallDevice device(2);
  std::vector<int> out(2);
  const std::string msg = error_of([&] {
    sim::launch_cooperative_named("mixed", threads_of_a_block_at_grid_and_block_barriers, dim3(2),
                                  dim3(32), 0, out.data());
  });
  EXPECT_NE(msg.find("different barriers"), std::string::npos) << msg;
}

TEST(CooperativeCatches, AGridSyncOutsideACooperativeLaunch) {
  std::vector<int> slots(2), sums(2);
  const std::string msg = error_of([&] {
    sim::launch(sum_after_grid_sync, dim3(2), dim3(32), 0, slots.data(), sums.data(), 1);
  });
  EXPECT_NE(msg.find("not launched cooperatively"), std::string::npos) << msg;
}

__global__ void fault_in_one_block(int* out) {
  if (blockIdx.x == 3 && threadIdx.x == 5) __syncthreads();  // the rest of the block never comes
  grid_sync();
  out[blockIdx.x] = 1;
}

TEST(CooperativeCatches, AFaultInOneBlockStopsTheOthers) {
  const SmallDevice device(2);
  std::vector<int> out(8);
  const std::string msg = error_of([&] {
    sim::launch_cooperative_named("fault", fault_in_one_block, dim3(8), dim3(32), 0, out.data());
  });
  EXPECT_NE(msg.find("block (3,0,0)"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("abandoned"), std::string::npos) << msg;  // the cause, not its echo
}

#if defined(CUBN_TEST_TSAN)
// Blocks read what others wrote without the grid sync between: ThreadSanitizer's report.
__global__ void read_other_blocks_without_sync(int* slots, int* sums) {
  if (threadIdx.x == 0) slots[blockIdx.x] = static_cast<int>(blockIdx.x);
  if (threadIdx.x == 0) sums[blockIdx.x] = slots[(blockIdx.x + 1) % gridDim.x];
  grid_sync();
}

void run_racy_grid() {
  sim::set_sm_count(2);
  std::vector<int> slots(8), sums(8);
  sim::launch_cooperative_named("racy", read_other_blocks_without_sync, dim3(8), dim3(32), 0,
                                slots.data(), sums.data());
  std::exit(0);  // ThreadSanitizer turns this into its exit code 66 when it reported
}

TEST(CooperativeUnderTsan, DataCrossingBlocksWithoutTheGridSyncIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(run_racy_grid(), ::testing::ExitedWithCode(66), "ThreadSanitizer: data race");
}
#endif

// ---- the shared-memory race check -----------------------------------------------------------

// Each thread writes its element, then reads its neighbour's: with the barrier, or without.
template <bool Barrier>
__global__ void neighbour_through_shared(const int* in, int* out) {
  CUBN_SHARED(int, s, 64);
  const unsigned t = threadIdx.x;
  s[t] = in[t];
  if (Barrier) __syncthreads();
  out[t] = s[(t + 1) % 64];
}

TEST(SharedRaces, ABarrierBetweenWriteAndReadIsClean) {
  std::vector<int> in(64), out(64);
  std::iota(in.begin(), in.end(), 0);
  sim::launch(neighbour_through_shared<true>, dim3(1), dim3(64), 0, in.data(), out.data());
  for (int t = 0; t < 64; ++t) EXPECT_EQ(out[t], (t + 1) % 64);
}

TEST(SharedRaces, AReadOfANeighboursWriteWithoutABarrier) {
  // before the check this ran clean under the forward schedule and returned zeros for the
  // neighbours' elements not yet written
  std::vector<int> in(64), out(64);
  for (auto schedule : {sim::Schedule::kForward, sim::Schedule::kReverse}) {
    sim::set_schedule(schedule);
    const std::string msg = error_of([&] {
      sim::launch(neighbour_through_shared<false>, dim3(1), dim3(64), 0, in.data(), out.data());
    });
    EXPECT_NE(msg.find("shared memory race on s["), std::string::npos) << msg;
    EXPECT_NE(msg.find(schedule == sim::Schedule::kForward ? "writes it after a read by"
                                                           : "reads it after a write by"),
              std::string::npos)
        << msg;
  }
  sim::set_schedule(sim::Schedule::kForward);
}

__global__ void two_writers(int* out) {
  CUBN_SHARED(int, s, 1);
  if (threadIdx.x < 2) s[0] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[0];
}

TEST(SharedRaces, TwoWritesOfOneElementWithoutABarrier) {
  std::vector<int> out(32);
  const std::string msg =
      error_of([&] { sim::launch(two_writers, dim3(1), dim3(32), 0, out.data()); });
  EXPECT_NE(msg.find("writes it after a write by thread (0,0,0)"), std::string::npos) << msg;
}

// Thread 0 reads what others then overwrite in the same interval (a write after a read).
__global__ void overwrite_after_read(int* out) {
  CUBN_SHARED(int, s, 32);
  s[threadIdx.x] = 1;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = s[5];
  if (threadIdx.x == 5) s[5] = 2;
}

TEST(SharedRaces, AWriteAfterAnotherThreadsReadWithoutABarrier) {
  std::vector<int> out(1);
  const std::string msg =
      error_of([&] { sim::launch(overwrite_after_read, dim3(1), dim3(32), 0, out.data()); });
  EXPECT_NE(msg.find("s[5]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("writes it after a read by thread (0,0,0)"), std::string::npos) << msg;
}

template <bool Barrier>
__global__ void neighbour_through_dynamic(int* out) {
  CUBN_DYNAMIC_SHARED(int, s);
  const unsigned t = threadIdx.x;
  s[t] = static_cast<int>(t);
  if (Barrier) __syncthreads();
  out[t] = s[(t + 1) % blockDim.x];
}

TEST(SharedRaces, DynamicSharedMemoryIsCheckedToo) {
  std::vector<int> out(32);
  sim::launch(neighbour_through_dynamic<true>, dim3(1), dim3(32), 32 * sizeof(int), out.data());
  EXPECT_EQ(out[31], 0);
  const std::string msg = error_of([&] {
    sim::launch(neighbour_through_dynamic<false>, dim3(1), dim3(32), 32 * sizeof(int), out.data());
  });
  EXPECT_NE(msg.find("shared memory race on s[1]"), std::string::npos) << msg;
}

// Block 0 writes the array; block 1 only reads it: it must see poison, not block 0's values.
__global__ void read_unwritten_shared(int* out) {
  CUBN_SHARED(int, s, 4);
  if (blockIdx.x == 0 && threadIdx.x == 0) s[0] = 7;
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

TEST(SharedRaces, StaticSharedMemoryStartsEachBlockPoisoned) {
  std::vector<int> out(2);
  sim::launch(read_unwritten_shared, dim3(2), dim3(32), 0, out.data());
  EXPECT_EQ(out[0], 7);
  EXPECT_EQ(static_cast<unsigned>(out[1]), 0xCDCDCDCDu);
}

}  // namespace
