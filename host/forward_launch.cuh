/// @file forward_launch.cuh
/// @brief Definitions of the forward launchers; included once per element type by
/// batch_norm_<dtype>.cu, which instantiates them.
#pragma once

#include "forward.cuh"
#include "launch_ops.cuh"
#include "launchers.hpp"

namespace cubn::detail {

namespace {

// y = (x - shift) * a + b with the coefficients `affine` gives.
template <class T, class Affine>
void normalize(const MapPlan& plan, const T* x, T* y, const Affine& affine, cudaStream_t stream) {
  with_vec<T>(plan.vec, [&](auto v) {
    launch_map("cubn::bn_normalize", plan, kernels::bn_normalize_channels_first<T, v(), Affine>,
               kernels::bn_normalize_channels_last<T, v(), Affine>, stream, x, y, affine);
  });
}

// Calls fn(op) with the map op of `e` over `affine`: the plain affine without an epilogue, else
// FusedAffine with the activation and the residual (ReLU writes its mask to e.reserve when given);
// for a variable-length batch (`seq`) that op masked (lengths.cuh).
template <class T, class Affine, class Fn>
void with_epilogue(const Epilogue& e, const kernels::SeqGeometry& seq, const Affine& affine,
                   Fn&& fn) {
  using kernels::Act;
  const auto call = [&](const auto& op) {
    if (seq.lengths != nullptr) {
      fn(kernels::Masked<std::decay_t<decltype(op)>>(op, kernels::SeqMask{seq}));
    } else {
      fn(op);
    }
  };
  using kernels::FusedAffine;
  const T* z = static_cast<const T*>(e.residual);
  auto* mask = static_cast<unsigned*>(e.reserve.ptr);
  const auto fused = [&](auto a, auto res) {
    constexpr Act A = decltype(a)::value;
    call(FusedAffine<T, Affine, A, decltype(res)::value>{affine, z,
                                                         A == Act::kRelu ? mask : nullptr});
  };
  const auto with_res = [&](auto a) {
    if (z != nullptr) {
      fused(a, std::true_type{});
    } else {
      fused(a, std::false_type{});
    }
  };
  switch (e.activation) {
    case Activation::kRelu: with_res(std::integral_constant<Act, Act::kRelu>{}); return;
    case Activation::kSilu: with_res(std::integral_constant<Act, Act::kSilu>{}); return;
    case Activation::kNone: break;
  }
  if (z != nullptr) {
    fused(std::integral_constant<Act, Act::kNone>{}, std::true_type{});
  } else {
    call(affine);
  }
}

// What finishing the channels of forward_training (or forward_training_apply) with `args` writes;
// the coefficients go to `coeffs`, SiLU's to the reserve (its backward recomputes the
// pre-activation with these very coefficients).
template <class Acc>
kernels::ForwardFinish<Acc> forward_finish(const Problem& p, const TrainingForwardArgs<Acc>& args,
                                           Acc* coeffs) {
  kernels::ForwardFinish<Acc> fin;
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
  const Epilogue& e = args.epilogue;
  fin.k = e.activation == Activation::kSilu ? static_cast<Acc*>(e.reserve.ptr) : coeffs;
  return fin;
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
  const ScratchPtrs<State, Acc> ws(workspace, plan.scratch);

  const kernels::ForwardFinish<Acc> fin = forward_finish(p, args, ws.coeffs);
  const Epilogue& e = args.epilogue;
  with_epilogue<T>(e, plan.seq, kernels::TrainedAffine<T>{fin.k, p.c}, [&](const auto& f) {
    using F = std::decay_t<decltype(f)>;
    const dim3 block(kernels::kBlockThreads);
    if (plan.use_persistent) {
      bool launched = false;
      with_vec<T>(plan.persistent.vec, [&](auto v) {
        launched = launch_persistent("cubn::bn_forward_persistent", plan.persistent,
                                     kernels::bn_forward_persistent_channels_first<T, v(), F>,
                                     kernels::bn_forward_persistent_channels_last<T, v(), F>,
                                     stream, x, ws.partials, fin, f, y);
      });
      if (launched) return;  // else the device fits no block of it: stream
    }
    const ReducePlan& rp = plan.stats;
    check_reduce_blocks(rp, kernels::reduce_blocks_of<T, F, false>);
    with_vec<T>(rp.vec, [&](auto v) {
      if (rp.planes) {
        launch("cubn::bn_stats", kernels::bn_stats_channels_first<T, v(), F>, rp.grid, block, 0,
               stream, rp.cfr, x, ws.partials, ws.tickets, fin, f, y);
      } else {
        launch("cubn::bn_stats", kernels::bn_stats_channels_last<T, v(), F>, rp.grid, block, 0,
               stream, rp.cl, x, ws.partials, ws.totals, ws.tickets, fin, f, y);
      }
    });
    if (rp.fused()) return;
    normalize<T>(plan.normalize, x, y, f, stream);
  });
}

template <class T>
void launch_forward_inference(const Problem&, const MapPlan& plan, const T* x, T* y,
                              const InferenceForwardArgs<param_t<T>>& args, cudaStream_t stream) {
  kernels::RunningAffine<T> affine;
  affine.mean = args.running.mean;
  affine.var = args.running.var;
  affine.scale = args.affine.scale;
  affine.offset = args.affine.offset;
  affine.epsilon = static_cast<param_t<T>>(args.epsilon);
  with_epilogue<T>(args.epilogue, plan.seq, affine,
                   [&](const auto& f) { normalize<T>(plan, x, y, f, stream); });
}

}  // namespace cubn::detail

#define CUBN_INSTANTIATE_FORWARD(T)                                                           \
  template void launch_forward_training<T>(const Problem&, const TrainingPlan&, const T*, T*, \
                                           const TrainingForwardArgs<param_t<T>>&, void*,     \
                                           cudaStream_t);                                     \
  template void launch_forward_inference<T>(const Problem&, const MapPlan&, const T*, T*,     \
                                            const InferenceForwardArgs<param_t<T>>&,          \
                                            cudaStream_t);
