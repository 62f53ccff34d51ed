/// @file plan.hpp
/// @brief Every choice of kernel, vector width, launch shape and workspace layout, made in one
/// place from the problem and the device (host/ never touches tensor data).
#pragma once

#include <vector_types.h>

#include <cstddef>
#include <cstdint>

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

/// How a per-channel reduction (statistics, gradient sums) runs: one partial state per (split,
/// channel).
struct ReducePlan {
  int vec = 1;
  kernels::ChannelsFirstGeometry cf;
  kernels::ChannelsLastGeometry cl;
  dim3 grid;                ///< (C or channel blocks, splits)
  std::int64_t splits = 1;  ///< blocks per channel (grid y); partial states: splits * C
};

/// Consecutive 256-byte-aligned regions of a workspace.
struct WorkspaceLayout {
  std::size_t total = 0;
  /// Reserves `bytes` and returns their offset.
  std::size_t add(std::size_t bytes);
};

/// How the training forward runs: statistics, finalization, normalization, and the workspace.
struct TrainingPlan {
  ReducePlan stats;
  dim3 finalize_grid;
  NormalizePlan normalize;
  std::size_t partials_offset = 0, a_offset = 0, b_offset = 0, workspace_bytes = 0;
};

/// How the backward runs: gradient sums, finalization (dscale, doffset and dx's coefficients), dx.
struct BackwardPlan {
  ReducePlan sums;
  dim3 finalize_grid;
  NormalizePlan dx;
  std::size_t partials_offset = 0, coeffs_offset = 0, workspace_bytes = 0;
};

/// Elements per vector access for `p`: 16 bytes' worth when `aligned` (the pointers are
/// 16-byte aligned) and the contiguous extent (S channels-first, C channels-last) divides by it;
/// else 1.
int vector_width(const Problem& p, bool aligned);

/// The normalize kernel's plan.
NormalizePlan plan_normalize(const Problem& p, const DeviceInfo& dev, bool aligned);

/// A per-channel reduction's plan. The splits do not depend on `aligned`, so workspaces sized
/// without pointers fit every call.
ReducePlan plan_reduce(const Problem& p, const DeviceInfo& dev, bool aligned);

/// The per-channel finalization kernels' grid: one thread per channel.
dim3 plan_per_channel(const Problem& p);

/// The training forward's plan (x_aligned: x is 16-byte aligned; xy_aligned: x and y are).
TrainingPlan plan_training(const Problem& p, const DeviceInfo& dev, bool x_aligned,
                           bool xy_aligned);

/// The backward's plan (inputs_aligned: x and dy are 16-byte aligned; all_aligned: dx too).
BackwardPlan plan_backward(const Problem& p, const DeviceInfo& dev, bool inputs_aligned,
                           bool all_aligned);

/// True when every pointer given is 16-byte aligned (null pointers count as aligned).
bool aligned16(const void* a, const void* b = nullptr, const void* c = nullptr);

}  // namespace cubn::detail
