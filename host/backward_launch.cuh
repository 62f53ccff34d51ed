/// @file backward_launch.cuh
/// @brief Definitions of the backward launchers; included once per element type by
/// batch_norm_<dtype>.cu, which instantiates them.
#pragma once

#include "backward.cuh"
#include "launch_ops.cuh"
#include "launchers.hpp"

namespace cubn::detail {

namespace {

// Gradient sums of (dy, x) around `mean`, finished by their last blocks with `fin` (its c, m and
// the workspace's pointers filled in here).
template <class T>
void sums(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
          const param_t<T>* mean, kernels::BackwardFinish<param_t<T>> fin, void* workspace,
          cudaStream_t stream) {
  using Acc = param_t<T>;
  using State = kernels::GradSums<Acc>;
  static_assert(sizeof(State) == kernels::grad_sums_bytes(sizeof(Acc)),
                "plan.cpp sizes the workspace with grad_sums_bytes");
  const ScratchPtrs<State, Acc> ws(workspace, plan.scratch);
  fin.c = p.c;
  fin.m = static_cast<Acc>(p.m());
  const ReducePlan& rp = plan.sums;
  const dim3 block(kernels::kBlockThreads);
  const kernels::GradSumOp<Acc> op{mean};
  with_vec<T>(rp.vec, [&](auto v) {
    if (rp.planes) {
      launch("cubn::bn_backward_sums", kernels::bn_backward_sums_channels_first<T, v()>, rp.grid,
             block, 0, stream, rp.cfr, dy, x, op, ws.partials, ws.tickets, fin);
    } else {
      launch("cubn::bn_backward_sums", kernels::bn_backward_sums_channels_last<T, v()>, rp.grid,
             block, 0, stream, rp.cl, dy, x, op, ws.partials, ws.totals, ws.tickets, fin);
    }
  });
}

template <class T, class Op>
void dx_map(const BackwardPlan& plan, const T* dy, const T* x, T* dx, const Op& op,
            cudaStream_t stream) {
  with_vec<T>(plan.dx.vec, [&](auto v) {
    launch_map("cubn::bn_backward_dx", plan.dx, kernels::bn_backward_dx_channels_first<T, v(), Op>,
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
  const ScratchPtrs<kernels::GradSums<Acc>, Acc> ws(workspace, plan.scratch);
  Acc* k = ws.coeffs;
  kernels::BackwardFinish<Acc> fin;
  fin.scale = args.scale;
  fin.invstd = args.saved.invstd;
  fin.dscale = args.grads.dscale;
  fin.doffset = args.grads.doffset;
  fin.accumulate = args.grads.accumulate;
  fin.k = dx != nullptr ? k : nullptr;
  if (dx != nullptr && plan.use_persistent) {
    fin.c = p.c;
    fin.m = static_cast<Acc>(p.m());
    const kernels::GradSumOp<Acc> op{args.saved.mean};
    bool launched = false;
    with_vec<T>(plan.persistent.vec, [&](auto v) {
      launched = launch_persistent("cubn::bn_backward_persistent", plan.persistent,
                                   kernels::bn_backward_persistent_channels_first<T, v()>,
                                   kernels::bn_backward_persistent_channels_last<T, v()>, stream,
                                   dy, x, op, ws.partials, fin, dx);
    });
    if (launched) return;  // else the device fits no block of it: stream
  }
  sums<T>(p, plan, x, dy, args.saved.mean, fin, workspace, stream);
  if (dx != nullptr) dx_map<T>(plan, dy, x, dx, kernels::TrainingDxOp<T>{k, p.c}, stream);
}

template <class T>
void launch_backward_frozen(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                            T* dx, const FrozenBackwardArgs<param_t<T>>& args, void* workspace,
                            cudaStream_t stream) {
  using Acc = param_t<T>;
  const auto eps = static_cast<Acc>(args.epsilon);
  if (args.grads.dscale != nullptr || args.grads.doffset != nullptr) {
    kernels::BackwardFinish<Acc> fin;
    fin.var = args.running.var;
    fin.epsilon = eps;
    fin.dscale = args.grads.dscale;
    fin.doffset = args.grads.doffset;
    fin.accumulate = args.grads.accumulate;
    sums<T>(p, plan, x, dy, args.running.mean, fin, workspace, stream);
  }
  if (dx != nullptr)
    dx_map<T>(plan, dy, static_cast<const T*>(nullptr), dx,
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
