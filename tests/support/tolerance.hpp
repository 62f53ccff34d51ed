/// @file tolerance.hpp
/// @brief The error bounds forward and backward results are checked with, derived here once.
///
/// Notation: u_acc is the unit roundoff of the accumulation type (2^-24 for float, 2^-53 for
/// double), u_out that of the output type (fp16 2^-11, bf16 2^-8, fp32 2^-24, fp64 2^-53), M the
/// elements per channel, scale = |mean| + sigma of the channel's data.
///
/// Statistics. Each rounding in a Welford update or a Chan merge perturbs the mean by at most
/// about u_acc * scale and M2's increment delta * (x - mean) by about u_acc * scale * sigma. The
/// worst case adds these linearly (M of them); rounding errors of random data grow like sqrt(M)
/// (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., ch. 4). We bound with
///   tol_mean = 8 u_acc (sqrt(M) + log2(M) + 8) scale
///   rel_var  = 8 u_acc (sqrt(M) + log2(M) + 8) scale / sigma
/// (the log2 term for the merge tree, 8 for the few roundings of the finalization, and a factor
/// of 8 as margin over the sqrt model). An error that touches the count or drops an element is
/// of order 1/M and fails these for the test sizes (M <= 10^5 gives 1/M >= 10^-5 against
/// tol ~ 10^-5 relative at M = 10^5; smaller M fails by more).
///
/// Outputs. y = x * a + b in the accumulation type rounds x * a and the sum: 2 u_acc (|x a| +
/// |b|); a and b carry the statistics' error: |a| tol_mean + |x - mean| |a| rel_var / 2; the
/// final rounding to the output type adds u_out |y| (plus out_abs where y is subnormal). (The x * a
/// + b form trades accuracy for one FMA when |mean| >> sigma; the first term states that cost.)
#pragma once

#include <cmath>

namespace cubn::test {

struct Rounding {
  double acc;      ///< u of the accumulation type
  double out;      ///< u of the element type (relative, for normal numbers)
  double out_abs;  ///< half the smallest subnormal of the element type: the absolute rounding
                   ///< error below its normal range (fp16 2^-25; negligible for the others)
  double rsqrt_ulps = 0;  ///< the accumulation type's rsqrt error in ulp, CUDA's documented
                          ///< maximum (Programming Guide, Mathematical Functions): rsqrtf 2,
                          ///< rsqrt (double) 1
};

/// Statistic tolerances of one channel.
struct StatTolerance {
  double mean;     ///< absolute
  double rel_var;  ///< relative, for the variance (invstd gets half of it)
};

inline StatTolerance stat_tolerance(const Rounding& u, double m, double mean, double sigma) {
  const double growth = 8 * u.acc * (std::sqrt(m) + std::log2(m) + 8);
  const double scale = std::fabs(mean) + sigma;
  const double s = sigma > 0 ? sigma : 1;
  return {growth * scale, growth * scale / s};
}

/// Tolerance of one output y = (x - mean) * a + offset with a = scale * invstd.
inline double y_tolerance(const Rounding& u, const StatTolerance& st, double x, double mean,
                          double a, double offset, double y_ref) {
  const double b = offset - mean * a;
  return 2 * u.acc * (std::fabs(x * a) + std::fabs(b)) + std::fabs(a) * st.mean +
         std::fabs((x - mean) * a) * (st.rel_var / 2 + 2 * u.acc) + u.out * std::fabs(y_ref) +
         u.out_abs + 1e-300;
}

}  // namespace cubn::test
