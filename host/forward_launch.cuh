/// @file forward_launch.cuh
/// @brief Definitions of the forward launchers; included once per element type by
/// forward_<dtype>.cu, which instantiates them.
#pragma once

#include "forward.cuh"
#include "launch_ops.cuh"
#include "launchers.hpp"

namespace cubn::detail {

namespace {

// y = x * a + b with the coefficients `affine` gives.
template <class T>
void normalize(const Problem& p, const NormalizePlan& plan, const T* x, T* y,
               const kernels::ChannelAffine<param_t<T>>& affine, cudaStream_t stream) {
  with_vec<T>(plan.vec, [&](auto v) {
    launch_pair("cubn::bn_normalize", p, plan, kernels::bn_normalize_channels_first<T, v()>,
                kernels::bn_normalize_channels_last<T, v()>, stream, x, y, affine);
  });
}

}  // namespace

template <class T>
void launch_forward_training(const Problem& p, const TrainingPlan& plan, const T* x, T* y,
                             const TrainingForwardArgs<param_t<T>>& args, void* workspace,
                             cudaStream_t stream) {
  using Acc = param_t<T>;
  using State = kernels::WelfordState<Acc>;
  static_assert(sizeof(State) == kernels::welford_state_bytes(sizeof(Acc)),
                "plan.cpp sizes the workspace with welford_state_bytes");
  auto* base = static_cast<unsigned char*>(workspace);
  auto* partials = reinterpret_cast<State*>(base + plan.partials_offset);
  auto* a = reinterpret_cast<Acc*>(base + plan.a_offset);
  auto* b = reinterpret_cast<Acc*>(base + plan.b_offset);

  with_vec<T>(plan.stats.vec, [&](auto v) {
    launch_pair("cubn::bn_stats", p, plan.stats, kernels::bn_stats_channels_first<T, v()>,
                kernels::bn_stats_channels_last<T, v()>, stream, x, partials);
  });

  kernels::FinalizeArgs<Acc> fin{};
  fin.partials = partials;
  fin.splits = plan.stats.splits;
  fin.c = p.c;
  fin.epsilon = static_cast<Acc>(args.epsilon);
  fin.scale = args.affine.scale;
  fin.offset = args.affine.offset;
  fin.running_mean = args.running.mean;
  fin.running_var = args.running.var;
  fin.momentum_mean = static_cast<Acc>(args.momentum.mean);
  fin.momentum_var = static_cast<Acc>(args.momentum.var);
  fin.saved_mean = args.saved.mean;
  fin.saved_invstd = args.saved.invstd;
  fin.a = a;
  fin.b = b;
  launch("cubn::bn_finalize_stats", kernels::bn_finalize_stats<Acc>, plan.finalize_grid,
         dim3(kernels::kBlockThreads), 0, stream, fin);

  kernels::ChannelAffine<Acc> affine;
  affine.a = a;
  affine.b = b;
  normalize<T>(p, plan.normalize, x, y, affine, stream);
}

template <class T>
void launch_forward_inference(const Problem& p, const NormalizePlan& plan, const T* x, T* y,
                              const InferenceForwardArgs<param_t<T>>& args, cudaStream_t stream) {
  kernels::ChannelAffine<param_t<T>> affine;
  affine.mean = args.running.mean;
  affine.var = args.running.var;
  affine.scale = args.affine.scale;
  affine.offset = args.affine.offset;
  affine.epsilon = static_cast<param_t<T>>(args.epsilon);
  normalize<T>(p, plan, x, y, affine, stream);
}

}  // namespace cubn::detail

#define CUBN_INSTANTIATE_FORWARD(T)                                                             \
  template void launch_forward_training<T>(const Problem&, const TrainingPlan&, const T*, T*,   \
                                           const TrainingForwardArgs<param_t<T>>&, void*,       \
                                           cudaStream_t);                                       \
  template void launch_forward_inference<T>(const Problem&, const NormalizePlan&, const T*, T*, \
                                            const InferenceForwardArgs<param_t<T>>&,            \
                                            cudaStream_t);
