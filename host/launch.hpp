/// @file launch.hpp
/// @brief The one way host/ launches a kernel: <<<>>> on the caller's stream in the CUDA build,
/// the SIMT executor in the CPU build, with the same shape checks and errors in both.
///
/// Include only from files that the CUDA build compiles with nvcc (*.cu).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <mutex>
#include <tuple>
#include <utility>

#include "cubn/detail/launch_shape.hpp"
#include "device_info.hpp"

#if defined(CUBN_SIM)
#include <driver_types.h>  // cudaStream_t, a type only: the CPU build links no CUDA runtime

#include "cubn/sim/executor.hpp"
#else
#include <cuda_runtime.h>

#include "cuda_check.hpp"
#endif

namespace cubn::detail {

/// Launches kernel<<<grid, block, smem, stream>>>(args...) after checking the shape against the
/// current device; `name` appears in errors. Throws Error(kInvalidLaunch) for a shape the device
/// refuses, Error(kCudaError) when the launch fails, Error(kKernelFault) from the executor. Does
/// not synchronize (the executor runs the kernel before returning).
template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem,
            cudaStream_t stream, A&&... args) {
  check_launch_shape(name, grid, block, smem, current_device_info().limits);
#if defined(CUBN_SIM)
  (void)stream;
  sim::launch_named(name, kernel, grid, block, smem, std::forward<A>(args)...);
#else
  // clang-format reads a .hpp as C++ and would split the >>>
  // clang-format off
  kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
  // clang-format on
  check_cuda(cudaGetLastError(), name);
#endif
}

/// Launches kernel(args...) cooperatively (cudaLaunchCooperativeKernel; the executor's cooperative
/// launch) on at most `grid` blocks: fewer when the occupancy API says fewer are resident together
/// at this shape (the kernels stride over their work, so any grid size is correct). Opts the kernel
/// in to `smem` bytes of dynamic shared memory once per device. Returns false, launching nothing,
/// when not even one block per SM fits; throws like launch().
template <class... P, class... A>
bool launch_cooperative(const char* name, void (*kernel)(P...), unsigned grid, dim3 block,
                        std::size_t smem, cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  const DeviceInfo& dev = current_device_info();
#if defined(CUBN_SIM)
  (void)stream;
  const int per_sm = sim::cooperative_blocks_per_sm(block, smem);
#else
  // once per kernel and device: the opt-in attribute and the occupancy at this shared memory
  // (the plan's figure for a device does not change)
  static std::array<std::once_flag, 64> once;
  static std::array<int, 64> occupancy;
  if (dev.device >= 64) return false;
  std::call_once(once[dev.device], [&] {
    occupancy[dev.device] = 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, static_cast<int>(block.x),
                                                      smem) == cudaSuccess)
      occupancy[dev.device] = n;
    else
      (void)cudaGetLastError();
  });
  const int per_sm = occupancy[dev.device];
#endif
  if (per_sm < 1) return false;
  const unsigned blocks =
      std::min<unsigned>(grid, static_cast<unsigned>(per_sm) * static_cast<unsigned>(dev.sm_count));
  const dim3 g(blocks);
#if defined(CUBN_SIM)
  sim::launch_cooperative_named(name, kernel, g, block, smem, std::forward<A>(args)...);
#else
  LaunchLimits limits = dev.limits;
  limits.max_shared_per_block = dev.shared_per_block_optin;
  check_launch_shape(name, g, block, smem, limits);
  std::tuple<P...> params(std::forward<A>(args)...);
  void* ptrs[sizeof...(P)];
  std::apply(
      [&](auto&... v) {
        int i = 0;
        ((ptrs[i++] = static_cast<void*>(&v)), ...);
      },
      params);
  check_cuda(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), g, block, ptrs,
                                         smem, stream),
             name);
#endif
  return true;
}

}  // namespace cubn::detail
