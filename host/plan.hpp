/// @file plan.hpp
/// @brief Every choice of kernel, vector width, launch shape and workspace layout, made in one
/// place from the problem and the device (host/ never touches tensor data).
#pragma once

#include <cstddef>
#include <cstdint>

#include <vector_types.h>

#include "device_info.hpp"
#include "geometry.hpp"
#include "problem.hpp"

namespace cubn::detail {

/// How y = x * a + b runs.
struct NormalizePlan {
  int vec = 1;  ///< elements per access: 1, or 16 bytes' worth where alignment allows
  kernels::ChannelsFirstGeometry cf;
  kernels::ChannelsLastGeometry cl;
  dim3 grid;
};

/// How the training forward runs: statistics, finalization, normalization, and the workspace.
struct TrainingPlan {
  int stats_vec = 1;
  kernels::ChannelsFirstGeometry stats_cf;
  kernels::ChannelsLastGeometry stats_cl;
  dim3 stats_grid;         ///< (C or channel blocks, splits)
  std::int64_t splits = 1; ///< blocks per channel (grid y); partial states: splits * C
  dim3 finalize_grid;
  NormalizePlan normalize;
  // workspace layout, each region 256-byte aligned
  std::size_t partials_offset = 0, a_offset = 0, b_offset = 0, workspace_bytes = 0;
};

/// Elements per vector access for `p`: 16 bytes' worth when `aligned` (the pointers are
/// 16-byte aligned) and the contiguous extent (S channels-first, C channels-last) divides by it;
/// else 1.
int vector_width(const Problem& p, bool aligned);

/// The normalize kernel's plan.
NormalizePlan plan_normalize(const Problem& p, const DeviceInfo& dev, bool aligned);

/// The training forward's plan. The workspace layout does not depend on `x_aligned`, so
/// forward_training_workspace_size() (which has no pointers) sizes it for any call.
TrainingPlan plan_training(const Problem& p, const DeviceInfo& dev, bool x_aligned,
                           bool xy_aligned);

/// True when every pointer given is 16-byte aligned (null pointers count as aligned).
bool aligned16(const void* a, const void* b = nullptr);

}  // namespace cubn::detail
