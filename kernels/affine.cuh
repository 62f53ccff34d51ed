/// @file affine.cuh
/// @brief The forward's per-channel normalization y = (x - shift) * a + b as a map op
/// (channel_ops.cuh): coefficients from the training statistics or from running statistics. The
/// fused epilogue (activation.cuh) and the backward of SiLU recompute the pre-activation with the
/// same ops, so both passes see it bit for bit alike.
#pragma once

#include <cstdint>

#include "platform.cuh"
#include "types.cuh"

namespace cubn::kernels {

/// The coefficients of y = (x - shift) * a + b for elements of T. fp16 and bf16 outputs need no
/// shift: b = offset - shift * a in fp32 errs by ulp_fp32(mean * a), under a tenth of their own
/// ulp while |mean| / sigma stays below 1e3, so they take y = x * a + b, two coefficients (the
/// channels-last maps hold V channels' worth in shared memory and read them per vector).
template <class T, bool = (sizeof(T) >= 4)>
struct AffineCoeffs {
  using Acc = acc_t<T>;
  Acc shift, a, b;
  CUBN_DEVICE AffineCoeffs(Acc s, Acc a_, Acc b_) : shift(s), a(a_), b(b_) {}
  AffineCoeffs() = default;
  CUBN_DEVICE Acc apply(Acc x) const { return (x - shift) * a + b; }
};
template <class T>
struct AffineCoeffs<T, false> {
  using Acc = acc_t<T>;
  Acc a, b;
  CUBN_DEVICE AffineCoeffs(Acc s, Acc a_, Acc b_) : a(a_), b(b_ - s * a_) {}
  AffineCoeffs() = default;
  CUBN_DEVICE Acc apply(Acc x) const { return x * a + b; }
};

/// y = (x - shift) * a + b with the coefficients the statistics kernel's finish stored (training:
/// [3][C] in the workspace).
template <class T>
struct TrainedAffine {
  using Acc = acc_t<T>;
  static constexpr int kInputs = 1;
  using Coeffs = AffineCoeffs<T>;
  const Acc* k = nullptr;
  std::int64_t c = 0;
  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    return Coeffs(k[ch], k[c + ch], k[2 * c + ch]);
  }
  CUBN_DEVICE Acc apply(const Coeffs& q, Acc x, Acc) const { return q.apply(x); }
};

/// y = (x - mean) * a + offset from running statistics (inference), a = scale * rsqrt(var +
/// epsilon) in a few ulp.
template <class T>
struct RunningAffine {
  using Acc = acc_t<T>;
  static constexpr int kInputs = 1;
  using Coeffs = AffineCoeffs<T>;
  const Acc* mean = nullptr;
  const Acc* var = nullptr;
  const Acc* scale = nullptr;   ///< null means 1
  const Acc* offset = nullptr;  ///< null means 0
  Acc epsilon = Acc(0);
  CUBN_DEVICE Coeffs coeffs(std::int64_t ch) const {
    return Coeffs(mean[ch], (scale != nullptr ? scale[ch] : Acc(1)) * rsqrt_acc(var[ch] + epsilon),
                  offset != nullptr ? offset[ch] : Acc(0));
  }
  CUBN_DEVICE Acc apply(const Coeffs& q, Acc x, Acc) const { return q.apply(x); }
};

}  // namespace cubn::kernels
