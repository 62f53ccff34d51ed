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

#include "activation.cuh"
#include "affine.cuh"
#include "channel_ops.cuh"
#include "lengths.cuh"
#include "persistent.cuh"
#include "platform.cuh"
#include "types.cuh"
#include "welford.cuh"

namespace cubn::kernels {

/// The fused forward map: y = act(affine(x) + z) (z read when Res), and for ReLU the mask of p > 0
/// (activation.cuh) when `mask` is not null. Affine: TrainedAffine or RunningAffine. The residual
/// is the op's side: its packs load with x's, unconditionally (a compile-time Res, not a null
/// test, keeps every load of a loop in flight at once).
template <class T, class Affine, Act A, bool Res>
struct FusedAffine {
  using Acc = acc_t<T>;
  static constexpr int kInputs = 1;
  static constexpr bool kSided = true;
  static constexpr int kSideStreams = Res ? 1 : 0;
  static constexpr int kMapBlocksPerSm =
      A == Act::kSilu ? kSiluMapBlocksPerSm : kFusedMapBlocksPerSm;
  static constexpr Act kAct = A;
  static constexpr bool kRes = Res;
  /// SiLU's: p's and its sigmoid's exponent's (activation.cuh)
  using Coeffs = std::conditional_t<A == Act::kSilu, SiluCoeffs<typename Affine::Coeffs>,
                                    typename Affine::Coeffs>;
  template <class, int V>
  struct Side {
    Pack<T, V> z;
  };
  Affine affine;
  const T* z = nullptr;
  unsigned* mask = nullptr;

  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    if constexpr (A == Act::kSilu) {
      const typename Affine::Coeffs c = affine.coeffs(ch);
      return {c, sigmoid_exponent(c)};
    } else {
      return affine.coeffs(ch);
    }
  }

  template <class, int V, int N>
  CUBN_DEVICE void load_side(const std::int64_t (&at)[N], Side<T, V> (&s)[N]) const {
    if constexpr (Res) {
      CUBN_UNROLL
      for (int u = 0; u < N; ++u) s[u].z = load_pack<V>(z + at[u]);
    }
  }

  /// A masked loop's sides (lengths.cuh): z of the packs with a valid lane, zero elsewhere.
  template <class, int V, int N>
  CUBN_DEVICE void load_side_if(const std::int64_t (&at)[N], const unsigned (&valid)[N],
                                Side<T, V> (&s)[N]) const {
    if constexpr (Res) {
      CUBN_UNROLL
      for (int u = 0; u < N; ++u) s[u].z = load_pack_if<V>(z + at[u], valid[u] != 0);
    }
  }

  /// y of a pack into `o`, and in `bits` (ReLU) where p > 0.
  template <int V, class CoeffOf>
  CUBN_DEVICE void outputs(const Pack<T, V>& x, const Side<T, V>& s, const CoeffOf& coeff,
                           Pack<T, V>& o, unsigned& bits) const {
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      const Acc xv = acc_at(x, k);
      if constexpr (A == Act::kSilu) {
        const Coeffs& c = coeff(k);
        Acc p = c.p.apply(xv), q = c.q.apply(xv);
        if constexpr (Res) {
          const Acc zv = acc_at(s.z, k);
          p += zv;
          q = exponent_plus_residual(q, zv);
        }
        o.v[k] = from_acc<T>(silu(p, q));
      } else {
        Acc p = coeff(k).apply(xv);
        if constexpr (Res) p += acc_at(s.z, k);
        if constexpr (A == Act::kRelu) {
          bits |= (p > Acc(0) ? 1u : 0u) << k;
          p = relu(p);
        }
        o.v[k] = from_acc<T>(p);
      }
    }
  }

  template <int KV, int V, class CoeffOf>
  CUBN_DEVICE void emit(T* y, std::int64_t at, const Pack<T, V>& x, const Pack<T, V>&,
                        const Side<T, V>& s, const CoeffOf& coeff) const {
    Pack<T, V> o;
    unsigned bits = 0;
    outputs(x, s, coeff, o, bits);
    store_pack<V>(y + at, o);
    if constexpr (A == Act::kRelu) {
      if (mask != nullptr) write_mask<V, KV>(mask, at, bits);
    }
  }

  /// emit for a masked loop's pack with valid lanes `valid` (channel_ops.cuh emit_valid): y as
  /// store_valid stores it (`zero`: Padding kZero), and every mask bit of the pack, 0 at the
  /// padded lanes.
  template <int KV, int V, class CoeffOf>
  CUBN_DEVICE void emit_valid(T* y, std::int64_t at, const Pack<T, V>& x, const Pack<T, V>&,
                              const Side<T, V>& s, unsigned valid, bool zero,
                              const CoeffOf& coeff) const {
    Pack<T, V> o;
    unsigned bits = 0;
    outputs(x, s, coeff, o, bits);
    store_valid(y, at, o, valid, zero);
    if constexpr (A == Act::kRelu) {
      if (mask != nullptr) write_mask<V, KV>(mask, at, bits & valid);
    }
  }
};

/// Welford statistics of x - K as a channel reduction (channel_ops.cuh). A thread keeps its count
/// as Acc (exact below 2^24 for float: host/plan.cpp keeps every thread below that) and folds a
/// group of packs in with one Chan merge: the group's mean and M2 from its own values (two passes
/// over registers, 16 values at a time, halves merged with constant weights), then one division
/// for the weight. Channels-last, the V slots of a thread share one count, so one reciprocal per
/// group of U rows serves all of them.
template <class Acc>
struct WelfordOp {
  static constexpr int kInputs = 1;
  using State = WelfordState<Acc>;
  struct Local {
    Acc n = Acc(0), mean = Acc(0), m2 = Acc(0);
  };
  template <int V>
  struct Columns {
    Acc n = Acc(0);
    Acc mean[V] = {};
    Acc m2[V] = {};
  };
  struct Channel {
    Acc shift;  ///< K
  };

  /// Whether values of T are shifted: fp32 and fp64. fp16 and bf16 values are not: their own
  /// spacing dwarfs what the fp32 mean's rounding puts in the output (at |mean| / sigma = 1e4,
  /// ulp_fp32(mean) / sigma is 6e-4, under a tenth of an fp16 ulp of 1), and the subtraction
  /// would cost the channels-last loop an instruction per value.
  template <class T>
  static constexpr bool kShifted = sizeof(T) >= 4;

  template <class T>
  CUBN_DEVICE Channel channel(const T* x, const T*, std::int64_t, std::int64_t first) const {
    if constexpr (!kShifted<T>) return {Acc(0)};
    const Acc k = to_acc(x[first]);
    return {k - k == Acc(0) ? k : Acc(0)};  // Inf and NaN shift by 0
  }
  template <class T>
  CUBN_DEVICE static Acc shifted(T x, const Channel& c) {
    if constexpr (kShifted<T>) {
      return to_acc(x) - c.shift;
    } else {
      return to_acc(x);
    }
  }

  /// Chan's merge of a group (weight w = its count / the new count, mean mb, M2 m2b) into the
  /// accumulator (n, mean, m2) holding n values.
  CUBN_DEVICE static void fold(Acc n, Acc& mean, Acc& m2, Acc w, Acc mb, Acc m2b) {
    const Acc delta = mb - mean;
    m2 += m2b + delta * delta * (n * w);
    mean += delta * w;
  }
  /// fold with n * w given (nw), for slots that share it: the same operations.
  CUBN_DEVICE static void fold_nw(Acc& mean, Acc& m2, Acc nw, Acc w, Acc mb, Acc m2b) {
    const Acc delta = mb - mean;
    m2 += m2b + delta * delta * nw;
    mean += delta * w;
  }

  /// The sum of d[0, N) in pairs (N a power of two).
  template <int N>
  CUBN_DEVICE static Acc tree_sum(const Acc* d) {
    if constexpr (N == 1) {
      return d[0];
    } else {
      return tree_sum<N / 2>(d) + tree_sum<N / 2>(d + N / 2);
    }
  }

  /// Mean and M2 of N values (already shifted), 16 at a time: halves of equal size merge with
  /// constant weights.
  template <int N, class Get>
  CUBN_DEVICE static void group(const Get& get, Acc& mb, Acc& m2b) {
    if constexpr (N > 16) {
      Acc m0, q0, m1, q1;
      group<N / 2>(get, m0, q0);
      group<N / 2>([&](int i) { return get(i + N / 2); }, m1, q1);
      const Acc delta = m1 - m0;
      mb = (m0 + m1) * Acc(0.5);
      m2b = q0 + q1 + delta * delta * Acc(N / 4);
    } else {
      Acc d[N];
      CUBN_UNROLL
      for (int k = 0; k < N; ++k) d[k] = get(k);
      mb = tree_sum<N>(d) * (Acc(1) / Acc(N));
      m2b = Acc(0);
      CUBN_UNROLL
      for (int k = 0; k < N; ++k) {
        const Acc e = d[k] - mb;
        m2b += e * e;
      }
    }
  }

  template <class T, int V, int U>
  CUBN_DEVICE void absorb_packs(Local& l, const Channel& c, const Pack<T, V> (&x)[U],
                                const Pack<T, V> (&)[U]) const {
    Acc mb, m2b;
    group<U * V>([&](int i) { return shifted(x[i / V].v[i % V], c); }, mb, m2b);
    const Acc n = l.n + Acc(U * V);
    fold(l.n, l.mean, l.m2, Acc(U * V) * rcp_approx(n), mb, m2b);
    l.n = n;
  }

  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_columns(Columns<V>& l, const Cst& c, const Pack<T, V> (&x)[U],
                                  const Pack<T, V> (&)[U]) const {
    const Acc n = l.n + Acc(U);
    const Acc w = Acc(U) * rcp_approx(n);
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      Acc mb, m2b;
      group<U>([&](int u) { return kShifted<T> ? shifted(x[u].v[k], c(k)) : acc_at(x[u], k); }, mb,
               m2b);
      fold(l.n, l.mean[k], l.m2[k], w, mb, m2b);
    }
    l.n = n;
  }

  /// Masked loops (lengths.cuh): what group<N> computes over the values of the packs whose flag
  /// (1 or 0, one per P values: flag(i) for value i) is 1, returning their count. get(i) must give
  /// 0 for the others (an unread pack's zeros, shifted by flag * K). With every flag 1 these are
  /// group<N>'s operations on the same operands (d - flag * mb is d - mb, one rounding; the mean's
  /// factor 1/N where the count is N; the halves' merge with N / 4 = c0 / 2 where their counts
  /// are equal), so the same bits; a pack of zeros flagged 0 adds nothing: no select per value.
  template <int N, int P, class Get, class Flag>
  CUBN_DEVICE static Acc flagged_group(const Get& get, const Flag& flag, Acc& mb, Acc& m2b) {
    if constexpr (N > 16) {
      Acc m0, q0, m1, q1;
      const Acc c0 = flagged_group<N / 2, P>(get, flag, m0, q0);
      const Acc c1 = flagged_group<N / 2, P>([&](int i) { return get(i + N / 2); },
                                             [&](int i) { return flag(i + N / 2); }, m1, q1);
      const Acc delta = m1 - m0;
      if (c0 == c1) {  // group<N>'s merge (both empty: zeros)
        mb = (m0 + m1) * Acc(0.5);
        m2b = q0 + q1 + delta * delta * (c0 * Acc(0.5));
      } else {  // Chan's, with the weight c1 / (c0 + c1) of the second half
        const Acc w = c1 * rcp_approx(c0 + c1);
        mb = m0 + delta * w;
        m2b = q0 + q1 + delta * delta * (c0 * w);
      }
      return c0 + c1;
    } else {
      Acc d[N];
      CUBN_UNROLL
      for (int k = 0; k < N; ++k) d[k] = get(k);
      Acc c = Acc(0);
      CUBN_UNROLL
      for (int k = 0; k < N; k += P) c += flag(k);
      c *= Acc(P);
      mb = tree_sum<N>(d) * (c == Acc(N) ? Acc(1) / Acc(N) : rcp_approx(c > Acc(1) ? c : Acc(1)));
      m2b = Acc(0);
      CUBN_UNROLL
      for (int k = 0; k < N; ++k) {
        const Acc e = d[k] - flag(k) * mb;
        m2b += e * e;
      }
      return c;
    }
  }
  /// x shifted by the channel's K where `flag` is 1, by 0 where it is 0 (a flagged-out pack's
  /// zeros stay zeros); with flag 1 the same rounding as shifted().
  template <class T>
  CUBN_DEVICE static Acc flag_shifted(T x, const Channel& c, Acc flag) {
    if constexpr (kShifted<T>) {
      return to_acc(x) - c.shift * flag;
    } else {
      return to_acc(x);
    }
  }
  /// absorb_packs over the packs whose flag f[u] is 1 (every lane valid), skipping those whose
  /// flag is 0 (no valid lane: not read, zeros): at least one flag must be 1. With every flag 1,
  /// absorb_packs bit for bit (flagged_group).
  template <class T, int V, int U>
  CUBN_DEVICE void absorb_flagged_packs(Local& l, const Channel& c, const Pack<T, V> (&x)[U],
                                        const Acc (&f)[U]) const {
    Acc mb, m2b;
    const Acc k = flagged_group<U * V, V>(
        [&](int i) { return flag_shifted(x[i / V].v[i % V], c, f[i / V]); },
        [&](int i) { return f[i / V]; }, mb, m2b);
    const Acc n = l.n + k;
    fold(l.n, l.mean, l.m2, k * rcp_approx(n), mb, m2b);
    l.n = n;
  }

  /// The count of U packs' flags (flagged_group<U, 1>'s leaf), and in `r` its mean factor: 1 / U
  /// with every flag 1 (group<U>'s rounding), else an approximate reciprocal.
  template <int U>
  CUBN_DEVICE static Acc flagged_count(const Acc (&f)[U], Acc& r) {
    Acc cnt = Acc(0);
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) cnt += f[u];
    r = cnt == Acc(U) ? Acc(1) / Acc(U) : rcp_approx(cnt > Acc(1) ? cnt : Acc(1));
    return cnt;
  }
  /// Slot k's leaf over U packs flagged f (flagged_count's r): the mean mb and M2 m2b of its
  /// flagged values.
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE static void flagged_leaf(const Pack<T, V> (&x)[U], const Cst& c, const Acc (&f)[U],
                                       Acc r, int k, Acc& mb, Acc& m2b) {
    Acc d[U];
    CUBN_UNROLL
    for (int u = 0; u < U; ++u)
      d[u] = kShifted<T> ? flag_shifted(x[u].v[k], c(k), f[u]) : acc_at(x[u], k);
    mb = tree_sum<U>(d) * r;
    m2b = Acc(0);
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      const Acc e = d[u] - f[u] * mb;
      m2b += e * e;
    }
  }

  /// absorb_columns over the packs whose flag f[u] is 1 (every lane valid), skipping those whose
  /// flag is 0 (not read, zeros): a masked loop whose packs are each whole or empty, so that every
  /// slot keeps one count (channels-last, time steps of C values, C a multiple of V). At least one
  /// flag must be 1. With every flag 1, absorb_columns bit for bit: the count U, its mean factor
  /// 1 / U and weight U / n, and d - 1 * mb rounded once.
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_flagged_columns(Columns<V>& l, const Cst& c, const Pack<T, V> (&x)[U],
                                          const Acc (&f)[U]) const {
    static_assert(U <= 16, "group<U> of the columns is one leaf");
    Acc r;
    const Acc cnt = flagged_count(f, r);
    const Acc n = l.n + cnt;
    const Acc w = cnt * rcp_approx(n);
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      Acc mb, m2b;
      flagged_leaf(x, c, f, r, k, mb, m2b);
      fold(l.n, l.mean[k], l.m2[k], w, mb, m2b);
    }
    l.n = n;
  }
  /// Columns whose slots keep two counts: n[0] for the slots below h, n[1] for the others (a
  /// masked channels-last loop whose packs run into the next time step at lane h, so that a
  /// pack's head and its tail are each whole or empty; h = V where they do not).
  template <int V>
  struct SplitColumns {
    Acc n[2] = {};
    Acc mean[V] = {};
    Acc m2[V] = {};
  };
  /// absorb_flagged_columns into split columns, the packs whose flag f[u] is 1 whole (head and
  /// tail valid), the others empty (not read, zeros): at least one flag must be 1. Each slot takes
  /// its group's count and weight. With every flag 1 in every visit the two counts stay equal and
  /// each slot folds as absorb_columns does, bit for bit.
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_flagged_split(SplitColumns<V>& l, const Cst& c, const Pack<T, V> (&x)[U],
                                        const Acc (&f)[U], int h) const {
    static_assert(U <= 16, "group<U> of the columns is one leaf");
    Acc r;
    const Acc cnt = flagged_count(f, r);
    const Acc n0 = l.n[0] + cnt, n1 = l.n[1] + cnt;
    const Acc w0 = cnt * rcp_approx(n0), w1 = cnt * rcp_approx(n1);
    const Acc nw0 = l.n[0] * w0, nw1 = l.n[1] * w1;
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      Acc mb, m2b;
      flagged_leaf(x, c, f, r, k, mb, m2b);
      const bool head = k < h;
      fold_nw(l.mean[k], l.m2[k], head ? nw0 : nw1, head ? w0 : w1, mb, m2b);
    }
    l.n[0] = n0;
    l.n[1] = n1;
  }
  /// absorb_flagged_split with every flag 1 (its operations on the same operands, so the same
  /// bits), the flags' count and mean factor constants.
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_whole_split(SplitColumns<V>& l, const Cst& c, const Pack<T, V> (&x)[U],
                                      int h) const {
    Acc f[U];
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) f[u] = Acc(1);
    absorb_flagged_split(l, c, x, f, h);
  }
  /// absorb_flagged_split where a pack's head and tail may differ: flags fh[u] for the slots
  /// below h, ft[u] for the others, the packs' padded lanes zero. A group whose flags are all 0
  /// leaves its slots as they are.
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_flagged_split_pair(SplitColumns<V>& l, const Cst& c,
                                             const Pack<T, V> (&x)[U], const Acc (&fh)[U],
                                             const Acc (&ft)[U], int h) const {
    Acc rh, rt;
    const Acc ch = flagged_count(fh, rh), ct = flagged_count(ft, rt);
    const Acc n0 = l.n[0] + ch, n1 = l.n[1] + ct;
    const Acc w0 = ch * rcp_approx(n0 > Acc(0) ? n0 : Acc(1));
    const Acc w1 = ct * rcp_approx(n1 > Acc(0) ? n1 : Acc(1));
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      const bool head = k < h;
      Acc mb, m2b;
      if (!(head ? ch > Acc(0) : ct > Acc(0))) continue;
      flagged_leaf(x, c, head ? fh : ft, head ? rh : rt, k, mb, m2b);
      fold(head ? l.n[0] : l.n[1], l.mean[k], l.m2[k], head ? w0 : w1, mb, m2b);
    }
    l.n[0] = n0;
    l.n[1] = n1;
  }
  CUBN_DEVICE void absorb_one(Local& l, const Channel& c, Acc x, Acc) const {
    const Acc n = l.n + Acc(1);
    fold(l.n, l.mean, l.m2, rcp_approx(n), x - c.shift, Acc(0));
    l.n = n;
  }

  /// Columns with a count per slot, for masked loops (lengths.cuh), where a pack's lanes may be
  /// partly padded: whole packs fold exactly as absorb_columns does (the same count in every slot
  /// gives the same weights, bit for bit), single lanes with absorb_lane.
  template <int V>
  struct SlotColumns {
    Acc n[V] = {};
    Acc mean[V] = {};
    Acc m2[V] = {};
  };
  /// Columns as SlotColumns (each slot the one count).
  template <int V>
  CUBN_DEVICE static SlotColumns<V> as_slots(const Columns<V>& c) {
    SlotColumns<V> s;
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      s.n[k] = c.n;
      s.mean[k] = c.mean[k];
      s.m2[k] = c.m2[k];
    }
    return s;
  }

  /// Split columns as SlotColumns (slot k the count of its group).
  template <int V>
  CUBN_DEVICE static SlotColumns<V> as_slots(const SplitColumns<V>& c, int h) {
    SlotColumns<V> s;
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      s.n[k] = k < h ? c.n[0] : c.n[1];
      s.mean[k] = c.mean[k];
      s.m2[k] = c.m2[k];
    }
    return s;
  }

  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_slot_columns(SlotColumns<V>& l, const Cst& c, const Pack<T, V> (&x)[U],
                                       const Pack<T, V> (&)[U]) const {
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      const Acc n = l.n[k] + Acc(U);
      const Acc w = Acc(U) * rcp_approx(n);
      Acc mb, m2b;
      group<U>([&](int u) { return kShifted<T> ? shifted(x[u].v[k], c(k)) : acc_at(x[u], k); },
               mb, m2b);
      fold(l.n[k], l.mean[k], l.m2[k], w, mb, m2b);
      l.n[k] = n;
    }
  }
  /// absorb_slot_columns over the packs whose flag f[u] is 1 (every lane valid), skipping those
  /// whose flag is 0 (not read, zeros): at least one flag must be 1. With every flag 1,
  /// absorb_slot_columns bit for bit (flagged_group).
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_flagged_slot_columns(SlotColumns<V>& l, const Cst& c,
                                               const Pack<T, V> (&x)[U], const Acc (&f)[U]) const {
    static_assert(U <= 16, "group<U> of the slot columns is one leaf");
    // the count and mean factor taken once for the V slots
    Acc r;
    const Acc cnt = flagged_count(f, r);
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      Acc mb, m2b;
      flagged_leaf(x, c, f, r, k, mb, m2b);
      const Acc n = l.n[k] + cnt;
      const Acc w = cnt * rcp_approx(n);
      fold(l.n[k], l.mean[k], l.m2[k], w, mb, m2b);
      l.n[k] = n;
    }
  }
  template <int V>
  CUBN_DEVICE void absorb_lane(SlotColumns<V>& l, const Channel& c, Acc x, Acc, int k) const {
    Local one{l.n[k], l.mean[k], l.m2[k]};
    absorb_one(one, c, x, x);
    l.n[k] = one.n;
    l.mean[k] = one.mean;
    l.m2[k] = one.m2;
  }
  template <int V>
  CUBN_DEVICE State slot_state(const SlotColumns<V>& l, int k) const {
    return to_state(Local{l.n[k], l.mean[k], l.m2[k]});
  }

  CUBN_DEVICE State to_state(const Local& l) const {
    State s;
    s.count = static_cast<std::int64_t>(l.n);
    s.mean = l.mean;
    s.m2 = l.m2;
    return s;
  }
  template <int V>
  CUBN_DEVICE State column_state(const Columns<V>& l, int k) const {
    return to_state(Local{l.n, l.mean[k], l.m2[k]});
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
  Acc* k = nullptr;  ///< [3][C]: shift, a, b (TrainedAffine reads them)

  /// Mean and invstd of channel ch from its statistics of x - K; the running statistics (unbiased
  /// variance M2 / (M - 1)); the normalization's coefficients.
  CUBN_DEVICE_NOINLINE void finish(std::int64_t ch, const WelfordState<Acc>& st,
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

/// ForwardFinish for a masked call (cubn::Lengths), whose channels may hold fewer than two valid
/// elements (the host cannot see the lengths): M = 0 gives mean 0 and invstd 1 / sqrt(epsilon) and
/// leaves the running statistics; M = 1 gives its value as the mean, invstd 1 / sqrt(epsilon),
/// updates the running mean and leaves the running variance (its unbiased estimate is undefined).
template <class Acc>
struct MaskedForwardFinish {
  ForwardFinish<Acc> fin;
  CUBN_DEVICE_NOINLINE void finish(std::int64_t ch, const WelfordState<Acc>& st,
                                   const typename WelfordOp<Acc>::Channel& cst) const {
    if (st.count >= 2) {
      fin.finish(ch, st, cst);
      return;
    }
    const Acc mean = st.count == 0 ? Acc(0) : cst.shift + st.mean;
    const Acc invstd = Acc(1) / sqrt_acc(fin.epsilon);
    if (fin.saved_mean != nullptr) fin.saved_mean[ch] = mean;
    if (fin.saved_invstd != nullptr) fin.saved_invstd[ch] = invstd;
    if (fin.running_mean != nullptr && st.count == 1)
      fin.running_mean[ch] =
          (Acc(1) - fin.momentum_mean) * fin.running_mean[ch] + fin.momentum_mean * mean;
    const Acc a = (fin.scale != nullptr ? fin.scale[ch] : Acc(1)) * invstd;
    const Acc shift = st.count == 0 ? Acc(0) : cst.shift;
    fin.k[ch] = shift;
    fin.k[fin.c + ch] = a;
    fin.k[2 * fin.c + ch] = (fin.offset != nullptr ? fin.offset[ch] : Acc(0)) - (mean - shift) * a;
  }
};

/// The finisher of a call over op F: MaskedForwardFinish where F is masked, else `fin` itself (a
/// reference, not a copy: the unmasked kernels' code stays as it was).
template <class F, class Acc>
CUBN_DEVICE decltype(auto) forward_finish_for(const ForwardFinish<Acc>& fin) {
  if constexpr (is_masked<F>) {
    return MaskedForwardFinish<Acc>{fin};
  } else {
    return (fin);
  }
}

/// Welford statistics of channel blockIdx.x over split blockIdx.y; the last block of each set of
/// channels finishes them. With g.fuse (one split, whole packs per plane) the block then writes
/// its channel's y with f (TrainedAffine, or FusedAffine over it): the whole training forward in
/// this one launch. y may equal x.
template <class T, int V, class F>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, (reduce_blocks_of<T, F, false>))
    bn_stats_channels_first(ChannelsFirstReduce g, const T* x, WelfordState<acc_t<T>>* partials,
                            Tickets tickets, ForwardFinish<acc_t<T>> fin, F f, T* y) {
  using Acc = acc_t<T>;
  if (!reduce_planes<T, V>(x, static_cast<const T*>(nullptr), g, masked_like(f, WelfordOp<Acc>{}),
                           partials, tickets, forward_finish_for<F>(fin)) ||
      !g.fuse)
    return;
  map_own_planes<T, V>(x, static_cast<const T*>(nullptr), y, g, f, blockIdx.x);
}

/// Welford statistics of the V slots each thread owns over split blockIdx.y; the last block of
/// each set of column blocks (and of all, where channels span column blocks) finishes them. With
/// g.fuse (one split, whole channels per column block) the block then writes its columns' y.
template <class T, int V, class F>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, (reduce_blocks_of<T, F, false>))
    bn_stats_channels_last(ChannelsLastGeometry g, const T* x, WelfordState<acc_t<T>>* partials,
                           WelfordState<acc_t<T>>* totals, Tickets tickets,
                           ForwardFinish<acc_t<T>> fin, F f, T* y) {
  using Acc = acc_t<T>;
  if (!reduce_columns<T, V>(x, static_cast<const T*>(nullptr), g, masked_like(f, WelfordOp<Acc>{}),
                            partials, totals, tickets, forward_finish_for<F>(fin)) ||
      !g.fuse)
    return;
  map_columns<T, V>(x, static_cast<const T*>(nullptr), y, g, f);
}

/// The whole training forward in one cooperative launch (persistent.cuh): statistics, running
/// statistics and y, x read once where the grid's shared memory holds it. y may equal x.
template <class T, int V, class F>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kPersistentBlocksPerSm)
    bn_forward_persistent_channels_first(ChannelsFirstReduce g, PersistentGeometry pg, const T* x,
                                         WelfordState<acc_t<T>>* partials,
                                         ForwardFinish<acc_t<T>> fin, F f, T* y) {
  persistent_planes<T, V>(x, static_cast<const T*>(nullptr), y, g, pg,
                          masked_like(f, WelfordOp<acc_t<T>>{}), partials,
                          forward_finish_for<F>(fin), f);
}

/// The persistent training forward over a channels-last tensor. y may equal x.
template <class T, int V, class F>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kPersistentBlocksPerSm)
    bn_forward_persistent_channels_last(ChannelsLastGeometry g, PersistentGeometry pg, const T* x,
                                        WelfordState<acc_t<T>>* partials,
                                        ForwardFinish<acc_t<T>> fin, F f, T* y) {
  persistent_columns<T, V>(x, static_cast<const T*>(nullptr), y, g, pg,
                           masked_like(f, WelfordOp<acc_t<T>>{}), partials,
                           forward_finish_for<F>(fin), f);
}

/// y = (x - shift) * a + b over a channels-first tensor (Affine: TrainedAffine or
/// RunningAffine, or FusedAffine over one). y may equal x.
template <class T, int V, class Affine>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, map_blocks_per_sm<Affine>)
    bn_normalize_channels_first(ChannelsFirstMap g, const T* x, T* y, Affine affine) {
  map_planes<T, V>(x, static_cast<const T*>(nullptr), y, g, affine);
}

/// y = (x - shift) * a + b over a channels-last tensor. y may equal x.
template <class T, int V, class Affine>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, map_blocks_per_sm<Affine>)
    bn_normalize_channels_last(ChannelsLastGeometry g, const T* x, T* y, Affine affine) {
  map_columns<T, V>(x, static_cast<const T*>(nullptr), y, g, affine);
}

}  // namespace cubn::kernels
