/// @file lengths.cuh
/// @brief Variable-length batches (cubn::Lengths): which elements of a padded tensor are valid, and
/// the op wrapper that carries that to the loops of channel_ops.cuh.
///
/// An element's validity depends on the tensor's memory order alone, not on the kernel geometry
/// that walks it: element e is of row r = e / inner (inner: 1 channels-first, where the time axis
/// is the innermost; C channels-last, where a time step holds C values), sample n = r / (C S /
/// inner) and time position t = r % L, and valid when t < lengths[n] (clamped to [0, L]). S is a
/// multiple of L (L is the last spatial extent), so a sample's block and a row of L elements never
/// straddle. The divisions are multiplications by the launch's FastDivisors (geometry.hpp).
///
/// Masked loops are compile-time variants (an op is masked when it is a Masked<Op>): the unmasked
/// kernels do not change. A masked loop computes each pack's valid lanes before loading it (from
/// where its walker says the pack lies: plane_bits, position_bits; no division per pack), loads
/// only packs with a valid lane, and folds and writes whole packs as the unmasked loop does (so
/// all lengths = L gives the unmasked call's results bit for bit): sums take the padded lanes as
/// zeros, maps select per lane what they store. Welford's statistics (where a zero would be a
/// value) fold the whole packs of a visit whose packs are whole or empty at once, the empty ones
/// weighted 0 (WelfordOp::absorb_flagged_packs), and a visit with a partly padded pack lane by
/// lane out of line (channel_ops.cuh absorb_valid).
#pragma once

#include <cstdint>
#include <type_traits>

#include "geometry.hpp"
#include "platform.cuh"

namespace cubn::kernels {

struct PlaneRows;
struct PositionRows;
struct ElementRows;

/// The valid elements of a padded tensor (see the file comment; the fields: geometry.hpp's
/// SeqGeometry, which host/ fills).
struct SeqMask : SeqGeometry {
  /// floor(n / f's divisor) for n in [0, 2^63) (geometry.hpp FastDivisor).
  CUBN_DEVICE static std::int64_t quotient(const FastDivisor& f, std::int64_t n) {
#if defined(__CUDA_ARCH__)
    const auto twice = static_cast<std::uint64_t>(n) << 1;
    return static_cast<std::int64_t>(__umul64hi(twice, f.m) >> f.l);
#else
    return static_cast<std::int64_t>(f.divide(static_cast<std::uint64_t>(n)));
#endif
  }
  /// Length i of the N int32 (int64 where `wide`) lengths at p, clamped to [0, l].
  CUBN_DEVICE static std::int64_t length_of(const void* p, bool wide, std::int64_t l,
                                            std::int64_t i) {
    const std::int64_t v = wide ? static_cast<const std::int64_t*>(p)[i]
                                : static_cast<const std::int32_t*>(p)[i];
    return v < 0 ? 0 : (v > l ? l : v);
  }
  /// Sample i's length, clamped to [0, L].
  CUBN_DEVICE std::int64_t length(std::int64_t i) const { return length_of(lengths, wide, l, i); }
  /// Sample i's length as 32-bit words: its low word, then for int64 lengths its high word (the
  /// device is little-endian).
  CUBN_DEVICE const std::int32_t* length_words(int i) const {
    return static_cast<const std::int32_t*>(lengths) +
           (static_cast<std::uint32_t>(i) << (wide ? 1 : 0));  // i < N < 2^31
  }
  /// Sample i's length for a test against a time step (t < it), no clamp: read as its two 32-bit
  /// words (an int32 length's high word is its sign), compared in 64 bits. One load (two for
  /// int64 lengths).
  CUBN_DEVICE std::int64_t step_length(int i) const {
    const std::int32_t* p = length_words(i);
    const std::int32_t lo = p[0];
    const std::int32_t hi = wide ? p[1] : (lo < 0 ? -1 : 0);
    return static_cast<std::int64_t>(
        (static_cast<std::uint64_t>(static_cast<std::uint32_t>(hi)) << 32) |
        static_cast<std::uint32_t>(lo));
  }
  /// Whether time step t of sample i is valid (t < its length), for a loop whose packs each lie
  /// in one time step: one load (two for int64 lengths), two compares.
  CUBN_DEVICE bool step_valid(int i, std::uint32_t t) const {
    return static_cast<std::int64_t>(t) < step_length(i);
  }
  /// Sample i's length for a loop whose packs lie inside rows of l (so that a length over l is
  /// as good as l): int32 lengths clamped below at 0, int64 ones saturated to [0, 2^31). One
  /// 32-bit load (and for int64, a second of the high word: the device is little-endian), one
  /// clamp, not length_of's two.
  CUBN_DEVICE int row_length(int i) const {
    const std::int32_t* p = length_words(i);
    const int lo = p[0];
    if (!wide) return lo < 0 ? 0 : lo;
    const int hi = p[1];
    constexpr int kBig = 0x7fffffff;
    return hi == 0 ? (lo < 0 ? kBig : lo) : (hi > 0 ? kBig : 0);
  }
  /// The valid lanes from the first on of the V-element pack at position `pos` of a
  /// channels-first plane that starts sample `n` (as plane_bits, rows at least V long): its row's
  /// length (row_length) less its time step t = pos % l, so at most 0 where no lane is valid and
  /// at least V where every one is; 1 (some lanes, for V > 1) where it runs into the next row,
  /// whose lanes plane_bits takes. Two 32-bit quotients and one length load, no straddle branch
  /// (sm_90 bn_stats_local, bench/sass_report.py: the loop of 4 packs from 424 to 269 instructions
  /// for fp32, 501 to 337 for fp16, against plane_bits and the flagged fold).
  template <int V>
  CUBN_DEVICE int plane_rest(std::uint32_t pos, int n) const {
    const auto lw = static_cast<std::uint32_t>(l);
    const std::uint32_t row = quotient32(by_l32, pos), t = pos - row * lw;
    const int len = row_length(n + static_cast<int>(quotient32(by_step32, row)));
    return t + V > lw ? 1 : len - static_cast<int>(t);
  }
  /// Of a channels-last pack (C >= V) whose head is position r's (< S) of sample n, and, where
  /// `tail`, whose last lanes are the next position's: whether every lane is valid (`all`; a tail
  /// that starts the next sample counts as not), and whether one may be (`any`: the head's
  /// position valid, or a tail at a row's end, whose next row may be): of the pack as a whole,
  /// its lanes left to position_bits out of line. One 32-bit quotient, one length load and 64-bit
  /// compares, no branch (sm_90 bn_stats_channels_last fp16, bench/sass_report.py: the split
  /// columns' loop of 4 packs from 439 to 388 instructions against the lanes' head and tail
  /// selects, 458 where the tests branched).
  struct StepTest {
    bool all, any;
  };
  CUBN_DEVICE StepTest step_test(std::uint32_t r, int n, bool tail) const {
    const auto lw = static_cast<std::uint32_t>(l);
    const std::uint32_t t = r - quotient32(by_l32, r) * lw;
    const std::int64_t len = step_length(n);
    const bool end = t + 1 == lw, head = static_cast<std::int64_t>(t) < len;
    // the tail's time step: the next one of the row, or at its end the next row's first (of the
    // sample: one of the next sample's counts as not valid); bitwise, not branching, operators
    const std::uint32_t next_t = end ? 0u : t + 1;
    const bool next =
        (static_cast<std::int64_t>(next_t) < len) & (r + 1 != static_cast<std::uint32_t>(s));
    return {static_cast<bool>(tail ? head & next : head), static_cast<bool>(head | (tail & end))};
  }
  /// Whether element e is valid.
  CUBN_DEVICE bool valid(std::int64_t e) const;
  /// floor(n / f's divisor) for n in [0, 2^31) (geometry.hpp FastDivisor32).
  CUBN_DEVICE static std::uint32_t quotient32(const FastDivisor32& f, std::uint32_t n) {
#if defined(__CUDA_ARCH__)
    return __umulhi(n << 1, f.m) >> f.l;
#else
    return f.divide(n);
#endif
  }
  /// Lanes [0, k) of a V-lane pack (k clamped to [0, V]).
  template <int V, class I>
  CUBN_DEVICE static unsigned first_lanes(I k) {
    const int v = k <= 0 ? 0 : (k >= V ? V : static_cast<int>(k));
    return (1u << v) - 1u;
  }
  /// The valid lanes of the V-element pack at position `pos` (< 2^31) of a channels-first plane
  /// that starts sample `n` (the plane walkers' packs, inside the plane), rows of l at least V
  /// long (packs_of(V)): lanes [0, length - t) of its row (t = pos % l) and, where it runs into
  /// the next row, lanes [l - t, l - t + length). A plane holds one sample's S positions, or, for
  /// C = 1 (host/problem.cpp makes the one channel one plane), every sample's: its row's sample is
  /// n + row / per_step, and its last row is followed by the next sample's first. No division:
  /// two 32-bit quotients, one length load. A pack that runs into the next row (at most one per
  /// row, none where L is a multiple of V and the planes start on a pack) takes its lanes out of
  /// line (straddling_bits): the loops hold a call, not its second length load and branches
  /// (bench/sass_report.py: 9 to 27 instructions fewer per loop on sm_90).
  template <int V>
  CUBN_DEVICE unsigned plane_bits(std::uint32_t pos, int n) const;
  /// What plane_bits reads, by value (for an out-of-line caller: a SeqMask by value would be
  /// copied to the stack in the loop).
  CUBN_DEVICE PlaneRows plane_rows() const;
  /// The lanes of a pack from time step t of a row of length `len` (of l: the loops' narrow
  /// geometry) into the next row, whose length is `len` again, or that of sample `next` (>= 0:
  /// the row is its sample's last). Static, its fields by value: a member's `this` would put the
  /// kernel's op in local memory.
  template <int V>
  CUBN_DEVICE_NOINLINE static unsigned straddling_bits(const void* lengths, bool wide,
                                                       std::uint32_t l, std::uint32_t t, int len,
                                                       int next) {
    constexpr unsigned kAll = (1u << V) - 1u;
    const int second = next >= 0 ? static_cast<int>(length_of(lengths, wide, l, next)) : len;
    return first_lanes<V>(len - static_cast<int>(t)) | ((first_lanes<V>(second) << (l - t)) & kAll);
  }
  /// The valid lanes of a V-element pack of a channels-last tensor (inner = C >= V values per
  /// position) whose first lane is value `off` of position `r` (< S) of sample `n`: all or none
  /// (the position's time step t = r % l against the length), and where it runs past the
  /// position's C values, the next position's (the next sample's first where r is the last).
  template <int V>
  CUBN_DEVICE unsigned position_bits(std::uint32_t r, int n, std::uint32_t off) const;
  /// What position_bits reads, by value (for an out-of-line caller).
  CUBN_DEVICE PositionRows position_rows() const;
  /// bits() lane by lane, out of line: for rows shorter than a pack (channels-first L under V,
  /// channels-last C under V), where a pack may meet any number of rows and samples. The loops
  /// call it (a CALL, bench/sass_report.py's calls column) instead of holding V lanes' divisions.
  /// Static, what valid() reads by value (ElementRows): a member's `this` would put the kernel's
  /// op in local memory, and every access through its pointers would be generic (LD/ST, not
  /// LDG/STG; bench/sass_report.py: the masked map kernels' stack frames, and their loops' accesses).
  template <int V>
  CUBN_DEVICE unsigned bits_by_lane(std::int64_t at) const;
  /// What valid() reads, by value.
  CUBN_DEVICE ElementRows element_rows() const;
  /// The valid lanes of the V-element pack at element `at` (bit k: element at + k). Where a
  /// pack meets at most two rows (SeqGeometry::packs_of), without a loop over its lanes:
  /// channels-first, a row of L holds a prefix of valid lanes (from the row's time step t:
  /// length - t of them), and so does the next row (from t = 0: its sample's length);
  /// channels-last, a time step's C values are all valid or all padded, and so are the next
  /// one's. No division: three quotient()s by the launch's divisors, one or two length loads.
  template <int V>
  CUBN_DEVICE unsigned bits(std::int64_t at) const {
    if constexpr (V == 1) {
      return valid(at) ? 1u : 0u;
    } else {
      if (!packs_of(V)) return bits_by_lane<V>(at);
      constexpr unsigned kAll = (1u << V) - 1u;
      const std::int64_t row = quotient(by_inner, at), rl = quotient(by_l, row);
      const std::int64_t t = row - rl * l, sample = quotient(by_rows, rl);
      const std::int64_t len = length(sample);
      // the sample of the next row of l (the last row of a sample is followed by the next's)
      const auto next_sample = [&] { return rl + 1 - sample * rows == rows ? sample + 1 : sample; };
      if (inner == 1) {
        unsigned b = first_lanes<V>(len - t);
        if (t + V > l)  // the last lanes start the next row (l >= V: no third)
          b |= (first_lanes<V>(length(next_sample())) << (l - t)) & kAll;
        return b;
      }
      const std::int64_t off = at - row * inner;
      unsigned b = t < len ? kAll : 0u;
      if (off + V > inner) {  // the last lanes are the next time step's (inner >= V: no third)
        const unsigned head = first_lanes<V>(inner - off);
        const bool next = t + 1 < l ? t + 1 < len : length(next_sample()) > 0;
        b = (b & head) | (next ? kAll & ~head : 0u);
      }
      return b;
    }
  }
  /// The first sample with a valid position (N when there is none).
  CUBN_DEVICE std::int64_t first_valid_sample() const {
    std::int64_t i = 0;
    while (i < n && length(i) == 0) ++i;
    return i;
  }
  /// A channel's valid elements: per_step * (sum of lengths).
  CUBN_DEVICE std::int64_t channel_elements() const {
    std::int64_t total = 0;
    for (std::int64_t i = 0; i < n; ++i) total += length(i);
    return total * per_step;
  }
};

/// The fields SeqMask::valid reads (SeqMask::element_rows).
struct ElementRows {
  const void* lengths;
  FastDivisor by_inner, by_l, by_rows;
  std::int64_t l;
  bool wide;

  /// SeqMask::valid.
  CUBN_DEVICE bool valid(std::int64_t e) const {
    const std::int64_t row = SeqMask::quotient(by_inner, e), rl = SeqMask::quotient(by_l, row);
    return row - rl * l < SeqMask::length_of(lengths, wide, l, SeqMask::quotient(by_rows, rl));
  }
  /// SeqMask::bits_by_lane, out of line.
  template <int V>
  CUBN_DEVICE_NOINLINE static unsigned bits_by_lane(ElementRows r, std::int64_t at) {
    unsigned b = 0;
    CUBN_NO_UNROLL
    for (int k = 0; k < V; ++k) b |= (r.valid(at + k) ? 1u : 0u) << k;
    return b;
  }
};

CUBN_DEVICE ElementRows SeqMask::element_rows() const {
  return ElementRows{lengths, by_inner, by_l, by_rows, l, wide};
}

CUBN_DEVICE bool SeqMask::valid(std::int64_t e) const { return element_rows().valid(e); }

template <int V>
CUBN_DEVICE unsigned SeqMask::bits_by_lane(std::int64_t at) const {
  return ElementRows::bits_by_lane<V>(element_rows(), at);
}

/// The fields SeqMask::plane_bits reads (SeqMask::plane_rows).
struct PlaneRows {
  const void* lengths;
  FastDivisor32 by_l32, by_step32;
  std::uint32_t l, per_step;
  bool wide;

  /// SeqMask::plane_bits.
  template <int V>
  CUBN_DEVICE unsigned bits(std::uint32_t pos, int n) const {
    const std::uint32_t row = SeqMask::quotient32(by_l32, pos), t = pos - row * l;
    const std::uint32_t q = SeqMask::quotient32(by_step32, row);
    const int sample = n + static_cast<int>(q);
    const int len = static_cast<int>(SeqMask::length_of(lengths, wide, l, sample));
    if (t + V > l) {
      const bool last = row - q * per_step + 1 == per_step;
      return SeqMask::straddling_bits<V>(lengths, wide, l, t, len, last ? sample + 1 : -1);
    }
    return SeqMask::first_lanes<V>(len - static_cast<int>(t));
  }
};

CUBN_DEVICE PlaneRows SeqMask::plane_rows() const {
  return PlaneRows{lengths, by_l32, by_step32, static_cast<std::uint32_t>(l),
                   static_cast<std::uint32_t>(per_step), wide};
}

template <int V>
CUBN_DEVICE unsigned SeqMask::plane_bits(std::uint32_t pos, int n) const {
  return plane_rows().template bits<V>(pos, n);
}

/// The fields SeqMask::position_bits reads (SeqMask::position_rows).
struct PositionRows {
  const void* lengths;
  FastDivisor32 by_l32;
  std::uint32_t l, c, s;
  bool wide;

  /// SeqMask::position_bits.
  template <int V>
  CUBN_DEVICE unsigned bits(std::uint32_t r, int n, std::uint32_t off) const {
    constexpr unsigned kAll = (1u << V) - 1u;
    const std::uint32_t t = r - SeqMask::quotient32(by_l32, r) * l;
    const auto length = [&](int i) {
      return static_cast<int>(SeqMask::length_of(lengths, wide, l, i));
    };
    const int len = length(n);
    unsigned b = static_cast<int>(t) < len ? kAll : 0u;
    if (off + V > c) {
      const unsigned head = SeqMask::first_lanes<V>(c - off);
      bool next;
      if (r + 1 == s) {
        next = length(n + 1) > 0;  // n + 1 < N: the pack lies inside the tensor
      } else {
        next = t + 1 == l ? len > 0 : static_cast<int>(t) + 1 < len;
      }
      b = (b & head) | (next ? kAll & ~head : 0u);
    }
    return b;
  }
};

CUBN_DEVICE PositionRows SeqMask::position_rows() const {
  return PositionRows{lengths, by_l32, static_cast<std::uint32_t>(l),
                      static_cast<std::uint32_t>(inner), static_cast<std::uint32_t>(s), wide};
}

template <int V>
CUBN_DEVICE unsigned SeqMask::position_bits(std::uint32_t r, int n, std::uint32_t off) const {
  return position_rows().template bits<V>(r, n, off);
}

/// Op (a reduction or a map of channel_ops.cuh) over the valid elements of `mask` only. A
/// reduction's channel constants come from the channel's first valid element (WelfordOp's shift
/// is a value of the channel's own data; a padded value may be anything).
template <class Op>
struct Masked : Op {
  static constexpr bool kMasked = true;
  using Unmasked = Op;
  SeqMask mask;

  CUBN_HOST_DEVICE Masked() = default;
  CUBN_HOST_DEVICE Masked(const Op& op, const SeqMask& m) : Op(op), mask(m) {}

  /// The channel constants of a reduction, from the first valid sample's element at the channel's
  /// position `first` in sample 0.
  template <class T, class O = Op>
  CUBN_DEVICE auto channel(const T* in0, const T* in1, std::int64_t c, std::int64_t first) const
      -> decltype(std::declval<const O&>().channel(in0, in1, c, first)) {
    const std::int64_t n0 = mask.first_valid_sample();
    return Op::channel(in0, in1, c, n0 < mask.n ? first + n0 * mask.sample : first);
  }
};

/// Whether Op is a Masked<...>.
template <class Op, class = void>
struct IsMasked : std::false_type {};
template <class Op>
struct IsMasked<Op, std::void_t<decltype(Op::kMasked)>> : std::true_type {};
template <class Op>
constexpr bool is_masked = IsMasked<Op>::value;

/// Op's unmasked op: Op itself where it is not a Masked<...>.
template <class Op, class = void>
struct UnmaskedOf {
  using type = Op;
};
template <class Op>
struct UnmaskedOf<Op, std::void_t<typename Op::Unmasked>> {
  using type = typename Op::Unmasked;
};
template <class Op>
using unmasked_t = typename UnmaskedOf<Op>::type;

/// `op` masked like `like` (a Masked map op), or `op` itself where `like` is not masked: a
/// kernel's reduction takes its fused map's mask.
template <class Like, class Op>
CUBN_DEVICE auto masked_like(const Like& like, const Op& op) {
  if constexpr (is_masked<Like>) {
    return Masked<Op>(op, like.mask);
  } else {
    return op;
  }
}

}  // namespace cubn::kernels
