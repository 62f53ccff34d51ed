/// @file backward_check.hpp
/// @brief Checking backward results against the reference with the error bounds derived in
/// backward_test.cpp's file comment; `dy_err` (optional) bounds an error already in dy itself
/// (the fused epilogue's dy * act'(p) from a pre-activation that carries the forward's error): it
/// enters the sums once (not through the growth factor) and dx through |a|.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "reference.hpp"
#include "support/bn_harness.hpp"

namespace cubn::test {

/// dy ~ N(0, 1) rounded to T (or `constant`), in the tensor's memory order.
template <class T>
inline std::vector<T> make_dy(std::size_t n, unsigned seed, double constant = std::nan("")) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> z(0, 1);
  std::vector<T> dy(n);
  for (auto& v : dy) v = from_double<T>(std::isnan(constant) ? z(rng) : constant);
  return dy;
}

/// The error bounds of backward_test.cpp's file comment, per channel and per element.
struct BackwardTolerance {
  std::vector<double> dscale, doffset, a, invstd, mean, m;
  Rounding u;

  std::vector<double> dy_err;  ///< per element; empty: none

  /// Relative error of the frozen dx = (scale * rsqrt(var + eps)) * dy in the accumulation type
  /// (backward_test.cpp's file comment): the sum's rounding halved by rsqrt, rsqrt's own error
  /// (CUDA's documented maximum, rsqrt_ulps: 2 ulp for rsqrtf, 1 for double; an ulp is at most
  /// 2 u), and the two products. The double reference's own roundings of the same formula (1 /
  /// sqrt instead of rsqrt: 4.5 u of double) join u_out in dx().
  double frozen_rel() const { return (2.5 + 2 * u.rsqrt_ulps) * u.acc; }

  double dx(std::size_t i, std::int64_t c, double x, double dy, double dx_ref, bool batch) const {
    const double xmu = x - mean[c];
    const double e = dy_err.empty() ? 0.0 : std::fabs(a[c]) * dy_err[i];
    if (!batch)
      return e + frozen_rel() * std::fabs(a[c] * dy) +
             (u.out + 4.5 * std::ldexp(1.0, -53)) * std::fabs(dx_ref) + u.out_abs + 1e-300;
    const double kx = a[c] * invstd[c] / m[c];
    return e + std::fabs(kx * xmu) * dscale[c] + std::fabs(a[c] / m[c]) * doffset[c] +
           4 * u.acc * (std::fabs(a[c] * dy) + std::fabs(kx * xmu) * 8 + std::fabs(a[c]) * 8) +
           u.out * std::fabs(dx_ref) + u.out_abs + 1e-300;
  }
};

template <class T>
BackwardTolerance backward_tolerance(const ref::Shape& sh, const std::vector<double>& x,
                                     const std::vector<double>& dy,
                                     const std::vector<double>& scale,
                                     const std::vector<double>& mean,
                                     const std::vector<double>& invstd, const ref::Gradients& g,
                                     const std::vector<double>& dy_err = {}) {
  BackwardTolerance t;
  t.u = rounding_of<T>();
  const auto C = static_cast<std::size_t>(sh.c());
  const double m = static_cast<double>(sh.m());
  const double growth = 8 * t.u.acc * (std::sqrt(m) + std::log2(m) + 8);
  t.dscale.assign(C, 0);
  t.doffset.assign(C, 0);
  std::vector<double> edscale(C, 0), edoffset(C, 0);
  for (std::int64_t n = 0; n < sh.n(); ++n)
    for (std::size_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < sh.s(); ++s) {
        const auto i = static_cast<std::size_t>(sh.index(n, static_cast<std::int64_t>(c), s));
        t.doffset[c] += std::fabs(dy[i]);
        t.dscale[c] += std::fabs(dy[i] * (x[i] - mean[c]) * invstd[c]);
        if (!dy_err.empty()) {
          edoffset[c] += dy_err[i];
          edscale[c] += dy_err[i] * std::fabs((x[i] - mean[c]) * invstd[c]);
        }
      }
  t.a.resize(C);
  for (std::size_t c = 0; c < C; ++c) {
    t.doffset[c] = growth * t.doffset[c] + edoffset[c] + 1e-300;
    t.dscale[c] = growth * t.dscale[c] + edscale[c] + 2 * t.u.acc * std::fabs(g.dscale[c]) + 1e-300;
    t.a[c] = (scale.empty() ? 1.0 : scale[c]) * invstd[c];
  }
  t.dy_err = dy_err;
  t.invstd = invstd;
  t.mean = mean;
  t.m.assign(C, m);
  return t;
}

template <class T>
void expect_gradients_near(const ref::Shape& sh, const std::vector<double>& x,
                           const std::vector<double>& dy, const ref::Gradients& r,
                           const std::vector<double>& dx, const std::vector<double>& dscale,
                           const std::vector<double>& doffset, const BackwardTolerance& t,
                           bool batch, const std::string& what) {
  for (std::size_t c = 0; c < r.dscale.size(); ++c) {
    EXPECT_NEAR(dscale[c], r.dscale[c], t.dscale[c]) << what << " dscale c=" << c;
    EXPECT_NEAR(doffset[c], r.doffset[c], t.doffset[c]) << what << " doffset c=" << c;
  }
  int bad = 0;
  double norm = 0;
  for (std::int64_t n = 0; n < sh.n(); ++n)
    for (std::int64_t c = 0; c < sh.c(); ++c)
      for (std::int64_t s = 0; s < sh.s(); ++s) {
        const auto i = static_cast<std::size_t>(sh.index(n, c, s));
        const double tol = t.dx(i, c, x[i], dy[i], r.dx[i], batch);
        norm += std::fabs(r.dx[i]);
        if (!(std::fabs(dx[i] - r.dx[i]) <= tol) && bad++ < 5)
          ADD_FAILURE() << what << ": dx[" << i << "] (n=" << n << ", c=" << c << ", s=" << s
                        << ") = " << dx[i] << ", reference " << r.dx[i] << ", tolerance " << tol;
      }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << dx.size() << " dx out of tolerance";
  if (sh.m() > 1) {
    EXPECT_GT(norm, 0) << what << ": the reference dx is all zero";
  }
}

}  // namespace cubn::test
