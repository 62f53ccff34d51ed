/// @file distributed.cuh
/// @brief The split-phase training calls (cubn/distributed.hpp): the local phases are the single
/// call's reductions (channel_ops.cuh) with finishers that write this rank's record instead of
/// finishing the channels; the apply phases merge the gathered records in rank order with one
/// thread per channel and finish the channels with the single call's own finishers
/// (ForwardFinish, BackwardFinish), then run the single call's map kernels (bn_normalize_*,
/// bn_backward_dx_*).
///
/// A rank's record (cubn/distributed.hpp documents it as bytes): a RankHeader, then C pairs of
/// Acc (RankMoments forward, GradSums backward), padded to 16 bytes (rank_record_bytes).
#pragma once

#include <cstdint>

#include "backward.cuh"
#include "channel_ops.cuh"
#include "forward.cuh"
#include "geometry.hpp"
#include "lengths.cuh"
#include "platform.cuh"
#include "types.cuh"
#include "welford.cuh"

namespace cubn::kernels {

/// The first 16 bytes of a rank's record.
struct RankHeader {
  std::int64_t count;  ///< elements per channel on the rank
  std::int64_t zero;
};
static_assert(sizeof(RankHeader) == kRankHeaderBytes, "geometry.hpp sizes records with it");

/// A rank's statistics of one channel: its mean (not shifted) and M2.
template <class Acc>
struct RankMoments {
  Acc mean, m2;
};

/// The records of R ranks back to back, `bytes` apart.
struct Records {
  const unsigned char* base;
  std::size_t bytes;
  int ranks;

  /// Rank r's count, to be added to the ranks' `total` so far. A record of the local phase holds
  /// one in [0, 2^63 - 1 - total] (a rank's count is its N x spatial, under 2^62); the executor
  /// reports any other as a kernel fault (records that are not the local phase's, whose counts
  /// would overflow the total); on a GPU such records give undefined statistics.
  CUBN_DEVICE std::int64_t count(int r, std::int64_t total) const {
    const std::int64_t n = reinterpret_cast<const RankHeader*>(base + r * bytes)->count;
#if defined(CUBN_SIM)
    if (n < 0 || n > INT64_MAX - total)
      sim::detail::fault(
          "a gathered record's count is negative or overflows the ranks' total: the records are "
          "not what the local phase wrote");
#endif
    return n;
  }
  template <class Pair>
  CUBN_DEVICE Pair pair(int r, std::int64_t ch) const {
    return reinterpret_cast<const Pair*>(base + r * bytes + kRankHeaderBytes)[ch];
  }
};

/// Writes one rank's record: a channel's pair, and with channel 0 the header and the padding
/// pairs past the last channel (so every byte a collective moves is defined).
template <class Pair>
struct RecordWriter {
  RankHeader* header = nullptr;
  Pair* pairs = nullptr;
  std::int64_t c = 0, padded = 0;  ///< channels; pairs the record has room for

  RecordWriter() = default;
  CUBN_HOST_DEVICE RecordWriter(void* record, std::size_t bytes, std::int64_t channels)
      : header(static_cast<RankHeader*>(record)),
        pairs(reinterpret_cast<Pair*>(static_cast<unsigned char*>(record) + kRankHeaderBytes)),
        c(channels),
        padded(static_cast<std::int64_t>((bytes - kRankHeaderBytes) / sizeof(Pair))) {}

  CUBN_DEVICE void write(std::int64_t ch, const Pair& v, std::int64_t count) const {
    pairs[ch] = v;
    if (ch != 0) return;
    *header = {count, 0};
    for (std::int64_t i = c; i < padded; ++i) pairs[i] = Pair{};
  }
};

/// Finishes a local forward reduction: this rank's mean (K + the mean of x - K) and M2 of each
/// channel into its record, with the count.
template <class Acc>
struct LocalStatsFinish {
  RecordWriter<RankMoments<Acc>> out;

  CUBN_DEVICE_NOINLINE void finish(std::int64_t ch, const WelfordState<Acc>& st,
                                   const typename WelfordOp<Acc>::Channel& cst) const {
    out.write(ch, {cst.shift + st.mean, st.m2}, st.count);
  }
};

/// Finishes a local backward reduction: this rank's sums of each channel into its record, with
/// the count, and this rank's dscale and doffset (grads: BackwardFinish without dx's
/// coefficients).
template <class Acc>
struct LocalGradFinish {
  BackwardFinish<Acc> grads;
  std::int64_t count = 0;
  RecordWriter<GradSums<Acc>> out;

  template <class Cst>
  CUBN_DEVICE_NOINLINE void finish(std::int64_t ch, const GradSums<Acc>& s, const Cst& cst) const {
    if (grads.dscale != nullptr || grads.doffset != nullptr) grads.finish(ch, s, cst);
    out.write(ch, s, count);
  }
};

/// LocalGradFinish for a masked call (cubn::Lengths): the record's count is this rank's valid
/// elements per channel, from the lengths (the host cannot see them).
template <class Acc>
struct MaskedLocalGradFinish {
  LocalGradFinish<Acc> fin;
  SeqMask mask;

  template <class Cst>
  CUBN_DEVICE_NOINLINE void finish(std::int64_t ch, const GradSums<Acc>& s, const Cst& cst) const {
    LocalGradFinish<Acc> f = fin;
    if (ch == 0) f.count = mask.channel_elements();  // the record's header: channel 0 writes it
    f.finish(ch, s, cst);
  }
};

/// The local finisher of a backward over reduction op R: MaskedLocalGradFinish where R is masked,
/// else `fin` itself.
template <class R, class Acc>
CUBN_DEVICE decltype(auto) local_grad_finish_for(const R& op, const LocalGradFinish<Acc>& fin) {
  if constexpr (is_masked<R>) {
    return MaskedLocalGradFinish<Acc>{fin, op.mask};
  } else {
    return (fin);
  }
}

/// The local forward statistics of channel blockIdx.x over split blockIdx.y: bn_stats_* without
/// the finish and the fused normalization. R: WelfordOp, or Masked<WelfordOp> for a
/// variable-length batch (its Welford counts are then the valid elements, which the record
/// carries).
template <class T, int V, class R>
CUBN_KERNEL void __launch_bounds__(kBlockThreads,
                                   (reduce_blocks_per_sm(sizeof(T), false, 0, false)))
    bn_stats_local_channels_first(ChannelsFirstReduce g, const T* x, R op,
                                  WelfordState<acc_t<T>>* partials, Tickets tickets,
                                  LocalStatsFinish<acc_t<T>> fin) {
  reduce_planes<T, V>(x, static_cast<const T*>(nullptr), g, op, partials, tickets, fin);
}

/// The local forward statistics over a channels-last tensor.
template <class T, int V, class R>
CUBN_KERNEL void __launch_bounds__(kBlockThreads,
                                   (reduce_blocks_per_sm(sizeof(T), false, 0, false)))
    bn_stats_local_channels_last(ChannelsLastGeometry g, const T* x, R op,
                                 WelfordState<acc_t<T>>* partials, WelfordState<acc_t<T>>* totals,
                                 Tickets tickets, LocalStatsFinish<acc_t<T>> fin) {
  reduce_columns<T, V>(x, static_cast<const T*>(nullptr), g, op, partials, totals, tickets, fin);
}

/// The local gradient sums (in0 = dy, in1 = x; R: GradSumOp or FusedGradSumOp): bn_backward_sums_*
/// with the local finish.
template <class T, int V, class R>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, (reduce_blocks_of<T, R, true>))
    bn_backward_sums_local_channels_first(ChannelsFirstReduce g, const T* __restrict__ dy,
                                          const T* __restrict__ x, R op,
                                          GradSums<acc_t<T>>* partials, Tickets tickets,
                                          LocalGradFinish<acc_t<T>> fin) {
  reduce_planes<T, V>(dy, x, g, op, partials, tickets, local_grad_finish_for(op, fin));
}

/// The local gradient sums over a channels-last tensor.
template <class T, int V, class R>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, (reduce_blocks_of<T, R, true>))
    bn_backward_sums_local_channels_last(ChannelsLastGeometry g, const T* __restrict__ dy,
                                         const T* __restrict__ x, R op,
                                         GradSums<acc_t<T>>* partials, GradSums<acc_t<T>>* totals,
                                         Tickets tickets, LocalGradFinish<acc_t<T>> fin) {
  reduce_columns<T, V>(dy, x, g, op, partials, totals, tickets, local_grad_finish_for(op, fin));
}

/// The record of a rank with no samples, `values` values of Acc: all zero bits (count 0, which
/// merges as the identity).
template <class Acc>
CUBN_KERNEL void __launch_bounds__(kBlockThreads)
    bn_record_empty(Acc* record, std::int64_t values) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
  if (i < values) record[i] = Acc(0);
}

/// Merges channel ch's statistics over the ranks in rank order (Chan's merge; an empty rank is the
/// identity), then finishes the channel as the single call does, around the merged mean itself
/// (the shift K of forward.cuh: the statistics of x - mean have mean 0 and the same M2). A global
/// count under 2, which the host cannot see (variable-length batches, empty ranks), gets the
/// masked single call's defined result (MaskedForwardFinish); from 2 up it is the same finish.
template <class Acc>
CUBN_KERNEL void __launch_bounds__(kBlockThreads)
    bn_merge_stats(Records in, ForwardFinish<Acc> fin) {
  const std::int64_t ch = static_cast<std::int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
  if (ch >= fin.c) return;
  WelfordState<Acc> total;
  for (int r = 0; r < in.ranks; ++r) {
    const auto m = in.pair<RankMoments<Acc>>(r, ch);
    WelfordState<Acc> s;
    s.count = in.count(r, total.count);
    s.mean = m.mean;
    s.m2 = m.m2;
    total = welford_merge(total, s);
  }
  WelfordState<Acc> centered;
  centered.count = total.count;
  centered.m2 = total.m2;
  MaskedForwardFinish<Acc>{fin}.finish(ch, centered, {total.mean});
}

/// Sums channel ch's gradient sums and the counts over the ranks in rank order, then finishes
/// dx's coefficients as the single call does (fin: no dscale or doffset; its m set here from the
/// global count, 1 where it is 0: the sums are then 0 and no valid dx is formed from them, as in
/// MaskedBackwardFinish). `mean`: the saved global mean the sums were taken around.
template <class Acc>
CUBN_KERNEL void __launch_bounds__(kBlockThreads)
    bn_merge_grad_sums(Records in, const Acc* mean, BackwardFinish<Acc> fin) {
  const std::int64_t ch = static_cast<std::int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
  if (ch >= fin.c) return;
  GradSums<Acc> total;
  std::int64_t count = 0;
  for (int r = 0; r < in.ranks; ++r) {
    const auto s = in.pair<GradSums<Acc>>(r, ch);
    total.dy += s.dy;
    total.dy_xmu += s.dy_xmu;
    count += in.count(r, count);
  }
  fin.m = static_cast<Acc>(count > 0 ? count : 1);
  fin.finish(ch, total, typename GradSumOp<Acc>::Channel{mean[ch]});
}

}  // namespace cubn::kernels
