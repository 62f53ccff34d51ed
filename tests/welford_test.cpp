// Welford's update and Chan's merge (kernels/welford.cuh), run as host code.
//
// Tolerances. u = 2^-24 (fp32 unit roundoff). One Welford update changes mean and M2 with a few
// roundings relative to |mean| + |x - mean|; over n updates the errors add at worst linearly, so
// |mean - exact| <= c * n * u * (|mean| + sigma) and |var - exact| <= c * n * u * (|mean| + sigma)
// * sigma, with c = 4 covering the roundings of one step. A merge adds O(u) relative error to
// each. The bounds are worst-case (random rounding grows like sqrt(n)); the large-offset test
// shows sum/sum-of-squares failing where Welford holds.
#include "reference.hpp"
#include "welford.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

using cubn::kernels::welford_merge;
using cubn::kernels::welford_update;
using cubn::kernels::welford_variance;
using State = cubn::kernels::WelfordState<float>;

constexpr double kU = 5.9604644775390625e-08;  // 2^-24

State one_pass(const std::vector<float>& x, std::size_t begin, std::size_t end) {
  State s;
  for (std::size_t i = begin; i < end; ++i) welford_update(s, x[i]);
  return s;
}

std::vector<float> normal(std::size_t n, double mean, double sigma, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(mean, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(d(rng));
  return x;
}

void expect_close(const State& s, const cubn::ref::Moments& e, std::size_t n, double sigma) {
  const double scale = 4.0 * static_cast<double>(n) * kU * (std::fabs(e.mean) + sigma);
  EXPECT_EQ(s.count, static_cast<std::int64_t>(n));
  EXPECT_NEAR(s.mean, e.mean, scale);
  EXPECT_NEAR(welford_variance(s), e.var, scale * sigma);
}

TEST(Welford, OnePassMatchesTwoPassDouble) {
  const auto x = normal(10000, 3.0, 2.0, 1);
  expect_close(one_pass(x, 0, x.size()), cubn::ref::moments(x, 0, x.size()), x.size(), 2.0);
}

TEST(Welford, MergeOfTwoHalvesMatchesOnePass) {
  const auto x = normal(10001, -5.0, 0.5, 2);
  for (std::size_t split :
       {std::size_t{1}, std::size_t{17}, std::size_t{5000}, std::size_t{10000}}) {
    const State merged = welford_merge(one_pass(x, 0, split), one_pass(x, split, x.size()));
    const State whole = one_pass(x, 0, x.size());
    expect_close(merged, cubn::ref::moments(x, 0, x.size()), x.size(), 0.5);
    EXPECT_NEAR(merged.mean, whole.mean, 8.0 * x.size() * kU * 5.5);
  }
}

TEST(Welford, MergeIsAssociativeWithinRounding) {
  const auto x = normal(3000, 1.0, 1.0, 3);
  const State a = one_pass(x, 0, 1000), b = one_pass(x, 1000, 1700), c = one_pass(x, 1700, 3000);
  const State left = welford_merge(welford_merge(a, b), c);
  const State right = welford_merge(a, welford_merge(b, c));
  EXPECT_EQ(left.count, right.count);
  EXPECT_NEAR(left.mean, right.mean, 8 * kU * 2.0);
  EXPECT_NEAR(left.m2, right.m2, 8 * kU * right.m2);
}

TEST(Welford, EmptyStatesMergeAsTheIdentity) {
  const auto x = normal(100, 1.0, 1.0, 4);
  const State s = one_pass(x, 0, x.size());
  const State empty;
  for (const State& r : {welford_merge(empty, s), welford_merge(s, empty)}) {
    EXPECT_EQ(std::memcmp(&r, &s, sizeof(State)), 0);
  }
  const State both = welford_merge(empty, empty);
  EXPECT_EQ(both.count, 0);
  EXPECT_EQ(both.mean, 0.0f);
  EXPECT_EQ(both.m2, 0.0f);
  EXPECT_EQ(welford_variance(both), 0.0f);
  // an empty side must not turn an infinite mean into NaN
  State inf;
  welford_update(inf, std::numeric_limits<float>::infinity());
  EXPECT_EQ(welford_merge(empty, inf).mean, std::numeric_limits<float>::infinity());
}

TEST(Welford, LargeOffsetKeepsTheVarianceWhereSumOfSquaresLosesIt) {
  // values near 1e6 with variance 1, in fp32 (ulp(1e6) = 1/16, so the data's own rounding adds
  // about (1/16)^2/12 = 3e-4 to the variance; the exact value is taken over the rounded data)
  const auto x = normal(1 << 16, 1e6, 1.0, 5);
  const cubn::ref::Moments e = cubn::ref::moments(x, 0, x.size());
  std::vector<State> parts(64);  // as a reduction would: per-thread passes, then merges
  for (std::size_t i = 0; i < x.size(); ++i) welford_update(parts[i % 64], x[i]);
  State merged;
  for (const State& p : parts) merged = welford_merge(merged, p);
  // fp32 cannot hold the running mean finer than ulp(1e6) = 1/16, and each M2 increment
  // delta * (x - mean) carries up to ulp/2 * |delta| of that error, so the variance is good to
  // about ulp(mean) / sigma = 6% relative here (measured: 4%). sum/sum-of-squares is off by orders
  // of magnitude (below).
  EXPECT_NEAR(welford_variance(merged), e.var, 0.0625 * e.var);
  EXPECT_NEAR(merged.mean, e.mean, 1.0 / 16);

  float sum = 0, sum_sq = 0;  // the formula batch norm must never use
  for (float v : x) {
    sum += v;
    sum_sq += v * v;
  }
  const float n = static_cast<float>(x.size());
  const float naive = sum_sq / n - (sum / n) * (sum / n);
  EXPECT_GT(std::fabs(naive - e.var), 100.0) << "sum/sum-of-squares should fail here";
}

TEST(Welford, DoubleStatesForFp64Data) {
  std::mt19937 rng(6);
  std::normal_distribution<double> d(1e9, 1.0);
  cubn::kernels::WelfordState<double> s;
  std::vector<double> x(50000);
  for (auto& v : x) {
    v = d(rng);
    welford_update(s, v);
  }
  double mean = 0;
  for (double v : x) mean += v;
  mean /= x.size();
  double m2 = 0;
  for (double v : x) m2 += (v - mean) * (v - mean);
  EXPECT_NEAR(welford_variance(s), m2 / x.size(), 1e-6);
}

TEST(Welford, NanPropagates) {
  State s;
  welford_update(s, 1.0f);
  welford_update(s, std::numeric_limits<float>::quiet_NaN());
  welford_update(s, 2.0f);
  EXPECT_TRUE(std::isnan(s.mean));
  EXPECT_TRUE(std::isnan(welford_variance(s)));
}

}  // namespace
