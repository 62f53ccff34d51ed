/// @file channel_ops.cuh
/// @brief The shapes every batch-norm kernel takes, as block-level device functions that the named
/// __global__ entry points (forward.cuh, backward.cuh) call:
///  - reduce_*: a per-channel reduction of one or two tensors: each thread folds its share, the
///    block merges its threads in a fixed order into one partial per (split, channel or slot), and
///    the last block of a channel or column block to finish (a ticket in the workspace) merges its
///    partials over the splits in a fixed order and finishes the channels (statistics,
///    coefficients, running statistics);
///  - map_*: an elementwise map out = f(in0, in1) with per-channel coefficients.
/// geometry.hpp describes the two decompositions (planes; periodic columns) and host/plan.cpp
/// chooses their numbers.
///
/// A reduction op R provides: kInputs (1 or 2); State (cross-thread partial, default empty) and
/// merge(State, State); Local (a thread's accumulator for one channel) and to_state(Local);
/// Columns<V> (a thread's accumulators for V slots) and column_state(Columns, k); Channel,
/// per-channel constants from channel(in0, in1, c, index of the channel's first element);
/// absorb_packs(Local&, Channel, Pack in0[U], Pack in1[U]) for U packs of one channel;
/// absorb_columns(Columns&, cst, Pack in0[U], Pack in1[U]) for U packs whose element k belongs to
/// slot k, whose Channel is cst(k); absorb_one(Local&, Channel, in0, in1) for one value. Ops
/// convert the packs' elements themselves, as they use them, so a loop holds the raw packs, not U *
/// V floats. A map op F provides: kInputs; Coeffs from coeffs(c); apply(const Coeffs&, Acc in0, Acc
/// in1). A finisher provides finish(c, State total, Channel).
///
/// Cross-block order: a block's partials are written, the block synchronizes, and thread 0 fences
/// (release, device scope), counts its arrival on a ticket word with a relaxed compare-and-swap
/// (DeviceAtomicRef: cuda::atomic_ref) and, in the last block, fences (acquire) before the block
/// synchronizes again and reads the partials. A ticket word carries the call's tag beside its
/// count (kernels/geometry.hpp Tickets), so the workspace may hold anything before a call; the last
/// block puts the word back to 0.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "block_reduce.cuh"
#include "geometry.hpp"
#include "lengths.cuh"
#include "memory.cuh"
#include "platform.cuh"
#include "types.cuh"

namespace cubn::kernels {

/// Thread coordinates of the (bx, by) decomposition of a kBlockThreads block (bx a power of two),
/// for thread `tid`: pass opaque(threadIdx.x) to have them recomputed rather than kept live
/// across a loop.
struct ThreadTile {
  int bx, by, tx, ty;
  CUBN_DEVICE ThreadTile(int width, int tid)
      : bx(width), by(kBlockThreads / width), tx(tid & (width - 1)), ty(tid / width) {}
};

/// Loads U packs of V elements of in0 (and of in1 when the op reads two tensors; else b copies
/// a) at the offsets `at`, every load issued before any is used (the bytes in flight a
/// memory-bound loop needs).
template <int Inputs, int U, int V, class T>
CUBN_DEVICE void load_packs(const T* in0, const T* in1, const std::int64_t (&at)[U],
                            Pack<T, V> (&a)[U], Pack<T, V> (&b)[U]) {
  CUBN_UNROLL
  for (int u = 0; u < U; ++u) a[u] = load_pack<V>(in0 + at[u]);
  CUBN_UNROLL
  for (int u = 0; u < U; ++u) {
    if constexpr (Inputs == 2) {
      b[u] = load_pack<V>(in1 + at[u]);
    } else {
      b[u] = a[u];
    }
  }
}

/// One pack of in0 (and of in1 for two-input ops; else b copies a) at element `at`.
template <int Inputs, int V, class T>
CUBN_DEVICE void load_inputs(const T* in0, const T* in1, std::int64_t at, Pack<T, V>& a,
                             Pack<T, V>& b) {
  a = load_pack<V>(in0 + at);
  if constexpr (Inputs == 2) {
    b = load_pack<V>(in1 + at);
  } else {
    b = a;
  }
}

/// Element i of in0 and (for two-input ops) of in1 as Acc, one scalar access each.
template <int Inputs, class T>
CUBN_DEVICE void load_one(const T* in0, const T* in1, std::int64_t i, acc_t<T>& a, acc_t<T>& b) {
  const std::int64_t at[1] = {i};
  Pack<T, 1> pa[1], pb[1];
  load_packs<Inputs, 1, 1>(in0, in1, at, pa, pb);
  a = to_acc(pa[0].v[0]);
  b = to_acc(pb[0].v[0]);
}

// ---- sides: what a fused op reads beside its inputs ---------------------------------------------

/// The side of a pack of an op that reads nothing beside its inputs.
struct NoSide {};

/// Whether op Op reads a side per pack (it declares kSided, a member template Side<T, V>, and
/// load_side(at[N], Side[N]), issued with the inputs' loads), and takes it in absorb_packs,
/// absorb_columns and absorb_one (reductions) or writes its outputs itself with emit<KV>(out, at,
/// in0 pack, in1 pack, side, coeff) (maps; KV is the kernel's pack width). Ops without one keep the
/// plain interface.
template <class Op, class = void>
struct SideOf {
  static constexpr bool kSided = false;
  static constexpr int kStreams = 0;
  template <class T, int V>
  using type = NoSide;
};
template <class Op>
struct SideOf<Op, std::void_t<decltype(Op::kSided)>> {
  static constexpr bool kSided = true;
  static constexpr int kStreams = Op::kSideStreams;  ///< whole tensors among the side (z)
  template <class T, int V>
  using type = typename Op::template Side<T, V>;
};
template <class Op, class T, int V>
using side_t = typename SideOf<Op>::template type<T, V>;

/// Resident blocks per SM a map kernel over op F is compiled for (__launch_bounds__).
template <class F, class = void>
constexpr int map_blocks_per_sm = kMinBlocksPerSm;
template <class F>
constexpr int map_blocks_per_sm<F, std::void_t<decltype(F::kMapBlocksPerSm)>> = F::kMapBlocksPerSm;

/// The fused epilogue an op applies (its activation's cubn::Activation value, and whether it adds
/// a residual): Op::kAct and Op::kRes where it has them, else none.
template <class Op, class = void>
struct EpilogueOf {
  static constexpr int act = 0;
  static constexpr bool res = false;
};
template <class Op>
struct EpilogueOf<Op, std::void_t<decltype(Op::kAct)>> {
  static constexpr int act = static_cast<int>(Op::kAct);
  static constexpr bool res = Op::kRes;
};

/// Resident blocks per SM a reduction kernel over elements of T is compiled for: the statistics
/// kernels' with op F, their fused normalization (Backward false), the gradient sums' with op R
/// (true). geometry.hpp's reduce_blocks_per_sm, which host/plan.cpp sizes their grids by.
template <class T, class Op, bool Backward>
constexpr int reduce_blocks_of = reduce_blocks_per_sm(sizeof(T), Backward, EpilogueOf<Op>::act,
                                                      EpilogueOf<Op>::res);

/// Loads the sides of the packs at `at` (nothing for an op without one).
template <class T, int V, int N, class Op>
CUBN_DEVICE void load_sides(const Op& op, const std::int64_t (&at)[N], side_t<Op, T, V> (&s)[N]) {
  if constexpr (SideOf<Op>::kSided) op.template load_side<T, V>(at, s);
}

/// op.absorb_packs, with the packs' sides when the op reads them.
template <class R, class L, class C, class T, int V, int U, class S>
CUBN_DEVICE void absorb_packs(const R& op, L& l, const C& cst, const Pack<T, V> (&a)[U],
                              const Pack<T, V> (&b)[U], const S (&s)[U]) {
  if constexpr (SideOf<R>::kSided) {
    op.absorb_packs(l, cst, a, b, s);
  } else {
    op.absorb_packs(l, cst, a, b);
  }
}

/// op.absorb_columns, with the packs' sides when the op reads them.
template <class R, class L, class C, class T, int V, int U, class S>
CUBN_DEVICE void absorb_columns(const R& op, L& l, const C& cst, const Pack<T, V> (&a)[U],
                                const Pack<T, V> (&b)[U], const S (&s)[U]) {
  if constexpr (SideOf<R>::kSided) {
    op.absorb_columns(l, cst, a, b, s);
  } else {
    op.absorb_columns(l, cst, a, b);
  }
}

/// op.absorb_one for element k of a pack whose side is `s`.
template <class R, class L, class C, class A, class S>
CUBN_DEVICE void absorb_one(const R& op, L& l, const C& cst, A a, A b, const S& s, int k) {
  if constexpr (SideOf<R>::kSided) {
    op.absorb_one(l, cst, a, b, s, k);
  } else {
    op.absorb_one(l, cst, a, b);
  }
}

/// The number of offsets in the array a walker passes (U, or 1 for the tail).
template <class A>
constexpr int packs_in = static_cast<int>(std::extent_v<std::remove_reference_t<A>>);

/// Packs a loop over `streams` tensors loads per iteration: kUnroll 16-byte loads in flight (more
/// for three streams: 2 x 3).
constexpr int unroll_for(int streams) { return (kUnroll + streams - 1) / streams; }

/// The whole tensors op Op's loops load per pack: its inputs and the tensors among its side.
template <class Op>
constexpr int streams_of = Op::kInputs + SideOf<Op>::kStreams;

// ---- masked loops (lengths.cuh) -----------------------------------------------------------------

/// Every lane of a V-element pack.
template <int V>
constexpr unsigned kAllLanes = V == 32 ? ~0u : (1u << V) - 1u;

/// The valid lanes of the packs at `at` of a masked op.
template <int V, class Op, int N>
CUBN_DEVICE void pack_bits(const Op& op, const std::int64_t (&at)[N], unsigned (&bits)[N]) {
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) bits[u] = op.mask.template bits<V>(at[u]);
}

/// body(std::true_type{}) where `op` is masked and `fits` is false (a pack may meet more than two
/// rows: its lanes' validity then comes lane by lane, out of line), else body(std::false_type{}):
/// a masked loop is compiled twice, so that the common copy holds no call and no branch between
/// the two (bench/sass_report.py lists the lane-by-lane copy apart).
template <class Op, class Body>
CUBN_DEVICE decltype(auto) rows_or_lanes(bool fits, const Body& body) {
  if constexpr (is_masked<Op>) {
    if (!fits) return body(std::true_type{});
  }
  return body(std::false_type{});
}

/// Whether a masked op's packs inside channels-first planes meet at most two rows each (true for
/// unmasked ops): rows_or_lanes' `fits`.
template <int V, class Op>
CUBN_DEVICE bool plane_rows_fit(const Op& op) {
  if constexpr (is_masked<Op>) {
    return op.mask.packs_of(V);
  } else {
    return true;
  }
}

/// The valid lanes of a masked op's packs at `at` inside channels-first planes, from where the
/// plane walker says they lie (SeqMask::plane_bits), or (ByLane: rows shorter than a pack) lane
/// by lane out of line.
template <int V, bool ByLane, class Op, int N, class Where>
CUBN_DEVICE void plane_pack_bits(const Op& op, const std::int64_t (&at)[N], const Where (&w)[N],
                                 unsigned (&bits)[N]) {
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) {
    if constexpr (ByLane) {
      bits[u] = op.mask.template bits_by_lane<V>(at[u]);
    } else {
      bits[u] = op.mask.template plane_bits<V>(w[u].pos, w[u].n);
    }
  }
}

/// The sides of the packs at `at` that hold a valid lane (a masked fused op's: its load_side_if);
/// the others zero and not read. Nothing for an op without a side.
template <class T, int V, int N, class Op>
CUBN_DEVICE void load_valid_sides(const Op& op, const std::int64_t (&at)[N],
                                  const unsigned (&bits)[N], side_t<Op, T, V> (&s)[N]) {
  if constexpr (SideOf<Op>::kSided) op.template load_side_if<T, V>(at, bits, s);
}

/// load_packs of the packs with a valid lane; the others are zero and not read.
template <int Inputs, int N, int V, class T>
CUBN_DEVICE void load_valid_packs(const T* in0, const T* in1, const std::int64_t (&at)[N],
                                  const unsigned (&bits)[N], Pack<T, V> (&a)[N],
                                  Pack<T, V> (&b)[N]) {
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) {
    a[u] = load_pack_if<V>(in0 + at[u], bits[u] != 0);
    b[u] = Inputs == 2 ? load_pack_if<V>(in1 + at[u], bits[u] != 0) : a[u];
  }
}

/// The pack with its lanes outside `bits` zero (a select per lane: a padded lane may hold NaN).
/// 16-bit elements: an AND of each 32-bit word (two lanes) with its lanes' mask (+0 is all zero
/// bits in fp16 and bf16), not a select and a merge per lane.
template <class T, int V>
CUBN_DEVICE Pack<T, V> keep_lanes(const Pack<T, V>& p, unsigned bits) {
  Pack<T, V> o;
  if constexpr (sizeof(T) == 2 && V % 2 == 0) {
    std::uint32_t w[V / 2];
    std::memcpy(w, &p, sizeof w);
    CUBN_UNROLL
    for (int i = 0; i < V / 2; ++i) {
      const unsigned two = bits >> (2 * i);
      w[i] &= ((two & 1u) != 0 ? 0x0000ffffu : 0u) | ((two & 2u) != 0 ? 0xffff0000u : 0u);
    }
    std::memcpy(static_cast<void*>(&o), w, sizeof w);
  } else {
    const T zero = from_acc<T>(acc_t<T>(0));
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) o.v[k] = ((bits >> k) & 1u) != 0 ? p.v[k] : zero;
  }
  return o;
}

/// The padded lanes (outside `bits`) of both inputs' packs zeroed: a zero_padded reduction's fold.
template <class T, int V, int N>
CUBN_DEVICE void zero_padded_lanes(Pack<T, V> (&a)[N], Pack<T, V> (&b)[N],
                                   const unsigned (&bits)[N]) {
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) {
    a[u] = keep_lanes(a[u], bits[u]);
    b[u] = keep_lanes(b[u], bits[u]);
  }
}

/// Whether reduction R's padded lanes may be folded as zeros in both inputs (it declares
/// kZeroPadded: sums, where a lane of zeros adds nothing, GradSumOp); else a masked loop folds
/// partly padded packs lane by lane (WelfordOp, whose counts a zero would change).
template <class R, class = void>
constexpr bool zero_padded = false;
template <class R>
constexpr bool zero_padded<R, std::void_t<decltype(R::kZeroPadded)>> = R::kZeroPadded;

/// The padded lanes of a zero_padded reduction's packs zeroed, in both inputs and, for an op with
/// a side, in what its side holds per lane (a fused op's residual: its SiLU would turn a padded NaN
/// into a NaN sum even with dy zeroed).
template <class R, class T, int V, int N, class S>
CUBN_DEVICE void zero_padded_packs(const R& op, Pack<T, V> (&a)[N], Pack<T, V> (&b)[N], S (&s)[N],
                                   const unsigned (&bits)[N]) {
  zero_padded_lanes(a, b, bits);
  if constexpr (SideOf<R>::kSided) {
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) op.template zero_padded_side<V>(s[u], bits[u]);
  }
}

/// Whether each of the N packs is whole (every lane valid) or empty (none).
template <int V, int N>
CUBN_DEVICE bool whole_or_empty(const unsigned (&bits)[N]) {
  bool all = true;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) all = all && (bits[u] == 0u || bits[u] == kAllLanes<V>);
  return all;
}

/// The packs a masked loop hands an out-of-line fold, by value (an array's address would pin the
/// loop's packs to local memory).
template <class T, int V, int N>
struct PackSet {
  Pack<T, V> a[N];
  unsigned bits[N];
};

/// The packs `a` with their valid lanes `bits`, for an out-of-line fold.
template <class T, int V, int N>
CUBN_DEVICE PackSet<T, V, N> pack_set(const Pack<T, V> (&a)[N], const unsigned (&bits)[N]) {
  PackSet<T, V, N> p;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) {
    p.a[u] = a[u];
    p.bits[u] = bits[u];
  }
  return p;
}

/// The valid lanes of packs `p` (a visit with a partly padded pack: at most two per row of a
/// channels-first plane, one per length boundary of a channels-last tensor whose C is not a
/// multiple of V) folded one by one into `l`, out of line: the loop holds a call, not N V lanes'
/// branches and weights. R: a Welford-like op (absorb_one), passed by value without its mask.
template <class R, class L, class C, class T, int V, int N>
CUBN_DEVICE_NOINLINE L absorb_valid_lanes(R op, L l, C cst, PackSet<T, V, N> p) {
  CUBN_UNROLL
  for (int u = 0; u < N; ++u)
    CUBN_UNROLL
    for (int k = 0; k < V; ++k)
      if ((p.bits[u] >> k) & 1u) op.absorb_one(l, cst, acc_at(p.a[u], k), acc_at(p.a[u], k));
  return l;
}

/// Each pack's flag for absorb_flagged_*: 1 where it has a valid lane (whole_or_empty: every
/// lane), 0 where it has none; returns whether any is 1.
template <class Acc, int N>
CUBN_DEVICE bool pack_flags(const unsigned (&bits)[N], Acc (&f)[N]) {
  bool any = false;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) {
    f[u] = bits[u] != 0u ? Acc(1) : Acc(0);
    any = any || bits[u] != 0u;
  }
  return any;
}

/// A masked reduction's fold of N packs with valid lanes `bits` (and their sides, for an op with
/// one). Sums (zero_padded): the padded lanes zeroed, then the packs folded as the unmasked loop
/// folds them: one path, the same instructions but a select per lane, and with every lane valid the
/// unmasked results bit for bit. Welford (one input, no side): where every pack is whole or empty,
/// the whole ones folded in one group (absorb_flagged_packs: the unmasked fold's instructions with
/// a multiply-add in place of a subtraction; every pack whole gives the unmasked results bit for
/// bit); a visit with a partly padded pack lane by lane, out of line (absorb_valid_lanes).
template <class R, class L, class C, class T, int V, int N, class S>
CUBN_DEVICE void absorb_valid(const R& op, L& l, const C& cst, Pack<T, V> (&a)[N],
                              Pack<T, V> (&b)[N], S (&s)[N], const unsigned (&bits)[N]) {
  if constexpr (zero_padded<R>) {
    zero_padded_packs(op, a, b, s, bits);
    absorb_packs(op, l, cst, a, b, s);
  } else {
    static_assert(!SideOf<R>::kSided && R::kInputs == 1,
                  "a reduction with a side or two inputs folds padded lanes as zeros");
    if (!whole_or_empty<V>(bits)) {
      l = absorb_valid_lanes(static_cast<const unmasked_t<R>&>(op), l, cst, pack_set(a, bits));
      return;
    }
    decltype(l.n) f[N];
    if (pack_flags(bits, f)) op.absorb_flagged_packs(l, cst, a, f);
  }
}

/// Where a masked loop's pack lies in its variable-length batch, as the walkers track it (no
/// division per pack): channels-first, its position in its plane and the plane's sample;
/// channels-last, the position (time step) of its first value in its sample, and the sample.
struct PlaneAt {
  std::uint32_t pos;
  int n;
};

/// Where the packs of a one-row loop's visit lie, for its out-of-line fold (absorb_row_packs), by
/// value: each pack's first element, and its valid lanes from its first lane on (its sample's
/// length less its position: at most 0 where none is valid, at least V where all are).
template <int N>
struct RowAt {
  std::int64_t at[N];
  int rest[N];
  template <int V>
  CUBN_DEVICE unsigned bits(int u) const {
    return SeqMask::first_lanes<V>(rest[u]);
  }
};

/// Where the packs of a visit lie, by value: each pack's first element, and its place as the
/// walker tracks it.
template <int N>
struct VisitAt {
  std::int64_t at[N];
  PlaneAt w[N];

  CUBN_DEVICE static VisitAt of(const std::int64_t (&at)[N], const PlaneAt (&w)[N]) {
    VisitAt v;
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) {
      v.at[u] = at[u];
      v.w[u] = w[u];
    }
    return v;
  }
};

/// Where the packs of a visit of planes of several rows lie, for its out-of-line fold
/// (absorb_row_packs), by value: their VisitAt, whose lanes SeqMask::plane_bits gives.
template <int N>
struct PlaneVisit : VisitAt<N> {
  PlaneRows rows;
  template <int V>
  CUBN_DEVICE unsigned bits(int u) const {
    return rows.template bits<V>(this->w[u].pos, this->w[u].n);
  }
};

/// What an out-of-line fold of a visit gives back: the thread's accumulator, the packs of each
/// input (Inputs: the op's; zero where no lane is valid, and a sum's padded lanes zero) and their
/// valid lanes.
template <class L, class T, int V, int N, int Inputs = 1>
struct RowFold {
  L l;
  Pack<T, V> a[N];
  Pack<T, V> b[Inputs == 2 ? N : 1];
  unsigned bits[N];
  /// The second input's packs (the first's for a one-input op).
  CUBN_DEVICE const Pack<T, V> (&second() const)[N] {
    if constexpr (Inputs == 2) {
      return b;
    } else {
      return a;
    }
  }
};

/// The visit of a row-wise loop that has a padded lane, out of line: the packs' valid lanes (W:
/// RowAt or PlaneVisit), the packs (and sides) with a valid lane loaded, then absorb_valid's fold
/// (sums: the padded lanes zeroed; Welford: whole and empty packs at once, a partly padded one
/// lane by lane). R: the unmasked op, by value.
template <int V, class R, class L, class C, class T, class W>
CUBN_DEVICE_NOINLINE auto absorb_row_packs(R op, L l, C cst, const T* in0, const T* in1, W w)
    -> RowFold<L, T, V, packs_in<decltype(w.at)>, R::kInputs> {
  constexpr int N = packs_in<decltype(w.at)>;
  RowFold<L, T, V, N, R::kInputs> r;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) r.bits[u] = w.template bits<V>(u);
  if constexpr (R::kInputs == 2) {
    load_valid_packs<2>(in0, in1, w.at, r.bits, r.a, r.b);
    side_t<R, T, V> s[N] = {};
    load_valid_sides<T, V>(op, w.at, r.bits, s);
    absorb_valid(op, l, cst, r.a, r.b, s, r.bits);
  } else {
    static_assert(!SideOf<R>::kSided, "an op with one input and a side");
    load_valid_packs<1>(in0, in0, w.at, r.bits, r.a, r.a);
    NoSide s[N];
    absorb_valid(op, l, cst, r.a, r.a, s, r.bits);
  }
  r.l = l;
  return r;
}

/// A masked loop's visit whose packs are all valid: loaded and folded (fold(a, b, sides)) as the
/// unmasked loop does, then kept as a masked loop keeps them (one pack at a time: the map's
/// fetch_valid takes its slots so; keep's all-or-none would leave the last ones unwritten).
template <int V, class R, class T, int N, class Src, class Fold>
CUBN_DEVICE void fold_whole_visit(const R& op, const T* in0, const T* in1,
                                  const std::int64_t (&at)[N], Src& src, const Fold& fold) {
  Pack<T, V> a[N], b[N];
  load_packs<R::kInputs, N, V>(in0, in1, at, a, b);
  side_t<R, T, V> s[N];
  load_sides<T, V>(op, at, s);
  fold(a, b, s);
  unsigned all[N];
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) all[u] = kAllLanes<V>;
  src.keep_valid(a, b, all);
}

/// The most sequences whose lengths a streaming kernel's one-row loop keeps in shared memory (4
/// KiB; untuned: batches of sequences are rarely larger, and a larger one takes the several-row
/// loop).
constexpr int kLengthTable = 1024;

/// Whether a masked op's channels-first planes are each one row (a sample's L time steps: rank 3,
/// C > 1, or N = 1): accumulate_planes' one-row loop, whose packs never leave their row.
template <class Op>
CUBN_DEVICE bool planes_are_rows(const Op& op, const ChannelsFirstReduce& g) {
  return op.mask.per_step == 1 && g.s == op.mask.s;
}

/// A pack of zeros.
template <class T, int V>
CUBN_DEVICE Pack<T, V> zero_pack() {
  Pack<T, V> z;
  CUBN_UNROLL
  for (int k = 0; k < V; ++k) z.v[k] = from_acc<T>(acc_t<T>(0));
  return z;
}

// ---- tickets ------------------------------------------------------------------------------------

/// Takes one of `expected` arrivals at ticket word `index` of `t`; true for the last, which puts
/// the word back to 0. With one expected arrival nothing is touched. The count starts from zero
/// whatever the word held when its tag is not the call's (Tickets). Called by one thread of each
/// block, after a __syncthreads() that follows the block's writes: the release fence then covers
/// every thread's writes (the barrier orders them before it), and the acquire fence of the last
/// block, with the __syncthreads() after, makes every block's writes visible to all its threads.
/// Each of the three orderings is carried once (the ticket itself is relaxed): take any away and
/// ThreadSanitizer reports the race on the executor (tests/concurrency_test.cu mutates each).
CUBN_DEVICE bool take_ticket(const Tickets& t, unsigned index, unsigned expected) {
  if (expected == 1) return true;
  constexpr unsigned long long kCount = (1ull << kTicketCountBits) - 1;
  DeviceAtomicRef<unsigned long long> w(t.words[index]);
#if defined(CUBN_SIM)
  const sim::TicketVariant variant = sim::ticket_variant();
  const bool release = variant == sim::TicketVariant::kFences ||
                       variant == sim::TicketVariant::kNoAcquireFence ||
                       variant == sim::TicketVariant::kReadBeforeTicket;
  const bool acquire = variant == sim::TicketVariant::kFences ||
                       variant == sim::TicketVariant::kNoReleaseFence ||
                       variant == sim::TicketVariant::kReadBeforeTicket;
  const cuda::memory_order order = variant == sim::TicketVariant::kAcqRel
                                       ? cuda::memory_order_acq_rel
                                       : cuda::memory_order_relaxed;
#else
  constexpr bool release = true, acquire = true;
  constexpr cuda::memory_order order = cuda::memory_order_relaxed;
#endif
  if (release) device_fence(cuda::memory_order_release);
  unsigned long long old = w.load(cuda::memory_order_relaxed), count;
  do {
    count = ((old & ~kCount) == t.tag ? old & kCount : 0) + 1;
  } while (!w.compare_exchange_weak(old, t.tag | count, order, cuda::memory_order_relaxed));
#if defined(CUBN_SIM)
  if (count > expected)
    sim::detail::fault(
        "a ticket counted more arrivals than blocks (a workspace shared by calls "
        "that run at once?)");
#endif
  if (count != expected) return false;
  if (acquire) device_fence(cuda::memory_order_acquire);
  w.store(0ull, cuda::memory_order_relaxed);
  return true;
}

/// Every thread of the block calls this after writing its share of the block's results; true in
/// every thread of the block that arrives last of `expected` at ticket `index`, which may then
/// read what the others wrote.
CUBN_DEVICE bool block_arrive(const Tickets& t, unsigned index, unsigned expected) {
  CUBN_SHARED(bool, last, 1);
  __syncthreads();
  if (threadIdx.x == 0) last[0] = take_ticket(t, index, expected);
  __syncthreads();
  return last[0];
}

/// The ticket of a group of blocks (a channel, or a column block) with `splits` blocks: the
/// group's own ticket (host/plan.cpp splits only grids of at most kTickets groups); with one split
/// every block is its group's last and takes no ticket.
CUBN_DEVICE bool group_arrive(const Tickets& t, unsigned group, unsigned splits) {
  return splits == 1 || block_arrive(t, group, splits);
}

/// The channels of the leftover elements, in order, without division: channels-first planes
/// (position in the plane, channel) ...
struct PlaneTail {
  std::int64_t pos, s;
  int ch, c;
  CUBN_DEVICE int channel() const { return ch; }
  CUBN_DEVICE void next() {
    if (++pos == s) {
      pos = 0;
      if (++ch == c) ch = 0;
    }
  }
};

/// The channels of a channels-first tensor's leftover elements (G: ChannelsFirstReduce or
/// ChannelsFirstMap).
template <class G>
CUBN_DEVICE PlaneTail plane_tail(const G& g) {
  return {g.tail_pos, g.s, g.tail_ch, static_cast<int>(g.c)};
}

/// ... and periodic columns (column in the row; the channel is column / d).
struct ColumnTail {
  unsigned col, cols, d;
  CUBN_DEVICE int channel() const { return static_cast<int>(col / d); }
  CUBN_DEVICE void next() {
    if (++col == cols) col = 0;
  }
};

/// Merges get(i, k) over k in [0, per_item) for the items i in [0, count) with the whole block, in
/// an order fixed by the block size alone (strided per thread, then a tree), and calls done(i,
/// total) in one thread per item. `scratch` is kBlockThreads states of shared memory (CUBN_SHARED).
template <class State, class Get, class Scratch, class Merge, class Done>
CUBN_DEVICE void merge_items(std::int64_t count, std::int64_t per_item, const Get& get,
                             Scratch& scratch, const Merge& merge, const Done& done) {
  int lanes = 1;
  while (lanes < kBlockThreads && lanes * 2 * count <= kBlockThreads) lanes *= 2;
  const int lane = static_cast<int>(threadIdx.x) % lanes;
  for (std::int64_t base = 0; base < count; base += kBlockThreads / lanes) {
    const std::int64_t item = base + static_cast<int>(threadIdx.x) / lanes;
    State s{};
    if (item < count)
      for (std::int64_t k = lane; k < per_item; k += lanes) s = merge(s, get(item, k));
    for (int w = lanes / 2; w >= 1; w /= 2) {
      scratch[threadIdx.x] = s;
      __syncthreads();
      if (lane < w) s = merge(s, scratch[threadIdx.x + w]);
      __syncthreads();
    }
    if (lane == 0 && item < count) done(item, s);
  }
}

/// merge_items of parts[s * stride + i] over s in [0, splits), for the items i in [0, count).
template <class State, class Scratch, class Merge, class Done>
CUBN_DEVICE void merge_splits(const State* parts, std::int64_t splits, std::int64_t stride,
                              int count, Scratch& scratch, const Merge& merge, const Done& done) {
  merge_items<State>(
      count, splits, [&](std::int64_t i, std::int64_t k) { return parts[k * stride + i]; }, scratch,
      merge, [&](std::int64_t i, const State& total) { done(static_cast<int>(i), total); });
}

/// Folds into `total` the leftover elements (past the last whole pack) that belong to channel
/// `ch`; `tail` names the channel of each, from the first.
template <int V, class T, class R, class Tail>
CUBN_DEVICE void fold_leftovers(const R& op, const T* in0, const T* in1, std::int64_t numel,
                                std::int64_t ch, const typename R::Channel& cst, Tail tail,
                                typename R::State& total) {
  if (V == 1) return;
  typename R::Local l{};
  bool any = false;
  CUBN_NO_UNROLL
  for (std::int64_t e = numel / V * V; e < numel; ++e, tail.next()) {
    if (tail.channel() != ch) continue;
    if constexpr (is_masked<R>) {
      if (!op.mask.valid(e)) continue;
    }
    acc_t<T> a, b;
    load_one<R::kInputs>(in0, in1, e, a, b);
    const std::int64_t at[1] = {e};
    side_t<R, T, 1> s[1];
    load_sides<T, 1>(op, at, s);
    absorb_one(op, l, cst, a, b, s[0], 0);
    any = true;
  }
  if (any) total = op.merge(total, op.to_state(l));
}

/// Finishes channel `ch` (first element at `first`) from its merged partials: folds in its
/// leftover elements, then fin.finish. One thread per channel.
template <int V, class T, class R, class Fin, class Tail>
CUBN_DEVICE void finish_channel(const R& op, const Fin& fin, const T* in0, const T* in1,
                                std::int64_t numel, std::int64_t ch, std::int64_t first,
                                const Tail& tail, typename R::State total) {
  const auto cst = op.channel(in0, in1, ch, first);
  fold_leftovers<V>(op, in0, in1, numel, ch, cst, tail, total);
  fin.finish(ch, total, cst);
}

/// f applied to one pack: element k with the coefficients coeff(k).
template <class F, class T, int V, class CoeffOf>
CUBN_DEVICE Pack<T, V> apply_pack(const F& f, const Pack<T, V>& a, const Pack<T, V>& b,
                                  const CoeffOf& coeff) {
  Pack<T, V> o;
  CUBN_UNROLL
  for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(f.apply(coeff(k), acc_at(a, k), acc_at(b, k)));
  return o;
}

/// Writes f's outputs for the pack at `at` (element k with the coefficients coeff(k)): out =
/// f(in0, in1), or what an op with a side writes itself (its emit<KV>; KV is the kernel's pack
/// width, which tells it whose its mask bytes are).
template <int KV, class F, class T, int V, class S, class CoeffOf>
CUBN_DEVICE void emit(const F& f, T* out, std::int64_t at, const Pack<T, V>& a, const Pack<T, V>& b,
                      const S& s, const CoeffOf& coeff) {
  if constexpr (SideOf<F>::kSided) {
    f.template emit<KV>(out, at, a, b, s, coeff);
  } else {
    store_pack<V>(out + at, apply_pack(f, a, b, coeff));
  }
}

/// The packs at `at`, their sides, and f's outputs for them (coefficients coeff(k)).
template <int KV, class T, int V, class F, class CoeffOf>
CUBN_DEVICE void map_one(const T* in0, const T* in1, T* out, const F& f, std::int64_t at,
                         const CoeffOf& coeff) {
  const std::int64_t one[1] = {at};
  Pack<T, V> a[1], b[1];
  load_packs<F::kInputs, 1, V>(in0, in1, one, a, b);
  side_t<F, T, V> s[1];
  load_sides<T, V>(f, one, s);
  emit<KV>(f, out, at, a[0], b[0], s[0], coeff);
}

/// A masked map's store of pack `o` (computed for every lane) with valid lanes `bits`: one store
/// with the padded lanes zeroed (`zero`: Padding kZero), or, where padded lanes are not to be
/// written (kUntouched), one store of a whole valid pack and lane by lane otherwise. No loop over
/// lanes beyond the select.
template <class T, int V>
CUBN_DEVICE void store_valid(T* out, std::int64_t at, const Pack<T, V>& o, unsigned bits,
                             bool zero) {
  if (zero) {
    store_pack<V>(out + at, keep_lanes(o, bits));
  } else if (bits == kAllLanes<V>) {
    store_pack<V>(out + at, o);
  } else {
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      if (((bits >> k) & 1u) == 0) continue;
      Pack<T, 1> one;
      one.v[0] = o.v[k];
      store_pack<1>(out + at + k, one);
    }
  }
}

/// A masked map's outputs for a pack with valid lanes `bits` (a, b and the side s zero where no
/// lane is valid: not read): f of every lane, as the unmasked loop computes it, stored by
/// store_valid (`zero`: the mask's, Padding kZero); an op with a side (the fused epilogue) stores
/// its outputs itself (its emit_valid<KV>, KV the kernel's pack width, as emit's). F may be the
/// unmasked op (an out-of-line caller's: emit_padded_visit).
template <int KV, class F, class T, int V, class S, class CoeffOf>
CUBN_DEVICE void emit_valid(const F& f, T* out, std::int64_t at, const Pack<T, V>& a,
                            const Pack<T, V>& b, const S& s, unsigned bits, bool zero,
                            const CoeffOf& coeff) {
  if constexpr (SideOf<F>::kSided) {
    f.template emit_valid<KV>(out, at, a, b, s, bits, zero, coeff);
  } else {
    store_valid(out, at, apply_pack(f, a, b, coeff), bits, zero);
  }
}

/// map_one for a masked op (KV: the kernel's pack width): only a pack with a valid lane is read.
template <int KV, int V, class T, class F, class CoeffOf>
CUBN_DEVICE void map_one_valid(const T* in0, const T* in1, T* out, const F& f, std::int64_t at,
                               const CoeffOf& coeff) {
  const std::int64_t one[1] = {at};
  unsigned bits[1];
  pack_bits<V>(f, one, bits);
  Pack<T, V> a[1], b[1];
  load_valid_packs<F::kInputs>(in0, in1, one, bits, a, b);
  side_t<F, T, V> s[1] = {};
  load_valid_sides<T, V>(f, one, bits, s);
  emit_valid<KV>(f, out, at, a[0], b[0], s[0], bits[0], f.mask.zero, coeff);
}

/// out = f(in0, in1) for the leftover elements, by one thread (of a kernel of pack width V).
template <int V, class T, class F, class Tail>
CUBN_DEVICE void map_leftovers(const T* in0, const T* in1, T* out, std::int64_t numel, const F& f,
                               Tail tail) {
  CUBN_NO_UNROLL
  for (std::int64_t e = numel / V * V; e < numel; ++e, tail.next()) {
    const typename F::Coeffs q = f.coeffs(tail.channel());
    if constexpr (is_masked<F>) {
      map_one_valid<V, 1, T>(in0, in1, out, f, e, [&](int) { return q; });
    } else {
      map_one<V, T, 1>(in0, in1, out, f, e, [&](int) { return q; });
    }
  }
}

/// Where a loop's packs come from, and what becomes of them: the streaming kernels load them from
/// global memory and keep nothing; the persistent kernels keep them in shared memory
/// (persistent.cuh: SliceCache) and fetch them from there the second time.
template <int Inputs>
struct FromGlobal {
  template <int N, int V, class T>
  CUBN_DEVICE void fetch(const T* in0, const T* in1, const std::int64_t (&at)[N],
                         Pack<T, V> (&a)[N], Pack<T, V> (&b)[N]) {
    load_packs<Inputs, N, V>(in0, in1, at, a, b);
  }
  template <int N, int V, class T>
  CUBN_DEVICE void keep(const Pack<T, V> (&)[N], const Pack<T, V> (&)[N]) {}
  template <int N>
  CUBN_DEVICE void skip() {}
  // a masked loop's (SliceCache's): the packs with a valid lane, the others zero and not read
  template <int N, int V, class T>
  CUBN_DEVICE void fetch_valid(const T* in0, const T* in1, const std::int64_t (&at)[N],
                               const unsigned (&bits)[N], Pack<T, V> (&a)[N], Pack<T, V> (&b)[N]) {
    load_valid_packs<Inputs>(in0, in1, at, bits, a, b);
  }
  template <int N, int V, class T>
  CUBN_DEVICE void keep_valid(const Pack<T, V> (&)[N], const Pack<T, V> (&)[N],
                              const unsigned (&)[N]) {}
  template <int N>
  CUBN_DEVICE void skip_valid(const unsigned (&)[N]) {}
};

/// The coefficients of an out-of-line map's packs (emit_padded_visit), by value: every lane's
/// the same (a channels-first visit of one channel) ...
template <class Q>
struct SameCoeffs {
  Q q;
  CUBN_DEVICE const Q& at(int, int) const { return q; }
};

/// ... one channel's a pack (a channels-first visit across planes) ...
template <class Q, int N>
struct PackCoeffs {
  Q q[N];
  CUBN_DEVICE const Q& at(int u, int) const { return q[u]; }
};

/// ... or lane k's slot's, from the block's table (channels-last: lane k of each pack is slot k;
/// Table: its CUBN_SHARED array, whose slot `base` is the thread's lane 0).
template <class Q, class Table>
struct SlotCoeffs {
  Table* table;
  int base;
  CUBN_DEVICE Q at(int, int k) const { return Q((*table)[base + k]); }
};

/// Whether each of the packs of a masked map's visit that lie inside their plane (bit u of
/// `inside`) is all valid, from where the walker says it lies (SeqMask::plane_rest: rows at least
/// V long; a pack that runs into the next row counts as not).
template <int V, class F, int N>
CUBN_DEVICE bool plane_packs_valid(const F& f, const PlaneAt (&w)[N],
                                   unsigned inside = kAllLanes<N>) {
  bool all = true;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u)
    if ((inside >> u) & 1u) all = all && f.mask.template plane_rest<V>(w[u].pos, w[u].n) >= V;
  return all;
}

/// A masked map's visit whose packs' valid lanes are `bits`: the packs with a valid lane and their
/// sides fetched (src.fetch_valid), and f's outputs for the packs it takes (bit u of `take`) as
/// emit_valid stores them (`zero`: the padded lanes 0, else left as they were). KV: the kernel's
/// pack width.
template <int KV, class T, int V, class F, class Src, int N, class CoeffOf>
CUBN_DEVICE void emit_valid_visit(const F& f, bool zero, Src& src, const T* in0, const T* in1,
                                  T* out, const std::int64_t (&at)[N], const unsigned (&bits)[N],
                                  const CoeffOf& coeff, unsigned take = kAllLanes<N>) {
  Pack<T, V> a[N], b[N];
  src.fetch_valid(in0, in1, at, bits, a, b);
  side_t<F, T, V> s[N] = {};
  load_valid_sides<T, V>(f, at, bits, s);
  CUBN_UNROLL
  for (int u = 0; u < N; ++u)
    if ((take >> u) & 1u)
      emit_valid<KV>(f, out, at[u], a[u], b[u], s[u], bits[u], zero, [&](int k) {
        return coeff(u, k);
      });
}

/// A streaming masked map's visit that is not all valid, out of line: the loop holds a call, not
/// each pack's selects and lane-by-lane stores. The valid lanes (W: PlaneVisit or StepVisit) of
/// the packs it takes (bit u of `take`), then emit_valid_visit. F: the unmasked op, by value; Q:
/// the packs' coefficients (SameCoeffs, PackCoeffs or SlotCoeffs).
template <int KV, int V, class F, class T, class W, class Q>
CUBN_DEVICE_NOINLINE void emit_padded_visit(F f, bool zero, const T* in0, const T* in1, T* out,
                                            W w, unsigned take, Q q) {
  constexpr int N = packs_in<decltype(w.at)>;
  unsigned bits[N];
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) bits[u] = (take >> u) & 1u ? w.template bits<V>(u) : 0u;
  FromGlobal<F::kInputs> src;
  emit_valid_visit<KV, T, V>(f, zero, src, in0, in1, out, w.at, bits,
                             [&](int u, int k) { return q.at(u, k); }, take);
}

// ---- channels-first planes ----------------------------------------------------------------------

/// Walks the whole packs every plane of channel `ch` holds (the main tiles), starting at tile
/// `first` (< g.step) and advancing g.step tiles: visit(at[U]) for U tiles at once while U
/// remain, then visit(at[1]) for each of the rest. No division in the loop: the pack within the
/// plane and the plane's start advance by precomputed steps, in 64 bits, or in 32 bits where Wide
/// is false: for callers whose tensors have at most kNarrowElements (the persistent kernels,
/// host/plan.cpp). A pack's address is then one multiply-add from each tensor's base: about 8
/// instructions a visit fewer (bench/sass_report.py).
template <int U, int V, bool Wide, bool Rows = false, class Visit>
CUBN_DEVICE void walk_plane_tiles(const ChannelsFirstReduce& g, std::int64_t ch, unsigned first,
                                  const Visit& visit) {
  if (g.wf == 0) return;
  const auto wf = static_cast<unsigned>(g.wf), step_j = static_cast<unsigned>(g.step_j);
  unsigned count = static_cast<unsigned>(g.tiles_q) + (first < g.tiles_r ? 1u : 0u);
  const unsigned n0 = first / wf;
  unsigned j = first - n0 * wf;
  // Rows (masked loops): the plane's sample too, advancing step / wf planes a step and one more
  // where j wraps; each visit then also gets its packs' PlaneAt (one division per thread, here)
  int n = static_cast<int>(n0), step_n = 0;
  if constexpr (Rows) step_n = static_cast<int>(g.step / g.wf);
  const auto walk = [&](auto base, auto step_base, auto plane) {  // base: the plane's first element
    using I = decltype(base);
    // the plane's first whole pack (V is a power of two), then the thread's
    const auto pack = [&] {
      return static_cast<std::int64_t>(((base + I(V - 1)) & ~I(V - 1)) + static_cast<I>(j) * V);
    };
    const auto where = [&](std::int64_t at) {
      return PlaneAt{static_cast<std::uint32_t>(at - static_cast<std::int64_t>(base)), n};
    };
    const auto advance = [&] {
      j += step_j;
      base += step_base;
      if constexpr (Rows) n += step_n;
      if (j >= wf) {
        j -= wf;
        base += plane;
        if constexpr (Rows) ++n;
      }
    };
    for (; count >= static_cast<unsigned>(U); count -= U) {
      std::int64_t at[U];
      [[maybe_unused]] PlaneAt w[U];
      CUBN_UNROLL
      for (int u = 0; u < U; ++u) {
        at[u] = pack();
        if constexpr (Rows) w[u] = where(at[u]);
        advance();
      }
      if constexpr (Rows) {
        visit(at, w);
      } else {
        visit(at);
      }
    }
    CUBN_NO_UNROLL
    for (; count > 0; --count) {
      const std::int64_t at[1] = {pack()};
      if constexpr (Rows) {
        const PlaneAt w[1] = {where(at[0])};
        visit(at, w);
      } else {
        visit(at);
      }
      advance();
    }
  };
  const std::int64_t base = n0 * g.plane + ch * g.s;
  if constexpr (Wide) {
    walk(base, g.step_base, g.plane);
  } else {
    walk(static_cast<std::uint32_t>(base), static_cast<std::uint32_t>(g.step_base),
         static_cast<std::uint32_t>(g.plane));
  }
}

/// walk_plane_tiles, then the packs each plane of the thread's share (planes step - 1 - first,
/// + step, ...: counted from the last thread, which has the fewest main tiles, so that no thread
/// has both the most tiles and the edges) shares with its neighbours: edge(at, b0, b1) for the pack
/// at `at`, of which the elements in [b0, b1) are the channel's (the pack past the tensor's last
/// whole pack is left to the code that takes the leftovers).
template <int U, int V, bool Wide = true, bool Rows = false, class Main, class Edge>
CUBN_DEVICE void walk_planes(const ChannelsFirstReduce& g, std::int64_t ch, unsigned first,
                             const Main& main, const Edge& edge) {
  walk_plane_tiles<U, V, Wide, Rows>(g, ch, first, main);
  if (V == 1) return;
  const std::int64_t whole = g.wf * V;
  CUBN_NO_UNROLL
  for (std::int64_t n = g.step - 1 - first; n < g.n; n += g.step) {
    const std::int64_t b0 = n * g.plane + ch * g.s, b1 = b0 + g.s;
    const std::int64_t f = (b0 + (V - 1)) & ~static_cast<std::int64_t>(V - 1);
    if (f > b0 && f <= g.numel) edge(f - V, b0, b1);
    CUBN_NO_UNROLL
    for (std::int64_t at = f + whole; at < b1 && at + V <= g.numel; at += V) edge(at, b0, b1);
  }
}

/// A thread's share of channel `ch` over split `split` (walk_planes), each pack handed to
/// src.keep after it is folded in. Wide: as walk_plane_tiles.
template <class T, int V, bool Wide = true, class R, class Src>
CUBN_DEVICE typename R::Local accumulate_planes(const T* in0, const T* in1,
                                                const ChannelsFirstReduce& g, const R& op,
                                                const typename R::Channel& cst, std::int64_t ch,
                                                std::int64_t split, Src& src) {
  constexpr int U = unroll_for(streams_of<R>);
  typename R::Local l{};
  const auto first = static_cast<unsigned>(split * kBlockThreads + threadIdx.x);
  const auto edge = [&](std::int64_t at, std::int64_t b0, std::int64_t b1) {
    const std::int64_t one[1] = {at};
    Pack<T, V> a[1], b[1];
    unsigned bits[1] = {kAllLanes<V>};
    if constexpr (is_masked<R>) {
      pack_bits<V>(op, one, bits);
      load_valid_packs<R::kInputs>(in0, in1, one, bits, a, b);
    } else {
      load_packs<R::kInputs, 1, V>(in0, in1, one, a, b);
    }
    side_t<R, T, V> s[1];
    load_sides<T, V>(op, one, s);
    for (int k = 0; k < V; ++k)
      if (at + k >= b0 && at + k < b1 && ((bits[0] >> k) & 1u))
        absorb_one(op, l, cst, acc_at(a[0], k), acc_at(b[0], k), s[0], k);
    if constexpr (is_masked<R>) {
      src.keep_valid(a, b, bits);
    } else {
      src.keep(a, b);
    }
  };
  // a masked loop's packs with their valid lanes `bits`: those with a valid lane loaded, folded
  // (absorb_valid) and kept
  const auto fold_valid = [&](const auto& at, const auto& bits) {
    constexpr int N = packs_in<decltype(at)>;
    Pack<T, V> a[N], b[N];
    load_valid_packs<R::kInputs>(in0, in1, at, bits, a, b);
    side_t<R, T, V> s[N] = {};
    load_valid_sides<T, V>(op, at, bits, s);
    absorb_valid(op, l, cst, a, b, s, bits);
    src.keep_valid(a, b, bits);
  };
  // each pack's valid lanes from where the walker says it lies (masked: plane_bits, or ByLane
  // lane by lane), or the unmasked loop
  const auto by_bits = [&](auto by_lane) {
    walk_planes<U, V, Wide, is_masked<R>>(
        g, ch, first,
        [&](const auto& at, const auto&... where) {
          constexpr int N = packs_in<decltype(at)>;
          if constexpr (is_masked<R>) {
            unsigned bits[N];
            plane_pack_bits<V, decltype(by_lane)::value>(op, at, where..., bits);
            fold_valid(at, bits);
          } else {
            Pack<T, V> a[N], b[N];
            load_packs<R::kInputs, N, V>(in0, in1, at, a, b);
            side_t<R, T, V> s[N];
            load_sides<T, V>(op, at, s);
            absorb_packs(op, l, cst, a, b, s);
            src.keep(a, b);
          }
        },
        edge);
  };
  if constexpr (is_masked<R>) {
    // Row-wise: each pack's valid lanes from its first on (`rest`: none at most 0, all at least
    // V). OneRow (one row per plane): its sample's length less its position, one load and clamp
    // (SeqMask::row_length), no division; else (planes of several rows or samples, rows at least
    // V long) SeqMask::plane_rest, two 32-bit quotients and the load. A visit whose packs are all
    // whole is loaded and folded as the unmasked loop does, one with no valid lane skipped, and
    // the others loaded and folded out of line (absorb_row_packs: sums with their padded lanes
    // zeroed, Welford whole packs at once and a partly padded one lane by lane): a visit that
    // holds both, about one per thread and row length boundary, or a pack that runs into the
    // next row.
    // row_length(n): sample n's length as SeqMask::row_length gives it
    const auto row_wise = [&](auto one_row, const auto& row_length) {
      constexpr bool kOneRow = decltype(one_row)::value;
      walk_planes<U, V, Wide, true>(
          g, ch, first,
          [&](const auto& at, const auto& where) {
            constexpr int N = packs_in<decltype(at)>;
            int rest[N];
            bool whole = true, any = false;
            CUBN_UNROLL
            for (int u = 0; u < N; ++u) {
              if constexpr (kOneRow) {
                rest[u] = row_length(where[u].n) - static_cast<int>(where[u].pos);
              } else {
                rest[u] = op.mask.template plane_rest<V>(where[u].pos, where[u].n);
              }
              whole = whole && rest[u] >= V;
              any = any || rest[u] > 0;
            }
            if (whole) {
              fold_whole_visit<V>(op, in0, in1, at, src, [&](const auto& a, const auto& b,
                                                            const auto& s) {
                absorb_packs(op, l, cst, a, b, s);
              });
              return;
            }
            if (!any) return;  // nothing to read, fold or keep
            const auto fold = [&](const auto& w) {
              const auto r = absorb_row_packs<V>(static_cast<const unmasked_t<R>&>(op), l, cst,
                                                 in0, in1, w);
              l = r.l;
              src.keep_valid(r.a, r.second(), r.bits);
            };
            if constexpr (kOneRow) {
              RowAt<N> w;
              CUBN_UNROLL
              for (int u = 0; u < N; ++u) {
                w.at[u] = at[u];
                w.rest[u] = rest[u];
              }
              fold(w);
            } else {
              fold(PlaneVisit<N>{VisitAt<N>::of(at, where), op.mask.plane_rows()});
            }
          },
          edge);
    };
    const bool rows = planes_are_rows(op, g);
    const auto from_global = [&](int n) { return op.mask.row_length(n); };
    if constexpr (std::is_same_v<Src, FromGlobal<R::kInputs>>) {
      // A streaming kernel's block (every thread calls this once) first copies the lengths to
      // shared memory, where the one-row loop reads them: one load a pack, no clamp or second
      // word (bench/sass_report.py, sm_90 bn_stats_local: the fp16 loop of 4 packs from 279 to
      // 250 instructions). A batch of more than kLengthTable sequences takes the loop of several
      // rows, which reads them from global memory (that loop from shared memory too, a fourth
      // copy, measured 337 to 331 for fp16, but the global copy it keeps rose to 355).
      if (rows && op.mask.n <= kLengthTable) {
        CUBN_SHARED(int, lengths, kLengthTable);
        for (int i = static_cast<int>(threadIdx.x); i < op.mask.n; i += kBlockThreads)
          lengths[i] = op.mask.row_length(i);
        __syncthreads();
        row_wise(std::true_type{}, [&](int n) { return static_cast<int>(lengths[n]); });
        return l;
      }
    } else {
      if (rows) {
        row_wise(std::true_type{}, from_global);
        return l;
      }
    }
    if (plane_rows_fit<V>(op)) {
      row_wise(std::false_type{}, from_global);
    } else {
      by_bits(std::true_type{});
    }
    return l;
  }
  by_bits(std::false_type{});
  return l;
}

/// The partial of channel `ch` over split `split` (accumulate_planes, each pack handed to
/// src.keep), merged over the block into partials[split * C + ch] by thread 0. Uses the block
/// reduction's shared storage: a second call needs a barrier in between.
template <class T, int V, bool Wide = true, class R, class Src>
CUBN_DEVICE void plane_partial(const T* in0, const T* in1, const ChannelsFirstReduce& g,
                               const R& op, typename R::State* partials, std::int64_t ch,
                               std::int64_t split, Src& src) {
  using State = typename R::State;
  using Reduce = BlockReduce<State, kBlockThreads>;
  CUBN_SHARED_OBJECT(typename Reduce::TempStorage, storage);
  const auto local = accumulate_planes<T, V, Wide>(
      in0, in1, g, op, op.channel(in0, in1, ch, ch * g.s), ch, split, src);
  const auto part = Reduce(storage).reduce(
      op.to_state(local), [&op](const State& a, const State& b) { return op.merge(a, b); });
  if (threadIdx.x == 0) partials[split * g.c + ch] = part.get();
}

/// Reduces channel blockIdx.x of a channels-first tensor over split blockIdx.y of gridDim.y into
/// partials[split * C + channel] (plane_partial); the last block of the channel merges its
/// partials and calls fin.finish. Returns true in every thread of the block that finished the
/// channel (with one split: every block).
template <class T, int V, class R, class Fin>
CUBN_DEVICE bool reduce_planes(const T* in0, const T* in1, const ChannelsFirstReduce& g,
                               const R& op, typename R::State* partials, const Tickets& tickets,
                               const Fin& fin) {
  using State = typename R::State;
  const std::int64_t ch = blockIdx.x, splits = gridDim.y;
  FromGlobal<R::kInputs> src;
  plane_partial<T, V>(in0, in1, g, op, partials, ch, blockIdx.y, src);
#if defined(CUBN_SIM)
  if (sim::ticket_variant() == sim::TicketVariant::kReadBeforeTicket && threadIdx.x == 0) {
    State early{};  // a mutation for the executor's tests: the partials read before the ticket
    for (std::int64_t k = 0; k < splits; ++k) early = op.merge(early, partials[k * g.c + ch]);
    (void)early;
  }
#endif
  if (!group_arrive(tickets, static_cast<unsigned>(ch), static_cast<unsigned>(splits)))
    return false;
  CUBN_SHARED(State, scratch, kBlockThreads);
  const auto merge = [&op](const State& a, const State& b) { return op.merge(a, b); };
  const PlaneTail tail = plane_tail(g);
  merge_splits(partials + ch, splits, g.c, 1, scratch, merge, [&](int, const State& total) {
    finish_channel<V>(op, fin, in0, in1, g.numel, ch, ch * g.s, tail, total);
  });
  __syncthreads();
  return true;
}

/// out = f(in0, in1) over a thread's share of channel `ch` (walk_planes from tile `first`), its
/// packs from src.fetch. A pack shared with a neighbouring plane is written whole, once: by the
/// plane that holds its last element, with the previous plane's coefficients for the elements
/// before the boundary (the whole pack is at hand: it was loaded whole); the previous plane skips
/// it (src.skip keeps the order of kept packs). Visits of Ux packs (0: F's own unroll_for; the
/// persistent kernels pass their reduction's, so that both phases visit alike). Wide: as
/// walk_plane_tiles.
template <class T, int V, int Ux = 0, bool Wide = true, class F, class Src>
CUBN_DEVICE void map_channel_planes(const T* in0, const T* in1, T* out,
                                    const ChannelsFirstReduce& g, const F& f, std::int64_t ch,
                                    unsigned first, Src& src) {
  constexpr int U = Ux != 0 ? Ux : unroll_for(streams_of<F>);
  const typename F::Coeffs q = f.coeffs(ch);
  const auto coeff = [&](int) { return q; };
  rows_or_lanes<F>(plane_rows_fit<V>(f), [&](auto by_lane) {
    walk_planes<U, V, Wide, is_masked<F>>(
        g, ch, first,
        [&](const auto& at, const auto&... where) {
          constexpr int N = packs_in<decltype(at)>;
          Pack<T, V> a[N], b[N];
          if constexpr (is_masked<F>) {
            if constexpr (!decltype(by_lane)::value &&
                          std::is_same_v<Src, FromGlobal<F::kInputs>>) {
              // streaming, rows at least a pack long: a visit whose packs are all valid as the
              // unmasked loop (below), the others out of line
              if (!plane_packs_valid<V>(f, where...)) {
                emit_padded_visit<V, V>(static_cast<const unmasked_t<F>&>(f), f.mask.zero, in0,
                                        in1, out,
                                        PlaneVisit<N>{VisitAt<N>::of(at, where...),
                                                      f.mask.plane_rows()},
                                        kAllLanes<N>, SameCoeffs<typename F::Coeffs>{q});
                return;
              }
            } else {
              unsigned bits[N];
              plane_pack_bits<V, decltype(by_lane)::value>(f, at, where..., bits);
              emit_valid_visit<V, T, V>(f, f.mask.zero, src, in0, in1, out, at, bits,
                                        [&](int, int k) { return coeff(k); });
              return;
            }
          }
          src.fetch(in0, in1, at, a, b);
          side_t<F, T, V> s[N];
          load_sides<T, V>(f, at, s);
          CUBN_UNROLL
          for (int u = 0; u < N; ++u) emit<V>(f, out, at[u], a[u], b[u], s[u], coeff);
        },
        [&](std::int64_t at, std::int64_t b0, std::int64_t b1) {
          const std::int64_t one[1] = {at};
          [[maybe_unused]] unsigned bits[1] = {kAllLanes<V>};
          if constexpr (is_masked<F>) pack_bits<V>(f, one, bits);
          if (at + V > b1) {  // the next plane's first pack
            if constexpr (is_masked<F>) {
              src.skip_valid(bits);
            } else {
              src.template skip<1>();
            }
            return;
          }
          // elements [0, cut) belong to the previous plane (one store either way: the loop then
          // moves at most three vectors, as an edge loop should)
          const int cut = at < b0 ? static_cast<int>(b0 - at) : 0;
          const typename F::Coeffs before = cut > 0 ? f.coeffs(ch == 0 ? g.c - 1 : ch - 1) : q;
          const auto both = [&](int k) { return k < cut ? before : q; };
          Pack<T, V> a[1], b[1];
          if constexpr (is_masked<F>) {
            src.fetch_valid(in0, in1, one, bits, a, b);
            side_t<F, T, V> s[1] = {};
            load_valid_sides<T, V>(f, one, bits, s);
            emit_valid<V>(f, out, at, a[0], b[0], s[0], bits[0], f.mask.zero, both);
            return;
          }
          src.fetch(in0, in1, one, a, b);
          side_t<F, T, V> s[1];
          load_sides<T, V>(f, one, s);
          emit<V>(f, out, at, a[0], b[0], s[0], both);
        });
  });
}

/// out = f(in0, in1) over channel `ch`'s planes by one block (the forward's fused normalization).
template <class T, int V, class F>
CUBN_DEVICE void map_own_planes(const T* in0, const T* in1, T* out, const ChannelsFirstReduce& g,
                                const F& f, std::int64_t ch) {
  FromGlobal<F::kInputs> src;
  map_channel_planes<T, V>(in0, in1, out, g, f, ch, threadIdx.x, src);
}

/// out = f(in0, in1) over a channels-first tensor: its whole packs flat and grid-stride, each with
/// its channel's coefficients; the packs that straddle a plane boundary (planes hold at least V
/// elements, so a pack meets at most one) are skipped there and taken afterwards, one per
/// boundary, with the two channels' coefficients; block 0 takes the leftovers. out may equal in0
/// or in1.
template <class T, int V, class F>
CUBN_DEVICE void map_planes(const T* in0, const T* in1, T* out, const ChannelsFirstMap& g,
                            const F& f) {
  constexpr int U = unroll_for(streams_of<F>);
  const auto c = static_cast<unsigned>(g.c), s = static_cast<unsigned>(g.s);
  const auto step_pos = static_cast<unsigned>(g.step_pos),
             step_ch = static_cast<unsigned>(g.step_ch);
  const std::int64_t step = g.step * V;
  // the grid is a few waves (host/plan.cpp): its first packs' elements index in 32 bits
  const unsigned first = blockIdx.x * kBlockThreads + threadIdx.x;
  unsigned count = static_cast<unsigned>(g.packs_q) + (first < g.packs_r ? 1u : 0u);
  std::int64_t e = static_cast<std::int64_t>(first) * V;  // the pack's first element
  const unsigned row = static_cast<unsigned>(e) / s;
  unsigned pos = static_cast<unsigned>(e) - row * s;  // its position in its plane
  unsigned ch = row % c;                              // and its channel
  // masked: and its sample, which advances step / (C S) samples a step and one more where the
  // channel wraps (one division per thread, here)
  int n = 0, step_n = 0;
  if constexpr (is_masked<F>) {
    n = static_cast<int>(row / c);
    step_n = static_cast<int>(step / (g.c * g.s));
  }
  const auto advance = [&] {
    e += step;
    pos += step_pos;
    ch += step_ch;
    if constexpr (is_masked<F>) n += step_n;
    if (pos >= s) {
      pos -= s;
      ++ch;
    }
    if (ch >= c) {
      ch -= c;
      if constexpr (is_masked<F>) ++n;
    }
  };
  const auto one = [&](std::int64_t at, auto coeff) {
    if constexpr (is_masked<F>) {
      map_one_valid<V, V, T>(in0, in1, out, f, at, coeff);
    } else {
      map_one<V, T, V>(in0, in1, out, f, at, coeff);
    }
  };
  rows_or_lanes<F>(plane_rows_fit<V>(f), [&](auto by_lane) {
    for (; count >= static_cast<unsigned>(U); count -= U) {
      std::int64_t at[U];
      unsigned chs[U];
      bool whole[U];
      [[maybe_unused]] PlaneAt w[U];
      CUBN_UNROLL
      for (int u = 0; u < U; ++u) {
        at[u] = e;
        chs[u] = ch;
        whole[u] = s - pos >= V;
        if constexpr (is_masked<F>) w[u] = {pos, n};
        advance();
      }
      // Two-input maps hold half the packs, and read their coefficients before the loads; one-input
      // maps after: in both, ptxas then issues every load before it uses one and nothing spills
      // (bench/sass_report.py, bench/resource_report.py).
      typename F::Coeffs q[U];
      const auto fetch = [&] {
        CUBN_UNROLL
        for (int u = 0; u < U; ++u) q[u] = f.coeffs(chs[u]);
      };
      if constexpr (F::kInputs == 2) fetch();
      Pack<T, V> a[U] = {}, b[U] = {};
      [[maybe_unused]] side_t<F, T, V> sd[U] = {};
      if constexpr (is_masked<F>) {
        if constexpr (!decltype(by_lane)::value) {
          // rows at least a pack long: a visit whose packs inside their planes are all valid as
          // the unmasked loop (below), the others out of line
          unsigned inside = 0;
          CUBN_UNROLL
          for (int u = 0; u < U; ++u) inside |= whole[u] ? 1u << u : 0u;
          if (!plane_packs_valid<V>(f, w, inside)) {
            if constexpr (F::kInputs == 1) fetch();
            PackCoeffs<typename F::Coeffs, U> qs;
            CUBN_UNROLL
            for (int u = 0; u < U; ++u) qs.q[u] = q[u];
            emit_padded_visit<V, V>(static_cast<const unmasked_t<F>&>(f), f.mask.zero, in0, in1,
                                    out, PlaneVisit<U>{VisitAt<U>::of(at, w), f.mask.plane_rows()},
                                    inside, qs);
            continue;
          }
        } else {
          // rows shorter than a pack: each pack's lanes one by one, out of line
          unsigned bits[U];
          CUBN_UNROLL
          for (int u = 0; u < U; ++u) {  // a pack across a plane boundary is not asked about: the
            // next row may be past the last sample (its length past the array's end)
            const std::int64_t one[1] = {at[u]};
            const PlaneAt where[1] = {w[u]};
            unsigned b1[1] = {0};
            if (whole[u]) plane_pack_bits<V, true>(f, one, where, b1);
            bits[u] = b1[0];
          }
          CUBN_UNROLL
          for (int u = 0; u < U; ++u) {
            a[u] = load_pack_if<V>(in0 + at[u], whole[u] && bits[u] != 0);
            b[u] = F::kInputs == 2 ? load_pack_if<V>(in1 + at[u], whole[u] && bits[u] != 0) : a[u];
          }
          CUBN_UNROLL
          for (int u = 0; u < U; ++u) {  // bits are 0 where the pack is not whole
            // one pack at a time, as the unmasked loop (a whole array of sides here: GCC 12's SRA
            // pass fails under -fsanitize=thread, an internal compiler error)
            const std::int64_t one[1] = {at[u]};
            const unsigned b1[1] = {bits[u]};
            side_t<F, T, V> s1[1] = {};
            load_valid_sides<T, V>(f, one, b1, s1);
            sd[u] = s1[0];
          }
          if constexpr (F::kInputs == 1) fetch();
          CUBN_UNROLL
          for (int u = 0; u < U; ++u)
            if (whole[u])
              emit_valid<V>(f, out, at[u], a[u], b[u], sd[u], bits[u], f.mask.zero,
                            [&](int) { return q[u]; });
        }
      }
      if constexpr (!decltype(by_lane)::value) {  // the unmasked loop's
        CUBN_UNROLL
        for (int u = 0; u < U; ++u)
          if (whole[u]) load_inputs<F::kInputs>(in0, in1, at[u], a[u], b[u]);
        if constexpr (SideOf<F>::kSided) {
          CUBN_UNROLL
          for (int u = 0; u < U; ++u) {
            if (!whole[u]) continue;
            const std::int64_t one[1] = {at[u]};
            side_t<F, T, V> s1[1] = {};  // a side the op does not read stays unwritten
            load_sides<T, V>(f, one, s1);
            sd[u] = s1[0];
          }
        }
        if constexpr (F::kInputs == 1) fetch();
        CUBN_UNROLL
        for (int u = 0; u < U; ++u) {
          if (!whole[u]) continue;
          emit<V>(f, out, at[u], a[u], b[u], sd[u], [&](int) { return q[u]; });
        }
      }
    }
  });
  CUBN_NO_UNROLL
  for (; count > 0; --count) {
    if (s - pos >= V) {
      const typename F::Coeffs q = f.coeffs(ch);
      one(e, [&](int) { return q; });
    }
    advance();
  }
  // the packs across plane boundaries: boundary k (between planes k - 1 and k) at element k * S
  const std::int64_t planes = g.numel / g.s;
  const auto dk = static_cast<unsigned>(g.step % g.c);
  unsigned after = static_cast<unsigned>((1 + first) % g.c);  // the channel of plane k
  CUBN_NO_UNROLL
  for (std::int64_t k = 1 + first; k < planes; k += g.step) {
    const unsigned now = after;
    after += dk;
    if (after >= c) after -= c;
    const std::int64_t b = k * g.s, at = b & ~static_cast<std::int64_t>(V - 1);
    if (at == b || at + V > g.numel) continue;  // no straddling pack, or the leftovers' own
    const typename F::Coeffs q0 = f.coeffs(now == 0 ? c - 1 : now - 1), q1 = f.coeffs(now);
    const auto cut = static_cast<int>(b - at);
    one(at, [&](int kk) { return kk < cut ? q0 : q1; });
  }
  if (V > 1 && blockIdx.x == 0 && threadIdx.x == 0)
    map_leftovers<V>(in0, in1, out, g.numel, f, plane_tail(g));
}

// ---- periodic columns (channels-last) -----------------------------------------------------------

/// Walks pack column j of the periods first, first + step, ...: visit(at[U]) for U periods at
/// once while they are whole, then visit(at[1]) for each remaining pack inside the tensor. The
/// pack's index advances in 64 bits, or in 32 bits where Wide is false (as in walk_plane_tiles).
template <int U, int V, bool Wide, bool Rows = false, class Visit>
CUBN_DEVICE void walk_column(const ChannelsLastGeometry& g, std::int64_t j, std::int64_t first,
                             std::int64_t step, const Visit& visit, std::int64_t positions = 1) {
  // Rows (masked loops, channels-last): the position (row of C values) of the pack's first value
  // in its sample and the sample, advancing step periods of lr rows a visit (divisions once per
  // thread, here); each visit then also gets its packs' PlaneAt
  [[maybe_unused]] std::uint32_t r = 0, dr = 0;
  [[maybe_unused]] int n = 0, dn = 0;
  if constexpr (Rows) {
    const std::int64_t row = first * g.lr + j * V / g.cols, drow = step * g.lr;
    n = static_cast<int>(row / positions);
    r = static_cast<std::uint32_t>(row - n * positions);
    dn = static_cast<int>(drow / positions);
    dr = static_cast<std::uint32_t>(drow - dn * positions);
  }
  const auto ps = static_cast<std::uint32_t>(positions);
  const auto next = [&] {
    if constexpr (Rows) {
      r += dr;
      n += dn;
      if (r >= ps) {
        r -= ps;
        ++n;
      }
    }
  };
  const auto walk = [&](auto at, auto dat) {
    std::int64_t q = first;
    while (q + (U - 1) * step < g.full_periods) {
      std::int64_t idx[U];
      [[maybe_unused]] PlaneAt w[U];
      CUBN_UNROLL
      for (int u = 0; u < U; ++u) {
        idx[u] = static_cast<std::int64_t>(at);
        at += dat;
        if constexpr (Rows) {
          w[u] = {r, n};
          next();
        }
      }
      q += U * step;
      if constexpr (Rows) {
        visit(idx, w);
      } else {
        visit(idx);
      }
    }
    CUBN_NO_UNROLL
    for (; q < g.periods; q += step, at += dat) {
      if (static_cast<std::int64_t>(at) + V <= g.numel) {
        const std::int64_t one[1] = {static_cast<std::int64_t>(at)};
        if constexpr (Rows) {
          const PlaneAt w[1] = {{r, n}};
          visit(one, w);
        } else {
          visit(one);
        }
      }
      next();
    }
  };
  const std::int64_t at = first * g.period + j * V;
  if constexpr (Wide) {
    walk(at, step * g.period);
  } else {
    walk(static_cast<std::uint32_t>(at), static_cast<std::uint32_t>(step * g.period));
  }
}

/// A masked op's positions per sample (SeqGeometry::s: walk_column's Rows), 1 for others.
template <class Op>
CUBN_DEVICE std::int64_t seq_positions(const Op& op) {
  if constexpr (is_masked<Op>) {
    return op.mask.s;
  } else {
    return 1;
  }
}

/// The valid lanes of a masked op's column packs at `at` (walk_column), from where the walker
/// says they lie (SeqMask::position_bits: channels-last, C >= V), or lane by lane out of line
/// (channels-first planes under 2V seen as columns; C under a pack). `off`: the packs' first
/// value's place among its position's C values.
template <int V, bool ByLane, class Op, int N, class Where>
CUBN_DEVICE void column_pack_bits(const Op& op, std::uint32_t off, const std::int64_t (&at)[N],
                                  const Where (&w)[N], unsigned (&bits)[N]) {
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) {
    if constexpr (ByLane) {
      bits[u] = op.mask.template bits_by_lane<V>(at[u]);
    } else {
      bits[u] = op.mask.template position_bits<V>(w[u].pos, w[u].n, off);
    }
  }
}

/// Whether a masked op's column packs each meet at most two positions (true for unmasked ops):
/// channels-last (the period's columns are the mask's C values) with C >= V.
template <int V, class Op>
CUBN_DEVICE bool column_rows_fit(const Op& op, const ChannelsLastGeometry& g) {
  if constexpr (is_masked<Op>) {
    return op.mask.inner == g.cols && op.mask.packs_of(V);
  } else {
    return true;
  }
}

/// Whether every column pack of a masked op lies in one time step (channels-last, rank 3: the
/// steps are the sample's positions; C a multiple of V), so that it is whole or empty.
template <int V, class Op>
CUBN_DEVICE bool column_packs_whole(const Op& op, const ChannelsLastGeometry& g) {
  return op.mask.inner == g.cols && op.mask.per_step == 1 && g.cols % V == 0;
}

/// The channel of period slot `slot` (32-bit: the period is below 2^31).
CUBN_DEVICE std::int64_t slot_channel(const ChannelsLastGeometry& g, std::int64_t slot) {
  return static_cast<std::uint32_t>(slot) % static_cast<std::uint32_t>(g.cols) /
         static_cast<std::uint32_t>(g.d);
}

/// The channels of a periodic tensor's leftover elements.
CUBN_DEVICE ColumnTail column_tail(const ChannelsLastGeometry& g) {
  return {static_cast<unsigned>(g.tail_col), static_cast<unsigned>(g.cols),
          static_cast<unsigned>(g.d)};
}

/// The channel constants of a pack's V slots, by value (absorb_valid_column_lanes).
template <class C, int V>
struct ChannelSet {
  C c[V];
};

/// absorb_valid_lanes for column packs, whose lane k is slot k (constants c.c[k]): the valid lanes
/// of a visit with a partly padded pack folded one by one into their slots, out of line.
template <class R, class L, class C, class T, int V, int N>
CUBN_DEVICE_NOINLINE L absorb_valid_column_lanes(R op, L l, ChannelSet<C, V> c,
                                                 PackSet<T, V, N> p) {
  CUBN_UNROLL
  for (int u = 0; u < N; ++u)
    CUBN_UNROLL
    for (int k = 0; k < V; ++k)
      if ((p.bits[u] >> k) & 1u)
        op.template absorb_lane<V>(l, c.c[k], acc_at(p.a[u], k), acc_at(p.a[u], k), k);
  return l;
}

/// Whether each of the packs of a masked op's channels-last visit (C >= V; walk_column's
/// PlaneAt) is all valid: its head and, where `tail` (the packs run past their position's C
/// values), its tail each whole or empty (SeqMask::step_test; a tail that starts the next sample
/// counts as not).
template <class F, int N>
CUBN_DEVICE bool step_packs_valid(const F& f, bool tail, const PlaneAt (&w)[N]) {
  bool all = true;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) all = all && f.mask.step_test(w[u].pos, w[u].n, tail).all;
  return all;
}

/// Where the packs of a visit of split columns lie, for its out-of-line fold (absorb_split_packs),
/// by value: their VisitAt, the fields SeqMask::position_bits reads, and the packs' first value's
/// place among their position's C values.
template <int N>
struct StepVisit : VisitAt<N> {
  PositionRows rows;
  std::uint32_t off;
  template <int V>
  CUBN_DEVICE unsigned bits(int u) const {
    return rows.template bits<V>(this->w[u].pos, this->w[u].n, off);
  }
};

/// The packs of a visit whose valid lanes the loop knows, for an out-of-line fold, by value.
template <int N>
struct LaneSet {
  std::int64_t at[N];
  unsigned lanes[N];
  template <int V>
  CUBN_DEVICE unsigned bits(int u) const {
    return lanes[u];
  }
  CUBN_DEVICE static LaneSet of(const std::int64_t (&at)[N], const unsigned (&lanes)[N]) {
    LaneSet w;
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) {
      w.at[u] = at[u];
      w.lanes[u] = lanes[u];
    }
    return w;
  }
};

/// A masked Welford op's visit of column packs each whole or empty (one time step's C values, C
/// a multiple of V), some of them empty, out of line: the loop holds a call, not the flagged
/// fold beside the unmasked one. The packs with a valid lane loaded, then folded with the empty
/// ones weighted 0 (absorb_flagged_columns). R: the unmasked op, by value; gives back the columns
/// and the packs as loaded.
template <int V, class R, class L, class Q, class T, int N>
CUBN_DEVICE_NOINLINE RowFold<L, T, V, N> absorb_flagged_column_packs(R op, L l, Q c, const T* in0,
                                                                     LaneSet<N> w) {
  RowFold<L, T, V, N> r;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) r.bits[u] = w.lanes[u];
  load_valid_packs<1>(in0, in0, w.at, r.bits, r.a, r.a);
  std::remove_reference_t<decltype(l.n)> f[N];
  pack_flags(r.bits, f);
  op.absorb_flagged_columns(l, [&](int k) { return c.at(0, k); }, r.a, f);
  r.l = l;
  return r;
}

/// A visit of split columns (WelfordOp::SplitColumns: packs that run into the next position at
/// lane h) with a pack whose head and tail differ (or whose tail starts the next sample), out of
/// line: the packs' lanes (position_bits), those with a valid lane loaded, then with their padded
/// lanes zeroed each group's packs flagged by their lane 0 (head) or V - 1 (tail). R: the
/// unmasked op, by value; `c`: the V slots' channel constants; gives back the columns and the
/// packs as loaded.
template <int V, class R, class L, class Q, class T, int N>
CUBN_DEVICE_NOINLINE RowFold<L, T, V, N> absorb_split_packs(R op, L l, Q c, const T* in0,
                                                            StepVisit<N> v) {
  using Acc = std::remove_reference_t<decltype(l.n[0])>;
  RowFold<L, T, V, N> r;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) r.bits[u] = v.template bits<V>(u);
  load_valid_packs<1>(in0, in0, v.at, r.bits, r.a, r.a);
  Pack<T, V> a[N];
  Acc fh[N], ft[N];
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) {
    a[u] = keep_lanes(r.a[u], r.bits[u]);
    fh[u] = (r.bits[u] & 1u) != 0u ? Acc(1) : Acc(0);
    ft[u] = ((r.bits[u] >> (V - 1)) & 1u) != 0u ? Acc(1) : Acc(0);
  }
  const int h = v.off + V > v.rows.c ? static_cast<int>(v.rows.c - v.off) : V;
  op.absorb_flagged_split_pair(l, [&](int k) { return c.at(0, k); }, a, fh, ft, h);
  r.l = l;
  return r;
}

/// A masked reduction's fold of the column packs at `at`, with valid lanes `bits`, into slot
/// columns (SlotColumns: a count per slot). Sums (zero_padded): padded lanes zeroed (a fused op's
/// side's too), then as the unmasked loop folds them. Welford: where every pack is whole or empty,
/// the whole ones at once (absorb_flagged_slot_columns: every pack whole folds as the unmasked loop
/// does, bit for bit), else lane by lane out of line (absorb_valid_column_lanes: a partly padded
/// pack, where a time step's C values are not a multiple of V, or channels-first rows under 2V run
/// as columns).
template <int V, class R, class L, class Cst, class T, int N>
CUBN_DEVICE void absorb_valid_columns(const R& op, L& l, const Cst& cst, const T* in0, const T* in1,
                                      const std::int64_t (&at)[N], const unsigned (&bits)[N],
                                      Pack<T, V> (&a)[N], Pack<T, V> (&b)[N]) {
  load_valid_packs<R::kInputs>(in0, in1, at, bits, a, b);
  if constexpr (zero_padded<R>) {
    if constexpr (SideOf<R>::kSided) {  // its slot columns are its columns (a fused op's sums)
      side_t<R, T, V> s[N] = {};
      load_valid_sides<T, V>(op, at, bits, s);
      zero_padded_packs(op, a, b, s, bits);
      op.absorb_columns(l, cst, a, b, s);
    } else {
      zero_padded_lanes(a, b, bits);
      op.absorb_slot_columns(l, cst, a, b);
    }
  } else {
    static_assert(!SideOf<R>::kSided && R::kInputs == 1,
                  "a reduction with a side or two inputs folds padded lanes as zeros");
    if (!whole_or_empty<V>(bits)) {
      ChannelSet<typename R::Channel, V> c;
      CUBN_UNROLL
      for (int k = 0; k < V; ++k) c.c[k] = cst(k);
      l = absorb_valid_column_lanes(static_cast<const unmasked_t<R>&>(op), l, c, pack_set(a, bits));
      return;
    }
    std::remove_reference_t<decltype(l.n[0])> f[N];
    if (pack_flags(bits, f)) op.absorb_flagged_slot_columns(l, cst, a, f);
  }
}

/// A visit of a sum's column packs (zero_padded) that holds a padded lane, out of line: the
/// packs' valid lanes (W: LaneSet or StepVisit), then absorb_valid_columns (the packs and sides
/// with a valid lane loaded, their padded lanes zeroed, folded as the unmasked loop folds). R:
/// the unmasked op, by value; `c`: the V slots' channel constants.
template <int V, class R, class L, class C, class T, class W>
CUBN_DEVICE_NOINLINE auto absorb_padded_columns(R op, L l, ChannelSet<C, V> c, const T* in0,
                                                const T* in1, W w)
    -> RowFold<L, T, V, packs_in<decltype(w.at)>, 2> {
  static_assert(zero_padded<R> && R::kInputs == 2, "a sum of two inputs");
  constexpr int N = packs_in<decltype(w.at)>;
  RowFold<L, T, V, N, 2> r;
  CUBN_UNROLL
  for (int u = 0; u < N; ++u) r.bits[u] = w.template bits<V>(u);
  absorb_valid_columns<V>(op, l, [&](int k) { return c.c[k]; }, in0, in1, w.at, r.bits, r.a, r.b);
  r.l = l;
  return r;
}

/// A masked Welford op's split columns (WelfordOp::SplitColumns); nothing for a sum, which folds
/// into its columns.
template <class R, int V, bool = zero_padded<R>>
struct SplitColumnsOf {
  using type = typename R::template SplitColumns<V>;
};
template <class R, int V>
struct SplitColumnsOf<R, V, true> {
  struct type {};
};
template <class R, int V>
using split_columns_t = typename SplitColumnsOf<R, V>::type;

/// A reduction's per-thread column accumulators: R's Columns, or its SlotColumns when masked.
template <class R, int V>
using columns_t = std::conditional_t<is_masked<R>, typename R::template SlotColumns<V>,
                                     typename R::template Columns<V>>;

/// The partials of column block `cb` over split `split` of `splits`: each thread folds the V slots
/// it owns (pack column cb * bx + tx of the periods split * by + ty, stepping splits * by; each
/// pack then handed to src.keep), the block merges its thread rows in row order into partials[split
/// * period + slot]. `rows` is kBlockThreads states of shared memory. Ends with a barrier. Wide: as
/// walk_column.
template <class T, int V, bool Wide = true, class R, class Src, class Rows>
CUBN_DEVICE void column_partials(const T* in0, const T* in1, const ChannelsLastGeometry& g,
                                 const R& op, typename R::State* partials, std::int64_t cb,
                                 std::int64_t split, std::int64_t splits, Src& src, Rows& rows) {
  using State = typename R::State;
  constexpr int U = unroll_for(streams_of<R>);
  columns_t<R, V> l{};
  const ThreadTile t0(g.bx, static_cast<int>(threadIdx.x));
  const std::int64_t j0 = cb * t0.bx + t0.tx;
  // the block's slots' channel constants in shared memory, read at each use: V of them held in
  // registers through the loop would crowd out the packs in flight
  CUBN_SHARED(typename R::Channel, chan, kMaxColumnSlots);
  {
    const std::int64_t slot0 = cb * t0.bx * V;
    for (int i = threadIdx.x; i < t0.bx * V; i += kBlockThreads) {
      if (slot0 + i >= g.period) continue;
      const std::int64_t ch = slot_channel(g, slot0 + i);
      chan[i] = op.channel(in0, in1, ch, ch * g.d);
    }
  }
  __syncthreads();
  if (j0 < g.period_packs) {
    const auto cst = [&](int k) { return typename R::Channel(chan[opaque(t0.tx * V) + k]); };
    // the same, by value for an out-of-line fold: the table's address, not V values read in the
    // loop
    [[maybe_unused]] const SlotCoeffs<typename R::Channel, std::remove_reference_t<decltype(chan)>>
        slot_consts{&chan, opaque(t0.tx * V)};
    [[maybe_unused]] const auto off = static_cast<std::uint32_t>(j0 * V % g.cols);
    const std::int64_t q0 = split * t0.by + t0.ty, dq = splits * t0.by;
    // each pack's valid lanes from where the walker says it lies (masked: position_bits, or
    // ByLane lane by lane), or the unmasked loop
    const auto by_bits = [&](auto by_lane) {
      walk_column<U, V, Wide, is_masked<R>>(
          g, j0, q0, dq,
          [&](const auto& at, const auto&... where) {
            constexpr int N = packs_in<decltype(at)>;
            Pack<T, V> a[N], b[N];
            if constexpr (is_masked<R>) {
              unsigned bits[N];
              column_pack_bits<V, decltype(by_lane)::value>(op, off, at, where..., bits);
              absorb_valid_columns<V>(op, l, cst, in0, in1, at, bits, a, b);
              src.keep_valid(a, b, bits);
            } else {
              load_packs<R::kInputs, N, V>(in0, in1, at, a, b);
              side_t<R, T, V> s[N];
              load_sides<T, V>(op, at, s);
              absorb_columns(op, l, cst, a, b, s);
              src.keep(a, b);
            }
          },
          seq_positions(op));
    };
    if constexpr (is_masked<R>) {
      // A sum's visit (zero_padded) whose packs are all valid, loaded and folded as the unmasked
      // loop does; one with no valid lane skipped; the others out of line (absorb_padded_columns:
      // the padded lanes zeroed): about one a thread per length boundary.
      [[maybe_unused]] const auto sum_visit = [&](const auto& at, bool all, bool any,
                                                  const auto& padded) {
        if (all) {
          fold_whole_visit<V>(op, in0, in1, at, src, [&](const auto& a, const auto& b,
                                                        const auto& s) {
            absorb_columns(op, l, cst, a, b, s);
          });
          return;
        }
        if (!any) return;  // nothing to read, fold or keep
        ChannelSet<typename R::Channel, V> c;
        CUBN_UNROLL
        for (int k = 0; k < V; ++k) c.c[k] = cst(k);
        const auto r = absorb_padded_columns<V>(static_cast<const unmasked_t<R>&>(op), l, c, in0,
                                                in1, padded());
        l = r.l;
        src.keep_valid(r.a, r.b, r.bits);
      };
      if (column_packs_whole<V>(op, g)) {
        // Every pack one time step's, whole or empty (position r of sample n is valid where r <
        // its length): one length load and compare a pack, no division. Sums: sum_visit. Welford
        // into columns of one count: a visit whose packs are all valid as the unmasked loop, one
        // with an empty pack out of line (absorb_flagged_column_packs: a zero would change the
        // counts, so the empty ones are weighted 0; sm_90 fp16, bench/sass_report.py: 299 to 288
        // instructions against that fold inline).
        [[maybe_unused]] typename R::template Columns<V> one{};
        walk_column<U, V, Wide, true>(
            g, j0, q0, dq,
            [&](const auto& at, const auto& where) {
              constexpr int N = packs_in<decltype(at)>;
              unsigned some[N];
              bool any = false, all = true;
              CUBN_UNROLL
              for (int u = 0; u < N; ++u) {
                const bool v = op.mask.step_valid(where[u].n, where[u].pos);
                some[u] = v ? kAllLanes<V> : 0u;
                any = any || v;
                all = all && v;
              }
              if constexpr (zero_padded<R>) {
                sum_visit(at, all, any, [&] { return LaneSet<N>::of(at, some); });
              } else {
                if (all) {
                  fold_whole_visit<V>(op, in0, in1, at, src,
                                      [&](const auto& a, const auto& b, const auto& s) {
                                        absorb_columns(op, one, cst, a, b, s);
                                      });
                  return;
                }
                if (!any) return;  // nothing to read, fold or keep
                const auto r =
                    absorb_flagged_column_packs<V>(static_cast<const unmasked_t<R>&>(op), one,
                                                   slot_consts, in0, LaneSet<N>::of(at, some));
                one = r.l;
                src.keep_valid(r.a, r.a, r.bits);
              }
            },
            seq_positions(op));
        if constexpr (!zero_padded<R>) l = R::as_slots(one);
      } else if (column_rows_fit<V>(op, g)) {
        // C >= V (ranks 4 and 5, or C not a multiple of V): a pack's head, its lanes below h (C -
        // off where it runs past its position's C values, else V), is one position's, and its
        // tail the next's, each whole or empty: one quotient and one length load a pack
        // (SeqMask::step_test), no straddle branch; a tail at a sample's last position is asked
        // about out of line. Sums: sum_visit. Welford: a visit whose packs are all valid folds at
        // once into split columns (a count for the head's slots, one for the tail's:
        // absorb_whole_split); a visit with a padded pack, out of line (absorb_split_packs: the
        // flagged fold of whole and empty packs beside the unmasked one would double the loop;
        // sm_90 fp16, bench/sass_report.py: with step_test, 439 to 388 instructions).
        const auto cols = static_cast<std::uint32_t>(g.cols);
        const int h = off + V > cols ? static_cast<int>(cols - off) : V;
        const bool tail = h < V;
        [[maybe_unused]] split_columns_t<R, V> two{};
        walk_column<U, V, Wide, true>(
            g, j0, q0, dq,
            [&](const auto& at, const auto& where) {
              constexpr int N = packs_in<decltype(at)>;
              bool all = true, any = false;
              CUBN_UNROLL
              for (int u = 0; u < N; ++u) {
                const auto v = op.mask.step_test(where[u].pos, where[u].n, tail);
                all = all && v.all;
                any = any || v.any;
              }
              const auto visit = [&] {
                return StepVisit<N>{VisitAt<N>::of(at, where), op.mask.position_rows(), off};
              };
              if constexpr (zero_padded<R>) {
                sum_visit(at, all, any, visit);
              } else {
                if (all) {
                  fold_whole_visit<V>(op, in0, in1, at, src,
                                      [&](const auto& a, const auto&, const auto&) {
                                        op.absorb_whole_split(two, cst, a, h);
                                      });
                  return;
                }
                if (!any) return;  // nothing to read, fold or keep
                const auto r = absorb_split_packs<V>(static_cast<const unmasked_t<R>&>(op), two,
                                                     slot_consts, in0, visit());
                two = r.l;
                src.keep_valid(r.a, r.a, r.bits);
              }
            },
            seq_positions(op));
        if constexpr (!zero_padded<R>) l = R::as_slots(two, h);
      } else {
        by_bits(std::true_type{});
      }
    } else {
      by_bits(std::false_type{});
    }
  }
  // the thread's coordinates again, recomputed rather than held through the loop
  const ThreadTile tt(g.bx, opaque(static_cast<int>(threadIdx.x)));
  const std::int64_t j = cb * tt.bx + tt.tx;
  // merge the by thread rows of each slot in row order, one of the V slots at a time
  CUBN_UNROLL
  for (int k = 0; k < V; ++k) {
    if constexpr (is_masked<R>) {
      rows[threadIdx.x] = op.slot_state(l, k);
    } else {
      rows[threadIdx.x] = op.column_state(l, k);
    }
    __syncthreads();
    if (tt.ty == 0 && j < g.period_packs) {
      State m = rows[tt.tx];
      for (int r = 1; r < tt.by; ++r) m = op.merge(m, rows[r * tt.bx + tt.tx]);
      partials[split * g.period + j * V + k] = m;
    }
    __syncthreads();
  }
}

/// Reduces the V slots each thread owns over split blockIdx.y (column_partials of column block
/// blockIdx.x). The last block of a column block merges its slots over the splits; when each
/// column block holds whole channels (lr == d == 1) it finishes them, else it stores slot totals
/// and the last set to do so finishes every channel from them. Returns true in every thread of a
/// block that finished channels.
template <class T, int V, class R, class Fin>
CUBN_DEVICE bool reduce_columns(const T* in0, const T* in1, const ChannelsLastGeometry& g,
                                const R& op, typename R::State* partials, typename R::State* totals,
                                const Tickets& tickets, const Fin& fin) {
  using State = typename R::State;
  const std::int64_t splits = gridDim.y;
  CUBN_SHARED(State, rows, kBlockThreads);
  FromGlobal<R::kInputs> src;
  column_partials<T, V>(in0, in1, g, op, partials, blockIdx.x, blockIdx.y, splits, src, rows);
  const auto merge = [&op](const State& a, const State& b) { return op.merge(a, b); };
  if (!group_arrive(tickets, blockIdx.x, static_cast<unsigned>(splits))) return false;
  const bool whole = g.lr == 1 && g.d == 1;
  const ColumnTail tail = column_tail(g);
  const std::int64_t width = static_cast<std::int64_t>(g.bx) * V;
  const std::int64_t s0 = static_cast<std::int64_t>(blockIdx.x) * width;
  const std::int64_t count = g.period - s0 < width ? g.period - s0 : width;
  merge_splits(partials + s0, splits, g.period, static_cast<int>(count), rows, merge,
               [&](int i, const State& total) {
                 const std::int64_t slot = s0 + i;
                 if (whole) {  // slot = channel
                   finish_channel<V>(op, fin, in0, in1, g.numel, slot, slot, tail, total);
                 } else {
                   totals[slot] = total;
                 }
               });
  if (!whole) {
    // the slots of a channel lie in several column blocks: the last set finishes every channel
    if (!block_arrive(tickets, kTickets, gridDim.x)) return false;
    for (std::int64_t ch = threadIdx.x; ch < g.c; ch += kBlockThreads) {
      State total{};
      for (std::int64_t r = 0; r < g.lr; ++r)
        for (std::int64_t dd = 0; dd < g.d; ++dd)
          total = op.merge(total, totals[r * g.cols + ch * g.d + dd]);
      finish_channel<V>(op, fin, in0, in1, g.numel, ch, ch * g.d, tail, total);
    }
  }
  __syncthreads();
  return true;
}

/// out = f(in0, in1) over pack column cb * bx + tx of the periods split * by + ty, stepping
/// splits * by (the packs column_partials walks), its packs from src.fetch, in visits of Ux packs
/// as map_channel_planes. The block's slots'
/// coefficients sit in shared memory (V slots' worth per thread would not fit in registers beside
/// the packs in flight). Every thread of the block calls it. out may equal in0 or in1.
template <class T, int V, int Ux = 0, bool Wide = true, class F, class Src>
CUBN_DEVICE void map_column_block(const T* in0, const T* in1, T* out, const ChannelsLastGeometry& g,
                                  const F& f, std::int64_t cb, std::int64_t split,
                                  std::int64_t splits, Src& src) {
  using Coeffs = typename F::Coeffs;
  constexpr int U = Ux != 0 ? Ux : unroll_for(streams_of<F>);
  const ThreadTile tt(g.bx, static_cast<int>(threadIdx.x));
  const std::int64_t slot0 = cb * tt.bx * V;
  CUBN_SHARED(Coeffs, table, kMaxColumnSlots);
  __syncthreads();  // a previous column block's readers are done with the table
  for (int i = threadIdx.x; i < tt.bx * V; i += kBlockThreads)
    if (slot0 + i < g.period) table[i] = f.coeffs(slot_channel(g, slot0 + i));
  __syncthreads();
  const std::int64_t j = cb * tt.bx + tt.tx;
  if (j < g.period_packs) {
    // read from shared memory at each use: V slots' coefficients held in registers across the
    // loop would crowd out the packs in flight
    const auto q = [&](int k) { return Coeffs(table[opaque(tt.tx * V) + k]); };
    [[maybe_unused]] const auto off = static_cast<std::uint32_t>(j * V % g.cols);
    // whether a masked pack runs past its position's C values into the next's (C >= V)
    [[maybe_unused]] const bool tail = off + V > static_cast<std::uint32_t>(g.cols);
    rows_or_lanes<F>(column_rows_fit<V>(f, g), [&](auto by_lane) {
      walk_column<U, V, Wide, is_masked<F>>(
          g, j, split * tt.by + tt.ty, splits * tt.by,
          [&](const auto& at, const auto&... where) {
            constexpr int N = packs_in<decltype(at)>;
            Pack<T, V> a[N], b[N];
            if constexpr (is_masked<F>) {
              if constexpr (!decltype(by_lane)::value &&
                            std::is_same_v<Src, FromGlobal<F::kInputs>>) {
                // streaming, C >= V: each pack's head and tail whole or empty (SeqMask::step_test,
                // one quotient and one length load); a visit whose packs are all valid as the
                // unmasked loop (below), the others out of line
                if (!step_packs_valid(f, tail, where...)) {
                  emit_padded_visit<V, V>(
                      static_cast<const unmasked_t<F>&>(f), f.mask.zero, in0, in1, out,
                      StepVisit<N>{VisitAt<N>::of(at, where...), f.mask.position_rows(), off},
                      kAllLanes<N>,
                      SlotCoeffs<Coeffs, std::remove_reference_t<decltype(table)>>{&table,
                                                                                  tt.tx * V});
                  return;
                }
              } else {
                unsigned bits[N];
                column_pack_bits<V, decltype(by_lane)::value>(f, off, at, where..., bits);
                emit_valid_visit<V, T, V>(f, f.mask.zero, src, in0, in1, out, at, bits,
                                          [&](int, int k) { return q(k); });
                return;
              }
            }
            src.fetch(in0, in1, at, a, b);
            side_t<F, T, V> s[N];
            load_sides<T, V>(f, at, s);
            CUBN_UNROLL
            for (int u = 0; u < N; ++u) emit<V>(f, out, at[u], a[u], b[u], s[u], q);
          },
          seq_positions(f));
    });
  }
}

/// out = f(in0, in1) over column block blockIdx.x, rows blockIdx.y of gridDim.y
/// (map_column_block); block (0, 0) takes the leftovers. out may equal in0 or in1.
template <class T, int V, class F>
CUBN_DEVICE void map_columns(const T* in0, const T* in1, T* out, const ChannelsLastGeometry& g,
                             const F& f) {
  FromGlobal<F::kInputs> src;
  map_column_block<T, V>(in0, in1, out, g, f, blockIdx.x, blockIdx.y, gridDim.y, src);
  if (V > 1 && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
    map_leftovers<V>(in0, in1, out, g.numel, f, column_tail(g));
}

}  // namespace cubn::kernels
