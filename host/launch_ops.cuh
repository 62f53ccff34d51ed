/// @file launch_ops.cuh
/// @brief Launching the planes or columns entry point of a kernel pair with the vector width a
/// plan chose. Every pair takes its geometry as the first argument.
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

/// Launches a map: kplanes(plan.cfm, args...) when plan.planes, else kcols(plan.cl, args...), on
/// plan.grid with kBlockThreads threads. `name` appears in errors.
template <class KP, class KC, class... A>
void launch_map(const char* name, const MapPlan& plan, KP kplanes, KC kcols, cudaStream_t stream,
                A&&... args) {
  const dim3 block(kernels::kBlockThreads);
  if (plan.planes) {
    launch(name, kplanes, plan.grid, block, 0, stream, plan.cfm, std::forward<A>(args)...);
  } else {
    launch(name, kcols, plan.grid, block, 0, stream, plan.cl, std::forward<A>(args)...);
  }
}

/// Launches a persistent pair cooperatively (launch_cooperative): kplanes(plan.cfr, plan.pg,
/// args...) when plan.planes, else kcols(plan.cl, plan.pg, args...), at most plan.grid blocks of
/// kBlockThreads with plan.smem bytes of dynamic shared memory. False when the device fits no
/// block of it (the caller then streams).
template <class KP, class KC, class... A>
bool launch_persistent(const char* name, const PersistentPlan& plan, KP kplanes, KC kcols,
                       cudaStream_t stream, A&&... args) {
  const dim3 block(kernels::kBlockThreads);
  if (plan.planes)
    return launch_cooperative(name, kplanes, plan.grid, block, plan.smem, stream, plan.cfr, plan.pg,
                              std::forward<A>(args)...);
  return launch_cooperative(name, kcols, plan.grid, block, plan.smem, stream, plan.cl, plan.pg,
                            std::forward<A>(args)...);
}

/// The workspace regions of `s` as typed pointers.
template <class State, class Acc>
struct ScratchPtrs {
  kernels::Tickets tickets;  ///< with a fresh tag: a call's tickets need no zero-filling
  State* partials;
  State* totals;
  Acc* coeffs;
  ScratchPtrs(void* workspace, const Scratch& s) {
    auto* base = static_cast<unsigned char*>(workspace);
    tickets = {reinterpret_cast<unsigned long long*>(base), next_ticket_tag()};
    partials = reinterpret_cast<State*>(base + s.partials_offset);
    totals = reinterpret_cast<State*>(base + s.totals_offset);
    coeffs = reinterpret_cast<Acc*>(base + s.coeffs_offset);
  }
};

}  // namespace cubn::detail
