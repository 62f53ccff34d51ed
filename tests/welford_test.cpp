// Welford's update and Chan's merge (kernels/welford.cuh), run as host code.
//
// Tolerances. u = 2^-24 (fp32 unit roundoff). One Welford update changes mean and M2 with a few
// roundings relative to |mean| + |x - mean|; over n updates the errors add at worst linearly, so
// |mean - exact| <= c * n * u * (|mean| + sigma) and |var - exact| <= c * n * u * (|mean| + sigma)
// * sigma, with c = 4 covering the roundings of one step. A merge adds O(u) relative error to
// each. The bounds are worst-case (random rounding grows like sqrt(n)); the large-offset test
// shows sum/sum-of-squares failing where Welford holds.
#include "forward.cuh"
#include "reference.hpp"
#include "welford.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
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

// The masked loops' Welford folds (WelfordOp::absorb_flagged_packs and
// absorb_flagged_slot_columns, which kernels/channel_ops.cuh's absorb_valid calls where every pack
// of a visit is whole or empty, and absorb_flagged_columns, the channels-last loop whose packs are
// all whole or empty): packs flagged 0 hold the zeros of an unread pack and must count
// for nothing; with every flag 1 the fold must equal the unmasked one bit for bit (the lengths all
// L case). Visits alternate between all flags 1 and each of the 15 other non-empty patterns of
// U = 4 packs, so the folds run from empty and partial states through both of flagged_group's
// merges (fp16's 32 values: two halves of equal and of unequal counts). Tolerances: those of
// expect_close above, for the n values folded (the executor's rcp_approx divides).
template <class T, int V>
void check_flagged_folds(unsigned seed) {
  using Op = cubn::kernels::WelfordOp<float>;
  using P = cubn::kernels::Pack<T, V>;
  using cubn::kernels::from_acc;
  using cubn::kernels::to_acc;
  constexpr int U = 4;
  constexpr double kSigma = 2.0;
  const Op op;
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(3.0, kSigma);
  const Op::Channel c{Op::kShifted<T> ? 3.25f : 0.0f};
  const auto slot = [&](int) { return c; };
  for (unsigned pattern = 1; pattern < 15; ++pattern) {
    Op::Local masked{}, plain{};
    Op::SlotColumns<V> masked_cols{}, plain_cols{};
    Op::Columns<V> masked_one{}, plain_one{};
    std::vector<float> kept, kept_slot[V];
    bool all_whole = true;  // every visit so far had every flag 1: plain is the unmasked fold
    for (int visit = 0; visit < 6; ++visit) {
      const unsigned flags = visit % 2 == 0 ? 15u : pattern;
      P x[U];
      float f[U];
      for (int u = 0; u < U; ++u) {
        f[u] = (flags >> u) & 1u ? 1.0f : 0.0f;
        for (int k = 0; k < V; ++k) {
          x[u].v[k] = from_acc<T>(f[u] != 0.0f ? static_cast<float>(d(rng)) : 0.0f);
          if (f[u] != 0.0f) {
            kept.push_back(to_acc(x[u].v[k]));
            kept_slot[k].push_back(to_acc(x[u].v[k]));
          }
        }
      }
      op.absorb_flagged_packs(masked, c, x, f);
      op.absorb_flagged_slot_columns(masked_cols, slot, x, f);
      op.absorb_flagged_columns(masked_one, slot, x, f);
      if (flags == 15u && all_whole) {
        op.absorb_packs(plain, c, x, x);
        op.absorb_slot_columns(plain_cols, slot, x, x);
        op.absorb_columns(plain_one, slot, x, x);
        EXPECT_EQ(std::memcmp(&masked, &plain, sizeof masked), 0) << "pattern " << pattern;
        EXPECT_EQ(std::memcmp(&masked_cols, &plain_cols, sizeof masked_cols), 0);
        EXPECT_EQ(std::memcmp(&masked_one, &plain_one, sizeof masked_one), 0);
      }
      all_whole = all_whole && flags == 15u;
      State s = op.to_state(masked);
      s.mean += c.shift;
      expect_close(s, cubn::ref::moments(kept, 0, kept.size()), kept.size(), kSigma);
      for (int k = 0; k < V; ++k) {
        State sk = op.slot_state(masked_cols, k);
        sk.mean += c.shift;
        const auto& v = kept_slot[k];
        expect_close(sk, cubn::ref::moments(v, 0, v.size()), v.size(), kSigma);
        State ok = op.column_state(masked_one, k);
        ok.mean += c.shift;
        expect_close(ok, cubn::ref::moments(v, 0, v.size()), v.size(), kSigma);
      }
    }
  }
}

TEST(MaskedWelford, FlaggedPacksFoldTheWholePacksAloneAndAllFlagsAreTheUnmaskedFold) {
  check_flagged_folds<float, 4>(11);
  check_flagged_folds<__half, 8>(12);
  check_flagged_folds<__nv_bfloat16, 8>(13);
}

}  // namespace
