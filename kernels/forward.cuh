/// @file forward.cuh
/// @brief Forward batch-norm kernels: per-channel Welford statistics (split over blocks), their
/// finalization (mean, invstd, running statistics, the per-channel a and b), and y = x * a + b.
/// Thin entry points over channel_ops.cuh; statistics are merged in a fixed order (within a block,
/// then over splits in index order), so results do not depend on timing.
#pragma once

#include <cstdint>

#include "channel_ops.cuh"
#include "platform.cuh"
#include "types.cuh"
#include "welford.cuh"

namespace cubn::kernels {

/// Where the per-channel a (scale * invstd) and b (offset - mean * a) of y = x * a + b come from:
/// precomputed by bn_finalize_stats (training), or computed from running statistics (inference).
template <class Acc>
struct ChannelAffine {
  struct Coeffs {
    Acc a, b;
  };

  const Acc* a = nullptr;  ///< precomputed, with b; null for inference
  const Acc* b = nullptr;
  const Acc* mean = nullptr;  ///< inference: running statistics and the affine parameters
  const Acc* var = nullptr;
  const Acc* scale = nullptr;
  const Acc* offset = nullptr;
  Acc epsilon = Acc(0);

  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    if (a != nullptr) return {a[ch], b[ch]};
    const Acc invstd = Acc(1) / sqrt_acc(var[ch] + epsilon);
    const Acc ac = (scale != nullptr ? scale[ch] : Acc(1)) * invstd;
    return {ac, (offset != nullptr ? offset[ch] : Acc(0)) - mean[ch] * ac};
  }
  CUBN_DEVICE Acc apply(const Coeffs& k, Acc x, Acc) const { return x * k.a + k.b; }
};

/// Welford statistics of x as a channel reduction (channel_ops.cuh).
template <class Acc>
struct WelfordOp {
  using State = WelfordState<Acc>;
  struct Channel {};
  CUBN_DEVICE Channel channel(std::int64_t) const { return {}; }
  CUBN_DEVICE void update(State& s, const Channel&, Acc x, Acc) const { welford_update(s, x); }
  CUBN_DEVICE State merge(const State& a, const State& b) const { return welford_merge(a, b); }
};

/// Partial Welford statistics of channel blockIdx.x over split blockIdx.y, written to
/// partials[blockIdx.y * C + blockIdx.x].
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_stats_channels_first(ChannelsFirstGeometry g, const T* __restrict__ x,
                            WelfordState<acc_t<T>>* __restrict__ partials) {
  reduce_channels_first<T, V>(x, static_cast<const T*>(nullptr), g, WelfordOp<acc_t<T>>{},
                              partials);
}

/// Partial Welford statistics of the V channels each thread owns over split blockIdx.y, written
/// to partials[blockIdx.y * C + channel].
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_stats_channels_last(ChannelsLastGeometry g, const T* __restrict__ x,
                           WelfordState<acc_t<T>>* __restrict__ partials) {
  reduce_channels_last<T, V>(x, static_cast<const T*>(nullptr), g, WelfordOp<acc_t<T>>{}, partials);
}

/// What bn_finalize_stats reads and writes; optional pointers may be null.
template <class Acc>
struct FinalizeArgs {
  const WelfordState<Acc>* partials;  ///< [splits][C]
  std::int64_t splits, c;
  Acc epsilon;
  const Acc* scale;
  const Acc* offset;
  Acc* running_mean;
  Acc* running_var;
  Acc momentum_mean, momentum_var;
  Acc* saved_mean;
  Acc* saved_invstd;
  Acc* a;  ///< [C], for the normalize kernel
  Acc* b;
};

/// One thread per channel: merges the partial states in split order, then writes mean and invstd,
/// updates the running statistics (unbiased variance M2 / (M - 1)) and stores a and b.
template <class Acc>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_finalize_stats(FinalizeArgs<Acc> p) {
  const std::int64_t ch = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= p.c) return;
  WelfordState<Acc> st;
  for (std::int64_t k = 0; k < p.splits; ++k) st = welford_merge(st, p.partials[k * p.c + ch]);
  const Acc m = static_cast<Acc>(st.count);
  const Acc var = st.m2 / m;
  const Acc invstd = Acc(1) / sqrt_acc(var + p.epsilon);
  if (p.saved_mean != nullptr) p.saved_mean[ch] = st.mean;
  if (p.saved_invstd != nullptr) p.saved_invstd[ch] = invstd;
  if (p.running_mean != nullptr)
    p.running_mean[ch] =
        (Acc(1) - p.momentum_mean) * p.running_mean[ch] + p.momentum_mean * st.mean;
  if (p.running_var != nullptr)
    p.running_var[ch] =
        (Acc(1) - p.momentum_var) * p.running_var[ch] + p.momentum_var * (st.m2 / (m - Acc(1)));
  const Acc a = (p.scale != nullptr ? p.scale[ch] : Acc(1)) * invstd;
  p.a[ch] = a;
  p.b[ch] = (p.offset != nullptr ? p.offset[ch] : Acc(0)) - st.mean * a;
}

/// y = x * a + b over a channels-first tensor. y may equal x.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_normalize_channels_first(ChannelsFirstGeometry g, const T* x, T* y,
                                ChannelAffine<acc_t<T>> affine) {
  map_channels_first<T, V>(x, static_cast<const T*>(nullptr), y, g, affine);
}

/// y = x * a + b over a channels-last tensor. y may equal x.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_normalize_channels_last(ChannelsLastGeometry g, const T* x, T* y,
                               ChannelAffine<acc_t<T>> affine) {
  map_channels_last<T, V>(x, static_cast<const T*>(nullptr), y, g, affine);
}

}  // namespace cubn::kernels
