/// @file tensor.hpp
/// @brief Describing a batch-norm input: data type, memory order and dims.
///
/// cubn sees every input as N x C x S: N the batch, C the channels normalized separately, S the
/// product of the spatial (and time) dims. Dims are always given in logical order
/// (N, C, D1, ..., Dk), rank 2 to 5, whatever the memory order:
///  - MemoryOrder::kChannelsFirst: memory [N][C][D1]..[Dk], PyTorch's contiguous NCHW / NCDHW /
///    NCL and (N, C) itself;
///  - MemoryOrder::kChannelsLast: memory [N][D1]..[Dk][C], PyTorch's channels_last (NHWC) and
///    channels_last_3d (NDHWC) memory formats.
///
/// MATLAB's dimension labels (arrays are column-major: the first label varies fastest):
///  - 'SSCB' (H x W x C x B) is channels-first with dims (B, C, W, H); 'SCB' (S x C x B) is (B, C,
///  S);
///    'SSSCB' is (B, C, D3, D2, D1); 'CB' is (B, C). The order of spatial dims does not change
///    batch norm, so (B, C, H, W) describes the same computation.
///  - 'CBT' (C x B x T) is channels-last with dims (T, C, B): memory [T][B][C], channel fastest,
///    normalized over B and T together.
///
/// The descriptor holds what it is given; each call checks it and reports a bad one as an error
/// naming the call and the argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace cubn {

/// Element type of x, y, dy, dx. Parameters and statistics are float for kFloat16, kBFloat16
/// and kFloat32 tensors and double for kFloat64 tensors; arithmetic accumulates in float (double
/// for kFloat64).
enum class DataType { kFloat16, kBFloat16, kFloat32, kFloat64 };

/// Memory order of a tensor (see the file comment).
enum class MemoryOrder { kChannelsFirst, kChannelsLast };

/// Size in bytes of one element of `t` (0 for an invalid value).
constexpr std::size_t element_size(DataType t) {
  switch (t) {
    case DataType::kFloat16:
    case DataType::kBFloat16: return 2;
    case DataType::kFloat32: return 4;
    case DataType::kFloat64: return 8;
  }
  return 0;
}

/// Readable name of a data type, e.g. "bf16".
constexpr const char* to_string(DataType t) {
  switch (t) {
    case DataType::kFloat16: return "fp16";
    case DataType::kBFloat16: return "bf16";
    case DataType::kFloat32: return "fp32";
    case DataType::kFloat64: return "fp64";
  }
  return "invalid dtype";
}

/// Readable name of a memory order.
constexpr const char* to_string(MemoryOrder o) {
  switch (o) {
    case MemoryOrder::kChannelsFirst: return "channels-first";
    case MemoryOrder::kChannelsLast: return "channels-last";
  }
  return "invalid memory order";
}

/// A batch-norm tensor: dtype, memory order and logical dims (N, C, D1, ..., Dk), rank 2..5.
struct TensorDesc {
  static constexpr int kMaxRank = 5;

  DataType dtype = DataType::kFloat32;
  MemoryOrder order = MemoryOrder::kChannelsFirst;
  int rank = 0;
  std::int64_t dims[kMaxRank] = {0, 0, 0, 0, 0};

  TensorDesc() = default;
  /// Dims in logical order (N, C, spatial...). More than 5 dims are kept as rank 6, which every
  /// call rejects.
  TensorDesc(DataType type, MemoryOrder mem, std::initializer_list<std::int64_t> logical_dims)
      : dtype(type), order(mem) {
    for (std::int64_t d : logical_dims) {
      if (rank < kMaxRank) dims[rank] = d;
      ++rank;
    }
    if (rank > kMaxRank) rank = kMaxRank + 1;
  }

  /// PyTorch's contiguous NCHW.
  static TensorDesc nchw(DataType type, std::int64_t n, std::int64_t c, std::int64_t h,
                         std::int64_t w) {
    return TensorDesc(type, MemoryOrder::kChannelsFirst, {n, c, h, w});
  }
  /// PyTorch's channels_last: logical (N, C, H, W) stored as [N][H][W][C].
  static TensorDesc nhwc(DataType type, std::int64_t n, std::int64_t c, std::int64_t h,
                         std::int64_t w) {
    return TensorDesc(type, MemoryOrder::kChannelsLast, {n, c, h, w});
  }
};

}  // namespace cubn
