/// @file types.cuh
/// @brief Element types and their accumulation types: float for fp16, bf16 and fp32, double for
/// fp64, with conversions that run on host and device.
#pragma once

#include "platform.cuh"

namespace cubn::kernels {

template <class T>
struct AccumulateOf {
  using type = float;
};
template <>
struct AccumulateOf<double> {
  using type = double;
};
/// The type arithmetic on T accumulates in (also the type of parameters and statistics).
template <class T>
using acc_t = typename AccumulateOf<T>::type;

CUBN_HOST_DEVICE float to_acc(__half v) { return __half2float(v); }
CUBN_HOST_DEVICE float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
CUBN_HOST_DEVICE float to_acc(float v) { return v; }
CUBN_HOST_DEVICE double to_acc(double v) { return v; }

/// Rounds an accumulated value to T (round to nearest even).
template <class T>
CUBN_HOST_DEVICE T from_acc(acc_t<T> v);
template <>
CUBN_HOST_DEVICE __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
CUBN_HOST_DEVICE __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
CUBN_HOST_DEVICE float from_acc<float>(float v) {
  return v;
}
template <>
CUBN_HOST_DEVICE double from_acc<double>(double v) {
  return v;
}

/// Square root in the accumulation type (correctly rounded on host and device).
CUBN_HOST_DEVICE float sqrt_acc(float v) { return sqrtf(v); }
CUBN_HOST_DEVICE double sqrt_acc(double v) { return sqrt(v); }

/// 1 / sqrt(v) in a few ulp (MUFU.RSQ on the GPU): for per-channel coefficients that streaming
/// loops compute per vector (inference, frozen dx), where IEEE division and square root would
/// cost a sequence with slow-path branches each.
CUBN_DEVICE float rsqrt_acc(float v) { return rsqrtf(v); }
CUBN_DEVICE double rsqrt_acc(double v) { return rsqrt(v); }

/// 1 / n where a few ulp suffice (Welford's weights, for counts n in [1, 2^24]; SiLU's sigmoid):
/// one MUFU.RCP (rcp.approx.ftz, under 1 ulp; subnormal results flush to 0, 1 / Inf is 0) instead
/// of IEEE division's sequence with its slow-path branch. fp64 divides.
CUBN_DEVICE float rcp_approx(float n) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(n));
  return r;
#else
  return 1.0f / n;
#endif
}
CUBN_DEVICE double rcp_approx(double n) { return 1.0 / n; }

/// Elements of T in one 16-byte vector access.
template <class T>
constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

}  // namespace cubn::kernels
