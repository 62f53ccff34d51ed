/// @file launch_shape.hpp
/// @brief Internal: the one check of a kernel launch shape against a device's limits, shared by
/// the CUDA launch path and the CPU executor so both refuse the same launches with the same words.
#pragma once

#include <vector_types.h>

#include <cstddef>
#include <string>

#include "cubn/error.hpp"

namespace cubn::detail {

/// The limits of one device that a launch must respect.
struct LaunchLimits {
  unsigned max_threads_per_block = 1024;
  unsigned max_block_x = 1024, max_block_y = 1024, max_block_z = 64;
  unsigned max_grid_x = 2147483647u, max_grid_y = 65535, max_grid_z = 65535;
  std::size_t max_shared_per_block = 48 * 1024;  ///< dynamic shared memory without opt-in
};

inline std::string dims_string(dim3 d) {
  return std::to_string(d.x) + "x" + std::to_string(d.y) + "x" + std::to_string(d.z);
}

/// Throws Error(kInvalidLaunch) naming `kernel` when the device cannot run this launch.
inline void check_launch_shape(const char* kernel, dim3 grid, dim3 block, std::size_t smem,
                               const LaunchLimits& lim) {
  auto bad = [kernel](const std::string& what) {
    throw Error(Status::kInvalidLaunch, std::string("launch of ") + kernel + ": " + what);
  };
  if (block.x == 0 || block.y == 0 || block.z == 0)
    bad("block " + dims_string(block) + " has a zero dimension");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0)
    bad("grid " + dims_string(grid) + " has a zero dimension");
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (block.x > lim.max_block_x || block.y > lim.max_block_y || block.z > lim.max_block_z ||
      threads > lim.max_threads_per_block)
    bad("block " + dims_string(block) + " (" + std::to_string(threads) +
        " threads) exceeds the device limit of " + std::to_string(lim.max_threads_per_block) +
        " threads per block (" + std::to_string(lim.max_block_x) + "x" +
        std::to_string(lim.max_block_y) + "x" + std::to_string(lim.max_block_z) +
        " per dimension)");
  if (grid.x > lim.max_grid_x || grid.y > lim.max_grid_y || grid.z > lim.max_grid_z)
    bad("grid " + dims_string(grid) + " exceeds the device limit of " +
        std::to_string(lim.max_grid_x) + "x" + std::to_string(lim.max_grid_y) + "x" +
        std::to_string(lim.max_grid_z) + " blocks");
  if (smem > lim.max_shared_per_block)
    bad(std::to_string(smem) + " bytes of dynamic shared memory exceed the device limit of " +
        std::to_string(lim.max_shared_per_block) + " bytes per block");
}

}  // namespace cubn::detail
