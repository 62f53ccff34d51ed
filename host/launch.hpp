/// @file launch.hpp
/// @brief The one way host/ launches a kernel: <<<>>> on the caller's stream in the CUDA build,
/// the SIMT executor in the CPU build, with the same shape checks and errors in both.
///
/// Include only from files that the CUDA build compiles with nvcc (*.cu).
#pragma once

#include <cstddef>
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

}  // namespace cubn::detail
