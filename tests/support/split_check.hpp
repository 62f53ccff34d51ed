/// @file split_check.hpp
/// @brief Checking a batch split across ranks (cubn/distributed.hpp, cubn/nccl.hpp) against the
/// double-precision reference of the whole batch, with the single call's tolerances
/// (support/tolerance.hpp, backward_test.cpp): splitting changes where roundings fall, not the
/// bounds. Every rank must hold the same statistics bit for bit; dscale and doffset are each
/// rank's share, summed here as a gradient all-reduce would.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cubn/batch_norm.hpp"
#include "reference.hpp"
#include "support/backward_check.hpp"
#include "support/bn_harness.hpp"

namespace cubn::test {

/// Everything the ranks produced, the shards put back together.
template <class T>
struct SplitResult {
  using P = param_of<T>;
  std::vector<T> y, dx;
  std::vector<std::vector<P>> saved_mean, saved_invstd, running_mean, running_var;  ///< per rank
  std::vector<std::vector<P>> dscale, doffset;                                      ///< per rank
};

/// The epsilon and momentum every split run trains with, which the reference below assumes.
constexpr double kSplitEpsilon = 1e-3, kSplitMomentum = 0.1;

/// A split run's forward arguments: scale and offset, the running statistics to update and the
/// saved ones to write, kSplitEpsilon and kSplitMomentum.
template <class P>
TrainingForwardArgs<P> split_forward_args(const P* scale, const P* offset, P* running_mean,
                                          P* running_var, P* saved_mean, P* saved_invstd) {
  TrainingForwardArgs<P> a;
  a.affine = {scale, offset};
  a.epsilon = kSplitEpsilon;
  a.running = {running_mean, running_var};
  a.momentum = Momentum::pytorch(kSplitMomentum);
  a.saved = {saved_mean, saved_invstd};
  return a;
}

/// a and b hold the same bytes.
template <class V>
bool same_bits(const V& a, const V& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(typename V::value_type)) == 0;
}

/// The forward (split_forward_args with d's scale and offset) and backward (dy, the scale)
/// that produced `got` against the whole batch's reference.
template <class T>
void expect_whole_batch_result(const Data<T>& d, const std::vector<T>& dy,
                               const SplitResult<T>& got, const std::string& what) {
  using P = param_of<T>;
  const std::size_t ranks = got.saved_mean.size();
  const auto C = static_cast<std::size_t>(d.shape.c());

  // every rank holds the same statistics, bit for bit
  for (std::size_t r = 1; r < ranks; ++r) {
    EXPECT_TRUE(same_bits(got.saved_mean[r], got.saved_mean[0])) << "saved mean of rank " << r;
    EXPECT_TRUE(same_bits(got.saved_invstd[r], got.saved_invstd[0])) << "invstd of rank " << r;
    EXPECT_TRUE(same_bits(got.running_mean[r], got.running_mean[0])) << "running mean, " << r;
    EXPECT_TRUE(same_bits(got.running_var[r], got.running_var[0])) << "running var, " << r;
  }

  ref::Params p;
  p.scale = to_doubles(to_params<P>(d.scale));
  p.offset = to_doubles(to_params<P>(d.offset));
  p.eps = kSplitEpsilon;
  const double momentum = static_cast<double>(static_cast<P>(kSplitMomentum));
  const auto r = ref::forward_training(d.shape, d.xd, p, momentum, momentum,
                                       to_doubles(to_params<P>(d.running_mean)),
                                       to_doubles(to_params<P>(d.running_var)));
  const Rounding u = rounding_of<T>();
  const double m = static_cast<double>(d.shape.m());
  std::vector<StatTolerance> st(C);
  const auto mean = to_doubles(got.saved_mean[0]), invstd = to_doubles(got.saved_invstd[0]);
  const auto rmean = to_doubles(got.running_mean[0]), rvar = to_doubles(got.running_var[0]);
  for (std::size_t c = 0; c < C; ++c) {
    st[c] = stat_tolerance(u, m, r.stats.mean[c], std::sqrt(r.stats.var[c]));
    EXPECT_NEAR(mean[c], r.stats.mean[c], st[c].mean) << "saved mean, c=" << c;
    EXPECT_NEAR(invstd[c], r.stats.invstd[c], r.stats.invstd[c] * (st[c].rel_var / 2 + 4 * u.acc))
        << "saved invstd, c=" << c;
    EXPECT_NEAR(rmean[c], r.running_mean[c],
                momentum * st[c].mean + 4 * u.acc * std::fabs(r.running_mean[c]))
        << "running mean, c=" << c;
    EXPECT_NEAR(rvar[c], r.running_var[c],
                momentum * r.stats.var_unbiased[c] * (st[c].rel_var + 4 * u.acc) +
                    4 * u.acc * r.running_var[c])
        << "running var, c=" << c;
  }
  expect_y_near(d, to_doubles(got.y), r.y, r.stats.mean, r.stats.invstd, p.offset, p.scale, st,
                what + ": y");

  // backward around the statistics the forward saved (as backward_test.cpp); dscale and doffset
  // are each rank's share, summed here as a gradient all-reduce would
  const auto dyd = to_doubles(dy);
  const auto g = ref::backward_with_stats(d.shape, d.xd, dyd, p, mean, invstd, true);
  const auto tol = backward_tolerance<T>(d.shape, d.xd, dyd, p.scale, mean, invstd, g);
  std::vector<double> dscale(C, 0), doffset(C, 0);
  for (std::size_t k = 0; k < ranks; ++k)
    for (std::size_t c = 0; c < C; ++c) {
      dscale[c] += static_cast<double>(got.dscale[k][c]);
      doffset[c] += static_cast<double>(got.doffset[k][c]);
    }
  expect_gradients_near<T>(d.shape, d.xd, dyd, g, to_doubles(got.dx), dscale, doffset, tol, true,
                           what + ": backward");
}

}  // namespace cubn::test
