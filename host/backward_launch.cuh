/// @file backward_launch.cuh
/// @brief Definitions of the backward launchers; included once per element type by
/// batch_norm_<dtype>.cu, which instantiates them.
#pragma once

#include "backward.cuh"
#include "launch_ops.cuh"
#include "launchers.hpp"

namespace cubn::detail {

namespace {

// Gradient sums of (dy, x) around `mean`, then bn_backward_finalize with `fin` (its partials,
// splits, c and m filled in here).
template <class T>
void sums_and_finalize(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                       const param_t<T>* mean, kernels::BackwardFinalizeArgs<param_t<T>> fin,
                       void* workspace, cudaStream_t stream) {
  using Acc = param_t<T>;
  static_assert(sizeof(kernels::GradSums<Acc>) == kernels::grad_sums_bytes(sizeof(Acc)),
                "plan.cpp sizes the workspace with grad_sums_bytes");
  auto* partials = reinterpret_cast<kernels::GradSums<Acc>*>(
      static_cast<unsigned char*>(workspace) + plan.partials_offset);
  with_vec<T>(plan.sums.vec, [&](auto v) {
    launch_pair("cubn::bn_backward_sums", p, plan.sums,
                kernels::bn_backward_sums_channels_first<T, v()>,
                kernels::bn_backward_sums_channels_last<T, v()>, stream, dy, x,
                kernels::GradSumOp<Acc>{mean}, partials);
  });
  fin.partials = partials;
  fin.splits = plan.sums.splits;
  fin.c = p.c;
  fin.m = static_cast<Acc>(p.m());
  fin.mean = mean;
  launch("cubn::bn_backward_finalize", kernels::bn_backward_finalize<Acc>, plan.finalize_grid,
         dim3(kernels::kBlockThreads), 0, stream, fin);
}

template <class T, class Op>
void dx_map(const Problem& p, const BackwardPlan& plan, const T* dy, const T* x, T* dx,
            const Op& op, cudaStream_t stream) {
  with_vec<T>(plan.dx.vec, [&](auto v) {
    launch_pair("cubn::bn_backward_dx", p, plan.dx,
                kernels::bn_backward_dx_channels_first<T, v(), Op>,
                kernels::bn_backward_dx_channels_last<T, v(), Op>, stream, dy, x, dx, op);
  });
}

}  // namespace

template <class T>
void launch_backward_training(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                              T* dx, const TrainingBackwardArgs<param_t<T>>& args, void* workspace,
                              cudaStream_t stream) {
  using Acc = param_t<T>;
  if (dx == nullptr && args.grads.dscale == nullptr && args.grads.doffset == nullptr) return;
  auto* k = reinterpret_cast<Acc*>(static_cast<unsigned char*>(workspace) + plan.coeffs_offset);
  kernels::BackwardFinalizeArgs<Acc> fin{};
  fin.scale = args.scale;
  fin.invstd = args.saved.invstd;
  fin.dscale = args.grads.dscale;
  fin.doffset = args.grads.doffset;
  fin.accumulate = args.grads.accumulate;
  fin.k = dx != nullptr ? k : nullptr;
  sums_and_finalize<T>(p, plan, x, dy, args.saved.mean, fin, workspace, stream);
  if (dx != nullptr) dx_map<T>(p, plan, dy, x, dx, kernels::TrainingDxOp<Acc>{k, p.c}, stream);
}

template <class T>
void launch_backward_frozen(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                            T* dx, const FrozenBackwardArgs<param_t<T>>& args, void* workspace,
                            cudaStream_t stream) {
  using Acc = param_t<T>;
  const auto eps = static_cast<Acc>(args.epsilon);
  if (args.grads.dscale != nullptr || args.grads.doffset != nullptr) {
    kernels::BackwardFinalizeArgs<Acc> fin{};
    fin.var = args.running.var;
    fin.epsilon = eps;
    fin.dscale = args.grads.dscale;
    fin.doffset = args.grads.doffset;
    fin.accumulate = args.grads.accumulate;
    sums_and_finalize<T>(p, plan, x, dy, args.running.mean, fin, workspace, stream);
  }
  if (dx != nullptr)
    dx_map<T>(p, plan, dy, static_cast<const T*>(nullptr), dx,
              kernels::FrozenDxOp<Acc>{args.scale, args.running.var, eps}, stream);
}

}  // namespace cubn::detail

#define CUBN_INSTANTIATE_BACKWARD(T)                                                               \
  template void launch_backward_training<T>(const Problem&, const BackwardPlan&, const T*,         \
                                            const T*, T*, const TrainingBackwardArgs<param_t<T>>&, \
                                            void*, cudaStream_t);                                  \
  template void launch_backward_frozen<T>(const Problem&, const BackwardPlan&, const T*, const T*, \
                                          T*, const FrozenBackwardArgs<param_t<T>>&, void*,        \
                                          cudaStream_t);
