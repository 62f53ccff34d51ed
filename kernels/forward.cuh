/// @file forward.cuh
/// @brief Forward batch-norm kernels: per-channel Welford statistics (split over blocks), their
/// finalization (mean, invstd, running statistics, the per-channel a and b), and y = x * a + b.
///
/// Work decomposition (host/plan.cpp chooses the numbers):
///  - channels-first, memory [N][C][S]: a channel is N rows of S contiguous elements. A row is cut
///    into chunks of bx * V elements; a block of kBlockThreads threads is by = kBlockThreads / bx
///    rows of bx threads, each thread taking V consecutive elements of a chunk. Tiles (row,
///    chunk) are dealt to the by thread rows of the blocks in turn.
///  - channels-last, memory [R][C] with R = N * S rows: each thread owns V consecutive channels
///    (bx threads across C), and the block's by thread rows and the grid's y blocks stride over R.
/// Statistics are merged within a block in a fixed order, written as one partial state per
/// (split, channel), and merged over splits in index order by bn_finalize_stats: results do not
/// depend on timing. All indexing is 64-bit.
#pragma once

#include <cstdint>

#include "block_reduce.cuh"
#include "geometry.hpp"
#include "memory.cuh"
#include "platform.cuh"
#include "types.cuh"
#include "welford.cuh"

namespace cubn::kernels {

/// Where the per-channel a (scale * invstd) and b (offset - mean * a) of y = x * a + b come from:
/// precomputed by bn_finalize_stats (training), or computed from running statistics (inference).
template <class Acc>
struct ChannelAffine {
  const Acc* a = nullptr;  ///< precomputed, with b; null for inference
  const Acc* b = nullptr;
  const Acc* mean = nullptr;  ///< inference: running statistics and the affine parameters
  const Acc* var = nullptr;
  const Acc* scale = nullptr;
  const Acc* offset = nullptr;
  Acc epsilon = Acc(0);

  CUBN_DEVICE void get(std::int64_t ch, Acc& a_out, Acc& b_out) const {
    if (a != nullptr) {
      a_out = a[ch];
      b_out = b[ch];
      return;
    }
    const Acc invstd = Acc(1) / sqrt_acc(var[ch] + epsilon);
    a_out = (scale != nullptr ? scale[ch] : Acc(1)) * invstd;
    b_out = (offset != nullptr ? offset[ch] : Acc(0)) - mean[ch] * a_out;
  }
};

/// Partial Welford statistics of channel blockIdx.x over split blockIdx.y of gridDim.y, written
/// to partials[blockIdx.y * C + blockIdx.x].
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads)
    bn_stats_channels_first(const T* __restrict__ x, ChannelsFirstGeometry g,
                            WelfordState<acc_t<T>>* __restrict__ partials) {
  using Acc = acc_t<T>;
  const int bx = g.bx, by = kBlockThreads / bx;
  const int tx = static_cast<int>(threadIdx.x) % bx, ty = static_cast<int>(threadIdx.x) / bx;
  const std::int64_t ch = blockIdx.x;
  const std::int64_t split = blockIdx.y, splits = gridDim.y;
  const std::int64_t tiles = g.n * g.chunks, chunk_len = static_cast<std::int64_t>(bx) * V;
  WelfordState<Acc> st;
  for (std::int64_t t = split * by + ty; t < tiles; t += splits * by) {
    const std::int64_t n = t / g.chunks;
    const std::int64_t s = (t - n * g.chunks) * chunk_len + static_cast<std::int64_t>(tx) * V;
    if (s >= g.s) continue;
    const T* p = x + (n * g.c + ch) * g.s + s;
    const Pack<T, V> v = load_pack<V>(p);  // V > 1 only where S % V == 0: never past the row
    for (int i = 0; i < V; ++i) welford_update(st, to_acc(v.v[i]));
  }
  using Reduce = BlockReduce<WelfordState<Acc>, kBlockThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const auto total = Reduce(storage).reduce(st, WelfordMerge{});
  if (threadIdx.x == 0) partials[split * g.c + ch] = total.get();
}

/// Partial Welford statistics of the V channels each thread owns over split blockIdx.y of
/// gridDim.y, written to partials[blockIdx.y * C + channel].
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads)
    bn_stats_channels_last(const T* __restrict__ x, ChannelsLastGeometry g,
                           WelfordState<acc_t<T>>* __restrict__ partials) {
  using Acc = acc_t<T>;
  const int bx = g.bx, by = kBlockThreads / bx;
  const int tx = static_cast<int>(threadIdx.x) % bx, ty = static_cast<int>(threadIdx.x) / bx;
  const std::int64_t c0 = (static_cast<std::int64_t>(blockIdx.x) * bx + tx) * V;
  const std::int64_t split = blockIdx.y, splits = gridDim.y;
  WelfordState<Acc> st[V];
  if (c0 < g.c) {
    for (std::int64_t r = split * by + ty; r < g.rows; r += splits * by) {
      const Pack<T, V> v = load_pack<V>(x + r * g.c + c0);  // V > 1 only where C % V == 0
      for (int i = 0; i < V; ++i) welford_update(st[i], to_acc(v.v[i]));
    }
  }
  // merge the by thread rows of each channel in row order, one of the V channels at a time
  __shared__ WelfordState<Acc> rows[kBlockThreads];
  for (int i = 0; i < V; ++i) {
    rows[threadIdx.x] = st[i];
    __syncthreads();
    if (ty == 0 && c0 + i < g.c) {
      WelfordState<Acc> m = rows[tx];
      for (int j = 1; j < by; ++j) m = welford_merge(m, rows[j * bx + tx]);
      partials[split * g.c + c0 + i] = m;
    }
    __syncthreads();
  }
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
CUBN_KERNEL void __launch_bounds__(kBlockThreads) bn_finalize_stats(FinalizeArgs<Acc> p) {
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
    p.running_mean[ch] = (Acc(1) - p.momentum_mean) * p.running_mean[ch] + p.momentum_mean * st.mean;
  if (p.running_var != nullptr)
    p.running_var[ch] =
        (Acc(1) - p.momentum_var) * p.running_var[ch] + p.momentum_var * (st.m2 / (m - Acc(1)));
  const Acc a = (p.scale != nullptr ? p.scale[ch] : Acc(1)) * invstd;
  p.a[ch] = a;
  p.b[ch] = (p.offset != nullptr ? p.offset[ch] : Acc(0)) - st.mean * a;
}

/// y = x * a + b over a channels-first tensor: tiles (row, chunk) of the N * C rows, dealt to
/// the thread rows of the grid in turn. y may equal x.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads)
    bn_normalize_channels_first(const T* x, T* y, ChannelsFirstGeometry g,
                                ChannelAffine<acc_t<T>> affine) {
  using Acc = acc_t<T>;
  const int bx = g.bx, by = kBlockThreads / bx;
  const int tx = static_cast<int>(threadIdx.x) % bx, ty = static_cast<int>(threadIdx.x) / bx;
  const std::int64_t tiles = g.n * g.c * g.chunks, chunk_len = static_cast<std::int64_t>(bx) * V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * by;
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * by + ty; t < tiles; t += stride) {
    const std::int64_t row = t / g.chunks;
    const std::int64_t s = (t - row * g.chunks) * chunk_len + static_cast<std::int64_t>(tx) * V;
    if (s >= g.s) continue;
    Acc a, b;
    affine.get(row % g.c, a, b);
    const std::int64_t i = row * g.s + s;
    const Pack<T, V> in = load_pack<V>(x + i);
    Pack<T, V> out;
    for (int k = 0; k < V; ++k) out.v[k] = from_acc<T>(to_acc(in.v[k]) * a + b);
    store_pack<V>(y + i, out);
  }
}

/// y = x * a + b over a channels-last tensor: each thread owns V channels and strides over rows.
/// y may equal x.
template <class T, int V>
CUBN_KERNEL void __launch_bounds__(kBlockThreads)
    bn_normalize_channels_last(const T* x, T* y, ChannelsLastGeometry g,
                               ChannelAffine<acc_t<T>> affine) {
  using Acc = acc_t<T>;
  const int bx = g.bx, by = kBlockThreads / bx;
  const int tx = static_cast<int>(threadIdx.x) % bx, ty = static_cast<int>(threadIdx.x) / bx;
  const std::int64_t c0 = (static_cast<std::int64_t>(blockIdx.x) * bx + tx) * V;
  if (c0 >= g.c) return;
  Acc a[V], b[V];
  for (int k = 0; k < V; ++k) affine.get(c0 + k, a[k], b[k]);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.y) * by;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.y) * by + ty; r < g.rows; r += stride) {
    const std::int64_t i = r * g.c + c0;
    const Pack<T, V> in = load_pack<V>(x + i);
    Pack<T, V> out;
    for (int k = 0; k < V; ++k) out.v[k] = from_acc<T>(to_acc(in.v[k]) * a[k] + b[k]);
    store_pack<V>(y + i, out);
  }
}

}  // namespace cubn::kernels
