/// @file distributed_launch.cuh
/// @brief Definitions of the split-phase launchers (cubn/distributed.hpp); included once per
/// element type by batch_norm_<dtype>.cu after the forward and backward launchers, whose helpers
/// (forward_finish, with_epilogue, normalize, with_grad_epilogue, dx_map) they share.
#pragma once

#include "backward_launch.cuh"
#include "distributed.cuh"
#include "forward_launch.cuh"
#include "launchers.hpp"

namespace cubn::detail {

namespace {

kernels::Records records_of(const GatheredRecords& in, std::size_t record_bytes) {
  return {static_cast<const unsigned char*>(in.ptr), record_bytes, in.ranks};
}

// One thread per channel.
dim3 channel_grid(std::int64_t c) {
  return dim3(static_cast<unsigned>((c + kernels::kBlockThreads - 1) / kernels::kBlockThreads));
}

// The record of a rank without samples (or its gradients): all zero.
template <class Acc>
void empty_record(void* record, std::size_t bytes, cudaStream_t stream) {
  const auto values = static_cast<std::int64_t>(bytes / sizeof(Acc));
  launch("cubn::bn_record_empty", kernels::bn_record_empty<Acc>, channel_grid(values),
         dim3(kernels::kBlockThreads), 0, stream, static_cast<Acc*>(record), values);
}

}  // namespace

template <class T>
void launch_forward_local(const Problem& p, const SplitPlan& plan, const T* x, void* record,
                          void* workspace, cudaStream_t stream) {
  if (p.numel == 0) return empty_record<param_t<T>>(record, plan.record_bytes, stream);
  using Acc = param_t<T>;
  const ScratchPtrs<kernels::WelfordState<Acc>, Acc> ws(workspace, plan.scratch);
  kernels::LocalStatsFinish<Acc> fin;
  fin.out = {record, plan.record_bytes, p.c};
  const ReducePlan& rp = plan.reduce;
  check_reduce_blocks(rp, kernels::reduce_blocks_per_sm(sizeof(T), false, 0, false));
  const auto stats = [&](const auto& op) {
    using R = std::decay_t<decltype(op)>;
    const dim3 block(kernels::kBlockThreads);
    with_vec<T>(rp.vec, [&](auto v) {
      if (rp.planes) {
        launch("cubn::bn_stats_local", kernels::bn_stats_local_channels_first<T, v(), R>, rp.grid,
               block, 0, stream, rp.cfr, x, op, ws.partials, ws.tickets, fin);
      } else {
        launch("cubn::bn_stats_local", kernels::bn_stats_local_channels_last<T, v(), R>, rp.grid,
               block, 0, stream, rp.cl, x, op, ws.partials, ws.totals, ws.tickets, fin);
      }
    });
  };
  const kernels::WelfordOp<Acc> welford;
  if (plan.seq.lengths != nullptr) {
    stats(kernels::Masked<kernels::WelfordOp<Acc>>(welford, kernels::SeqMask{plan.seq}));
  } else {
    stats(welford);
  }
}

template <class T>
void launch_forward_apply(const Problem& p, const SplitPlan& plan, const T* x, T* y,
                          const TrainingForwardArgs<param_t<T>>& args,
                          const GatheredRecords& gathered, void* workspace, cudaStream_t stream) {
  using Acc = param_t<T>;
  const ScratchPtrs<kernels::WelfordState<Acc>, Acc> ws(workspace, plan.scratch);
  const kernels::ForwardFinish<Acc> fin = forward_finish(p, args, ws.coeffs);
  launch("cubn::bn_merge_stats", kernels::bn_merge_stats<Acc>, channel_grid(p.c),
         dim3(kernels::kBlockThreads), 0, stream, records_of(gathered, plan.record_bytes), fin);
  if (p.numel == 0) return;
  with_epilogue<T>(args.epilogue, plan.seq, kernels::TrainedAffine<T>{fin.k, p.c},
                   [&](const auto& f) { normalize<T>(plan.map, x, y, f, stream); });
}

template <class T>
void launch_backward_local(const Problem& p, const SplitPlan& plan, const T* x, const T* dy,
                           const TrainingBackwardArgs<param_t<T>>& args, void* record,
                           void* workspace, cudaStream_t stream) {
  using Acc = param_t<T>;
  if (p.numel == 0) {  // this rank's share of dscale and doffset is zero
    const auto zero = [&](Acc* g) {
      if (g != nullptr && !args.grads.accumulate)
        empty_record<Acc>(g, static_cast<std::size_t>(p.c) * sizeof(Acc), stream);
    };
    zero(args.grads.dscale);
    zero(args.grads.doffset);
    return empty_record<Acc>(record, plan.record_bytes, stream);
  }
  using State = kernels::GradSums<Acc>;
  const ScratchPtrs<State, Acc> ws(workspace, plan.scratch);
  kernels::LocalGradFinish<Acc> fin;
  fin.grads.c = p.c;
  fin.grads.m = static_cast<Acc>(p.m());
  fin.grads.scale = args.scale;
  fin.grads.invstd = args.saved.invstd;
  fin.grads.dscale = args.grads.dscale;
  fin.grads.doffset = args.grads.doffset;
  fin.grads.accumulate = args.grads.accumulate;
  fin.count = p.m();
  fin.out = {record, plan.record_bytes, p.c};
  // SiLU: the coefficients forward_training_apply left in the reserve
  const kernels::TrainedAffine<T> fwd{static_cast<const Acc*>(args.epilogue.reserve.ptr), p.c};
  with_grad_epilogue<T>(
      args.epilogue, plan.seq, kernels::GradSumOp<Acc>{args.saved.mean},
      kernels::TrainingDxOp<T>{nullptr, p.c}, fwd, [&](const auto& op, const auto&) {
        using R = std::decay_t<decltype(op)>;
        const ReducePlan& rp = plan.reduce;
        check_reduce_blocks(rp, kernels::reduce_blocks_of<T, R, true>);
        const dim3 block(kernels::kBlockThreads);
        with_vec<T>(rp.vec, [&](auto v) {
          if (rp.planes) {
            launch("cubn::bn_backward_sums_local",
                   kernels::bn_backward_sums_local_channels_first<T, v(), R>, rp.grid, block, 0,
                   stream, rp.cfr, dy, x, op, ws.partials, ws.tickets, fin);
          } else {
            launch("cubn::bn_backward_sums_local",
                   kernels::bn_backward_sums_local_channels_last<T, v(), R>, rp.grid, block, 0,
                   stream, rp.cl, dy, x, op, ws.partials, ws.totals, ws.tickets, fin);
          }
        });
      });
}

template <class T>
void launch_backward_apply(const Problem& p, const SplitPlan& plan, const T* x, const T* dy, T* dx,
                           const TrainingBackwardArgs<param_t<T>>& args,
                           const GatheredRecords& gathered, void* workspace, cudaStream_t stream) {
  using Acc = param_t<T>;
  if (p.numel == 0 || (dx == nullptr && args.epilogue.dz == nullptr)) return;
  const ScratchPtrs<kernels::GradSums<Acc>, Acc> ws(workspace, plan.scratch);
  kernels::BackwardFinish<Acc> fin;
  fin.c = p.c;
  fin.scale = args.scale;
  fin.invstd = args.saved.invstd;
  fin.k = ws.coeffs;
  launch("cubn::bn_merge_grad_sums", kernels::bn_merge_grad_sums<Acc>, channel_grid(p.c),
         dim3(kernels::kBlockThreads), 0, stream, records_of(gathered, plan.record_bytes),
         args.saved.mean, fin);
  const kernels::TrainedAffine<T> fwd{static_cast<const Acc*>(args.epilogue.reserve.ptr), p.c};
  with_grad_epilogue<T>(
      args.epilogue, plan.seq, kernels::GradSumOp<Acc>{args.saved.mean},
      kernels::TrainingDxOp<T>{ws.coeffs, p.c}, fwd,
      [&](const auto&, const auto& f) { dx_map<T>(plan.map, dy, x, dx, f, stream); });
}

}  // namespace cubn::detail

#define CUBN_INSTANTIATE_DISTRIBUTED(T)                                                            \
  template void launch_forward_local<T>(const Problem&, const SplitPlan&, const T*, void*, void*,  \
                                        cudaStream_t);                                             \
  template void launch_forward_apply<T>(const Problem&, const SplitPlan&, const T*, T*,            \
                                        const TrainingForwardArgs<param_t<T>>&,                    \
                                        const GatheredRecords&, void*, cudaStream_t);              \
  template void launch_backward_local<T>(const Problem&, const SplitPlan&, const T*, const T*,     \
                                         const TrainingBackwardArgs<param_t<T>>&, void*, void*,    \
                                         cudaStream_t);                                            \
  template void launch_backward_apply<T>(const Problem&, const SplitPlan&, const T*, const T*, T*, \
                                         const TrainingBackwardArgs<param_t<T>>&,                  \
                                         const GatheredRecords&, void*, cudaStream_t);
