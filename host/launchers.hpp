/// @file launchers.hpp
/// @brief The kernels' launchers, explicitly instantiated once per element type, each type in its
/// own .cu file (batch_norm_<dtype>.cu) so nvcc builds them in parallel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <driver_types.h>

#include <type_traits>

#include "cubn/batch_norm.hpp"
#include "cubn/distributed.hpp"
#include "plan.hpp"

namespace cubn::detail {

/// Parameter and statistic type of element type T: float, or double for double.
template <class T>
using param_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// Statistics, finalization and normalization kernels of forward_training(), on `stream`.
template <class T>
void launch_forward_training(const Problem& p, const TrainingPlan& plan, const T* x, T* y,
                             const TrainingForwardArgs<param_t<T>>& args, void* workspace,
                             cudaStream_t stream);

/// The normalization kernel of forward_inference(), on `stream`.
template <class T>
void launch_forward_inference(const Problem& p, const MapPlan& plan, const T* x, T* y,
                              const InferenceForwardArgs<param_t<T>>& args, cudaStream_t stream);

/// Backward: sums and finalization when dscale, doffset or (training) dx need them, then dx.
/// `training` selects the saved-statistics formula; `frozen` the running-statistics one.
template <class T>
void launch_backward_training(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                              T* dx, const TrainingBackwardArgs<param_t<T>>& args, void* workspace,
                              cudaStream_t stream);
template <class T>
void launch_backward_frozen(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                            T* dx, const FrozenBackwardArgs<param_t<T>>& args, void* workspace,
                            cudaStream_t stream);

/// The split-phase calls (cubn/distributed.hpp): the local reductions into a rank's record (a
/// rank without samples writes an empty one), and the merge of the gathered records followed by
/// the single call's map kernels.
template <class T>
void launch_forward_local(const Problem& p, const SplitPlan& plan, const T* x, void* record,
                          void* workspace, cudaStream_t stream);
template <class T>
void launch_forward_apply(const Problem& p, const SplitPlan& plan, const T* x, T* y,
                          const TrainingForwardArgs<param_t<T>>& args,
                          const GatheredRecords& gathered, void* workspace, cudaStream_t stream);
template <class T>
void launch_backward_local(const Problem& p, const SplitPlan& plan, const T* x, const T* dy,
                           const TrainingBackwardArgs<param_t<T>>& args, void* record,
                           void* workspace, cudaStream_t stream);
template <class T>
void launch_backward_apply(const Problem& p, const SplitPlan& plan, const T* x, const T* dy, T* dx,
                           const TrainingBackwardArgs<param_t<T>>& args,
                           const GatheredRecords& gathered, void* workspace, cudaStream_t stream);

#define CUBN_DECLARE_LAUNCHERS(T)                                                                \
  extern template void launch_forward_training<T>(const Problem&, const TrainingPlan&, const T*, \
                                                  T*, const TrainingForwardArgs<param_t<T>>&,    \
                                                  void*, cudaStream_t);                          \
  extern template void launch_forward_inference<T>(const Problem&, const MapPlan&, const T*, T*, \
                                                   const InferenceForwardArgs<param_t<T>>&,      \
                                                   cudaStream_t);                                \
  extern template void launch_backward_training<T>(                                              \
      const Problem&, const BackwardPlan&, const T*, const T*, T*,                               \
      const TrainingBackwardArgs<param_t<T>>&, void*, cudaStream_t);                             \
  extern template void launch_backward_frozen<T>(                                                \
      const Problem&, const BackwardPlan&, const T*, const T*, T*,                               \
      const FrozenBackwardArgs<param_t<T>>&, void*, cudaStream_t);                              \
  extern template void launch_forward_local<T>(const Problem&, const SplitPlan&, const T*, void*, \
                                               void*, cudaStream_t);                             \
  extern template void launch_forward_apply<T>(const Problem&, const SplitPlan&, const T*, T*,    \
                                               const TrainingForwardArgs<param_t<T>>&,           \
                                               const GatheredRecords&, void*, cudaStream_t);     \
  extern template void launch_backward_local<T>(const Problem&, const SplitPlan&, const T*,       \
                                                const T*, const TrainingBackwardArgs<param_t<T>>&, \
                                                void*, void*, cudaStream_t);                     \
  extern template void launch_backward_apply<T>(const Problem&, const SplitPlan&, const T*,       \
                                                const T*, T*,                                    \
                                                const TrainingBackwardArgs<param_t<T>>&,         \
                                                const GatheredRecords&, void*, cudaStream_t);
CUBN_DECLARE_LAUNCHERS(__half)
CUBN_DECLARE_LAUNCHERS(__nv_bfloat16)
CUBN_DECLARE_LAUNCHERS(float)
CUBN_DECLARE_LAUNCHERS(double)
#undef CUBN_DECLARE_LAUNCHERS

}  // namespace cubn::detail
