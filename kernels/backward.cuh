/// @file backward.cuh
/// @brief Backward batch-norm kernels: per-channel sums of dy and dy * (x - mean) (split over
/// blocks), their finalization (dscale, doffset and dx's per-channel coefficients), and dx.
///
/// With xhat = (x - mean) * invstd and a = scale * invstd, per channel over its M elements:
///   doffset = sum(dy), dscale = sum(dy * xhat) = invstd * sum(dy * (x - mean)),
///   training: dx = a / M * (M dy - sum(dy) - xhat * sum(dy * xhat))
///               = a dy - (a invstd sum(dy xhat) / M) (x - mean) - a sum(dy) / M,
///   frozen statistics: dx = a dy.
/// Sums accumulate per thread in Acc and merge in a fixed order: deterministic.
#pragma once

#include <cstdint>

#include "channel_ops.cuh"
#include "platform.cuh"
#include "types.cuh"

namespace cubn::kernels {

/// Partial per-channel sums of the backward pass.
template <class Acc>
struct GradSums {
  Acc dy = Acc(0);      ///< sum(dy)
  Acc dy_xmu = Acc(0);  ///< sum(dy * (x - mean))
};

/// The gradient sums as a channel reduction of (in0 = dy, in1 = x).
template <class Acc>
struct GradSumOp {
  using State = GradSums<Acc>;
  const Acc* mean;  ///< the statistics xhat was formed with: saved or running
  struct Channel {
    Acc mean;
  };
  CUBN_DEVICE Channel channel(std::int64_t c) const { return {mean[c]}; }
  CUBN_DEVICE void update(State& s, const Channel& ch, Acc dy, Acc x) const {
    s.dy += dy;
    s.dy_xmu += dy * (x - ch.mean);
  }
  CUBN_DEVICE State merge(const State& a, const State& b) const {
    return {a.dy + b.dy, a.dy_xmu + b.dy_xmu};
  }
};

/// Per-channel coefficients of dx = k_dy * dy + k_x * (x - mean) + k_1, in a [4][C] array:
/// k_dy, k_x, mean, k_1.
template <class Acc>
struct TrainingDxOp {
  struct Coeffs {
    Acc k_dy, k_x, mean, k_1;
  };
  const Acc* k;
  std::int64_t c;
  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    return {k[ch], k[c + ch], k[2 * c + ch], k[3 * c + ch]};
  }
  CUBN_DEVICE Acc apply(const Coeffs& q, Acc dy, Acc x) const {
    return q.k_dy * dy + q.k_x * (x - q.mean) + q.k_1;
  }
};

/// dx = scale / sqrt(running_var + epsilon) * dy: no reduction, x not read.
template <class Acc>
struct FrozenDxOp {
  struct Coeffs {
    Acc a;
  };
  const Acc* scale;  ///< null means 1
  const Acc* var;
  Acc epsilon;
  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    return {(scale != nullptr ? scale[ch] : Acc(1)) / sqrt_acc(var[ch] + epsilon)};
  }
  CUBN_DEVICE Acc apply(const Coeffs& q, Acc dy, Acc) const { return q.a * dy; }
};

/// Partial gradient sums of channel blockIdx.x over split blockIdx.y.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_backward_sums_channels_first(ChannelsFirstGeometry g, const T* __restrict__ dy,
                                    const T* __restrict__ x, GradSumOp<acc_t<T>> op,
                                    GradSums<acc_t<T>>* __restrict__ partials) {
  reduce_channels_first<T, V>(dy, x, g, op, partials);
}

/// Partial gradient sums of the V channels each thread owns over split blockIdx.y.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_backward_sums_channels_last(ChannelsLastGeometry g, const T* __restrict__ dy,
                                   const T* __restrict__ x, GradSumOp<acc_t<T>> op,
                                   GradSums<acc_t<T>>* __restrict__ partials) {
  reduce_channels_last<T, V>(dy, x, g, op, partials);
}

/// What bn_backward_finalize reads and writes; optional pointers may be null.
template <class Acc>
struct BackwardFinalizeArgs {
  const GradSums<Acc>* partials;  ///< [splits][C]
  std::int64_t splits, c;
  Acc m;              ///< elements per channel
  const Acc* scale;   ///< null means 1
  const Acc* mean;    ///< saved (training) or running (frozen)
  const Acc* invstd;  ///< training: saved invstd; null for frozen statistics
  const Acc* var;     ///< frozen: running variance, with epsilon
  Acc epsilon;
  Acc* dscale;
  Acc* doffset;
  bool accumulate;  ///< add to dscale and doffset instead of overwriting them
  Acc* k;           ///< training: dx's coefficients, [4][C] (TrainingDxOp); may be null
};

/// One thread per channel: merges the partial sums in split order, writes (or adds to) dscale and
/// doffset, and stores dx's coefficients.
template <class Acc>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_backward_finalize(BackwardFinalizeArgs<Acc> p) {
  const std::int64_t ch = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= p.c) return;
  GradSums<Acc> s;
  for (std::int64_t i = 0; i < p.splits; ++i) {
    const GradSums<Acc> q = p.partials[i * p.c + ch];
    s.dy += q.dy;
    s.dy_xmu += q.dy_xmu;
  }
  const Acc invstd = p.invstd != nullptr ? p.invstd[ch] : Acc(1) / sqrt_acc(p.var[ch] + p.epsilon);
  const Acc dy_xhat = s.dy_xmu * invstd;
  if (p.dscale != nullptr) p.dscale[ch] = (p.accumulate ? p.dscale[ch] : Acc(0)) + dy_xhat;
  if (p.doffset != nullptr) p.doffset[ch] = (p.accumulate ? p.doffset[ch] : Acc(0)) + s.dy;
  if (p.k != nullptr) {
    const Acc a = (p.scale != nullptr ? p.scale[ch] : Acc(1)) * invstd;
    p.k[ch] = a;
    p.k[p.c + ch] = -a * invstd * dy_xhat / p.m;
    p.k[2 * p.c + ch] = p.mean[ch];
    p.k[3 * p.c + ch] = -a * s.dy / p.m;
  }
}

/// dx over a channels-first tensor (in0 = dy, in1 = x). dx may equal dy or x.
template <class T, int V, class Op>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_backward_dx_channels_first(ChannelsFirstGeometry g, const T* dy, const T* x, T* dx, Op op) {
  map_channels_first<T, V>(dy, x, dx, g, op);
}

/// dx over a channels-last tensor (in0 = dy, in1 = x). dx may equal dy or x.
template <class T, int V, class Op>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    bn_backward_dx_channels_last(ChannelsLastGeometry g, const T* dy, const T* x, T* dx, Op op) {
  map_channels_last<T, V>(dy, x, dx, g, op);
}

}  // namespace cubn::kernels
