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
template <class T, class R>
void sums(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy, const R& op,
          kernels::BackwardFinish<param_t<T>> fin, void* workspace, cudaStream_t stream) {
  using Acc = param_t<T>;
  using State = kernels::GradSums<Acc>;
  static_assert(sizeof(State) == kernels::grad_sums_bytes(sizeof(Acc)),
                "plan.cpp sizes the workspace with grad_sums_bytes");
  const ScratchPtrs<State, Acc> ws(workspace, plan.scratch);
  fin.c = p.c;
  fin.m = static_cast<Acc>(p.m());
  const ReducePlan& rp = plan.sums;
  check_reduce_blocks(rp, kernels::reduce_blocks_of<T, R, true>);
  const dim3 block(kernels::kBlockThreads);
  with_vec<T>(rp.vec, [&](auto v) {
    if (rp.planes) {
      launch("cubn::bn_backward_sums", kernels::bn_backward_sums_channels_first<T, v(), R>, rp.grid,
             block, 0, stream, rp.cfr, dy, x, op, ws.partials, ws.tickets, fin);
    } else {
      launch("cubn::bn_backward_sums", kernels::bn_backward_sums_channels_last<T, v(), R>, rp.grid,
             block, 0, stream, rp.cl, dy, x, op, ws.partials, ws.totals, ws.tickets, fin);
    }
  });
}

// Calls fn(reduction op, dx op) for the epilogue `e` of a backward whose plain ops are `sum_op` and
// `dx_op`, with Fwd the forward's affine (SiLU recomputes its pre-activation with it).
// A variable-length batch (`seq`) gets both ops masked (lengths.cuh).
template <class T, class Sum, class Dx, class Fwd, class Fn>
void with_grad_epilogue(const EpilogueGrad& e, const kernels::SeqGeometry& seq, const Sum& sum_op,
                        const Dx& dx_op, const Fwd& fwd, Fn&& fn) {
  using kernels::Act;
  const auto call = [&](const auto& r, const auto& f) {
    if (seq.lengths != nullptr) {
      const kernels::SeqMask mask{seq};
      fn(kernels::Masked<std::decay_t<decltype(r)>>(r, mask),
         kernels::Masked<std::decay_t<decltype(f)>>(f, mask));
    } else {
      fn(r, f);
    }
  };
  const auto fused = [&](auto a, auto res) {
    constexpr Act A = decltype(a)::value;
    constexpr bool Res = decltype(res)::value;
    // only SiLU recomputes the pre-activation (and reads z): the others share their kernels
    // across modes and residuals
    using F = std::conditional_t<A == Act::kSilu, Fwd, kernels::NoForward>;
    F f{};
    if constexpr (A == Act::kSilu) f = fwd;
    const kernels::ActGrad<T, A, F, Res> act{f, static_cast<const T*>(e.residual),
                                             static_cast<const unsigned*>(e.reserve.ptr)};
    call(kernels::FusedGradSumOp<T, A, F, Res>{{sum_op.mean}, act},
         kernels::FusedDxOp<T, A, F, Dx, Res>{dx_op, act, static_cast<T*>(e.dz)});
  };
  switch (e.activation) {
    case Activation::kRelu:
      fused(std::integral_constant<Act, Act::kRelu>{}, std::false_type{});
      return;
    case Activation::kSilu:
      if (e.residual != nullptr) {
        fused(std::integral_constant<Act, Act::kSilu>{}, std::true_type{});
      } else {
        fused(std::integral_constant<Act, Act::kSilu>{}, std::false_type{});
      }
      return;
    case Activation::kNone: break;
  }
  if (e.dz != nullptr) {
    fused(std::integral_constant<Act, Act::kNone>{}, std::false_type{});
  } else {
    call(sum_op, dx_op);
  }
}

template <class T, class Op>
void dx_map(const MapPlan& plan, const T* dy, const T* x, T* dx, const Op& op,
            cudaStream_t stream) {
  with_vec<T>(plan.vec, [&](auto v) {
    launch_map("cubn::bn_backward_dx", plan, kernels::bn_backward_dx_channels_first<T, v(), Op>,
               kernels::bn_backward_dx_channels_last<T, v(), Op>, stream, dy, x, dx, op);
  });
}

}  // namespace

template <class T>
void launch_backward_training(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                              T* dx, const TrainingBackwardArgs<param_t<T>>& args, void* workspace,
                              cudaStream_t stream) {
  using Acc = param_t<T>;
  const bool grads = args.grads.dscale != nullptr || args.grads.doffset != nullptr;
  T* dz = static_cast<T*>(args.epilogue.dz);
  if (dx == nullptr && dz == nullptr && !grads) return;
  const ScratchPtrs<kernels::GradSums<Acc>, Acc> ws(workspace, plan.scratch);
  Acc* k = ws.coeffs;
  kernels::BackwardFinish<Acc> fin;
  fin.scale = args.scale;
  fin.invstd = args.saved.invstd;
  fin.dscale = args.grads.dscale;
  fin.doffset = args.grads.doffset;
  fin.accumulate = args.grads.accumulate;
  fin.k = dx != nullptr ? k : nullptr;
  // SiLU: the coefficients forward_training left in the reserve
  const kernels::TrainedAffine<T> fwd{static_cast<const Acc*>(args.epilogue.reserve.ptr), p.c};
  with_grad_epilogue<T>(args.epilogue, plan.seq, kernels::GradSumOp<Acc>{args.saved.mean},
                        kernels::TrainingDxOp<T>{k, p.c}, fwd, [&](const auto& op, const auto& f) {
                          using R = std::decay_t<decltype(op)>;
                          using F = std::decay_t<decltype(f)>;
                          if (dx != nullptr && plan.use_persistent) {
                            kernels::BackwardFinish<Acc> pf = fin;
                            pf.c = p.c;
                            pf.m = static_cast<Acc>(
                                p.m());  // a masked call's: the valid count (MaskedBackwardFinish)
                            bool launched = false;
                            with_vec<T>(plan.persistent.vec, [&](auto v) {
                              launched = launch_persistent(
                                  "cubn::bn_backward_persistent", plan.persistent,
                                  kernels::bn_backward_persistent_channels_first<T, v(), R, F>,
                                  kernels::bn_backward_persistent_channels_last<T, v(), R, F>,
                                  stream, dy, x, op, ws.partials, pf, f, dx);
                            });
                            if (launched) return;  // else the device fits no block of it: stream
                          }
                          if (dx != nullptr || grads)
                            sums<T>(p, plan, x, dy, op, fin, workspace, stream);
                          if (dx != nullptr || dz != nullptr)
                            dx_map<T>(plan.dx, dy, x, dx, f, stream);
                        });
}

template <class T>
void launch_backward_frozen(const Problem& p, const BackwardPlan& plan, const T* x, const T* dy,
                            T* dx, const FrozenBackwardArgs<param_t<T>>& args, void* workspace,
                            cudaStream_t stream) {
  using Acc = param_t<T>;
  const auto eps = static_cast<Acc>(args.epsilon);
  kernels::RunningAffine<T> fwd;  // SiLU: the forward's coefficients, recomputed alike
  fwd.mean = args.running.mean;
  fwd.var = args.running.var;
  fwd.scale = args.scale;
  fwd.offset = args.offset;
  fwd.epsilon = eps;
  T* dz = static_cast<T*>(args.epilogue.dz);
  with_grad_epilogue<T>(args.epilogue, plan.seq, kernels::GradSumOp<Acc>{args.running.mean},
                        kernels::FrozenDxOp<Acc>{args.scale, args.running.var, eps}, fwd,
                        [&](const auto& op, const auto& f) {
                          using F = std::decay_t<decltype(f)>;
                          if (args.grads.dscale != nullptr || args.grads.doffset != nullptr) {
                            kernels::BackwardFinish<Acc> fin;
                            fin.var = args.running.var;
                            fin.epsilon = eps;
                            fin.dscale = args.grads.dscale;
                            fin.doffset = args.grads.doffset;
                            fin.accumulate = args.grads.accumulate;
                            // x may be null where only doffset is asked for (dscale needs x): the
                            // sums kernel reads two tensors, so it reads dy twice and its dscale
                            // sum goes unwritten
                            sums<T>(p, plan, x != nullptr ? x : dy, dy, op, fin, workspace, stream);
                          }
                          if (dx != nullptr || dz != nullptr) {
                            const T* x_read = F::kInputs == 2 ? x : nullptr;
                            dx_map<T>(plan.dx, dy, x_read, dx, f, stream);
                          }
                        });
}

}  // namespace cubn::detail

#define CUBN_INSTANTIATE_BACKWARD(T)                                                               \
  template void launch_backward_training<T>(const Problem&, const BackwardPlan&, const T*,         \
                                            const T*, T*, const TrainingBackwardArgs<param_t<T>>&, \
                                            void*, cudaStream_t);                                  \
  template void launch_backward_frozen<T>(const Problem&, const BackwardPlan&, const T*, const T*, \
                                          T*, const FrozenBackwardArgs<param_t<T>>&, void*,        \
                                          cudaStream_t);
