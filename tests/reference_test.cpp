// The double-precision reference, checked on hand-computed cases and, for backward, against
// central finite differences of its own forward.
#include "reference.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace {

using cubn::ref::Order;
using cubn::ref::Params;
using cubn::ref::Shape;

std::vector<double> random_vector(std::size_t n, unsigned seed, double lo = -2, double hi = 2) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(Reference, HandComputedTwoByTwo) {
  // N=2, C=1, S=2: channel values 1, 2, 3, 6 -> mean 3, M2 = 4+1+0+9 = 14, var 3.5, unbiased 14/3
  const Shape sh{{2, 1, 2}, Order::kChannelsFirst};
  const std::vector<double> x{1, 2, 3, 6};
  Params p;
  p.eps = 0.5;  // invstd = 1/sqrt(4) = 0.5
  p.scale = {2};
  p.offset = {1};
  const auto r = cubn::ref::forward_training(sh, x, p, 0.1, 0.2, {10}, {20});
  EXPECT_DOUBLE_EQ(r.stats.mean[0], 3);
  EXPECT_DOUBLE_EQ(r.stats.var[0], 3.5);
  EXPECT_DOUBLE_EQ(r.stats.var_unbiased[0], 14.0 / 3);
  EXPECT_DOUBLE_EQ(r.stats.invstd[0], 0.5);
  // y = (x - 3) * 0.5 * 2 + 1 = x - 2
  EXPECT_EQ(r.y, (std::vector<double>{-1, 0, 1, 4}));
  EXPECT_DOUBLE_EQ(r.running_mean[0], 0.9 * 10 + 0.1 * 3);
  EXPECT_DOUBLE_EQ(r.running_var[0], 0.8 * 20 + 0.2 * 14.0 / 3);
  // inference with the running statistics given: (x - 9.3) / sqrt(16.9333.. + 0.5) * 2 + 1
  const auto y = cubn::ref::forward_inference(sh, x, p, r.running_mean, r.running_var);
  for (int i = 0; i < 4; ++i)
    EXPECT_DOUBLE_EQ(y[i], (x[i] - 9.3) / std::sqrt(0.8 * 20 + 0.2 * 14.0 / 3 + 0.5) * 2 + 1);
}

TEST(Reference, MatlabStyleFourByFourByThreeByOne) {
  // 'SSCB' 4x4x3x1: H=W=4, C=3, N=1 -> logical (N, C, H, W) = (1, 3, 4, 4). Channel c holds
  // (k + 1) * (c + 1) + 100 c for k = 0..15: mean 8.5 (c + 1) + 100 c, variance 21.25 (c + 1)^2
  // (the variance of 1..16 is (16^2 - 1) / 12).
  for (Order order : {Order::kChannelsFirst, Order::kChannelsLast}) {
    const Shape sh{{1, 3, 4, 4}, order};
    std::vector<double> x(48);
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 16; ++k) x[sh.index(0, c, k)] = (k + 1) * (c + 1) + 100.0 * c;
    Params p;
    p.eps = 1e-5;
    const auto r = cubn::ref::forward_training(sh, x, p, 0.1, 0.1, {0, 0, 0}, {1, 1, 1});
    for (int c = 0; c < 3; ++c) {
      const double mean = 8.5 * (c + 1) + 100.0 * c, var = 21.25 * (c + 1) * (c + 1);
      EXPECT_NEAR(r.stats.mean[c], mean, 1e-12);
      EXPECT_NEAR(r.stats.var[c], var, 1e-11);
      EXPECT_NEAR(r.stats.var_unbiased[c], var * 16 / 15, 1e-11);
      for (int k = 0; k < 16; ++k) {
        const double xv = (k + 1) * (c + 1) + 100.0 * c;
        EXPECT_NEAR(r.y[sh.index(0, c, k)], (xv - mean) / std::sqrt(var + 1e-5), 1e-12);
      }
      EXPECT_NEAR(r.running_mean[c], 0.1 * mean, 1e-12);
      EXPECT_NEAR(r.running_var[c], 0.9 + 0.1 * var * 16 / 15, 1e-11);
    }
  }
}

TEST(Reference, MemoryOrderDoesNotChangeTheResult) {
  for (std::vector<std::int64_t> dims :
       {std::vector<std::int64_t>{7, 3}, {2, 3, 5}, {2, 4, 3, 5}, {2, 3, 2, 3, 4}}) {
    const Shape cf{dims, Order::kChannelsFirst};
    const Shape cl{dims, Order::kChannelsLast};
    const auto x = random_vector(cf.numel(), 7);
    const auto xl = cubn::ref::reorder(cf, x, Order::kChannelsLast);
    Params p;
    p.scale = random_vector(cf.c(), 8);
    p.offset = random_vector(cf.c(), 9);
    const auto a = cubn::ref::forward_training(cf, x, p, 0.1, 0.1, {}, {});
    const auto b = cubn::ref::forward_training(cl, xl, p, 0.1, 0.1, {}, {});
    const auto bf = cubn::ref::reorder(cl, b.y, Order::kChannelsFirst);
    for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(a.y[i], bf[i], 1e-12);
    for (std::int64_t c = 0; c < cf.c(); ++c) EXPECT_NEAR(a.stats.mean[c], b.stats.mean[c], 1e-12);
  }
}

TEST(Reference, OneElementPerChannelHasNoUnbiasedVariance) {
  const Shape sh{{1, 2}, Order::kChannelsFirst};
  const auto st = cubn::ref::batch_stats(sh, {3, 4}, 1e-5);
  EXPECT_EQ(st.var[0], 0.0);
  EXPECT_TRUE(std::isnan(st.var_unbiased[0]));
}

// L(x, scale, offset) = sum(y * w): its gradient is backward() with dy = w.
double loss(const std::vector<double>& y, const std::vector<double>& w) {
  double l = 0;
  for (std::size_t i = 0; i < y.size(); ++i) l += y[i] * w[i];
  return l;
}

void check_against_finite_differences(bool training, Order order) {
  const Shape sh{{3, 2, 2, 3}, order};
  const auto x = random_vector(sh.numel(), 11);
  const auto w = random_vector(sh.numel(), 12);
  Params p;
  p.eps = 1e-3;
  p.scale = {1.5, -0.7};
  p.offset = {0.2, 0.3};
  const std::vector<double> rm{0.1, -0.2}, rv{0.8, 1.3};
  auto forward = [&](const std::vector<double>& xx, const Params& pp) {
    return training ? cubn::ref::forward_training(sh, xx, pp, 0, 0, {}, {}).y
                    : cubn::ref::forward_inference(sh, xx, pp, rm, rv);
  };
  const auto g = training ? cubn::ref::backward_training(sh, x, w, p)
                          : cubn::ref::backward_frozen(sh, x, w, p, rm, rv);
  // central differences: truncation error O(h^2), rounding O(eps_double / h); h = 1e-5 gives
  // about 1e-10 of each at these magnitudes, so 1e-7 is a safe bound that any wrong term breaks.
  const double h = 1e-5, tol = 1e-7;
  for (std::size_t i = 0; i < x.size(); ++i) {
    auto xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    const double fd = (loss(forward(xp, p), w) - loss(forward(xm, p), w)) / (2 * h);
    EXPECT_NEAR(g.dx[i], fd, tol) << "dx[" << i << "]";
  }
  for (int c = 0; c < 2; ++c) {
    Params pp = p, pm = p;
    pp.scale[c] += h;
    pm.scale[c] -= h;
    EXPECT_NEAR(g.dscale[c], (loss(forward(x, pp), w) - loss(forward(x, pm), w)) / (2 * h), tol);
    pp = p;
    pm = p;
    pp.offset[c] += h;
    pm.offset[c] -= h;
    EXPECT_NEAR(g.doffset[c], (loss(forward(x, pp), w) - loss(forward(x, pm), w)) / (2 * h), tol);
  }
}

TEST(Reference, TrainingBackwardMatchesFiniteDifferences) {
  check_against_finite_differences(true, Order::kChannelsFirst);
  check_against_finite_differences(true, Order::kChannelsLast);
}

TEST(Reference, FrozenBackwardMatchesFiniteDifferences) {
  check_against_finite_differences(false, Order::kChannelsFirst);
  check_against_finite_differences(false, Order::kChannelsLast);
}

TEST(Reference, ConstantUpstreamGradientGivesZeroDxInTraining) {
  const Shape sh{{4, 3, 5}, Order::kChannelsLast};
  const auto x = random_vector(sh.numel(), 13);
  const std::vector<double> dy(x.size(), 0.75);
  Params p;
  const auto g = cubn::ref::backward_training(sh, x, dy, p);
  for (double v : g.dx) EXPECT_NEAR(v, 0.0, 1e-12);
}

// The fused epilogue's gradient (dy * act'(p) through the batch norm, and dz) against central
// differences of L = sum(w * act(bn(x) + z)), for SiLU everywhere and for ReLU away from its kink
// (every p of the tensor at least 1e-3 from 0, far beyond what a step of h moves it).
void check_epilogue_against_finite_differences(cubn::ref::Act act, bool training, Order order) {
  const Shape sh{{3, 2, 2, 3}, order};
  const auto x = random_vector(sh.numel(), 21);
  const auto z = random_vector(sh.numel(), 22);
  const auto w = random_vector(sh.numel(), 23);
  Params p;
  p.eps = 1e-3;
  p.scale = {1.5, -0.7};
  p.offset = {0.2, 0.3};
  const std::vector<double> rm{0.1, -0.2}, rv{0.8, 1.3};
  const auto bn = [&](const std::vector<double>& xx) {
    return training ? cubn::ref::forward_training(sh, xx, p, 0, 0, {}, {}).y
                    : cubn::ref::forward_inference(sh, xx, p, rm, rv);
  };
  const auto loss_of = [&](const std::vector<double>& xx, const std::vector<double>& zz) {
    return loss(cubn::ref::epilogue(act, bn(xx), zz), w);
  };
  std::vector<double> pre;
  cubn::ref::epilogue(act, bn(x), z, &pre);
  for (double v : pre) ASSERT_GT(std::fabs(v), 1e-3) << "the case sits on the ReLU kink";
  const auto g = cubn::ref::epilogue_grad(act, pre, w);
  const auto grads = training ? cubn::ref::backward_training(sh, x, g, p)
                              : cubn::ref::backward_frozen(sh, x, g, p, rm, rv);
  const double h = 1e-5, tol = 1e-7;  // as check_against_finite_differences
  for (std::size_t i = 0; i < x.size(); ++i) {
    auto xp = x, xm = x, zp = z, zm = z;
    xp[i] += h;
    xm[i] -= h;
    zp[i] += h;
    zm[i] -= h;
    EXPECT_NEAR(grads.dx[i], (loss_of(xp, z) - loss_of(xm, z)) / (2 * h), tol) << "dx[" << i << "]";
    EXPECT_NEAR(g[i], (loss_of(x, zp) - loss_of(x, zm)) / (2 * h), tol) << "dz[" << i << "]";
  }
}

TEST(Reference, EpilogueBackwardMatchesFiniteDifferences) {
  using cubn::ref::Act;
  for (Act act : {Act::kNone, Act::kRelu, Act::kSilu})
    for (bool training : {true, false})
      for (Order order : {Order::kChannelsFirst, Order::kChannelsLast})
        check_epilogue_against_finite_differences(act, training, order);
}

TEST(Reference, EpilogueActivations) {
  using cubn::ref::Act;
  using cubn::ref::activate;
  EXPECT_EQ(activate(Act::kRelu, -1.5), 0.0);
  EXPECT_EQ(activate(Act::kRelu, 2.5), 2.5);
  EXPECT_TRUE(std::isnan(activate(Act::kRelu, std::nan(""))));
  EXPECT_DOUBLE_EQ(activate(Act::kSilu, 1.0), 1.0 / (1.0 + std::exp(-1.0)));
  EXPECT_EQ(activate(Act::kSilu, 0.0), 0.0);
  EXPECT_EQ(cubn::ref::activation_derivative(Act::kRelu, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(cubn::ref::activation_derivative(Act::kSilu, 0.0), 0.5);
}

}  // namespace
