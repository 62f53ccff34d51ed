/// @file problem.hpp
/// @brief Checking a TensorDesc and reducing it to the one model every kernel sees:
/// (N, C, S, memory order) with 64-bit sizes.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "cubn/error.hpp"
#include "cubn/tensor.hpp"

namespace cubn::detail {

/// A checked, canonical batch-norm problem.
struct Problem {
  DataType dtype = DataType::kFloat32;
  /// The memory order the kernels use. C == 1 is always channels-first, with N = 1 and
  /// S = N * S (one contiguous channel) where that is below 2^31; S == 1 (and C > 1) is always
  /// channels-last with R = N rows: both memory orders coincide there.
  MemoryOrder order = MemoryOrder::kChannelsFirst;
  std::int64_t n = 0, c = 0, s = 0;
  std::int64_t numel = 0;
  /// Elements per channel, N * S.
  std::int64_t m() const { return n * s; }
  std::size_t bytes() const { return static_cast<std::size_t>(numel) * element_size(dtype); }
  /// Bytes of one parameter or statistic: double for fp64 tensors, float otherwise.
  std::size_t param_bytes() const { return dtype == DataType::kFloat64 ? 8 : 4; }
};

/// `v` as given, in the fewest digits that read back as the same double ("-1e-09", "0.1", "nan"),
/// for error messages: std::to_string's fixed six decimals would print -1e-9 as "-0.000000".
std::string number(double v);

/// Throws Error(status) with "<call>: <what>".
[[noreturn]] void fail(Status status, const char* call, const std::string& what);

/// A bound on the bytes per channel of every per-channel size cubn computes (parameters and
/// statistics up to 8 bytes, the three coefficient arrays 24, a split-phase record's two moments
/// 16, SiLU's reserve 24): with C at most kMaxChannels (canonicalize() refuses more), each such
/// size, kMaxChannelBytes * C plus a header, stays inside 64 bits.
inline constexpr std::int64_t kMaxChannelBytes = 64;
inline constexpr std::int64_t kMaxChannels =
    std::numeric_limits<std::int64_t>::max() / kMaxChannelBytes;

/// Checks `desc` (named `arg` in errors of `call`) and canonicalizes it. Throws Error for an
/// invalid dtype or order, a rank outside 2..5, a dim below 1, C above kMaxChannels, or sizes whose
/// product (in elements or bytes) overflows 64 bits. With `empty_batch`, N may be 0 (a rank without
/// samples in the split-phase calls): the problem then has n = 0 and numel = 0, its order as given.
Problem canonicalize(const char* call, const char* arg, const TensorDesc& desc,
                     bool empty_batch = false);

/// `p` itself, or for a problem without samples (n = 0) the same channels and spatial size with
/// N = 1, canonical: the problem its workspace is sized by.
Problem at_least_one_sample(const Problem& p);

/// Checks that `p` is non-null (unless `optional`) and aligned to `align` bytes.
void check_pointer(const char* call, const char* arg, const void* p, std::size_t align,
                   bool optional = false);

}  // namespace cubn::detail
