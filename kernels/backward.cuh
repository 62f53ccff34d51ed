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

#include "activation.cuh"
#include "affine.cuh"
#include "channel_ops.cuh"
#include "lengths.cuh"
#include "persistent.cuh"
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
  static constexpr int kInputs = 2;
  /// A masked loop may fold padded lanes as zeros: dy = 0 adds 0 to both sums (channel_ops.cuh
  /// zero_padded).
  static constexpr bool kZeroPadded = true;
  using State = GradSums<Acc>;
  using Local = GradSums<Acc>;
  const Acc* mean;  ///< the statistics xhat was formed with: saved or running
  struct Channel {
    Acc mean;
  };
  template <class T>
  CUBN_DEVICE Channel channel(const T*, const T*, std::int64_t c, std::int64_t) const {
    return {mean[c]};
  }
  template <int V>
  struct Columns {
    Local slot[V];
  };
  CUBN_DEVICE void absorb_one(Local& l, const Channel& ch, Acc dy, Acc x) const {
    l.dy += dy;
    l.dy_xmu += dy * (x - ch.mean);
  }
  template <class T, int V, int U>
  CUBN_DEVICE void absorb_packs(Local& l, const Channel& ch, const Pack<T, V> (&dy)[U],
                                const Pack<T, V> (&x)[U]) const {
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      CUBN_UNROLL
      for (int k = 0; k < V; ++k) absorb_one(l, ch, acc_at(dy[u], k), acc_at(x[u], k));
    }
  }
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_columns(Columns<V>& l, const Cst& ch, const Pack<T, V> (&dy)[U],
                                  const Pack<T, V> (&x)[U]) const {
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      CUBN_UNROLL
      for (int k = 0; k < V; ++k) absorb_one(l.slot[k], ch(k), acc_at(dy[u], k), acc_at(x[u], k));
    }
  }
  template <int V>
  CUBN_DEVICE State column_state(const Columns<V>& l, int k) const {
    return l.slot[k];
  }
  /// The masked loops' columns (lengths.cuh): already one accumulator per slot.
  template <int V>
  using SlotColumns = Columns<V>;
  template <class T, int V, int U, class Cst>
  CUBN_DEVICE void absorb_slot_columns(Columns<V>& l, const Cst& ch, const Pack<T, V> (&dy)[U],
                                       const Pack<T, V> (&x)[U]) const {
    absorb_columns(l, ch, dy, x);
  }
  template <int V>
  CUBN_DEVICE void absorb_lane(Columns<V>& l, const Channel& ch, Acc dy, Acc x, int k) const {
    absorb_one(l.slot[k], ch, dy, x);
  }
  template <int V>
  CUBN_DEVICE State slot_state(const Columns<V>& l, int k) const {
    return l.slot[k];
  }
  CUBN_DEVICE State to_state(const Local& l) const { return l; }
  CUBN_DEVICE State merge(const State& a, const State& b) const {
    return {a.dy + b.dy, a.dy_xmu + b.dy_xmu};
  }
};

/// The coefficients of dx = k_dy * dy + k_x * (x - mean) + k_1 for elements of T. fp16 and bf16
/// take dx = k_dy * dy + k_x * x + (k_1 - k_x * mean), three coefficients: the fp32 rounding of
/// k_x * mean stays under a tenth of their ulp while |mean| / sigma is below 1e3 (as for
/// AffineCoeffs), and a channels-last thread's V channels' worth then fits beside its packs.
template <class T, bool = (sizeof(T) >= 4)>
struct DxCoeffs {
  using Acc = acc_t<T>;
  Acc k_dy, k_x, mean, k_1;
  CUBN_DEVICE DxCoeffs(Acc kdy, Acc kx, Acc m, Acc k1) : k_dy(kdy), k_x(kx), mean(m), k_1(k1) {}
  DxCoeffs() = default;
  CUBN_DEVICE Acc apply(Acc dy, Acc x) const { return k_dy * dy + k_x * (x - mean) + k_1; }
};
template <class T>
struct DxCoeffs<T, false> {
  using Acc = acc_t<T>;
  Acc k_dy, k_x, k_1;
  CUBN_DEVICE DxCoeffs(Acc kdy, Acc kx, Acc m, Acc k1) : k_dy(kdy), k_x(kx), k_1(k1 - kx * m) {}
  DxCoeffs() = default;
  CUBN_DEVICE Acc apply(Acc dy, Acc x) const { return k_dy * dy + k_x * x + k_1; }
};

/// dx of the training backward from the per-channel coefficients its sums' finish stored in a
/// [4][C] array: k_dy, k_x, mean, k_1.
template <class T>
struct TrainingDxOp {
  using Acc = acc_t<T>;
  static constexpr int kInputs = 2;
  using Coeffs = DxCoeffs<T>;
  const Acc* k;
  std::int64_t c;
  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    return Coeffs(k[ch], k[c + ch], k[2 * c + ch], k[3 * c + ch]);
  }
  CUBN_DEVICE Acc apply(const Coeffs& q, Acc dy, Acc x) const { return q.apply(dy, x); }
};

/// dx = scale * rsqrt(running_var + epsilon) * dy (rsqrt in a few ulp): no reduction, x not read.
template <class Acc>
struct FrozenDxOp {
  static constexpr int kInputs = 1;
  struct Coeffs {
    Acc a;
  };
  const Acc* scale;  ///< null means 1
  const Acc* var;
  Acc epsilon;
  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    return {(scale != nullptr ? scale[ch] : Acc(1)) * rsqrt_acc(var[ch] + epsilon)};
  }
  CUBN_DEVICE Acc apply(const Coeffs& q, Acc dy, Acc) const { return q.a * dy; }
};

/// Nothing: the forward coefficients of activations other than SiLU, and their source (so the
/// training and frozen backward of ReLU share kernels).
struct NoCoeffs {};
struct NoForward {
  using Coeffs = NoCoeffs;
};

/// The backward of the fused epilogue (activation.cuh): dy * act'(p) from what each pack's side
/// holds. ReLU reads the forward's mask; SiLU recomputes its sigmoid's exponent q = -p log2(e)
/// from x (and z, read again when the forward added one: Res) with coefficients derived from the
/// forward's own (Fwd: TrainedAffine over those the forward left in the reserve, or RunningAffine)
/// by the forward's code, so q is the forward's bit for bit; none passes dy through.
template <class T, Act A, class Fwd, bool Res>
struct ActGrad {
  static constexpr bool kReadsZ = A == Act::kSilu && Res;
  using Acc = acc_t<T>;
  using FwdCoeffs = std::conditional_t<A == Act::kSilu, typename Fwd::Coeffs, NoCoeffs>;
  template <int V>
  struct Side {
    Pack<T, V> z;
    unsigned bits;
  };
  Fwd fwd;
  const T* z = nullptr;            ///< SiLU with Res: the forward's residual
  const unsigned* mask = nullptr;  ///< ReLU: the forward's mask

  /// SiLU: the coefficients of its sigmoid's exponent q (activation.cuh), formed as the forward's
  CUBN_DEVICE FwdCoeffs fwd_coeffs(std::int64_t ch) const {
    if constexpr (A == Act::kSilu) {
      return sigmoid_exponent(fwd.coeffs(ch));
    } else {
      return {};
    }
  }
  template <int V, int N>
  CUBN_DEVICE void load(const std::int64_t (&at)[N], Side<V> (&s)[N]) const {
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) {
      if constexpr (A == Act::kRelu) s[u].bits = read_mask<V>(mask, at[u]);
      if constexpr (kReadsZ) s[u].z = load_pack<V>(z + at[u]);
    }
  }
  /// load for a masked loop (lengths.cuh): the packs with a valid lane, zero elsewhere.
  template <int V, int N>
  CUBN_DEVICE void load_if(const std::int64_t (&at)[N], const unsigned (&valid)[N],
                           Side<V> (&s)[N]) const {
    CUBN_UNROLL
    for (int u = 0; u < N; ++u) {
      if constexpr (A == Act::kRelu) s[u].bits = valid[u] != 0 ? read_mask<V>(mask, at[u]) : 0u;
      if constexpr (kReadsZ) s[u].z = load_pack_if<V>(z + at[u], valid[u] != 0);
    }
  }
  /// The padded lanes (outside `valid`) of a side zeroed: z (SiLU) and the mask bits (ReLU).
  template <int V>
  CUBN_DEVICE static void zero_padded(Side<V>& s, unsigned valid) {
    if constexpr (A == Act::kRelu) s.bits &= valid;
    if constexpr (kReadsZ) s.z = keep_lanes(s.z, valid);
  }
  /// dy * act'(p) of element k of a pack.
  template <int V>
  CUBN_DEVICE Acc grad(Acc dy, Acc x, const Side<V>& s, int k, const FwdCoeffs& fc) const {
    if constexpr (A == Act::kRelu) {
      return (s.bits >> k) & 1u ? dy : Acc(0);
    } else if constexpr (A == Act::kSilu) {
      Acc q = fc.apply(x);
      if constexpr (kReadsZ) q = exponent_plus_residual(q, acc_at(s.z, k));
      return silu_grad(dy, q);
    } else {
      return dy;
    }
  }
};

/// The gradient sums through the fused epilogue: sum(g) and sum(g * (x - mean)), g = dy *
/// act'(p) (ActGrad), as a channel reduction of (in0 = dy, in1 = x) with sides; states, merges
/// and the mean are GradSumOp's.
template <class T, Act A, class Fwd, bool Res>
struct FusedGradSumOp : GradSumOp<acc_t<T>> {
  using Acc = acc_t<T>;
  static constexpr bool kSided = true;
  using Grad = ActGrad<T, A, Fwd, Res>;
  static constexpr int kSideStreams = Grad::kReadsZ ? 1 : 0;
  static constexpr Act kAct = A;
  static constexpr bool kRes = Res;
  /// A masked loop folds padded lanes as zeros (channel_ops.cuh zero_padded), their sides' too:
  /// dy = 0 gives g = 0 (SiLU's: dy times a finite factor, x and z zeroed).
  static constexpr bool kZeroPadded = true;
  using Local = GradSums<Acc>;
  template <class, int V>
  using Side = typename Grad::template Side<V>;
  template <int V>
  using Columns = typename GradSumOp<Acc>::template Columns<V>;
  struct Channel {
    Acc mean;
    typename Grad::FwdCoeffs fc;
  };
  Grad act;

  template <class U>
  CUBN_DEVICE Channel channel(const U*, const U*, std::int64_t c, std::int64_t) const {
    return {this->mean[c], act.fwd_coeffs(c)};
  }
  template <class, int V, int N>
  CUBN_DEVICE void load_side(const std::int64_t (&at)[N], Side<T, V> (&s)[N]) const {
    act.template load<V>(at, s);
  }
  template <class, int V, int N>
  CUBN_DEVICE void load_side_if(const std::int64_t (&at)[N], const unsigned (&valid)[N],
                                Side<T, V> (&s)[N]) const {
    act.template load_if<V>(at, valid, s);
  }
  template <int V>
  CUBN_DEVICE void zero_padded_side(Side<T, V>& s, unsigned valid) const {
    Grad::template zero_padded<V>(s, valid);
  }
  template <int V>
  CUBN_DEVICE void absorb_one(Local& l, const Channel& ch, Acc dy, Acc x, const Side<T, V>& s,
                              int k) const {
    const Acc g = act.grad(dy, x, s, k, ch.fc);
    l.dy += g;
    l.dy_xmu += g * (x - ch.mean);
  }
  template <int V, int U>
  CUBN_DEVICE void absorb_packs(Local& l, const Channel& ch, const Pack<T, V> (&dy)[U],
                                const Pack<T, V> (&x)[U], const Side<T, V> (&s)[U]) const {
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      CUBN_UNROLL
      for (int k = 0; k < V; ++k) absorb_one(l, ch, acc_at(dy[u], k), acc_at(x[u], k), s[u], k);
    }
  }
  template <int V, int U, class Cst>
  CUBN_DEVICE void absorb_columns(Columns<V>& l, const Cst& ch, const Pack<T, V> (&dy)[U],
                                  const Pack<T, V> (&x)[U], const Side<T, V> (&s)[U]) const {
    CUBN_UNROLL
    for (int u = 0; u < U; ++u) {
      CUBN_UNROLL
      for (int k = 0; k < V; ++k)
        absorb_one(l.slot[k], ch(k), acc_at(dy[u], k), acc_at(x[u], k), s[u], k);
    }
  }
};

/// dx through the fused epilogue: Base's dx (TrainingDxOp or FrozenDxOp) of g = dy * act'(p), and
/// dz = g, each written when its pointer is not null. Reads x also when Base does not (SiLU).
template <class T, Act A, class Fwd, class Base, bool Res>
struct FusedDxOp {
  using Acc = acc_t<T>;
  using Grad = ActGrad<T, A, Fwd, Res>;
  static constexpr int kInputs = A == Act::kSilu ? 2 : Base::kInputs;
  static constexpr bool kSided = true;
  static constexpr int kSideStreams = Grad::kReadsZ ? 1 : 0;
  static constexpr int kMapBlocksPerSm =
      A == Act::kSilu ? kSiluMapBlocksPerSm : kFusedMapBlocksPerSm;
  template <class, int V>
  using Side = typename Grad::template Side<V>;
  struct Coeffs {
    typename Base::Coeffs q;
    typename Grad::FwdCoeffs fc;
  };
  Base base;
  Grad act;
  T* dz = nullptr;

  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const { return {base.coeffs(ch), act.fwd_coeffs(ch)}; }
  template <class, int V, int N>
  CUBN_DEVICE void load_side(const std::int64_t (&at)[N], Side<T, V> (&s)[N]) const {
    act.template load<V>(at, s);
  }
  template <class, int V, int N>
  CUBN_DEVICE void load_side_if(const std::int64_t (&at)[N], const unsigned (&valid)[N],
                                Side<T, V> (&s)[N]) const {
    act.template load_if<V>(at, valid, s);
  }
  /// dx (into ox) and dz (into oz) of a pack.
  template <int V, class CoeffOf>
  CUBN_DEVICE void outputs(const Pack<T, V>& dy, const Pack<T, V>& x, const Side<T, V>& s,
                           const CoeffOf& coeff, Pack<T, V>& ox, Pack<T, V>& oz) const {
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) {
      const Coeffs q = coeff(k);
      const Acc xv = acc_at(x, k);
      const Acc g = act.grad(acc_at(dy, k), xv, s, k, q.fc);
      oz.v[k] = from_acc<T>(g);
      ox.v[k] = from_acc<T>(base.apply(q.q, g, xv));
    }
  }
  template <int KV, int V, class CoeffOf>
  CUBN_DEVICE void emit(T* dx, std::int64_t at, const Pack<T, V>& dy, const Pack<T, V>& x,
                        const Side<T, V>& s, const CoeffOf& coeff) const {
    Pack<T, V> ox, oz;
    outputs(dy, x, s, coeff, ox, oz);
    if (dx != nullptr) store_pack<V>(dx + at, ox);
    if (dz != nullptr) store_pack<V>(dz + at, oz);
  }
  /// emit for a masked loop's pack with valid lanes `valid` (channel_ops.cuh emit_valid): dx and
  /// dz as store_valid stores them (`zero`: Padding kZero).
  template <int KV, int V, class CoeffOf>
  CUBN_DEVICE void emit_valid(T* dx, std::int64_t at, const Pack<T, V>& dy, const Pack<T, V>& x,
                              const Side<T, V>& s, unsigned valid, bool zero,
                              const CoeffOf& coeff) const {
    Pack<T, V> ox, oz;
    outputs(dy, x, s, coeff, ox, oz);
    if (dx != nullptr) store_valid(dx, at, ox, valid, zero);
    if (dz != nullptr) store_valid(dz, at, oz, valid, zero);
  }
};

/// What finishing a channel's gradient sums writes; optional pointers may be null.
template <class Acc>
struct BackwardFinish {
  std::int64_t c = 0;
  Acc m = Acc(0);               ///< elements per channel
  const Acc* scale = nullptr;   ///< null means 1
  const Acc* invstd = nullptr;  ///< training: saved invstd; null for frozen statistics
  const Acc* var = nullptr;     ///< frozen: running variance, with epsilon
  Acc epsilon = Acc(0);
  Acc* dscale = nullptr;
  Acc* doffset = nullptr;
  bool accumulate = false;  ///< add to dscale and doffset instead of overwriting them
  Acc* k = nullptr;         ///< training: dx's coefficients, [4][C] (TrainingDxOp); may be null

  /// dscale and doffset of channel ch (written or added to), and dx's coefficients. Cst: the
  /// reduction op's Channel (its mean).
  template <class Cst>
  CUBN_DEVICE_NOINLINE void finish(std::int64_t ch, const GradSums<Acc>& s, const Cst& cst) const {
    const Acc inv = invstd != nullptr ? invstd[ch] : Acc(1) / sqrt_acc(var[ch] + epsilon);
    const Acc dy_xhat = s.dy_xmu * inv;
    if (dscale != nullptr) dscale[ch] = (accumulate ? dscale[ch] : Acc(0)) + dy_xhat;
    if (doffset != nullptr) doffset[ch] = (accumulate ? doffset[ch] : Acc(0)) + s.dy;
    if (k != nullptr) {
      const Acc a = (scale != nullptr ? scale[ch] : Acc(1)) * inv;
      k[ch] = a;
      k[c + ch] = -a * inv * dy_xhat / m;
      k[2 * c + ch] = cst.mean;
      k[3 * c + ch] = -a * s.dy / m;
    }
  }
};

/// BackwardFinish for a masked call (cubn::Lengths): M is the channel's valid elements, from the
/// lengths (1 where there are none: the sums are then 0, and no dx is formed from them).
template <class Acc>
struct MaskedBackwardFinish {
  BackwardFinish<Acc> fin;
  SeqMask mask;
  template <class Cst>
  CUBN_DEVICE_NOINLINE void finish(std::int64_t ch, const GradSums<Acc>& s, const Cst& cst) const {
    BackwardFinish<Acc> f = fin;
    const std::int64_t m = mask.channel_elements();
    f.m = static_cast<Acc>(m > 0 ? m : 1);
    f.finish(ch, s, cst);
  }
};

/// The finisher of a call over reduction op R: MaskedBackwardFinish where R is masked, else `fin`
/// itself (a reference, not a copy: the unmasked kernels' code stays as it was).
template <class R, class Acc>
CUBN_DEVICE decltype(auto) backward_finish_for(const R& op, const BackwardFinish<Acc>& fin) {
  if constexpr (is_masked<R>) {
    return MaskedBackwardFinish<Acc>{fin, op.mask};
  } else {
    return (fin);
  }
}

/// Gradient sums of channel blockIdx.x over split blockIdx.y (in0 = dy, in1 = x); the last block
/// of each set of channels finishes them.
template <class T, int V, class R>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, (reduce_blocks_of<T, R, true>))
    bn_backward_sums_channels_first(ChannelsFirstReduce g, const T* __restrict__ dy,
                                    const T* __restrict__ x, R op, GradSums<acc_t<T>>* partials,
                                    Tickets tickets, BackwardFinish<acc_t<T>> fin) {
  reduce_planes<T, V>(dy, x, g, op, partials, tickets, backward_finish_for(op, fin));
}

/// Gradient sums of the V slots each thread owns over split blockIdx.y; the last blocks finish
/// them (reduce_columns).
template <class T, int V, class R>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, (reduce_blocks_of<T, R, true>))
    bn_backward_sums_channels_last(ChannelsLastGeometry g, const T* __restrict__ dy,
                                   const T* __restrict__ x, R op, GradSums<acc_t<T>>* partials,
                                   GradSums<acc_t<T>>* totals, Tickets tickets,
                                   BackwardFinish<acc_t<T>> fin) {
  reduce_columns<T, V>(dy, x, g, op, partials, totals, tickets, backward_finish_for(op, fin));
}

/// The whole training backward in one cooperative launch (persistent.cuh): gradient sums, dscale,
/// doffset and dx, dy and x read once where the grid's shared memory holds them. dx may equal dy
/// or x.
template <class T, int V, class R, class F>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kPersistentBlocksPerSm)
    bn_backward_persistent_channels_first(ChannelsFirstReduce g, PersistentGeometry pg, const T* dy,
                                          const T* x, R op, GradSums<acc_t<T>>* partials,
                                          BackwardFinish<acc_t<T>> fin, F f, T* dx) {
  persistent_planes<T, V>(dy, x, dx, g, pg, op, partials, backward_finish_for(op, fin), f);
}

/// The persistent training backward over a channels-last tensor. dx may equal dy or x.
template <class T, int V, class R, class F>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, kPersistentBlocksPerSm)
    bn_backward_persistent_channels_last(ChannelsLastGeometry g, PersistentGeometry pg, const T* dy,
                                         const T* x, R op, GradSums<acc_t<T>>* partials,
                                         BackwardFinish<acc_t<T>> fin, F f, T* dx) {
  persistent_columns<T, V>(dy, x, dx, g, pg, op, partials, backward_finish_for(op, fin), f);
}

/// dx over a channels-first tensor (in0 = dy, in1 = x). dx may equal dy or x.
template <class T, int V, class Op>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, map_blocks_per_sm<Op>)
    bn_backward_dx_channels_first(ChannelsFirstMap g, const T* dy, const T* x, T* dx, Op op) {
  map_planes<T, V>(dy, x, dx, g, op);
}

/// dx over a channels-last tensor (in0 = dy, in1 = x). dx may equal dy or x.
template <class T, int V, class Op>
CUBN_KERNEL void __launch_bounds__(kBlockThreads, map_blocks_per_sm<Op>)
    bn_backward_dx_channels_last(ChannelsLastGeometry g, const T* dy, const T* x, T* dx, Op op) {
  map_columns<T, V>(dy, x, dx, g, op);
}

}  // namespace cubn::kernels
