/// @file welford.cuh
/// @brief Welford's running (count, mean, M2) and Chan's merge, shared by host and device.
///
/// Welford, "Note on a method for calculating corrected sums of squares and products",
/// Technometrics 4(3), 1962: one pass, no catastrophic cancellation. Chan, Golub and LeVeque,
/// "Updating formulae and a pairwise algorithm for computing sample variances", 1979: merging two
/// partial states, so a reduction can be split over threads, warps and blocks. Never
/// sum/sum-of-squares: with values near 1e6 and variance 1, E[x^2] - E[x]^2 loses every digit of
/// the variance in fp32.
#pragma once

#include <cstdint>

#include "platform.cuh"

namespace cubn::kernels {

/// A partial Welford state over `count` values: their mean and the sum of squared deviations
/// from it (M2). Acc is float for fp16/bf16/fp32 data and double for fp64. A default state is
/// empty and merges as the identity.
template <class Acc>
struct WelfordState {
  std::int64_t count = 0;
  Acc mean = Acc(0);
  Acc m2 = Acc(0);
};

/// Adds one value to a state.
template <class Acc>
CUBN_HOST_DEVICE void welford_update(WelfordState<Acc>& s, Acc x) {
  s.count += 1;
  const Acc delta = x - s.mean;
  s.mean += delta / static_cast<Acc>(s.count);
  s.m2 += delta * (x - s.mean);
}

/// Chan's merge of two states. An empty side returns the other unchanged (bit for bit), so
/// padding lanes and blocks with no data cost nothing and cannot turn Inf into NaN.
template <class Acc>
CUBN_HOST_DEVICE WelfordState<Acc> welford_merge(const WelfordState<Acc>& a,
                                                 const WelfordState<Acc>& b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  WelfordState<Acc> r;
  r.count = a.count + b.count;
  const Acc delta = b.mean - a.mean;
  const Acc wb = static_cast<Acc>(b.count) / static_cast<Acc>(r.count);
  r.mean = a.mean + delta * wb;
  r.m2 = a.m2 + b.m2 + delta * delta * static_cast<Acc>(a.count) * wb;
  return r;
}

/// The merge as a function object, for block collectives.
struct WelfordMerge {
  template <class Acc>
  CUBN_HOST_DEVICE WelfordState<Acc> operator()(const WelfordState<Acc>& a,
                                                const WelfordState<Acc>& b) const {
    return welford_merge(a, b);
  }
};

/// Biased (population) variance M2 / count; 0 for an empty state.
template <class Acc>
CUBN_HOST_DEVICE Acc welford_variance(const WelfordState<Acc>& s) {
  return s.count > 0 ? s.m2 / static_cast<Acc>(s.count) : Acc(0);
}

/// Exchanges a state across a warp with __shfl_xor_sync (member by member), for butterfly
/// reductions that leave the result in every lane.
template <class Acc>
CUBN_DEVICE WelfordState<Acc> shfl_xor(unsigned mask, const WelfordState<Acc>& s, int lane_mask) {
  WelfordState<Acc> r;
  r.count = __shfl_xor_sync(mask, static_cast<long long>(s.count), lane_mask);
  r.mean = __shfl_xor_sync(mask, s.mean, lane_mask);
  r.m2 = __shfl_xor_sync(mask, s.m2, lane_mask);
  return r;
}

}  // namespace cubn::kernels
