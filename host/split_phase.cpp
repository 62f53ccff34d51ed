// The split-phase calls of cubn/distributed.hpp (and the apply phases' checks of
// split_checks.hpp): check every argument, plan, launch.
#include <cstdint>
#include <initializer_list>
#include <nvtx3/nvtx3.hpp>
#include <string>
#include <tuple>
#include <utility>

#include "call_checks.hpp"
#include "cubn/distributed.hpp"
#include "device_info.hpp"
#include "dispatch.hpp"
#include "geometry.hpp"
#include "launchers.hpp"
#include "plan.hpp"
#include "problem.hpp"
#include "split_checks.hpp"

namespace cubn {

namespace {

using namespace detail;  // the argument checks (call_checks.hpp)

// --- the split-phase calls (cubn/distributed.hpp) ---

constexpr const char* kForwardLocalCall = "cubn::forward_training_local";
constexpr const char* kForwardApplyCall = "cubn::forward_training_apply";
constexpr const char* kBackwardLocalCall = "cubn::backward_training_local";
constexpr const char* kBackwardApplyCall = "cubn::backward_training_apply";

// This rank's record: 16-byte aligned, long enough, apart from the tensors the call reads and
// from its workspace.
void check_record(const char* call, const detail::Problem& p, const RankRecord& r,
                  std::size_t needed, const Workspace& ws,
                  std::initializer_list<std::pair<const void*, const char*>> tensors) {
  detail::check_pointer(call, "local.ptr", r.ptr, 16);
  if (r.bytes < needed)
    fail(Status::kInvalidArgument, call,
         "local.bytes is " + std::to_string(r.bytes) + "; one rank's record needs " +
             std::to_string(needed) + " (local_stats_bytes, local_grad_sums_bytes)");
  for (const auto& [t, name] : tensors)
    check_disjoint(call, r.ptr, needed, "local", t, p.bytes(), name);
  check_disjoint(call, r.ptr, needed, "local", ws.ptr, ws.bytes, "workspace");
}

// The gathered records: at least one rank, 16-byte aligned, `ranks` records long, apart from
// what the call writes (its outputs, of the given lengths, and its workspace).
void check_gathered(
    const char* call, const GatheredRecords& g, std::size_t record, const Workspace& ws,
    std::initializer_list<std::tuple<const void*, std::size_t, const char*>> outputs) {
  if (g.ranks < 1)
    fail(Status::kInvalidArgument, call,
         "gathered.ranks is " + std::to_string(g.ranks) + "; it must be at least 1");
  detail::check_pointer(call, "gathered.ptr", g.ptr, 16);
  const std::size_t needed = record * static_cast<std::size_t>(g.ranks);
  if (g.bytes < needed)
    fail(Status::kInvalidArgument, call,
         "gathered.bytes is " + std::to_string(g.bytes) + "; " + std::to_string(g.ranks) +
             " records of " + std::to_string(record) + " bytes need " + std::to_string(needed));
  for (const auto& [t, bytes, name] : outputs)
    check_disjoint(call, g.ptr, needed, "gathered", t, bytes, name);
  check_disjoint(call, g.ptr, needed, "gathered", ws.ptr, ws.bytes, "workspace");
}

// p: x_desc canonicalized (the call takes no parameters, so any dtype; P follows from it).
template <class P>
void forward_local_impl(const TensorDesc& desc, const detail::Problem& p, const void* x,
                        const Lengths& lengths, RankRecord local, Workspace ws,
                        cudaStream_t stream) {
  check_tensor(kForwardLocalCall, p, x, "x", p.numel == 0);
  detail::SplitPlan plan =
      detail::plan_split(p, detail::current_device_info(), false, detail::aligned16(x),
                         detail::aligned16(x), reduce_blocks(p, false, Epilogue{}));
  plan.seq = checked_lengths(kForwardLocalCall, desc, p, lengths, {}, "lengths");
  check_workspace(kForwardLocalCall, p, ws, plan.scratch.bytes, "forward_training_workspace_size",
                  {{x, "x"}});
  check_record(kForwardLocalCall, p, local, plan.record_bytes, ws, {{x, "x"}});
  check_lengths_apart(kForwardLocalCall, desc, lengths, ws, plan.scratch.bytes, {}, "lengths");
  if (lengths.ptr != nullptr)
    check_disjoint(kForwardLocalCall, lengths.ptr, length_bytes(desc, lengths), "lengths",
                   local.ptr, plan.record_bytes, "local");
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_forward_local<T>(p, plan, static_cast<const T*>(x), local.ptr, ws.ptr, stream);
  });
}

// launch: false only checks the arguments (cubn/nccl.hpp checks its apply phase before it
// launches the local one).
template <class P>
void forward_apply_impl(const TensorDesc& desc, const void* x, const void* y,
                        const TrainingForwardArgs<P>& args, GatheredRecords gathered, Workspace ws,
                        cudaStream_t stream, bool launch = true) {
  const detail::Problem p = checked_problem<P>(kForwardApplyCall, desc, true);
  check_training_forward(kForwardApplyCall, p, x, y, args);
  const Epilogue& e = args.epilogue;
  detail::SplitPlan plan =
      detail::plan_split(p, detail::current_device_info(), false, detail::aligned16(x),
                         detail::aligned16(x, y, e.residual), reduce_blocks(p, false, e));
  plan.seq = checked_lengths(kForwardApplyCall, desc, p, args.lengths, {{y, "y"}});
  check_workspace(kForwardApplyCall, p, ws, plan.scratch.bytes, "forward_training_workspace_size",
                  {{x, "x"}, {y, "y"}}, regions(p, args));
  check_lengths_apart(kForwardApplyCall, desc, args.lengths, ws, plan.scratch.bytes,
                      regions(p, args));
  const std::size_t params = static_cast<std::size_t>(p.c) * sizeof(P);
  // the reserve, where this call writes it (ReLU's mask, SiLU's coefficients)
  const bool writes_reserve =
      e.activation == Activation::kRelu || e.activation == Activation::kSilu;
  check_gathered(kForwardApplyCall, gathered, plan.record_bytes, ws,
                 {{y, p.bytes(), "y"},
                  {writes_reserve ? e.reserve.ptr : nullptr, reserve_size(p, e.activation),
                   "args.epilogue.reserve"},
                  {args.running.mean, params, "args.running.mean"},
                  {args.running.var, params, "args.running.var"},
                  {args.saved.mean, params, "args.saved.mean"},
                  {args.saved.invstd, params, "args.saved.invstd"}});
  if (!launch) return;
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_forward_apply<T>(p, plan, static_cast<const T*>(x),
                                    static_cast<T*>(const_cast<void*>(y)), args, gathered, ws.ptr,
                                    stream);
  });
}

template <class P>
void backward_local_impl(const TensorDesc& desc, const void* x, const void* dy,
                         const TrainingBackwardArgs<P>& args, RankRecord local, Workspace ws,
                         cudaStream_t stream) {
  nvtx3::scoped_range range{kBackwardLocalCall};
  const detail::Problem p = checked_problem<P>(kBackwardLocalCall, desc, true);
  check_training_backward(kBackwardLocalCall, p, x, dy, nullptr, args);
  const EpilogueGrad& e = args.epilogue;
  if (e.dz != nullptr)
    fail(Status::kInvalidArgument, kBackwardLocalCall,
         "args.epilogue.dz is given: the local phase computes sums only; pass dz to "
         "backward_training_apply, which writes it with dx");
  detail::SplitPlan plan = detail::plan_split(
      p, detail::current_device_info(), true, detail::aligned16(x, dy, e.residual),
      detail::aligned16(x, dy, e.residual), reduce_blocks(p, true, e));
  plan.seq = checked_lengths(kBackwardLocalCall, desc, p, args.lengths, {});
  check_workspace(kBackwardLocalCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                  {{x, "x"}, {dy, "dy"}}, regions(p, args));
  check_lengths_apart(kBackwardLocalCall, desc, args.lengths, ws, plan.scratch.bytes,
                      regions(p, args));
  check_record(kBackwardLocalCall, p, local, plan.record_bytes, ws,
               {{x, "x"}, {dy, "dy"}, {e.residual, "args.epilogue.residual"}});
  if (args.lengths.ptr != nullptr)
    check_disjoint(kBackwardLocalCall, args.lengths.ptr, length_bytes(desc, args.lengths),
                   "args.lengths", local.ptr, plan.record_bytes, "local");
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_backward_local<T>(p, plan, static_cast<const T*>(x), static_cast<const T*>(dy),
                                     args, local.ptr, ws.ptr, stream);
  });
}

template <class P>
void backward_apply_impl(const TensorDesc& desc, const void* x, const void* dy, const void* dx,
                         const TrainingBackwardArgs<P>& args, GatheredRecords gathered,
                         Workspace ws, cudaStream_t stream, bool launch = true) {
  const detail::Problem p = checked_problem<P>(kBackwardApplyCall, desc, true);
  check_training_backward(kBackwardApplyCall, p, x, dy, dx, args);
  if (args.grads.dscale != nullptr || args.grads.doffset != nullptr)
    fail(Status::kInvalidArgument, kBackwardApplyCall,
         "args.grads is given: backward_training_local writes dscale and doffset (this rank's "
         "share); the apply phase writes dx and dz only");
  const EpilogueGrad& e = args.epilogue;
  detail::SplitPlan plan = detail::plan_split(
      p, detail::current_device_info(), true, detail::aligned16(x, dy, e.residual),
      detail::aligned16(x, dy, dx, e.residual, e.dz), reduce_blocks(p, true, e));
  plan.seq = checked_lengths(kBackwardApplyCall, desc, p, args.lengths,
                             {{dx, "dx"}, {e.dz, "args.epilogue.dz"}});
  check_workspace(kBackwardApplyCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                  {{x, "x"}, {dy, "dy"}, {dx, "dx"}}, regions(p, args));
  check_lengths_apart(kBackwardApplyCall, desc, args.lengths, ws, plan.scratch.bytes,
                      regions(p, args));
  check_gathered(kBackwardApplyCall, gathered, plan.record_bytes, ws,
                 {{dx, p.bytes(), "dx"}, {e.dz, p.bytes(), "args.epilogue.dz"}});
  if (!launch) return;
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_backward_apply<T>(p, plan, static_cast<const T*>(x), static_cast<const T*>(dy),
                                     static_cast<T*>(const_cast<void*>(dx)), args, gathered, ws.ptr,
                                     stream);
  });
}

// The descriptor of a split-phase call, any dtype (N may be 0): one rank's record bytes.
std::size_t record_bytes(const char* call, const TensorDesc& x) {
  const detail::Problem p = detail::canonicalize(call, "x", x, true);
  return kernels::rank_record_bytes(p.c, p.param_bytes());
}

}  // namespace

std::size_t local_stats_bytes(const TensorDesc& x) {
  return record_bytes("cubn::local_stats_bytes", x);
}

std::size_t local_grad_sums_bytes(const TensorDesc& x) {
  return record_bytes("cubn::local_grad_sums_bytes", x);
}

void forward_training_local(const TensorDesc& x_desc, const void* x, const Lengths& lengths,
                            RankRecord local, Workspace workspace, cudaStream_t stream) {
  nvtx3::scoped_range range{kForwardLocalCall};
  const detail::Problem p = detail::canonicalize(kForwardLocalCall, "x_desc", x_desc, true);
  if (p.dtype == DataType::kFloat64) {
    forward_local_impl<double>(x_desc, p, x, lengths, local, workspace, stream);
  } else {
    forward_local_impl<float>(x_desc, p, x, lengths, local, workspace, stream);
  }
}

void forward_training_local(const TensorDesc& x_desc, const void* x, RankRecord local,
                            Workspace workspace, cudaStream_t stream) {
  forward_training_local(x_desc, x, Lengths{}, local, workspace, stream);
}

void forward_training_apply(const TensorDesc& x_desc, const void* x, void* y,
                            const TrainingForwardArgs<float>& args, GatheredRecords gathered,
                            Workspace workspace, cudaStream_t stream) {
  nvtx3::scoped_range range{kForwardApplyCall};
  forward_apply_impl(x_desc, x, y, args, gathered, workspace, stream);
}

void forward_training_apply(const TensorDesc& x_desc, const void* x, void* y,
                            const TrainingForwardArgs<double>& args, GatheredRecords gathered,
                            Workspace workspace, cudaStream_t stream) {
  nvtx3::scoped_range range{kForwardApplyCall};
  forward_apply_impl(x_desc, x, y, args, gathered, workspace, stream);
}

void backward_training_local(const TensorDesc& x_desc, const void* x, const void* dy,
                             const TrainingBackwardArgs<float>& args, RankRecord local,
                             Workspace workspace, cudaStream_t stream) {
  backward_local_impl(x_desc, x, dy, args, local, workspace, stream);
}

void backward_training_local(const TensorDesc& x_desc, const void* x, const void* dy,
                             const TrainingBackwardArgs<double>& args, RankRecord local,
                             Workspace workspace, cudaStream_t stream) {
  backward_local_impl(x_desc, x, dy, args, local, workspace, stream);
}

void backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                             const TrainingBackwardArgs<float>& args, GatheredRecords gathered,
                             Workspace workspace, cudaStream_t stream) {
  nvtx3::scoped_range range{kBackwardApplyCall};
  backward_apply_impl(x_desc, x, dy, dx, args, gathered, workspace, stream);
}

void backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                             const TrainingBackwardArgs<double>& args, GatheredRecords gathered,
                             Workspace workspace, cudaStream_t stream) {
  nvtx3::scoped_range range{kBackwardApplyCall};
  backward_apply_impl(x_desc, x, dy, dx, args, gathered, workspace, stream);
}

namespace detail {

void check_forward_training_apply(const TensorDesc& x_desc, const void* x, const void* y,
                                  const TrainingForwardArgs<float>& args, GatheredRecords gathered,
                                  Workspace workspace) {
  forward_apply_impl(x_desc, x, y, args, gathered, workspace, nullptr, false);
}
void check_forward_training_apply(const TensorDesc& x_desc, const void* x, const void* y,
                                  const TrainingForwardArgs<double>& args, GatheredRecords gathered,
                                  Workspace workspace) {
  forward_apply_impl(x_desc, x, y, args, gathered, workspace, nullptr, false);
}
void check_backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy,
                                   const void* dx, const TrainingBackwardArgs<float>& args,
                                   GatheredRecords gathered, Workspace workspace) {
  backward_apply_impl(x_desc, x, dy, dx, args, gathered, workspace, nullptr, false);
}
void check_backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy,
                                   const void* dx, const TrainingBackwardArgs<double>& args,
                                   GatheredRecords gathered, Workspace workspace) {
  backward_apply_impl(x_desc, x, dy, dx, args, gathered, workspace, nullptr, false);
}

}  // namespace detail

}  // namespace cubn
