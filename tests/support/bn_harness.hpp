/// @file bn_harness.hpp
/// @brief Runs cubn's batch-norm calls on generated data and the double-precision reference on
/// the same (rounded) data, for tests that compare the two.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "plan.hpp"
#include "reference.hpp"
#include "support/device.hpp"
#include "support/tolerance.hpp"

namespace cubn::test {

inline double to_double(__half v) { return __half2float(v); }
inline double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }
inline double to_double(float v) { return v; }
inline double to_double(double v) { return v; }

template <class T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __double2half(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __double2bfloat16(v);
  } else {
    return static_cast<T>(v);
  }
}

template <class T>
constexpr DataType dtype_of() {
  if constexpr (std::is_same_v<T, __half>) return DataType::kFloat16;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return DataType::kBFloat16;
  if constexpr (std::is_same_v<T, float>) return DataType::kFloat32;
  return DataType::kFloat64;
}

template <class T>
using param_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
Rounding rounding_of() {
  if constexpr (std::is_same_v<T, __half>)
    return {std::ldexp(1.0, -24), std::ldexp(1.0, -11), std::ldexp(1.0, -25), 2};
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return {std::ldexp(1.0, -24), std::ldexp(1.0, -8), std::ldexp(1.0, -134), 2};
  if constexpr (std::is_same_v<T, float>)
    return {std::ldexp(1.0, -24), std::ldexp(1.0, -24), std::ldexp(1.0, -150), 2};
  return {std::ldexp(1.0, -53), std::ldexp(1.0, -53), 0.0, 1};
}

inline ref::Order ref_order(MemoryOrder o) {
  return o == MemoryOrder::kChannelsFirst ? ref::Order::kChannelsFirst : ref::Order::kChannelsLast;
}

inline TensorDesc make_desc(DataType t, MemoryOrder o, const std::vector<std::int64_t>& dims) {
  TensorDesc d;
  d.dtype = t;
  d.order = o;
  d.rank = static_cast<int>(dims.size());
  for (int i = 0; i < d.rank && i < TensorDesc::kMaxRank; ++i) d.dims[i] = dims[i];
  return d;
}

using Dims = std::vector<std::int64_t>;

/// Forces the calling thread's training calls onto one path while alive (detail::force_path),
/// then restores the one before.
struct ForcePath {
  explicit ForcePath(detail::Path path) : before_(detail::forced_path()) {
    detail::force_path(path);
  }
  ~ForcePath() { detail::force_path(before_); }
  ForcePath(const ForcePath&) = delete;
  ForcePath& operator=(const ForcePath&) = delete;

 private:
  detail::Path before_;
};

/// Whether CUBN_TEST_SHAPES is "small" (the sanitizer presets' test runs); then sanitizer_sized
/// gives `shapes` without those over 2^18 elements: the sanitizer
/// presets' test runs (CMakePresets.json, tests/sanitizer_labels.cmake). There every large buffer
/// is a fresh mapping (AddressSanitizer's allocator maps and unmaps each), so those shapes cost
/// most of the run and add only repeats of kernels and paths the smaller ones take: 64x24x16x16
/// the multi-block splits of 32x16x8x8 and 3x40x7x7, 5x70000 the C past 2^16 of 2x70000. The plain
/// run keeps them.
inline bool sanitizer_shapes() {
  const char* env = std::getenv("CUBN_TEST_SHAPES");
  return env != nullptr && std::strcmp(env, "small") == 0;
}

inline std::vector<Dims> sanitizer_sized(std::vector<Dims> shapes) {
  if (!sanitizer_shapes()) return shapes;
  std::vector<Dims> kept;
  for (const Dims& d : shapes) {
    std::int64_t n = 1;
    for (std::int64_t e : d) n *= e;
    if (n <= (std::int64_t{1} << 18)) kept.push_back(d);
  }
  return kept;
}

/// The edge shapes every batch-norm call is tested on: two values per channel at least (the
/// training minimum), C = 1, S = 1, N = 1, odd and prime sizes, every rank, C past 2^16, S not a
/// multiple of any vector width, and sizes that split channels over several blocks (but under the
/// sanitizers, sanitizer_sized).
inline const std::vector<Dims>& edge_shapes() {
  static const std::vector<Dims> shapes = sanitizer_sized({
      {2, 3},         {7, 1},         {1, 5, 3},       {3, 5, 7},
      {4, 1, 5, 5},   {2, 3, 4, 5},   {2, 3, 2, 3, 4}, {1, 2, 1025},
      {5, 17, 13, 1}, {1, 64, 3, 3},  {32, 16, 8, 8},  {3, 40, 7, 7},
      {2, 70000},     {16, 8, 1, 96}, {2, 3, 1, 1, 1}, {64, 24, 16, 16}});
  return shapes;
}

inline std::string shape_string(const std::vector<std::int64_t>& dims, MemoryOrder o) {
  std::string s = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + ") " + to_string(o);
}

/// Data of one case: x rounded to T, per-channel means and sigmas it was drawn with, parameters.
template <class T>
struct Data {
  ref::Shape shape;
  std::vector<T> x;
  std::vector<double> xd;  ///< x as the reference sees it (exactly the T values)
  std::vector<double> mean, sigma;
  std::vector<double> scale, offset, running_mean, running_var;
};

/// Draws x ~ N(mean_c, sigma_c) per channel (mean_c in [-2, 2] + offset, sigma_c in [0.5, 2]) and
/// random parameters and running statistics.
template <class T>
Data<T> make_data(const std::vector<std::int64_t>& dims, MemoryOrder order, unsigned seed,
                  double common_offset = 0) {
  Data<T> d;
  d.shape = ref::Shape{dims, ref_order(order)};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  const auto C = static_cast<std::size_t>(d.shape.c());
  d.mean.resize(C);
  d.sigma.resize(C);
  d.scale.resize(C);
  d.offset.resize(C);
  d.running_mean.resize(C);
  d.running_var.resize(C);
  for (std::size_t c = 0; c < C; ++c) {
    d.mean[c] = common_offset + 4 * u(rng) - 2;
    d.sigma[c] = 0.5 + 1.5 * u(rng);
    d.scale[c] = 0.5 + u(rng);
    d.offset[c] = u(rng) - 0.5;
    d.running_mean[c] = u(rng) - 0.5;
    d.running_var[c] = 0.5 + u(rng);
  }
  d.x.resize(static_cast<std::size_t>(d.shape.numel()));
  d.xd.resize(d.x.size());
  std::normal_distribution<double> z(0, 1);
  for (std::int64_t n = 0; n < d.shape.n(); ++n)
    for (std::int64_t c = 0; c < d.shape.c(); ++c)
      for (std::int64_t s = 0; s < d.shape.s(); ++s) {
        const auto i = static_cast<std::size_t>(d.shape.index(n, c, s));
        d.x[i] = from_double<T>(d.mean[c] + d.sigma[c] * z(rng));
        d.xd[i] = to_double(d.x[i]);
      }
  return d;
}

template <class P>
std::vector<P> to_params(const std::vector<double>& v) {
  return std::vector<P>(v.begin(), v.end());
}

template <class T>
std::vector<double> to_doubles(const std::vector<T>& v) {
  std::vector<double> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = to_double(v[i]);
  return r;
}

/// The inference reference of `d` (epsilon 1e-3, d's parameters and running statistics rounded
/// to P, as the call sees them): y, the parameters, the running mean and 1 / sqrt(var + eps),
/// and the statistic tolerances of a call that computes no statistics (only the rounding of
/// invstd, a, b and the output).
struct InferenceReference {
  ref::Params p;
  std::vector<double> y, mean, invstd;
  std::vector<StatTolerance> st;
};

template <class T>
InferenceReference inference_reference(const Data<T>& d) {
  using P = param_of<T>;
  InferenceReference r;
  r.p.scale = to_doubles(to_params<P>(d.scale));
  r.p.offset = to_doubles(to_params<P>(d.offset));
  r.p.eps = 1e-3;
  r.mean = to_doubles(to_params<P>(d.running_mean));
  const auto rv = to_doubles(to_params<P>(d.running_var));
  r.y = ref::forward_inference(d.shape, d.xd, r.p, r.mean, rv);
  r.invstd.resize(rv.size());
  for (std::size_t c = 0; c < rv.size(); ++c) r.invstd[c] = 1 / std::sqrt(rv[c] + r.p.eps);
  r.st.assign(rv.size(), StatTolerance{0, 8 * rounding_of<T>().acc});
  return r;
}

/// Compares y with the reference element by element with y_tolerance; prints the first few
/// mismatches with their index. The reference must not be all zero.
template <class T>
void expect_y_near(const Data<T>& d, const std::vector<double>& y, const std::vector<double>& y_ref,
                   const std::vector<double>& mean, const std::vector<double>& invstd,
                   const std::vector<double>& offset, const std::vector<double>& scale,
                   const std::vector<StatTolerance>& st, const std::string& what) {
  const Rounding u = rounding_of<T>();
  int shown = 0, bad = 0;
  double norm = 0;
  for (std::int64_t n = 0; n < d.shape.n(); ++n)
    for (std::int64_t c = 0; c < d.shape.c(); ++c)
      for (std::int64_t s = 0; s < d.shape.s(); ++s) {
        const auto i = static_cast<std::size_t>(d.shape.index(n, c, s));
        const double a = (scale.empty() ? 1.0 : scale[c]) * invstd[c];
        const double tol =
            y_tolerance(u, st[c], d.xd[i], mean[c], a, offset.empty() ? 0.0 : offset[c], y_ref[i]);
        norm += std::fabs(y_ref[i]);
        if (!(std::fabs(y[i] - y_ref[i]) <= tol)) {
          ++bad;
          if (shown++ < 5)
            ADD_FAILURE() << what << ": y[" << i << "] (n=" << n << ", c=" << c << ", s=" << s
                          << ") = " << y[i] << ", reference " << y_ref[i] << ", tolerance " << tol;
        }
      }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << y.size() << " outputs out of tolerance";
  EXPECT_GT(norm, 0) << what << ": the reference output is all zero";
}

}  // namespace cubn::test
