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
/// kernels do not change. A masked loop computes each pack's valid lanes before loading it, loads
/// only packs with a valid lane, folds whole packs as the unmasked loop does (so all lengths = L
/// gives the unmasked call's results bit for bit) and partial packs lane by lane.
#pragma once

#include <cstdint>
#include <type_traits>

#include "geometry.hpp"
#include "platform.cuh"

namespace cubn::kernels {

/// The valid elements of a padded tensor (see the file comment; the fields: geometry.hpp's
/// SeqGeometry, which host/ fills).
struct SeqMask : SeqGeometry {
  /// floor(n / f.d) for n in [0, 2^63) (geometry.hpp FastDivisor).
  CUBN_DEVICE static std::int64_t quotient(const FastDivisor& f, std::int64_t n) {
#if defined(__CUDA_ARCH__)
    const auto twice = static_cast<std::uint64_t>(n) << 1;
    return static_cast<std::int64_t>(__umul64hi(twice, f.m) >> f.l);
#else
    return static_cast<std::int64_t>(f.divide(static_cast<std::uint64_t>(n)));
#endif
  }
  /// Sample i's length, clamped to [0, L].
  CUBN_DEVICE std::int64_t length(std::int64_t i) const {
    const std::int64_t v = wide ? static_cast<const std::int64_t*>(lengths)[i]
                                : static_cast<const std::int32_t*>(lengths)[i];
    return v < 0 ? 0 : (v > l ? l : v);
  }
  /// Whether the element at time step t of row `row` is valid.
  CUBN_DEVICE bool valid_row(std::int64_t row, std::int64_t t) const {
    return t < length(quotient(by_rows, row));
  }
  /// Whether element e is valid.
  CUBN_DEVICE bool valid(std::int64_t e) const {
    const std::int64_t row = quotient(by_inner, e);
    return valid_row(row, row - quotient(by_l, row) * l);
  }
  /// The valid lanes of the V-element pack at element `at` (bit k: element at + k). One row of
  /// the time axis per pack is the common case: channels-first packs within a row of L, and
  /// channels-last packs within a time step's C values. No division: quotient() by the launch's
  /// divisors.
  template <int V>
  CUBN_DEVICE unsigned bits(std::int64_t at) const {
    constexpr unsigned kAll = V == 32 ? ~0u : (1u << V) - 1u;
    const std::int64_t row = quotient(by_inner, at), t = row - quotient(by_l, row) * l;
    if (inner == 1) {
      if (t + V <= l) {  // one row: lanes [0, length - t) are valid
        const std::int64_t valid = length(quotient(by_rows, row)) - t;
        return valid >= V ? kAll : valid <= 0 ? 0u : (1u << valid) - 1u;
      }
    } else if (at - row * inner + V <= inner) {  // one time step
      return valid_row(row, t) ? kAll : 0u;
    }
    unsigned b = 0;
    CUBN_UNROLL
    for (int k = 0; k < V; ++k) b |= (valid(at + k) ? 1u : 0u) << k;
    return b;
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

/// Op (a reduction or a map of channel_ops.cuh) over the valid elements of `mask` only. A
/// reduction's channel constants come from the channel's first valid element (WelfordOp's shift
/// is a value of the channel's own data; a padded value may be anything).
template <class Op>
struct Masked : Op {
  static constexpr bool kMasked = true;
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
