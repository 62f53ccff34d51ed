// Welford reductions in kernels: per-thread updates, a warp butterfly of shuffles, and the
// project's BlockReduce, against the double-precision two-pass result. Runs on the executor and,
// in the GPU binary, on a device.
//
// Tolerance: each thread updates about n_t = ceil(per_block / B) values, then log2(B) merges
// follow; with u = 2^-24 and the worst-case linear growth of Welford's rounding (see
// welford_test.cpp), |error| <= 4 (n_t + log2 B + 1) u (|mean| + sigma) for the mean and that
// times sigma for the variance.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "block_reduce.cuh"
#include "launch.hpp"
#include "support/device.hpp"
#include "reference.hpp"
#include "welford.cuh"

namespace {

using cubn::kernels::WelfordState;
using State = WelfordState<float>;

template <int B>
__global__ void __launch_bounds__(B)
    welford_per_block(const float* x, std::int64_t n, std::int64_t per_block, State* block_out,
                      State* warp_out) {
  using namespace cubn::kernels;
  State s;
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * per_block;
  const std::int64_t end = begin + per_block < n ? begin + per_block : n;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += B) welford_update(s, x[i]);
  State w = s;
  for (int o = 16; o > 0; o /= 2) w = welford_merge(w, shfl_xor(0xffffffffu, w, o));
  if (threadIdx.x % 32 == 0) warp_out[blockIdx.x * (B / 32) + threadIdx.x / 32] = w;
  using Reduce = BlockReduce<State, B>;
  __shared__ typename Reduce::TempStorage storage;
  const auto total = Reduce(storage).reduce(s, WelfordMerge{});
  if (threadIdx.x == 0) block_out[blockIdx.x] = total.get();
}

class WelfordKernel : public cubn::test::DeviceTest {};

TEST_F(WelfordKernel, WarpAndBlockReductionsMatchTheDoubleReference) {
  constexpr int kB = 256, kWarps = kB / 32;
  const std::int64_t n = 100003;  // prime: no block or warp divides it evenly
  const int blocks = 7;
  const std::int64_t per_block = (n + blocks - 1) / blocks;
  const double mean = 1e3, sigma = 2.0;
  std::mt19937 rng(42);
  std::normal_distribution<double> d(mean, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(d(rng));

  cubn::test::DeviceBuffer<float> dx(x);
  cubn::test::DeviceBuffer<State> dblock(blocks), dwarp(blocks * kWarps);
  cubn::detail::launch("welford_per_block", welford_per_block<kB>, dim3(blocks), dim3(kB), 0,
                       nullptr, dx.data(), n, per_block, dblock.data(), dwarp.data());
  cubn::test::device_sync();
  const auto block_states = dblock.download();
  const auto warp_states = dwarp.download();

  const double per_thread = std::ceil(static_cast<double>(per_block) / kB);
  const double tol = 4 * (per_thread + 8 + 1) * 5.96e-8 * (mean + sigma);
  State all;
  for (int b = 0; b < blocks; ++b) {
    const std::int64_t begin = b * per_block, end = std::min(n, begin + per_block);
    const cubn::ref::Moments e = cubn::ref::moments(x, begin, end);
    const State& s = block_states[b];
    EXPECT_EQ(s.count, end - begin) << "block " << b;
    EXPECT_NEAR(s.mean, e.mean, tol) << "block " << b;
    EXPECT_NEAR(cubn::kernels::welford_variance(s), e.var, tol * sigma) << "block " << b;
    // the warps of the block together hold the same data as the block
    State warps;
    for (int w = 0; w < kWarps; ++w)
      warps = cubn::kernels::welford_merge(warps, warp_states[b * kWarps + w]);
    EXPECT_EQ(warps.count, s.count);
    EXPECT_NEAR(warps.mean, e.mean, tol);
    EXPECT_NEAR(cubn::kernels::welford_variance(warps), e.var, tol * sigma);
    all = cubn::kernels::welford_merge(all, s);
  }
  const cubn::ref::Moments e = cubn::ref::moments(x, 0, n);
  EXPECT_EQ(all.count, n);
  EXPECT_NEAR(all.mean, e.mean, tol);
  EXPECT_NEAR(cubn::kernels::welford_variance(all), e.var, tol * sigma);
}

}  // namespace
