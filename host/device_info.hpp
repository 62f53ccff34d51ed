/// @file device_info.hpp
/// @brief The current device's properties, queried once per device and cached.
#pragma once

#include <cstddef>

#include "cubn/detail/launch_shape.hpp"

namespace cubn::detail {

/// What host/ needs to know of a device to choose launch shapes.
struct DeviceInfo {
  int device = 0;
  int sm_count = 0;
  LaunchLimits limits;
  bool cooperative = false;                   ///< supports cooperative launches
  std::size_t shared_per_sm = 0;              ///< shared memory of one SM
  std::size_t shared_per_block_optin = 0;     ///< dynamic shared memory a block may opt in to
  std::size_t reserved_shared_per_block = 0;  ///< shared memory the system keeps per block
};

/// The properties of the calling thread's current CUDA device (in the CPU build the executor's
/// H100-like device, with the SM count sim::set_sm_count chose for the calling thread). The first
/// call for a device queries it; later calls read a cache, so a call costs no device query,
/// synchronization or allocation and is thread-safe. Throws Error(kCudaError) when the device
/// cannot be queried.
const DeviceInfo& current_device_info();

}  // namespace cubn::detail
