/// @file persistent.cuh
/// @brief The persistent (single-read) training kernels: one cooperative launch whose blocks keep
/// the packs they load for the statistics (or the gradient sums) in shared memory, agree on the
/// per-channel results through grid-wide synchronizations, and write the output from what they
/// kept. Training forward moves x once and y once instead of x twice; backward dy and x once each
/// instead of twice. Packs that find no slot (a tensor larger than the grid's shared memory) are
/// read again, so any size runs; host/plan.cpp takes this path when most of the tensor fits.
///
/// The phases, each over the virtual blocks of PersistentGeometry (the streaming reduction's
/// blocks, so the same walkers and per-thread orders serve both paths):
///  1. each virtual block's partial state, as the streaming reduction computes it, into the
///     workspace; grid sync;
///  2. block b finishes channels b, b + gridDim.x, ...: merges the channel's partials in a fixed
///     order (merge_items), folds in its leftover elements, and writes its statistics, running
///     statistics (once per channel) and coefficients; grid sync;
///  3. the elementwise map of every virtual block from the kept packs, in the order they were kept.
/// Results do not depend on timing: every merge has a fixed order, and the grid syncs (cooperative
/// groups: device-scope fences) order the workspace between phases.
#pragma once

#include <cstdint>

#include "channel_ops.cuh"
#include "geometry.hpp"
#include "memory.cuh"
#include "platform.cuh"

namespace cubn::kernels {

/// The packs a thread keeps on chip: slot k of thread t is element k * kBlockThreads + t of the
/// block's dynamic shared memory (16 bytes, consecutive across a warp: no bank conflicts). keep()
/// stores the packs of a visit while the slots have room for all of them (of every input); fetch(),
/// called on the same sequence of visits after rewind(), takes them back from the same slots and
/// loads from global memory exactly those that found none.
template <int Inputs, class T, int V, class Smem>
struct SliceCache {
  Smem smem;
  unsigned end;  ///< slots * kBlockThreads: past the last slot's elements
  /// the next free slot's element of smem (slot k: k * kBlockThreads + threadIdx.x), advanced a
  /// visit at a time (one add a visit, not a multiply-add per pack)
  unsigned slot = threadIdx.x;

  template <int N>
  CUBN_DEVICE bool room() const {
    return slot + static_cast<unsigned>(N * Inputs) * kBlockThreads <= end;
  }
  CUBN_DEVICE void rewind() { slot = threadIdx.x; }
  /// Passes over the slots of a visit that fetch() would take, loading nothing.
  template <int N>
  CUBN_DEVICE void skip() {
    if (room<N>()) slot += N * Inputs * kBlockThreads;
  }

  template <int N>
  CUBN_DEVICE void keep(const Pack<T, V> (&a)[N], const Pack<T, V> (&b)[N]) {
    if (!room<N>()) return;
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) smem[slot + u * kBlockThreads] = a[u];
    if constexpr (Inputs == 2) {
      CUBN_UNROLL
      for (int u = 0; u < N; ++u) smem[slot + (N + u) * kBlockThreads] = b[u];
    }
    slot += N * Inputs * kBlockThreads;
  }

  template <int N>
  CUBN_DEVICE void fetch(const T* in0, const T* in1, const std::int64_t (&at)[N],
                         Pack<T, V> (&a)[N], Pack<T, V> (&b)[N]) {
    if (!room<N>()) {
      load_packs<Inputs, N, V>(in0, in1, at, a, b);
      return;
    }
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) {
      a[u] = smem[slot + u * kBlockThreads];
      if constexpr (Inputs == 2) {
        b[u] = smem[slot + (N + u) * kBlockThreads];
      } else {
        b[u] = a[u];
      }
    }
    slot += N * Inputs * kBlockThreads;
  }

  // A masked loop's packs (lengths.cuh): only those with a valid lane (`bits` not 0) take slots,
  // one pack (of every input) at a time, so a batch that is half padding keeps twice the valid
  // packs; both passes compute the same bits for the same visits, so they agree on the slots.
  CUBN_DEVICE bool room_for_one() const {
    return slot + static_cast<unsigned>(Inputs) * kBlockThreads <= end;
  }
  template <int N>
  CUBN_DEVICE void keep_valid(const Pack<T, V> (&a)[N], const Pack<T, V> (&b)[N],
                              const unsigned (&bits)[N]) {
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) {
      if (bits[u] == 0 || !room_for_one()) continue;
      smem[slot] = a[u];
      if constexpr (Inputs == 2) smem[slot + kBlockThreads] = b[u];
      slot += Inputs * kBlockThreads;
    }
  }
  template <int N>
  CUBN_DEVICE void skip_valid(const unsigned (&bits)[N]) {
    CUBN_UNROLL
    for (int u = 0; u < N; ++u)
      if (bits[u] != 0 && room_for_one()) slot += Inputs * kBlockThreads;
  }
  /// The packs keep_valid kept, from their slots; the others with a valid lane from global memory;
  /// those without one zero, not read.
  template <int N>
  CUBN_DEVICE void fetch_valid(const T* in0, const T* in1, const std::int64_t (&at)[N],
                               const unsigned (&bits)[N], Pack<T, V> (&a)[N], Pack<T, V> (&b)[N]) {
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) {
      if (bits[u] != 0 && room_for_one()) {
        a[u] = smem[slot];
        if constexpr (Inputs == 2) {
          b[u] = smem[slot + kBlockThreads];
        } else {
          b[u] = a[u];
        }
        slot += Inputs * kBlockThreads;
      } else {
        a[u] = load_pack_if<V>(in0 + at[u], bits[u] != 0);
        b[u] = Inputs == 2 ? load_pack_if<V>(in1 + at[u], bits[u] != 0) : a[u];
      }
    }
  }
};

/// Phase 2: the calling block finishes channels blockIdx.x, + gridDim.x, ... from their
/// `per_channel` partial states get(ch, k), merged in a fixed order. first(ch) is the index of the
/// channel's first element (the shift of WelfordOp), `tail` the channels of the leftovers.
template <int V, class T, class R, class Fin, class Get, class First, class Tail, class Scratch>
CUBN_DEVICE void finish_own_channels(const T* in0, const T* in1, std::int64_t numel, std::int64_t c,
                                     std::int64_t per_channel, const Get& get, const First& first,
                                     const Tail& tail, const R& op, const Fin& fin,
                                     Scratch& scratch) {
  using State = typename R::State;
  const std::int64_t b = blockIdx.x, stride = gridDim.x;
  const std::int64_t mine = b < c ? (c - 1 - b) / stride + 1 : 0;
  merge_items<State>(
      mine, per_channel, [&](std::int64_t i, std::int64_t k) { return get(b + i * stride, k); },
      scratch, [&op](const State& x, const State& y) { return op.merge(x, y); },
      [&](std::int64_t i, const State& total) {
        const std::int64_t ch = b + i * stride;
        finish_channel<V>(op, fin, in0, in1, numel, ch, first(ch), tail, total);
      });
}

/// The persistent path over channels-first planes: reduction op R of (in0, in1), finisher Fin,
/// then out = f(in0, in1). out may equal in0 or in1.
template <class T, int V, class R, class Fin, class F>
CUBN_DEVICE void persistent_planes(const T* in0, const T* in1, T* out, const ChannelsFirstReduce& g,
                                   const PersistentGeometry& pg, const R& op,
                                   typename R::State* partials, const Fin& fin, const F& f) {
  using State = typename R::State;
  using Kept = Pack<T, V>;
  CUBN_DYNAMIC_SHARED(Kept, kept);
  CUBN_SHARED(State, scratch, kBlockThreads);
  SliceCache<R::kInputs, T, V, decltype(kept)> cache{
      kept, static_cast<unsigned>(pg.slots) * static_cast<unsigned>(kBlockThreads)};
  const std::int64_t vblocks = g.c * pg.splits;
  for (std::int64_t vb = blockIdx.x; vb < vblocks; vb += gridDim.x) {
    plane_partial<T, V, false>(in0, in1, g, op, partials, vb % g.c, vb / g.c, cache);
    __syncthreads();  // before the block reduction's storage is used again
  }
  grid_sync();
  finish_own_channels<V>(
      in0, in1, g.numel, g.c, pg.splits,
      [&](std::int64_t ch, std::int64_t k) { return partials[k * g.c + ch]; },
      [&](std::int64_t ch) { return ch * g.s; }, plane_tail(g), op, fin, scratch);
  grid_sync();
  cache.rewind();
  for (std::int64_t vb = blockIdx.x; vb < vblocks; vb += gridDim.x) {
    const std::int64_t ch = vb % g.c, split = vb / g.c;
    map_channel_planes<T, V, unroll_for(streams_of<R>), false>(
        in0, in1, out, g, f, ch, static_cast<unsigned>(split * kBlockThreads + threadIdx.x), cache);
  }
  if (V > 1 && blockIdx.x == 0 && threadIdx.x == 0)
    map_leftovers<V>(in0, in1, out, g.numel, f, plane_tail(g));
}

/// The persistent path over periodic columns (channels-last; small channels-first planes).
template <class T, int V, class R, class Fin, class F>
CUBN_DEVICE void persistent_columns(const T* in0, const T* in1, T* out,
                                    const ChannelsLastGeometry& g, const PersistentGeometry& pg,
                                    const R& op, typename R::State* partials, const Fin& fin,
                                    const F& f) {
  using State = typename R::State;
  using Kept = Pack<T, V>;
  CUBN_DYNAMIC_SHARED(Kept, kept);
  CUBN_SHARED(State, rows, kBlockThreads);
  SliceCache<R::kInputs, T, V, decltype(kept)> cache{
      kept, static_cast<unsigned>(pg.slots) * static_cast<unsigned>(kBlockThreads)};
  const std::int64_t gx = pg.vblocks_x, vblocks = gx * pg.splits;
  for (std::int64_t vb = blockIdx.x; vb < vblocks; vb += gridDim.x)
    column_partials<T, V, false>(in0, in1, g, op, partials, vb % gx, vb / gx, pg.splits, cache,
                                 rows);
  grid_sync();
  const std::int64_t per_split = g.lr * g.d;
  finish_own_channels<V>(
      in0, in1, g.numel, g.c, pg.splits * per_split,
      [&](std::int64_t ch, std::int64_t k) {
        const std::int64_t split = k / per_split, rest = k - split * per_split;
        const std::int64_t r = rest / g.d, dd = rest - r * g.d;
        return partials[split * g.period + r * g.cols + ch * g.d + dd];
      },
      [&](std::int64_t ch) { return ch * g.d; }, column_tail(g), op, fin, rows);
  grid_sync();
  cache.rewind();
  for (std::int64_t vb = blockIdx.x; vb < vblocks; vb += gridDim.x)
    map_column_block<T, V, unroll_for(streams_of<R>), false>(in0, in1, out, g, f, vb % gx, vb / gx,
                                                             pg.splits, cache);
  if (V > 1 && blockIdx.x == 0 && threadIdx.x == 0)
    map_leftovers<V>(in0, in1, out, g.numel, f, column_tail(g));
}

}  // namespace cubn::kernels
