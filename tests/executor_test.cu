// The SIMT executor: what it runs right, and each CUDA rule it catches. CPU build only: these
// tests are about the executor itself.
#include <gtest/gtest.h>
#include <link.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "block_reduce.cuh"
#include "cubn/sim/executor.hpp"
#include "platform.cuh"
#include "support/executor_checks.hpp"

namespace {

using cubn::Error;
using cubn::Status;
using cubn::kernels::linear_thread_index;
namespace sim = cubn::sim;

using cubn::test::fault_of;

// ---- what runs right ------------------------------------------------------------------------

__global__ void write_coordinates(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = linear_thread_index();
  out[block * threads + t] = (block << 16) | t;
}

TEST(Executor, RunsEveryThreadOfEveryBlockIn3D) {
  const dim3 grid(3, 2, 2), block(4, 3, 5);
  const unsigned n = 12 * 60;
  std::vector<unsigned> out(n, 0xffffffffu);
  sim::launch(write_coordinates, grid, block, 0, out.data());
  for (unsigned i = 0; i < n; ++i) ASSERT_EQ(out[i], ((i / 60) << 16) | (i % 60)) << "at " << i;
}

template <int N>
__global__ void reverse_through_shared(const int* in, int* out) {
  __shared__ int s[N];
  const unsigned t = threadIdx.x;
  s[t] = in[blockIdx.x * N + t];
  __syncthreads();
  out[blockIdx.x * N + t] = s[N - 1 - t];
}

TEST(Executor, SyncthreadsOrdersSharedMemory) {
  constexpr int kN = 256;
  std::vector<int> in(4 * kN), out(4 * kN);
  std::iota(in.begin(), in.end(), 0);
  for (auto schedule : {sim::Schedule::kForward, sim::Schedule::kReverse}) {
    sim::set_schedule(schedule);
    sim::launch(reverse_through_shared<kN>, dim3(4), dim3(kN), 0, in.data(), out.data());
    for (int b = 0; b < 4; ++b)
      for (int t = 0; t < kN; ++t) ASSERT_EQ(out[b * kN + t], b * kN + kN - 1 - t);
  }
  sim::set_schedule(sim::Schedule::kForward);
}

enum Shfl { kIdx, kUp, kDown, kXor };

__global__ void shuffles(int op, int arg, int width, int* out) {
  const int v = 100 + static_cast<int>(threadIdx.x);
  int r = 0;
  switch (op) {
    case kIdx: r = __shfl_sync(0xffffffffu, v, arg, width); break;
    case kUp: r = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
    case kDown: r = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
    case kXor: r = __shfl_xor_sync(0xffffffffu, v, arg, width); break;
  }
  out[threadIdx.x] = r;
}

// CUDA's documented semantics, written independently of the executor.
int expected_shuffle(int op, int lane, int arg, int width) {
  const int seg = lane / width * width;
  int src = lane;
  switch (op) {
    case kIdx: src = seg + arg % width; break;
    case kUp: src = lane - arg >= seg ? lane - arg : lane; break;
    case kDown: src = lane + arg < seg + width ? lane + arg : lane; break;
    case kXor: src = (lane ^ arg) < seg + width ? (lane ^ arg) : lane; break;  // may read lower
  }
  return 100 + src;
}

TEST(Executor, ShufflesFollowCudaSemanticsForEveryWidth) {
  for (int op : {kIdx, kUp, kDown, kXor}) {
    for (int width : {1, 2, 4, 8, 16, 32}) {
      for (int arg : {0, 1, 3, 5, 16}) {
        if (op == kXor && arg >= 32) continue;
        std::vector<int> out(64);
        sim::launch(shuffles, dim3(1), dim3(64), 0, op, arg, width, out.data());
        for (int t = 0; t < 64; ++t)
          ASSERT_EQ(out[t], (t / 32) * 32 + expected_shuffle(op, t % 32, arg, width))
              << "op " << op << " width " << width << " arg " << arg << " thread " << t;
      }
    }
  }
}

__global__ void shuffle_doubles_and_halves(double* d, float* h) {
  const double v = 0.5 + threadIdx.x;
  d[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1);
  const __half hv = __float2half(static_cast<float>(threadIdx.x));
  h[threadIdx.x] = __half2float(__shfl_down_sync(0xffffffffu, hv, 2u));
}

TEST(Executor, ShufflesMoveEightByteAndTwoByteTypes) {
  std::vector<double> d(32);
  std::vector<float> h(32);
  sim::launch(shuffle_doubles_and_halves, dim3(1), dim3(32), 0, d.data(), h.data());
  for (int t = 0; t < 32; ++t) {
    EXPECT_EQ(d[t], 0.5 + (t ^ 1));
    EXPECT_EQ(h[t], static_cast<float>(t + 2 < 32 ? t + 2 : t));
  }
}

__global__ void votes(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  out[threadIdx.x * 4 + 0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[threadIdx.x * 4 + 1] = static_cast<unsigned>(__all_sync(0xffffffffu, lane < 40));
  out[threadIdx.x * 4 + 2] = static_cast<unsigned>(__any_sync(0xffffffffu, lane == 7));
  if (lane >= 8) return;
  __syncwarp(0xffu);
  out[threadIdx.x * 4 + 3] = __activemask();
}

TEST(Executor, VotesAndActiveMask) {
  std::vector<unsigned> out(32 * 4, 0);
  sim::launch(votes, dim3(1), dim3(32), 0, out.data());
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int t = 0; t < 32; ++t) {
    EXPECT_EQ(out[t * 4 + 0], ballot);
    EXPECT_EQ(out[t * 4 + 1], 1u);
    EXPECT_EQ(out[t * 4 + 2], 1u);
  }
  // threads run one at a time: the caller is the only lane known to be active
  for (int t = 0; t < 8; ++t) EXPECT_EQ(out[t * 4 + 3], 1u << t);
}

__global__ void atomics(int* i, unsigned long long* u, float* f, double* d, int* cas, int* exch) {
  atomicAdd(i, 1);
  atomicAdd(u, 2ull);
  atomicAdd(f, 0.5f);
  atomicAdd(d, 0.25);
  atomicCAS(cas, 0, static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x) + 1);
  atomicExch(exch, 7);
  __threadfence();
}

TEST(Executor, AtomicsAddCompareAndExchange) {
  int i = 0, cas = 0, exch = 0;
  unsigned long long u = 0;
  float f = 0;
  double d = 0;
  sim::launch(atomics, dim3(5), dim3(64), 0, &i, &u, &f, &d, &cas, &exch);
  EXPECT_EQ(i, 320);
  EXPECT_EQ(u, 640ull);
  EXPECT_EQ(f, 160.0f);
  EXPECT_EQ(d, 80.0);
  EXPECT_EQ(cas, 1);  // only the first thread's compare succeeds
  EXPECT_EQ(exch, 7);
}

__global__ void dynamic_shared(unsigned* seen_before_write, unsigned* seen_after_write) {
  CUBN_DYNAMIC_SHARED(unsigned, s);
  if (threadIdx.x == 0) seen_before_write[blockIdx.x] = s[7];
  __syncthreads();
  s[threadIdx.x] = blockIdx.x * 1000 + threadIdx.x;
  __syncthreads();
  seen_after_write[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

TEST(Executor, DynamicSharedMemoryIsPerBlockAndStartsUninitialised) {
  std::vector<unsigned> before(6), after(6 * 32);
  sim::launch(dynamic_shared, dim3(6), dim3(32), 32 * sizeof(unsigned), before.data(),
              after.data());
  for (int b = 0; b < 6; ++b) {
    EXPECT_EQ(before[b], 0xCDCDCDCDu) << "block " << b << " saw an earlier block's data";
    for (int t = 0; t < 32; ++t) EXPECT_EQ(after[b * 32 + t], b * 1000u + (t + 1) % 32);
  }
}

// A warp-synchronous reduction through shared memory: correct only with __syncwarp between steps.
template <bool kSyncwarp>
__global__ void warp_sum_through_shared(const int* in, int* out) {
  __shared__ int s[32];
  const unsigned lane = threadIdx.x;
  s[lane] = in[lane];
  if (kSyncwarp) __syncwarp();
  for (unsigned offset = 16; offset > 0; offset /= 2) {
    int v = 0;
    if (lane < offset) v = s[lane] + s[lane + offset];
    if (kSyncwarp) __syncwarp();
    if (lane < offset) s[lane] = v;
    if (kSyncwarp) __syncwarp();
  }
  if (lane == 0) *out = s[0];
}

TEST(Executor, WarpSynchronousCodeWithoutSyncwarpGivesWrongResults) {
  std::vector<int> in(32);
  std::iota(in.begin(), in.end(), 1);
  int with = 0, without = 0;
  sim::launch(warp_sum_through_shared<true>, dim3(1), dim3(32), 0, in.data(), &with);
  sim::launch(warp_sum_through_shared<false>, dim3(1), dim3(32), 0, in.data(), &without);
  EXPECT_EQ(with, 528);
  EXPECT_NE(without, 528)
      << "threads ran in lockstep: the executor would hide a missing __syncwarp";
}

__global__ void warp_shuffle_sum(const float* in, float* out, int rounds) {
  __shared__ float partial[32];
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int r = 0; r < rounds; ++r) {
    __syncthreads();
    float w = v;
    for (int o = 16; o > 0; o /= 2) w += __shfl_xor_sync(0xffffffffu, w, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = w;
    __syncthreads();
    v = partial[(threadIdx.x / 32 + r) % (blockDim.x / 32)] * 0.0f + v;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (unsigned i = 0; i < blockDim.x / 32; ++i) s += partial[i];
    out[blockIdx.x] = s;
  }
}

TEST(Executor, ThousandThreadBlockWithBarriersAndShuffles) {
  std::vector<float> in(1024, 1.0f);
  float out = 0;
  sim::launch(warp_shuffle_sum, dim3(1), dim3(1024), 0, in.data(), &out, 10);
  EXPECT_EQ(out, 1024.0f);
}

TEST(Executor, SeveralHostThreadsLaunchAtOnce) {
  constexpr int kThreads = 4, kN = 256;
  std::vector<std::vector<int>> in(kThreads, std::vector<int>(8 * kN));
  std::vector<std::vector<int>> out(kThreads, std::vector<int>(8 * kN));
  std::vector<std::thread> pool;
  for (int h = 0; h < kThreads; ++h) {
    std::iota(in[h].begin(), in[h].end(), h * 100000);
    pool.emplace_back([&, h] {
      for (int rep = 0; rep < 5; ++rep)
        sim::launch(reverse_through_shared<kN>, dim3(8), dim3(kN), 0, in[h].data(), out[h].data());
    });
  }
  for (auto& t : pool) t.join();
  for (int h = 0; h < kThreads; ++h)
    for (int b = 0; b < 8; ++b)
      for (int t = 0; t < kN; ++t) ASSERT_EQ(out[h][b * kN + t], in[h][b * kN + kN - 1 - t]);
}

// The kernels' static shared arrays (CUBN_SHARED, __shared__) keep their elements on the heap,
// not in the thread_local objects: the binary's static TLS, which glibc places at the top of every
// host thread's stack, stays small however many kernels the binary instantiates (it was 13.5 MB
// once the masked fused kernels joined: more than a std::thread's default 8 MiB stack, and
// SeveralHostThreadsLaunchAtOnce crashed), and a host thread with a small stack launches kernels.
TEST(Executor, StaticTlsStaysSmallAndSmallStackThreadsLaunch) {
  std::size_t tls = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* sum) {
        for (int i = 0; i < info->dlpi_phnum; ++i)
          if (info->dlpi_phdr[i].p_type == PT_TLS)
            *static_cast<std::size_t*>(sum) += info->dlpi_phdr[i].p_memsz;
        return 0;
      },
      &tls);
  EXPECT_LT(tls, std::size_t{1} << 20) << "static TLS of " << tls << " bytes";
  constexpr int kN = 256;
  struct Job {
    std::vector<int> in = std::vector<int>(4 * kN), out = std::vector<int>(4 * kN);
  } job;
  std::iota(job.in.begin(), job.in.end(), 7);
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, std::size_t{1} << 20), 0);  // 1 MiB
  pthread_t thread;
  ASSERT_EQ(pthread_create(
                &thread, &attr,
                [](void* arg) -> void* {
                  auto* j = static_cast<Job*>(arg);
                  sim::launch(reverse_through_shared<kN>, dim3(4), dim3(kN), 0, j->in.data(),
                              j->out.data());
                  return nullptr;
                },
                &job),
            0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  pthread_attr_destroy(&attr);
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < kN; ++t) ASSERT_EQ(job.out[b * kN + t], job.in[b * kN + kN - 1 - t]);
}

// ---- what it catches ------------------------------------------------------------------------

__global__ void barrier_after_early_return(int* out) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(ExecutorCatches, SyncthreadsThatReturnedThreadsDoNotReach) {
  std::vector<int> out(64);
  const std::string msg =
      fault_of([&] { sim::launch(barrier_after_early_return, dim3(1), dim3(64), 0, out.data()); });
  EXPECT_NE(msg.find("__syncthreads()"), std::string::npos) << msg;
  EXPECT_NE(msg.find("returned"), std::string::npos) << msg;
  EXPECT_NE(msg.find("executor_test.cu"), std::string::npos) << msg;
}

__global__ void return_after_others_wait(int* out) {
  if (threadIdx.x < 40) __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(ExecutorCatches, ThreadsReturningWhileOthersWaitAtABarrier) {
  std::vector<int> out(64);
  const std::string msg =
      fault_of([&] { sim::launch(return_after_others_wait, dim3(1), dim3(64), 0, out.data()); });
  EXPECT_NE(msg.find("not reached by every thread"), std::string::npos) << msg;
}

__global__ void divergent_barriers(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

TEST(ExecutorCatches, ThreadsAtDifferentBarriers) {
  std::vector<int> out(64);
  const std::string msg =
      fault_of([&] { sim::launch(divergent_barriers, dim3(1), dim3(64), 0, out.data()); });
  EXPECT_NE(msg.find("different barriers"), std::string::npos) << msg;
}

__global__ void shuffle_with_mask(unsigned mask, unsigned callers, int* out) {
  const unsigned lane = threadIdx.x % 32;
  if (callers >> lane & 1u) {
    out[threadIdx.x] = __shfl_down_sync(mask, 1, 1u);
  } else {
    __syncthreads();
  }
}

TEST(ExecutorCatches, ShuffleMaskWithoutTheCallingLane) {
  std::vector<int> out(32);
  const std::string msg = fault_of([&] {
    sim::launch(shuffle_with_mask, dim3(1), dim3(32), 0, 0x0000ffffu, 0xffffffffu, out.data());
  });
  EXPECT_NE(msg.find("which the mask does not include"), std::string::npos) << msg;
}

TEST(ExecutorCatches, ShuffleMaskNamingLanesThatNeverCall) {
  std::vector<int> out(32);
  // lanes 0..15 call with a full mask; lanes 16..31 go on to a barrier instead
  const std::string msg = fault_of([&] {
    sim::launch(shuffle_with_mask, dim3(1), dim3(32), 0, 0xffffffffu, 0x0000ffffu, out.data());
  });
  EXPECT_NE(msg.find("__shfl_down_sync"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0xffff0000"), std::string::npos) << msg;
}

TEST(ExecutorCatches, ShuffleMaskNamingLanesThatDoNotExist) {
  std::vector<int> out(48);
  const std::string msg = fault_of([&] {
    sim::launch(shuffle_with_mask, dim3(1), dim3(48), 0, 0xffffffffu, 0xffffffffu, out.data());
  });
  EXPECT_NE(msg.find("do not exist"), std::string::npos) << msg;
}

__global__ void shuffle_after_some_lanes_return(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

TEST(ExecutorCatches, ShuffleMaskNamingLanesThatReturned) {
  std::vector<int> out(32);
  const std::string msg = fault_of(
      [&] { sim::launch(shuffle_after_some_lanes_return, dim3(1), dim3(32), 0, out.data()); });
  EXPECT_NE(msg.find("returned"), std::string::npos) << msg;
}

__global__ void shuffle_reading_outside_mask(int* out) {
  // lanes 0..7 take part, but lane 7 reads lane 8
  if (threadIdx.x < 8) out[threadIdx.x] = __shfl_down_sync(0xffu, 1, 1u);
}

TEST(ExecutorCatches, ShuffleReadingALaneOutsideTheMask) {
  std::vector<int> out(32);
  const std::string msg = fault_of(
      [&] { sim::launch(shuffle_reading_outside_mask, dim3(1), dim3(32), 0, out.data()); });
  EXPECT_NE(msg.find("reads lane 8"), std::string::npos) << msg;
}

__global__ void shuffle_bad_width(int* out) {
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0, 12);
}

TEST(ExecutorCatches, ShuffleWidthNotAPowerOfTwo) {
  std::vector<int> out(32);
  const std::string msg =
      fault_of([&] { sim::launch(shuffle_bad_width, dim3(1), dim3(32), 0, out.data()); });
  EXPECT_NE(msg.find("width 12"), std::string::npos) << msg;
}

using Reduce = cubn::kernels::BlockReduce<int, 64>;

__global__ void reduce_read_everywhere(int* out) {
  __shared__ Reduce::TempStorage storage;
  const int sum = Reduce(storage).reduce(1, [](int a, int b) { return a + b; }).get();
  out[threadIdx.x] = sum;
}

__global__ void reduce_twice(bool barrier_between, int* out) {
  __shared__ Reduce::TempStorage storage;
  const auto plus = [](int a, int b) { return a + b; };
  const auto first = Reduce(storage).reduce(1, plus);
  if (barrier_between) __syncthreads();
  const auto second = Reduce(storage).reduce(2, plus);
  if (threadIdx.x == 0) *out = first.get() + second.get();
}

TEST(ExecutorCatches, BlockReduceResultReadOutsideThreadZero) {
  std::vector<int> out(64);
  const std::string msg =
      fault_of([&] { sim::launch(reduce_read_everywhere, dim3(1), dim3(64), 0, out.data()); });
  EXPECT_NE(msg.find("outside thread 0"), std::string::npos) << msg;
}

TEST(ExecutorCatches, BlockReduceStorageReusedWithoutABarrier) {
  int out = 0;
  sim::launch(reduce_twice, dim3(2), dim3(64), 0, true, &out);
  EXPECT_EQ(out, 64 + 128);
  const std::string msg =
      fault_of([&] { sim::launch(reduce_twice, dim3(1), dim3(64), 0, false, &out); });
  EXPECT_NE(msg.find("reused without a __syncthreads()"), std::string::npos) << msg;
}

TEST(ExecutorCatches, LaunchShapesADeviceRefuses) {
  int out = 0;
  auto status_of = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.status();
    }
    return Status::kSuccess;
  };
  EXPECT_EQ(status_of([&] { sim::launch(reduce_twice, dim3(1), dim3(1025), 0, true, &out); }),
            Status::kInvalidLaunch);
  EXPECT_EQ(status_of([&] { sim::launch(reduce_twice, dim3(1), dim3(1, 1, 65), 0, true, &out); }),
            Status::kInvalidLaunch);
  EXPECT_EQ(
      status_of([&] { sim::launch(reduce_twice, dim3(1), dim3(64), 48 * 1024 + 1, true, &out); }),
      Status::kInvalidLaunch);
  EXPECT_EQ(status_of([&] { sim::launch(reduce_twice, dim3(1, 65536), dim3(64), 0, true, &out); }),
            Status::kInvalidLaunch);
}

TEST(ExecutorCatches, AndKeepsWorkingAfterAFault) {
  std::vector<int> out(64);
  fault_of([&] { sim::launch(barrier_after_early_return, dim3(1), dim3(64), 0, out.data()); });
  std::vector<int> in(256), rev(256);
  std::iota(in.begin(), in.end(), 0);
  sim::launch(reverse_through_shared<256>, dim3(1), dim3(256), 0, in.data(), rev.data());
  EXPECT_EQ(rev[0], 255);
}

__global__ void write_one_past_the_end(int* out, int n) {
  out[threadIdx.x + (threadIdx.x == 0 ? n : 0)] = 1;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang's way (the asan preset builds with clang)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

TEST(ExecutorCatchesDeathTest, OutOfBoundsGlobalWriteUnderAddressSanitizer) {
  if (!kAddressSanitizer) GTEST_SKIP() << "needs the AddressSanitizer build (preset asan)";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::vector<int> out(32);
        sim::launch(write_one_past_the_end, dim3(1), dim3(32), 0, out.data(), 32);
      },
      "heap-buffer-overflow");
}

}  // namespace
