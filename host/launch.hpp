/// @file launch.hpp
/// @brief The one way host/ launches a kernel: <<<>>> on the caller's stream in the CUDA build,
/// the SIMT executor in the CPU build, with the same shape checks and errors in both.
///
/// Include only from files that the CUDA build compiles with nvcc (*.cu).
#pragma once

#include <algorithm>
#include <cstddef>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

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

#if !defined(CUBN_SIM)
/// Blocks of `kernel` resident per SM of `device` with `block` threads and `smem` bytes of dynamic
/// shared memory, after opting the kernel in to `smem` (0: it cannot run so). Asked of the runtime
/// once per kernel, device, block and shared memory, then remembered: kernels of one signature
/// (another vector width of one template) have their own registers and their own opt-in, so the
/// key is the kernel itself. (A cache keyed by signature gave the scalar kernel the vector one's
/// figure and no opt-in: cudaErrorCooperativeLaunchTooLarge on the GPU check's first run.)
inline int cooperative_occupancy(const void* kernel, int device, dim3 block, std::size_t smem) {
  struct Entry {
    const void* kernel;
    int device;
    unsigned threads;
    std::size_t smem;
    int blocks;
  };
  static std::mutex mutex;
  static std::vector<Entry> known;  // a few dozen kernels at most: a linear search
  const unsigned threads = block.x * block.y * block.z;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const Entry& e : known)
    if (e.kernel == kernel && e.device == device && e.threads == threads && e.smem == smem)
      return e.blocks;
  int n = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, static_cast<int>(threads), smem) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    n = 0;
  }
  known.push_back({kernel, device, threads, smem, n});
  return n;
}
#endif

/// Launches kernel(args...) cooperatively (cudaLaunchCooperativeKernel; the executor's cooperative
/// launch) on at most `grid` blocks: fewer when the occupancy API says fewer are resident together
/// at this shape (the kernels stride over their work, so any grid size is correct). Opts the kernel
/// in to `smem` bytes of dynamic shared memory (cooperative_occupancy). Returns false, launching
/// nothing, when not even one block per SM fits; throws like launch().
template <class... P, class... A>
bool launch_cooperative(const char* name, void (*kernel)(P...), unsigned grid, dim3 block,
                        std::size_t smem, cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  const DeviceInfo& dev = current_device_info();
#if defined(CUBN_SIM)
  (void)stream;
  const int per_sm = sim::cooperative_blocks_per_sm(block, smem);
#else
  const int per_sm = cooperative_occupancy(reinterpret_cast<const void*>(kernel), dev.device,
                                           block, smem);
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
