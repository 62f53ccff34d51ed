// Host threads against fibers for the CPU executor: one block of 1024 threads with 20 barriers
// and a warp-shuffle reduction after each. The executor runs it with fibers (what it uses); a
// host-thread version does the same work with one std::thread per CUDA thread, pthread barriers
// for __syncthreads and a 32-thread barrier per warp for each shuffle step.
//
//   build/<preset>/bench/cubn_executor_backends [repetitions]
#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "cubn/sim/executor.hpp"
#include "platform.cuh"

namespace {

constexpr int kThreads = 1024, kBarriers = 20;

__global__ void barriers_and_shuffles(const float* in, float* out) {
  __shared__ float partial[32];
  float v = in[threadIdx.x];
  for (int r = 0; r < kBarriers; ++r) {
    float w = v;
    for (int o = 16; o > 0; o /= 2) w += __shfl_xor_sync(0xffffffffu, w, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = w;
    __syncthreads();
    v += partial[(threadIdx.x / 32 + r) % 32] * 1e-3f;
    __syncthreads();  // partial is rewritten next round
  }
  out[threadIdx.x] = v;
}

// The same work as host threads.
void host_threads(const float* in, float* out) {
  pthread_barrier_t block;
  std::vector<pthread_barrier_t> warps(kThreads / 32);
  pthread_barrier_init(&block, nullptr, kThreads);
  for (auto& w : warps) pthread_barrier_init(&w, nullptr, 32);
  std::vector<float> lanes(kThreads), partial(32);
  std::vector<std::thread> pool;
  pool.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      pthread_barrier_t* warp = &warps[t / 32];
      float v = in[t];
      for (int r = 0; r < kBarriers; ++r) {
        float w = v;
        for (int o = 16; o > 0; o /= 2) {  // one shuffle: publish, wait, read, wait
          lanes[t] = w;
          pthread_barrier_wait(warp);
          const float other = lanes[(t & ~31) | ((t % 32) ^ o)];
          pthread_barrier_wait(warp);
          w += other;
        }
        if (t % 32 == 0) partial[t / 32] = w;
        pthread_barrier_wait(&block);
        v += partial[(t / 32 + r) % 32] * 1e-3f;
        pthread_barrier_wait(&block);
      }
      out[t] = v;
    });
  }
  for (auto& th : pool) th.join();
  pthread_barrier_destroy(&block);
  for (auto& w : warps) pthread_barrier_destroy(&w);
}

template <class F>
double median_ms(int reps, F&& f) {
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
  std::vector<float> in(kThreads, 1.0f), a(kThreads), b(kThreads);
  auto& c = cubn::sim::counters();
  const auto switches0 = c.switches;
  const double fibers = median_ms(reps, [&] {
    cubn::sim::launch(barriers_and_shuffles, dim3(1), dim3(kThreads), 0, in.data(), a.data());
  });
  const double switches = static_cast<double>(c.switches - switches0) / reps;
  const double threads = median_ms(reps, [&] { host_threads(in.data(), b.data()); });
  bool same = true;
  for (int t = 0; t < kThreads; ++t) same = same && a[t] == b[t];
  std::printf(
      "one block of %d threads, %d barriers, a 5-step warp shuffle reduction each (median of %d, "
      "%u cores)\n",
      kThreads, kBarriers, reps, std::thread::hardware_concurrency());
  std::printf("  fibers (the executor): %8.2f ms  (%.0f context switches)\n", fibers, switches);
  std::printf("  host threads:          %8.2f ms\n", threads);
  std::printf("  results %s\n", same ? "identical" : "DIFFER");
  return same ? 0 : 1;
}
