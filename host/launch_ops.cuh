/// @file launch_ops.cuh
/// @brief Launching the channels-first or channels-last entry point of a kernel pair with the
/// vector width a plan chose. Every pair takes its geometry as the first argument.
#pragma once

#include <type_traits>
#include <utility>

#include "launch.hpp"
#include "plan.hpp"
#include "types.cuh"

namespace cubn::detail {

/// Calls f(std::integral_constant<int, V>{}) with V = vec, which is 1 or 16 bytes of T.
template <class T, class F>
void with_vec(int vec, F&& f) {
  if (vec == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    f(std::integral_constant<int, kernels::kVec16<T>>{});
  }
}

/// Launches kcf(plan.cf, args...) for a channels-first problem, else kcl(plan.cl, args...), on
/// plan.grid with kBlockThreads threads. `name` appears in errors.
template <class Plan, class KCF, class KCL, class... A>
void launch_pair(const char* name, const Problem& p, const Plan& plan, KCF kcf, KCL kcl,
                 cudaStream_t stream, A&&... args) {
  const dim3 block(kernels::kBlockThreads);
  if (p.order == MemoryOrder::kChannelsFirst) {
    launch(name, kcf, plan.grid, block, 0, stream, plan.cf, std::forward<A>(args)...);
  } else {
    launch(name, kcl, plan.grid, block, 0, stream, plan.cl, std::forward<A>(args)...);
  }
}

}  // namespace cubn::detail
