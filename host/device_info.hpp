/// @file device_info.hpp
/// @brief The current device's properties, queried once per device and cached.
#pragma once

#include "cubn/detail/launch_shape.hpp"

namespace cubn::detail {

/// What host/ needs to know of a device to choose launch shapes.
struct DeviceInfo {
  int device = 0;
  int sm_count = 0;
  LaunchLimits limits;
};

/// The properties of the calling thread's current CUDA device (the executor's fixed H100-like
/// device in the CPU build). The first call for a device queries it; later calls read a cache,
/// so a call costs no device query, synchronization or allocation and is thread-safe.
/// Throws Error(kCudaError) when the device cannot be queried.
const DeviceInfo& current_device_info();

}  // namespace cubn::detail
