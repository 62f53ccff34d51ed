/// @file channel_ops.cuh
/// @brief The shapes every batch-norm kernel takes, as block-level device functions that the named
/// __global__ entry points (forward.cuh, backward.cuh) call:
///  - reduce_*: a per-channel reduction of one or two tensors: each thread folds its share, the
///    block merges its threads in a fixed order into one partial per (split, channel or slot), and
///    the last block to finish a set of channels (a ticket in the workspace) merges their partials
///    in split order and finishes those channels (statistics, coefficients, running statistics);
///  - map_*: an elementwise map out = f(in0, in1) with per-channel coefficients.
/// geometry.hpp describes the two decompositions (planes; periodic columns) and host/plan.cpp
/// chooses their numbers.
///
/// A reduction op R provides: kInputs (1 or 2); State (cross-thread partial, default empty) and
/// merge(State, State); Local (a thread's accumulator) and to_state(Local); Channel, per-channel
/// constants from channel(in0, in1, c, index of the channel's first element);
/// absorb<N>(Local&, Channel, in0[N], in1[N]) for N values of one channel;
/// absorb_columns<N, V>(Local (&)[V], Channel (&)[V], in0[N * V], in1[N * V]) for N packs whose
/// element k belongs to slot k; absorb_one(Local&, Channel, in0, in1).
/// A map op F provides: kInputs; Coeffs from coeffs(c); apply(const Coeffs&, Acc in0, Acc in1).
/// A finisher provides finish(c, State total, Channel).
///
/// Cross-block order: a block's partials are written, then every writer fences (release, device
/// scope), the block synchronizes, and thread 0 takes a ticket with an acq_rel fetch_add
/// (cuda::atomic_ref); the last block fences (acquire) before it reads the partials. The last
/// block puts the ticket back to 0, so the workspace is ready for the next call of any shape.
#pragma once

#include <cuda/atomic>
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

/// Loads U packs of V elements at the offsets `at`, every load issued before any is used (the
/// bytes in flight a memory-bound loop needs), as Acc; zeros when `p` is null.
template <int U, int V, class T>
CUBN_DEVICE void load_group(const T* p, const std::int64_t (&at)[U], acc_t<T> (&out)[U * V]) {
  if (p == nullptr) {
    CUBN_UNROLL
    for (int k = 0; k < U * V; ++k) out[k] = acc_t<T>(0);
    return;
  }
  Pack<T, V> raw[U];
  CUBN_UNROLL
  for (int u = 0; u < U; ++u) raw[u] = load_pack<V>(p + at[u]);
  CUBN_UNROLL
  for (int u = 0; u < U; ++u) {
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) out[u * V + k] = to_acc(raw[u].v[k]);
  }
}

/// Packs a loop over `inputs` tensors loads per iteration: kUnroll 16-byte loads in flight.
constexpr int unroll_for(int inputs) { return kUnroll / inputs; }

// ---- tickets ------------------------------------------------------------------------------------

/// Takes one of `expected` tickets at `ticket`; true for the last, which puts the counter back to
/// 0. With one expected arrival nothing is touched.
CUBN_DEVICE bool take_ticket(unsigned* ticket, unsigned expected) {
  if (expected == 1) return true;
  cuda::atomic_ref<unsigned, cuda::thread_scope_device> t(*ticket);
  const unsigned prev = t.fetch_add(1u, cuda::memory_order_acq_rel);
#if defined(CUBN_SIM)
  if (prev >= expected)
    sim::detail::fault(
        "a ticket in the workspace is not zero: zero-fill the workspace once before its first use");
#endif
  if (prev + 1 != expected) return false;
  t.store(0u, cuda::memory_order_relaxed);
  return true;
}

/// Every thread of the block calls this after writing its share of the block's results; true in
/// every thread of the block that arrives last of `expected`, which may then read what the others
/// wrote.
CUBN_DEVICE bool block_arrive(unsigned* ticket, unsigned expected) {
  __shared__ bool last;
  cuda::atomic_thread_fence(cuda::memory_order_release, cuda::thread_scope_device);
  __syncthreads();
  if (threadIdx.x == 0) last = take_ticket(ticket, expected);
  __syncthreads();
  const bool mine = last;
  if (mine) cuda::atomic_thread_fence(cuda::memory_order_acquire, cuda::thread_scope_device);
  return mine;
}

/// Groups of blocks that finish together: `groups` groups (channels, or column blocks) of
/// `splits` blocks each share kTickets tickets, `per` consecutive groups to a ticket; with one
/// split every group is its own set and no ticket is taken.
struct TicketSets {
  std::int64_t groups, splits, per;
  CUBN_DEVICE TicketSets(std::int64_t g, std::int64_t s)
      : groups(g), splits(s), per(s == 1 ? 1 : (g + kTickets - 1) / kTickets) {}
  CUBN_DEVICE std::int64_t first(std::int64_t group) const { return group / per * per; }
  CUBN_DEVICE std::int64_t end(std::int64_t group) const {
    const std::int64_t e = first(group) + per;
    return e < groups ? e : groups;
  }
  CUBN_DEVICE std::int64_t count() const { return (groups + per - 1) / per; }
  /// True in the last block of `group`'s set to arrive.
  CUBN_DEVICE bool arrive(unsigned* tickets, std::int64_t group) const {
    return block_arrive(tickets + group / per,
                        static_cast<unsigned>(splits * (end(group) - first(group))));
  }
};

/// Merges parts[s * stride + i] over s in [0, splits) for the items i in [0, count) with the
/// whole block, in an order fixed by the block size alone (strided per thread, then a tree), and
/// calls done(i, total) in one thread per item. `scratch` is kBlockThreads states of shared memory.
template <class State, class Merge, class Done>
CUBN_DEVICE void merge_splits(const State* parts, std::int64_t splits, std::int64_t stride,
                              int count, State* scratch, const Merge& merge, const Done& done) {
  int lanes = 1;
  while (lanes * 2 * count <= kBlockThreads) lanes *= 2;
  const int lane = static_cast<int>(threadIdx.x) % lanes;
  for (int base = 0; base < count; base += kBlockThreads / lanes) {
    const int item = base + static_cast<int>(threadIdx.x) / lanes;
    State s{};
    if (item < count)
      for (std::int64_t sp = lane; sp < splits; sp += lanes) s = merge(s, parts[sp * stride + item]);
    for (int w = lanes / 2; w >= 1; w /= 2) {
      scratch[threadIdx.x] = s;
      __syncthreads();
      if (lane < w) s = merge(s, scratch[threadIdx.x + w]);
      __syncthreads();
    }
    if (lane == 0 && item < count) done(item, s);
  }
}

/// Folds into `total` the leftover elements (past the last whole pack) that belong to channel
/// `ch`; channel_of(e) names the channel of element e.
template <int V, class T, class R, class ChannelOf>
CUBN_DEVICE void fold_leftovers(const R& op, const T* in0, const T* in1, std::int64_t numel,
                                std::int64_t ch, const typename R::Channel& cst,
                                const ChannelOf& channel_of, typename R::State& total) {
  if (V == 1) return;
  typename R::Local l{};
  bool any = false;
  for (std::int64_t e = numel / V * V; e < numel; ++e) {
    if (channel_of(e) != ch) continue;
    acc_t<T> a[1], b[1];
    load_acc<1>(in0, e, a);
    load_acc<1>(in1, e, b);
    op.absorb_one(l, cst, a[0], b[0]);
    any = true;
  }
  if (any) total = op.merge(total, op.to_state(l));
}

// ---- channels-first planes ----------------------------------------------------------------------

/// Walks the whole packs every plane of channel `ch` holds (the main tiles), starting at tile
/// `first` and advancing g.step tiles: group(at[U]) for U tiles at once while U remain, then
/// one(at) for each of the rest. No division in the loop: the plane and the pack within it advance
/// by precomputed steps.
template <int U, int V, class Group, class One>
CUBN_DEVICE void walk_plane_tiles(const ChannelsFirstReduce& g, std::int64_t ch, std::int64_t first,
                                  const Group& group, const One& one) {
  if (g.wf == 0) return;
  const std::int64_t plane = g.c * g.s;
  std::int64_t t = first;
  const std::int64_t n0 = t / g.wf;
  std::int64_t j = t - n0 * g.wf, base = n0 * plane + ch * g.s;
  // the first whole pack of the plane starting at `base` (V is a power of two)
  const auto pack = [&] { return ((base + (V - 1)) & ~static_cast<std::int64_t>(V - 1)) + j * V; };
  const auto advance = [&] {
    t += g.step;
    j += g.step_j;
    base += g.step_base;
    if (j >= g.wf) {
      j -= g.wf;
      base += plane;
    }
  };
  while (t + (U - 1) * g.step < g.tiles) {
    std::int64_t at[U];
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      at[u] = pack();
      advance();
    }
    group(at);
  }
  while (t < g.tiles) {
    one(pack());
    advance();
  }
}

/// A thread's share of channel `ch` over split `split`: the main tiles, then the packs each plane
/// shares with its neighbours, masked by element (the pack past the tensor's last whole pack is
/// left to fold_leftovers).
template <class T, int V, class R>
CUBN_DEVICE typename R::Local accumulate_planes(const T* in0, const T* in1,
                                                const ChannelsFirstReduce& g, const R& op,
                                                const typename R::Channel& cst, std::int64_t ch,
                                                std::int64_t split) {
  using Acc = acc_t<T>;
  constexpr int U = unroll_for(R::kInputs);
  typename R::Local l{};
  const std::int64_t first = split * kBlockThreads + threadIdx.x;
  walk_plane_tiles<U, V>(
      g, ch, first,
      [&](const std::int64_t (&at)[U]) {
        Acc a[U * V], b[U * V];
        load_group<U, V>(in0, at, a);
        load_group<U, V>(in1, at, b);
        op.template absorb<U * V>(l, cst, a, b);
      },
      [&](std::int64_t at) {
        Acc a[V], b[V];
        load_acc<V>(in0, at, a);
        load_acc<V>(in1, at, b);
        op.template absorb<V>(l, cst, a, b);
      });
  if (V == 1) return l;
  const std::int64_t plane = g.c * g.s, whole = g.wf * V;
  for (std::int64_t n = first; n < g.n; n += g.step) {
    const std::int64_t b0 = n * plane + ch * g.s, b1 = b0 + g.s;
    const std::int64_t f = (b0 + (V - 1)) & ~static_cast<std::int64_t>(V - 1);
    const auto edge = [&](std::int64_t at) {
      if (at + V > g.numel) return;
      Acc a[V], b[V];
      load_acc<V>(in0, at, a);
      load_acc<V>(in1, at, b);
      for (int k = 0; k < V; ++k)
        if (at + k >= b0 && at + k < b1) op.absorb_one(l, cst, a[k], b[k]);
    };
    if (f > b0) edge(f - V);
    for (std::int64_t at = f + whole; at < b1; at += V) edge(at);
  }
  return l;
}

/// Reduces channel blockIdx.x of a channels-first tensor over split blockIdx.y of gridDim.y into
/// partials[split * C + channel]; the last block of each set of channels merges their partials and
/// calls fin.finish for each. Returns true in every thread of a block that finished channels
/// (with one split: every block, for its own channel).
template <class T, int V, class R, class Fin>
CUBN_DEVICE bool reduce_planes(const T* in0, const T* in1, const ChannelsFirstReduce& g,
                               const R& op, typename R::State* partials, unsigned* tickets,
                               const Fin& fin) {
  using State = typename R::State;
  const std::int64_t ch = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const auto local =
      accumulate_planes<T, V>(in0, in1, g, op, op.channel(in0, in1, ch, ch * g.s), ch, split);
  const auto merge = [&op](const State& a, const State& b) { return op.merge(a, b); };
  using Reduce = BlockReduce<State, kBlockThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ State scratch[kBlockThreads];
  const auto part = Reduce(storage).reduce(op.to_state(local), merge);
  if (threadIdx.x == 0) partials[split * g.c + ch] = part.get();
  const TicketSets sets(g.c, splits);
  if (!sets.arrive(tickets, ch)) return false;
  const auto channel_of = [&g](std::int64_t e) { return e / g.s % g.c; };
  for (std::int64_t c = sets.first(ch); c < sets.end(ch); ++c) {
    merge_splits(partials + c, splits, g.c, 1, scratch, merge, [&](int, State total) {
      const auto cst = op.channel(in0, in1, c, c * g.s);
      fold_leftovers<V>(op, in0, in1, g.numel, c, cst, channel_of, total);
      fin.finish(c, total, cst);
    });
  }
  __syncthreads();
  return true;
}

/// out = f(in0, in1) over channel `ch`'s planes by one block (planes of whole packs only: the
/// forward's fused normalization).
template <class T, int V, class F>
CUBN_DEVICE void map_own_planes(const T* in0, const T* in1, T* out, const ChannelsFirstReduce& g,
                                const F& f, std::int64_t ch) {
  using Acc = acc_t<T>;
  constexpr int U = unroll_for(F::kInputs);
  const typename F::Coeffs q = f.coeffs(ch);
  walk_plane_tiles<U, V>(
      g, ch, threadIdx.x,
      [&](const std::int64_t (&at)[U]) {
        Acc a[U * V], b[U * V];
        load_group<U, V>(in0, at, a);
        load_group<U, V>(in1, at, b);
        CUBN_UNROLL
        for (int u = 0; u < U; ++u) {
          Pack<T, V> o;
          CUBN_UNROLL
          for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(f.apply(q, a[u * V + k], b[u * V + k]));
          store_pack<V>(out + at[u], o);
        }
      },
      [&](std::int64_t at) {
        Acc a[V], b[V];
        load_acc<V>(in0, at, a);
        load_acc<V>(in1, at, b);
        Pack<T, V> o;
        CUBN_UNROLL
        for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(f.apply(q, a[k], b[k]));
        store_pack<V>(out + at, o);
      });
}

/// out = f(in0, in1) over a channels-first tensor: its whole packs flat and grid-stride, a pack
/// that crosses into the next plane taking that channel's coefficients for its later elements
/// (planes hold at least V elements, so a pack meets at most one boundary); block 0 takes the
/// leftovers. out may equal in0 or in1.
template <class T, int V, class F>
CUBN_DEVICE void map_planes(const T* in0, const T* in1, T* out, const ChannelsFirstMap& g,
                            const F& f) {
  using Acc = acc_t<T>;
  using Coeffs = typename F::Coeffs;
  constexpr int U = unroll_for(F::kInputs);
  std::int64_t p = static_cast<std::int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
  std::int64_t pos = 0, ch = 0;  // of the pack's first element
  if (p < g.packs) {
    const std::int64_t row = p * V / g.s;
    pos = p * V - row * g.s;
    ch = row % g.c;
  }
  const auto advance = [&] {
    p += g.step;
    pos += g.step_pos;
    ch += g.step_ch;
    if (pos >= g.s) {
      pos -= g.s;
      ++ch;
    }
    if (ch >= g.c) ch -= g.c;
  };
  // elements of the pack before the boundary, and the two channels' coefficients
  const auto lookup = [&](std::int64_t& cut, Coeffs& q0, Coeffs& q1) {
    cut = g.s - pos;
    q0 = f.coeffs(ch);
    q1 = cut < V ? f.coeffs(ch + 1 == g.c ? 0 : ch + 1) : q0;
  };
  while (p + (U - 1) * g.step < g.packs) {
    std::int64_t at[U], cut[U];
    Coeffs q0[U], q1[U];
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      at[u] = p * V;
      lookup(cut[u], q0[u], q1[u]);
      advance();
    }
    Acc a[U * V], b[U * V];
    load_group<U, V>(in0, at, a);
    load_group<U, V>(in1, at, b);
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      Pack<T, V> o;
      CUBN_UNROLL
      for (int k = 0; k < V; ++k)
        o.v[k] = from_acc<T>(f.apply(k < cut[u] ? q0[u] : q1[u], a[u * V + k], b[u * V + k]));
      store_pack<V>(out + at[u], o);
    }
  }
  while (p < g.packs) {
    std::int64_t cut;
    Coeffs q0, q1;
    lookup(cut, q0, q1);
    const std::int64_t at = p * V;
    advance();
    Acc a[V], b[V];
    load_acc<V>(in0, at, a);
    load_acc<V>(in1, at, b);
    Pack<T, V> o;
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(f.apply(k < cut ? q0 : q1, a[k], b[k]));
    store_pack<V>(out + at, o);
  }
  if (V > 1 && blockIdx.x == 0 && threadIdx.x == 0) {
    for (std::int64_t e = g.packs * V; e < g.numel; ++e) {
      Acc a[1], b[1];
      load_acc<1>(in0, e, a);
      load_acc<1>(in1, e, b);
      Pack<T, 1> o;
      o.v[0] = from_acc<T>(f.apply(f.coeffs(e / g.s % g.c), a[0], b[0]));
      store_pack<1>(out + e, o);
    }
  }
}

// ---- periodic columns (channels-last) -----------------------------------------------------------

/// Walks pack column j of the periods first, first + step, ...: group(at[U]) for U periods at
/// once while they are whole, then one(at) for each remaining pack inside the tensor.
template <int U, int V, class Group, class One>
CUBN_DEVICE void walk_column(const ChannelsLastGeometry& g, std::int64_t j, std::int64_t first,
                             std::int64_t step, const Group& group, const One& one) {
  std::int64_t q = first, at = first * g.period + j * V;
  const std::int64_t dat = step * g.period;
  while (q + (U - 1) * step < g.full_periods) {
    std::int64_t idx[U];
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      idx[u] = at;
      at += dat;
    }
    q += U * step;
    group(idx);
  }
  for (; q < g.periods; q += step, at += dat)
    if (at + V <= g.numel) one(at);
}

/// The channel of period slot `slot`.
CUBN_DEVICE std::int64_t slot_channel(const ChannelsLastGeometry& g, std::int64_t slot) {
  return slot % g.cols / g.d;
}

/// Reduces the V slots each thread owns (pack column blockIdx.x * bx + tx of every period) over
/// split blockIdx.y into partials[split * period + slot]. The last block of a set of column blocks
/// merges their slots over the splits; when each column block holds whole channels (lr == d == 1)
/// it finishes them, else it stores slot totals and the last set to do so finishes every channel
/// from them. Returns true in every thread of a block that finished channels.
template <class T, int V, class R, class Fin>
CUBN_DEVICE bool reduce_columns(const T* in0, const T* in1, const ChannelsLastGeometry& g,
                                const R& op, typename R::State* partials,
                                typename R::State* totals, unsigned* tickets, const Fin& fin) {
  using Acc = acc_t<T>;
  using State = typename R::State;
  constexpr int U = unroll_for(R::kInputs);
  const ThreadTile tt(g.bx);
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * tt.bx + tt.tx;
  const std::int64_t split = blockIdx.y, splits = gridDim.y;
  typename R::Local l[V];
  if (j < g.period_packs) {
    typename R::Channel cst[V];
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      const std::int64_t ch = slot_channel(g, j * V + k);
      cst[k] = op.channel(in0, in1, ch, ch * g.d);
    }
    walk_column<U, V>(
        g, j, split * tt.by + tt.ty, splits * tt.by,
        [&](const std::int64_t (&at)[U]) {
          Acc a[U * V], b[U * V];
          load_group<U, V>(in0, at, a);
          load_group<U, V>(in1, at, b);
          op.template absorb_columns<U, V>(l, cst, a, b);
        },
        [&](std::int64_t at) {
          Acc a[V], b[V];
          load_acc<V>(in0, at, a);
          load_acc<V>(in1, at, b);
          op.template absorb_columns<1, V>(l, cst, a, b);
        });
  }
  // merge the by thread rows of each slot in row order, one of the V slots at a time
  __shared__ State rows[kBlockThreads];
  CUBN_UNROLL
  for (int k = 0; k < V; ++k) {
    rows[threadIdx.x] = op.to_state(l[k]);
    __syncthreads();
    if (tt.ty == 0 && j < g.period_packs) {
      State m = rows[tt.tx];
      for (int r = 1; r < tt.by; ++r) m = op.merge(m, rows[r * tt.bx + tt.tx]);
      partials[split * g.period + j * V + k] = m;
    }
    __syncthreads();
  }
  const auto merge = [&op](const State& a, const State& b) { return op.merge(a, b); };
  const TicketSets sets(gridDim.x, splits);
  if (!sets.arrive(tickets, blockIdx.x)) return false;
  const bool whole = g.lr == 1 && g.d == 1;
  const auto channel_of = [&g](std::int64_t e) { return e % g.cols / g.d; };
  const std::int64_t slots = static_cast<std::int64_t>(tt.bx) * V;
  for (std::int64_t x = sets.first(blockIdx.x); x < sets.end(blockIdx.x); ++x) {
    const std::int64_t s0 = x * slots;
    const std::int64_t count = g.period - s0 < slots ? g.period - s0 : slots;
    merge_splits(partials + s0, splits, g.period, static_cast<int>(count), rows, merge,
                 [&](int i, State total) {
                   const std::int64_t slot = s0 + i;
                   if (!whole) {
                     totals[slot] = total;
                     return;
                   }
                   const auto cst = op.channel(in0, in1, slot, slot);
                   fold_leftovers<V>(op, in0, in1, g.numel, slot, cst, channel_of, total);
                   fin.finish(slot, total, cst);
                 });
  }
  if (!whole) {
    // the slots of a channel lie in several column blocks: the last set finishes every channel
    if (!block_arrive(tickets + kTickets, static_cast<unsigned>(sets.count()))) return false;
    for (std::int64_t ch = threadIdx.x; ch < g.c; ch += kBlockThreads) {
      State total{};
      for (std::int64_t r = 0; r < g.lr; ++r)
        for (std::int64_t dd = 0; dd < g.d; ++dd)
          total = op.merge(total, totals[r * g.cols + ch * g.d + dd]);
      const auto cst = op.channel(in0, in1, ch, ch * g.d);
      fold_leftovers<V>(op, in0, in1, g.numel, ch, cst, channel_of, total);
      fin.finish(ch, total, cst);
    }
  }
  __syncthreads();
  return true;
}

/// out = f(in0, in1) over pack column blockIdx.x * bx + tx of the periods blockIdx.y * by + ty,
/// stepping gridDim.y * by; block (0, 0) takes the leftovers. out may equal in0 or in1.
template <class T, int V, class F>
CUBN_DEVICE void map_columns(const T* in0, const T* in1, T* out, const ChannelsLastGeometry& g,
                             const F& f) {
  using Acc = acc_t<T>;
  constexpr int U = unroll_for(F::kInputs);
  const ThreadTile tt(g.bx);
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * tt.bx + tt.tx;
  if (j < g.period_packs) {
    typename F::Coeffs q[V];
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) q[k] = f.coeffs(slot_channel(g, j * V + k));
    walk_column<U, V>(
        g, j, static_cast<std::int64_t>(blockIdx.y) * tt.by + tt.ty,
        static_cast<std::int64_t>(gridDim.y) * tt.by,
        [&](const std::int64_t (&at)[U]) {
          Acc a[U * V], b[U * V];
          load_group<U, V>(in0, at, a);
          load_group<U, V>(in1, at, b);
          CUBN_UNROLL
          for (int u = 0; u < U; ++u) {
            Pack<T, V> o;
            CUBN_UNROLL
            for (int k = 0; k < V; ++k)
              o.v[k] = from_acc<T>(f.apply(q[k], a[u * V + k], b[u * V + k]));
            store_pack<V>(out + at[u], o);
          }
        },
        [&](std::int64_t at) {
          Acc a[V], b[V];
          load_acc<V>(in0, at, a);
          load_acc<V>(in1, at, b);
          Pack<T, V> o;
          CUBN_UNROLL
          for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(f.apply(q[k], a[k], b[k]));
          store_pack<V>(out + at, o);
        });
  }
  if (V > 1 && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
    for (std::int64_t e = g.numel / V * V; e < g.numel; ++e) {
      Acc a[1], b[1];
      load_acc<1>(in0, e, a);
      load_acc<1>(in1, e, b);
      Pack<T, 1> o;
      o.v[0] = from_acc<T>(f.apply(f.coeffs(e % g.cols / g.d), a[0], b[0]));
      store_pack<1>(out + e, o);
    }
  }
}

}  // namespace cubn::kernels
