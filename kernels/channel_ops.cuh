/// @file channel_ops.cuh
/// @brief The two shapes every batch-norm kernel takes, as block-level device functions that the
/// named __global__ entry points (forward.cuh, backward.cuh) call:
///  - reduce_*: per-channel reduction of one or two tensors into one partial state per (split,
///    channel), merged within the block in a fixed order;
///  - map_*: an elementwise map out = f(in0, in1) with per-channel coefficients.
///
/// Work decomposition (host/plan.cpp chooses the numbers):
///  - channels-first, memory [N][C][S]: a channel is N rows of S contiguous elements. A row is cut
///    into chunks of bx * V elements; a block of kBlockThreads threads is by = kBlockThreads / bx
///    rows of bx threads, each thread taking V consecutive elements of a chunk. Tiles (row, chunk)
///    are dealt to the thread rows in turn.
///  - channels-last, memory [R][C] with R = N * S rows: each thread owns V consecutive channels
///    (bx threads across C), and the block's by thread rows and the grid's y blocks stride over R.
/// V > 1 only where the contiguous extent (S or C) divides by V and the pointers are 16-byte
/// aligned, so a vector never crosses a row. All indexing is 64-bit.
///
/// A reduction op R provides: State (default-constructed empty); Channel, per-channel constants
/// from R::channel(c); update(State&, const Channel&, Acc in0, Acc in1); merge(State, State).
/// A map op F provides: Coeffs from F::coeffs(c); apply(const Coeffs&, Acc in0, Acc in1).
/// An op that reads one tensor ignores in1 (its pointer may be null).
#pragma once

#include <cstdint>

#include "block_reduce.cuh"
#include "geometry.hpp"
#include "memory.cuh"
#include "platform.cuh"
#include "types.cuh"

namespace cubn::kernels {

/// Thread coordinates of the (bx, by) decomposition of a kBlockThreads block.
struct ThreadTile {
  int bx, by, tx, ty;
  CUBN_DEVICE explicit ThreadTile(int width)
      : bx(width),
        by(kBlockThreads / width),
        tx(static_cast<int>(threadIdx.x) % width),
        ty(static_cast<int>(threadIdx.x) / width) {}
};

/// Loads V elements of `p` at offset i as Acc, or zeros when `p` is null.
template <int V, class T>
CUBN_DEVICE void load_acc(const T* p, std::int64_t i, acc_t<T> (&out)[V]) {
  if (p == nullptr) {
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) out[k] = acc_t<T>(0);
    return;
  }
  const Pack<T, V> v = load_pack<V>(p + i);
  CUBN_UNROLL
  for (int k = 0; k < V; ++k) out[k] = to_acc(v.v[k]);
}

/// Reduces channel blockIdx.x of a channels-first tensor over split blockIdx.y of gridDim.y into
/// partials[blockIdx.y * C + blockIdx.x].
template <class T, int V, class R>
CUBN_DEVICE void reduce_channels_first(const T* in0, const T* in1, const ChannelsFirstGeometry& g,
                                       const R& op, typename R::State* partials) {
  using Acc = acc_t<T>;
  using State = typename R::State;
  const ThreadTile tt(g.bx);
  const std::int64_t ch = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const std::int64_t tiles = g.n * g.chunks, chunk_len = static_cast<std::int64_t>(tt.bx) * V;
  const typename R::Channel cst = op.channel(ch);
  State st;
  for (std::int64_t t = split * tt.by + tt.ty; t < tiles; t += splits * tt.by) {
    const std::int64_t n = t / g.chunks;
    const std::int64_t s = (t - n * g.chunks) * chunk_len + static_cast<std::int64_t>(tt.tx) * V;
    if (s >= g.s) continue;
    const std::int64_t i = (n * g.c + ch) * g.s + s;
    Acc a[V], b[V];
    load_acc<V>(in0, i, a);
    load_acc<V>(in1, i, b);
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) op.update(st, cst, a[k], b[k]);
  }
  using Reduce = BlockReduce<State, kBlockThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const auto total =
      Reduce(storage).reduce(st, [&op](const State& x, const State& y) { return op.merge(x, y); });
  if (threadIdx.x == 0) partials[split * g.c + ch] = total.get();
}

/// Reduces the V channels each thread owns of a channels-last tensor over split blockIdx.y of
/// gridDim.y into partials[blockIdx.y * C + channel].
template <class T, int V, class R>
CUBN_DEVICE void reduce_channels_last(const T* in0, const T* in1, const ChannelsLastGeometry& g,
                                      const R& op, typename R::State* partials) {
  using Acc = acc_t<T>;
  using State = typename R::State;
  const ThreadTile tt(g.bx);
  const std::int64_t c0 = (static_cast<std::int64_t>(blockIdx.x) * tt.bx + tt.tx) * V;
  const std::int64_t split = blockIdx.y, splits = gridDim.y;
  State st[V];
  if (c0 < g.c) {
    typename R::Channel cst[V];
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) cst[k] = op.channel(c0 + k);
    for (std::int64_t r = split * tt.by + tt.ty; r < g.rows; r += splits * tt.by) {
      Acc a[V], b[V];
      load_acc<V>(in0, r * g.c + c0, a);
      load_acc<V>(in1, r * g.c + c0, b);
      CUBN_UNROLL
      for (int k = 0; k < V; ++k) op.update(st[k], cst[k], a[k], b[k]);
    }
  }
  // merge the by thread rows of each channel in row order, one of the V channels at a time
  __shared__ State rows[kBlockThreads];
  CUBN_UNROLL
  for (int k = 0; k < V; ++k) {
    rows[threadIdx.x] = st[k];
    __syncthreads();
    if (tt.ty == 0 && c0 + k < g.c) {
      State m = rows[tt.tx];
      for (int j = 1; j < tt.by; ++j) m = op.merge(m, rows[j * tt.bx + tt.tx]);
      partials[split * g.c + c0 + k] = m;
    }
    __syncthreads();
  }
}

/// out = f(in0, in1) over a channels-first tensor: tiles (row, chunk) of the N * C rows, dealt to
/// the thread rows of the grid in turn. out may equal in0 or in1.
template <class T, int V, class F>
CUBN_DEVICE void map_channels_first(const T* in0, const T* in1, T* out,
                                    const ChannelsFirstGeometry& g, const F& f) {
  using Acc = acc_t<T>;
  const ThreadTile tt(g.bx);
  const std::int64_t tiles = g.n * g.c * g.chunks, chunk_len = static_cast<std::int64_t>(tt.bx) * V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * tt.by;
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * tt.by + tt.ty; t < tiles;
       t += stride) {
    const std::int64_t row = t / g.chunks;
    const std::int64_t s = (t - row * g.chunks) * chunk_len + static_cast<std::int64_t>(tt.tx) * V;
    if (s >= g.s) continue;
    const typename F::Coeffs k = f.coeffs(row % g.c);
    const std::int64_t i = row * g.s + s;
    Acc a[V], b[V];
    load_acc<V>(in0, i, a);
    load_acc<V>(in1, i, b);
    Pack<T, V> o;
    CUBN_UNROLL
    for (int v = 0; v < V; ++v) o.v[v] = from_acc<T>(f.apply(k, a[v], b[v]));
    store_pack<V>(out + i, o);
  }
}

/// out = f(in0, in1) over a channels-last tensor: each thread owns V channels and strides over
/// rows. out may equal in0 or in1.
template <class T, int V, class F>
CUBN_DEVICE void map_channels_last(const T* in0, const T* in1, T* out,
                                   const ChannelsLastGeometry& g, const F& f) {
  using Acc = acc_t<T>;
  const ThreadTile tt(g.bx);
  const std::int64_t c0 = (static_cast<std::int64_t>(blockIdx.x) * tt.bx + tt.tx) * V;
  if (c0 >= g.c) return;
  typename F::Coeffs k[V];
  CUBN_UNROLL
  for (int v = 0; v < V; ++v) k[v] = f.coeffs(c0 + v);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.y) * tt.by;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.y) * tt.by + tt.ty; r < g.rows;
       r += stride) {
    const std::int64_t i = r * g.c + c0;
    Acc a[V], b[V];
    load_acc<V>(in0, i, a);
    load_acc<V>(in1, i, b);
    Pack<T, V> o;
    CUBN_UNROLL
    for (int v = 0; v < V; ++v) o.v[v] = from_acc<T>(f.apply(k[v], a[v], b[v]));
    store_pack<V>(out + i, o);
  }
}

}  // namespace cubn::kernels
