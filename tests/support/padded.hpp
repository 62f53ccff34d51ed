/// @file padded.hpp
/// @brief Variable-length batches (cubn::Lengths) in tests: which elements of a padded batch are
/// valid, each channel's valid elements as a compact case for the double-precision reference,
/// padded inputs poisoned with NaN, the lengths on the device, and the padded outputs' check.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "reference.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"

namespace cubn::test {

// A padded batch: which elements are valid (lengths clamped to [0, L] as the calls clamp them),
// and each channel's valid elements in order: valid[c * K + k].
struct Padded {
  std::vector<char> is_valid;
  std::vector<std::size_t> valid;
  std::int64_t k = 0;  // valid elements per channel
};

inline Padded padded(const ref::Shape& sh, const std::vector<std::int64_t>& lengths) {
  Padded p;
  const std::int64_t l = sh.dims.back();
  p.is_valid.assign(static_cast<std::size_t>(sh.numel()), 0);
  for (std::int64_t c = 0; c < sh.c(); ++c)
    for (std::int64_t n = 0; n < sh.n(); ++n) {
      const std::int64_t len = std::min(std::max<std::int64_t>(lengths[n], 0), l);
      for (std::int64_t s = 0; s < sh.s(); ++s) {
        if (s % l >= len) continue;
        const auto i = static_cast<std::size_t>(sh.index(n, c, s));
        p.is_valid[i] = 1;
        p.valid.push_back(i);
      }
    }
  p.k = static_cast<std::int64_t>(p.valid.size()) / sh.c();
  return p;
}

template <class V>
std::vector<V> gather(const std::vector<V>& v, const Padded& p) {
  std::vector<V> r(p.valid.size());
  for (std::size_t j = 0; j < r.size(); ++j) r[j] = v[p.valid[j]];
  return r;
}

// d's valid elements as a compact (1, C, K) channels-first case (same parameters).
template <class T>
Data<T> compact(const Data<T>& d, const Padded& p) {
  Data<T> r = d;
  r.shape = ref::Shape{{1, d.shape.c(), p.k}, ref::Order::kChannelsFirst};
  r.x = gather(d.x, p);
  r.xd = gather(d.xd, p);
  return r;
}

// Padded positions of v set to NaN.
template <class T>
void poison(std::vector<T>& v, const Padded& p) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!p.is_valid[i]) v[i] = from_double<T>(std::numeric_limits<double>::quiet_NaN());
}

// The lengths array on the device, int32 or int64, and the Lengths naming it.
struct DeviceLengths {
  DeviceBuffer<std::int32_t> narrow;
  DeviceBuffer<std::int64_t> wide;
  cubn::Lengths arg;
  DeviceLengths(const std::vector<std::int64_t>& l, bool is_wide, Padding padding)
      : narrow(std::vector<std::int32_t>(l.begin(), l.end())), wide(l) {
    arg.ptr = is_wide ? static_cast<const void*>(wide.data()) : narrow.data();
    arg.type = is_wide ? LengthType::kInt64 : LengthType::kInt32;
    arg.padding = padding;
  }
};

constexpr unsigned char kUntouchedByte = 0x3c;  // what an output buffer holds before a call

// Padded positions of `out` (raw bytes of T) against Lengths::padding.
template <class T>
void expect_padding(const std::vector<T>& out, const Padded& p, Padding padding,
                    const std::string& what) {
  int bad = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (p.is_valid[i]) continue;
    unsigned char want[sizeof(T)];
    if (padding == Padding::kZero) {
      const T z = from_double<T>(0.0);
      std::memcpy(want, &z, sizeof(T));
    } else {
      std::memset(want, kUntouchedByte, sizeof(T));
    }
    if (std::memcmp(&out[i], want, sizeof(T)) != 0 && bad++ < 5)
      ADD_FAILURE() << what << ": padded element " << i << " is " << to_double(out[i])
                    << (padding == Padding::kZero ? ", not 0" : ", not left untouched");
  }
  EXPECT_EQ(bad, 0) << what << ": padded elements written wrongly";
}

inline std::string lengths_string(const std::vector<std::int64_t>& l) {
  std::string s = " lengths {";
  for (std::size_t i = 0; i < l.size(); ++i) s += (i ? "," : "") + std::to_string(l[i]);
  return s + "}";
}

// Lengths for `dims`: 0, 1 and L among the first ones where N allows, the rest random in [0, L].
inline std::vector<std::int64_t> some_lengths(const Dims& dims, unsigned seed) {
  const std::int64_t n = dims[0], l = dims.back();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> any(0, l);
  std::vector<std::int64_t> r(static_cast<std::size_t>(n));
  for (auto& v : r) v = any(rng);
  const std::int64_t fixed[3] = {l, 0, 1};
  for (std::int64_t i = 0; i < 3 && i < n - 1; ++i) r[static_cast<std::size_t>(i)] = fixed[i];
  return r;
}

}  // namespace cubn::test
