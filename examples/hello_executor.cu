// A first program: one kernel (per-channel Welford statistics of a 4x4x3x1 tensor, one block per
// channel) launched through cubn's launch helper, on the CPU executor.
#include <cstdio>
#include <vector>

#include "block_reduce.cuh"
#include "launch.hpp"
#include "welford.cuh"

using cubn::kernels::WelfordState;

__global__ void channel_stats(const float* x, int per_channel, float* mean, float* var) {
  using Reduce = cubn::kernels::BlockReduce<WelfordState<float>, 32>;
  __shared__ Reduce::TempStorage storage;
  WelfordState<float> s;
  for (int i = static_cast<int>(threadIdx.x); i < per_channel; i += 32)
    cubn::kernels::welford_update(s, x[blockIdx.x * per_channel + i]);
  const auto total = Reduce(storage).reduce(s, cubn::kernels::WelfordMerge{});
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = total.get().mean;
    var[blockIdx.x] = cubn::kernels::welford_variance(total.get());
  }
}

int main() {
  // channel c holds (k + 1) * (c + 1) + 100 c, k = 0..15: mean 8.5 (c + 1) + 100 c, variance 21.25 (c + 1)^2
  std::vector<float> x(48), mean(3), var(3);
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 16; ++k) x[c * 16 + k] = (k + 1.0f) * (c + 1) + 100.0f * c;
  cubn::detail::launch("channel_stats", channel_stats, dim3(3), dim3(32), 0, nullptr, x.data(), 16,
                       mean.data(), var.data());
  const auto& n = cubn::sim::counters();
  std::printf("cubn: launched channel_stats<<<3, 32>>> on the CPU executor (a test backend, not a fast path)\n");
  std::printf("      %llu blocks, %llu threads, %llu fiber switches\n",
              static_cast<unsigned long long>(n.blocks), static_cast<unsigned long long>(n.threads),
              static_cast<unsigned long long>(n.switches));
  for (int c = 0; c < 3; ++c)
    std::printf("channel %d: mean %.4f (expected %.4f)  variance %.4f (expected %.4f)\n", c, mean[c],
                8.5 * (c + 1) + 100.0 * c, var[c], 21.25 * (c + 1) * (c + 1));
  return 0;
}
