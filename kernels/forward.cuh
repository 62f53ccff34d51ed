/// @file forward.cuh
/// @brief Forward batch-norm kernels: per-channel Welford statistics whose last block per set of
/// channels finishes them (mean, invstd, running statistics, the coefficients of the
/// normalization), and y = (x - shift) * a + b. Thin entry points over channel_ops.cuh;
/// statistics merge in a fixed order (within a block, then over splits by a fixed tree), so
/// results do not depend on timing or on the order in which blocks finish.
///
/// Accuracy when a channel's mean is far from zero: each channel's values are shifted by one of
/// its own values, K (its first element; 0 if that is not finite), before anything is summed, so
/// the statistics are of x - K, whose mean is within a few standard deviations of 0, and the
/// output is formed as (x - K) * a + (offset - (mean - K) * a). Without the shift the mean's own
/// rounding (ulp(mean) / 2) sits in every output: 2,300 ulp of fp32 for mean 1000, sigma 1.
#pragma once

#include <cstdint>

#include "channel_ops.cuh"
#include "platform.cuh"
#include "types.cuh"
#include "welford.cuh"

namespace cubn::kernels {

/// The coefficients of y = (x - shift) * a + b: precomputed by the statistics kernel's finish
/// (training, [3][C] in the workspace), or from running statistics (inference: shift is the
/// running mean, a = scale / sqrt(var + epsilon), b = offset).
template <class Acc>
struct ChannelAffine {
  static constexpr int kInputs = 1;
  struct Coeffs {
    Acc shift, a, b;
  };

  const Acc* k = nullptr;  ///< training: shift, a, b as [3][C]; null for inference
  std::int64_t c = 0;
  const Acc* mean = nullptr;  ///< inference: running statistics and the affine parameters
  const Acc* var = nullptr;
  const Acc* scale = nullptr;
  const Acc* offset = nullptr;
  Acc epsilon = Acc(0);

  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    if (k != nullptr) return {k[ch], k[c + ch], k[2 * c + ch]};
    const Acc invstd = Acc(1) / sqrt_acc(var[ch] + epsilon);
    return {mean[ch], (scale != nullptr ? scale[ch] : Acc(1)) * invstd,
            offset != nullptr ? offset[ch] : Acc(0)};
  }
  CUBN_DEVICE Acc apply(const Coeffs& q, Acc x, Acc) const { return (x - q.shift) * q.a + q.b; }
};

/// Welford statistics of x - K as a channel reduction (channel_ops.cuh). A thread keeps its count
/// as Acc (exact below 2^24 for float: host/plan.cpp keeps every thread below that) and folds
/// groups of values in with one Chan merge each: the group's mean and M2 from its own values
/// (two passes over registers), then one division for the weight.
template <class Acc>
struct WelfordOp {
  static constexpr int kInputs = 1;
  using State = WelfordState<Acc>;
  struct Local {
    Acc n = Acc(0), mean = Acc(0), m2 = Acc(0);
  };
  struct Channel {
    Acc shift;  ///< K
  };

  template <class T>
  CUBN_DEVICE Channel channel(const T* x, const T*, std::int64_t, std::int64_t first) const {
    const Acc k = to_acc(x[first]);
    return {k - k == Acc(0) ? k : Acc(0)};  // Inf and NaN shift by 0
  }

  /// Chan's merge of a group (weight w = its count / the new count, mean mb, M2 m2b) into l.
  CUBN_DEVICE static void fold(Local& l, Acc w, Acc mb, Acc m2b) {
    const Acc delta = mb - l.mean;
    l.m2 += m2b + delta * delta * (l.n * w);
    l.mean += delta * w;
  }

  /// Mean and M2 of N values shifted by K.
  template <int N>
  CUBN_DEVICE static void group(const Acc (&d)[N], Acc& mb, Acc& m2b) {
    Acc s[N];
    CUBN_UNROLL
    for (int k = 0; k < N; ++k) s[k] = d[k];
    CUBN_UNROLL
    for (int w = N / 2; w >= 1; w /= 2) {
      CUBN_UNROLL
      for (int k = 0; k < w; ++k) s[k] += s[k + w];
    }
    mb = s[0] * (Acc(1) / Acc(N));
    m2b = Acc(0);
    CUBN_UNROLL
    for (int k = 0; k < N; ++k) {
      const Acc e = d[k] - mb;
      m2b += e * e;
    }
  }

  template <int N>
  CUBN_DEVICE void absorb(Local& l, const Channel& c, const Acc (&x)[N], const Acc (&)[N]) const {
    Acc d[N];
    CUBN_UNROLL
    for (int k = 0; k < N; ++k) d[k] = x[k] - c.shift;
    Acc mb, m2b;
    group<N>(d, mb, m2b);
    const Acc n = l.n + Acc(N);
    fold(l, fast_div(Acc(N), n), mb, m2b);
    l.n = n;
  }

  template <int N, int V>
  CUBN_DEVICE void absorb_columns(Local (&l)[V], const Channel (&c)[V], const Acc (&x)[N * V],
                                  const Acc (&)[N * V]) const {
    const Acc n = l[0].n + Acc(N);  // every slot of a thread has the same count
    const Acc w = fast_div(Acc(N), n);
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      Acc d[N];
      CUBN_UNROLL
      for (int u = 0; u < N; ++u) d[u] = x[u * V + k] - c[k].shift;
      Acc mb, m2b;
      group<N>(d, mb, m2b);
      fold(l[k], w, mb, m2b);
      l[k].n = n;
    }
  }

  CUBN_DEVICE void absorb_one(Local& l, const Channel& c, Acc x, Acc) const {
    const Acc n = l.n + Acc(1);
    fold(l, fast_div(Acc(1), n), x - c.shift, Acc(0));
    l.n = n;
  }

  CUBN_DEVICE State to_state(const Local& l) const {
    State s;
    s.count = static_cast<std::int64_t>(l.n);
    s.mean = l.mean;
    s.m2 = l.m2;
    return s;
  }
  CUBN_DEVICE State merge(const State& a, const State& b) const { return welford_merge(a, b); }
};

/// What finishing a channel's statistics writes; optional pointers may be null.
template <class Acc>
struct ForwardFinish {
  std::int64_t c = 0;
  Acc epsilon = Acc(0);
  const Acc* scale = nullptr;
  const Acc* offset = nullptr;
  Acc* running_mean = nullptr;
  Acc* running_var = nullptr;
  Acc momentum_mean = Acc(0), momentum_var = Acc(0);
  Acc* saved_mean = nullptr;
  Acc* saved_invstd = nullptr;
  Acc* k = nullptr;  ///< [3][C]: shift, a, b of ChannelAffine

  /// Mean and invstd of channel ch from its statistics of x - K; the running statistics (unbiased
  /// variance M2 / (M - 1)); the normalization's coefficients.
  CUBN_DEVICE void finish(std::int64_t ch, const WelfordState<Acc>& st,
                          const typename WelfordOp<Acc>::Channel& cst) const {
    const Acc m = static_cast<Acc>(st.count);
    const Acc invstd = Acc(1) / sqrt_acc(st.m2 / m + epsilon);
    const Acc mean = cst.shift + st.mean;
    if (saved_mean != nullptr) saved_mean[ch] = mean;
    if (saved_invstd != nullptr) saved_invstd[ch] = invstd;
    if (running_mean != nullptr)
      running_mean[ch] = (Acc(1) - momentum_mean) * running_mean[ch] + momentum_mean * mean;
    if (running_var != nullptr)
      running_var[ch] =
          (Acc(1) - momentum_var) * running_var[ch] + momentum_var * (st.m2 / (m - Acc(1)));
    const Acc a = (scale != nullptr ? scale[ch] : Acc(1)) * invstd;
    k[ch] = cst.shift;
    k[c + ch] = a;
    k[2 * c + ch] = (offset != nullptr ? offset[ch] : Acc(0)) - st.mean * a;
  }
};

/// Welford statistics of channel blockIdx.x over split blockIdx.y; the last block of each set of
/// channels finishes them. With g.fuse (one split, whole packs per plane) the block then writes
/// its channel's y: the whole training forward in this one launch. y may equal x.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_stats_channels_first(ChannelsFirstReduce g, const T* x, WelfordState<acc_t<T>>* partials,
                            unsigned* tickets, ForwardFinish<acc_t<T>> fin, T* y) {
  using Acc = acc_t<T>;
  if (!reduce_planes<T, V>(x, static_cast<const T*>(nullptr), g, WelfordOp<Acc>{}, partials,
                           tickets, fin) ||
      !g.fuse)
    return;
  ChannelAffine<Acc> affine;
  affine.k = fin.k;
  affine.c = g.c;
  map_own_planes<T, V>(x, static_cast<const T*>(nullptr), y, g, affine, blockIdx.x);
}

/// Welford statistics of the V slots each thread owns over split blockIdx.y; the last block of
/// each set of column blocks (and of all, where channels span column blocks) finishes them. With
/// g.fuse (one split, whole channels per column block) the block then writes its columns' y.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_stats_channels_last(ChannelsLastGeometry g, const T* x, WelfordState<acc_t<T>>* partials,
                           WelfordState<acc_t<T>>* totals, unsigned* tickets,
                           ForwardFinish<acc_t<T>> fin, T* y) {
  using Acc = acc_t<T>;
  if (!reduce_columns<T, V>(x, static_cast<const T*>(nullptr), g, WelfordOp<Acc>{}, partials,
                            totals, tickets, fin) ||
      !g.fuse)
    return;
  ChannelAffine<Acc> affine;
  affine.k = fin.k;
  affine.c = g.c;
  map_columns<T, V>(x, static_cast<const T*>(nullptr), y, g, affine);
}

/// y = (x - shift) * a + b over a channels-first tensor. y may equal x.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_normalize_channels_first(ChannelsFirstMap g, const T* x, T* y,
                                ChannelAffine<acc_t<T>> affine) {
  map_planes<T, V>(x, static_cast<const T*>(nullptr), y, g, affine);
}

/// y = (x - shift) * a + b over a channels-last tensor. y may equal x.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_normalize_channels_last(ChannelsLastGeometry g, const T* x, T* y,
                               ChannelAffine<acc_t<T>> affine) {
  map_columns<T, V>(x, static_cast<const T*>(nullptr), y, g, affine);
}

}  // namespace cubn::kernels
