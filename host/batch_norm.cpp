// The single calls of cubn/batch_norm.hpp (and its size queries): check every argument, plan,
// launch. The split-phase calls are in split_phase.cpp; the checks both use in call_checks.hpp.
#include "cubn/batch_norm.hpp"

#include <cstddef>
#include <nvtx3/nvtx3.hpp>

#include "call_checks.hpp"
#include "device_info.hpp"
#include "dispatch.hpp"
#include "geometry.hpp"
#include "launchers.hpp"
#include "plan.hpp"
#include "problem.hpp"

namespace cubn {

namespace {

using namespace detail;  // the argument checks (call_checks.hpp)

constexpr const char* kTrainingCall = "cubn::forward_training";
constexpr const char* kInferenceCall = "cubn::forward_inference";
constexpr const char* kBackwardCall = "cubn::backward_training";
constexpr const char* kFrozenCall = "cubn::backward_frozen";

template <class P>
void forward_training_impl(const TensorDesc& desc, const void* x, void* y,
                           const TrainingForwardArgs<P>& args, Workspace ws, cudaStream_t stream) {
  nvtx3::scoped_range range{kTrainingCall};
  const detail::Problem p = checked_problem<P>(kTrainingCall, desc);
  if (p.m() < 2)
    fail(Status::kInvalidArgument, kTrainingCall,
         "x_desc has one element per channel (N * spatial = 1): the batch variance is 0 and the "
         "unbiased variance for the running statistics is undefined; training needs at least two "
         "values per channel (use forward_inference to normalize a single sample)");
  check_training_forward(kTrainingCall, p, x, y, args);
  const kernels::SeqGeometry seq =
      checked_lengths(kTrainingCall, desc, p, args.lengths, {{y, "y"}});

  detail::TrainingPlan plan = detail::plan_training(
      p, detail::current_device_info(), detail::aligned16(x),
      detail::aligned16(x, y, args.epilogue.residual), reduce_blocks(p, false, args.epilogue));
  plan.seq = seq;
  check_workspace(kTrainingCall, p, ws, plan.scratch.bytes, "forward_training_workspace_size",
                  {{x, "x"}, {y, "y"}}, regions(p, args));
  check_lengths_apart(kTrainingCall, desc, args.lengths, ws, plan.scratch.bytes, regions(p, args));

  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_forward_training<T>(p, plan, static_cast<const T*>(x), static_cast<T*>(y), args,
                                       ws.ptr, stream);
  });
}

template <class P>
void forward_inference_impl(const TensorDesc& desc, const void* x, void* y,
                            const InferenceForwardArgs<P>& args, cudaStream_t stream) {
  nvtx3::scoped_range range{kInferenceCall};
  const detail::Problem p = checked_problem<P>(kInferenceCall, desc);
  check_tensor(kInferenceCall, p, x, "x");
  check_tensor(kInferenceCall, p, y, "y");
  check_overlap(kInferenceCall, p, x, "x", y, "y");
  check_epsilon(kInferenceCall, args.epsilon);
  check_affine(kInferenceCall, args.affine);
  detail::check_pointer(kInferenceCall, "args.running.mean", args.running.mean, sizeof(P));
  detail::check_pointer(kInferenceCall, "args.running.var", args.running.var, sizeof(P));
  check_epilogue(kInferenceCall, p, x, y, args.epilogue, false);
  const kernels::SeqGeometry seq =
      checked_lengths(kInferenceCall, desc, p, args.lengths, {{y, "y"}});
  // ReLU's mask, which the call writes
  check_lengths_apart(
      kInferenceCall, desc, args.lengths, Workspace{}, 0,
      std::array<Region, 1>{{{args.epilogue.reserve.ptr, reserve_size(p, args.epilogue.activation),
                              "args.epilogue.reserve"}}});

  detail::MapPlan plan = detail::plan_map(p, detail::current_device_info(),
                                          detail::aligned16(x, y, args.epilogue.residual));
  plan.seq = seq;
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_forward_inference<T>(p, plan, static_cast<const T*>(x), static_cast<T*>(y), args,
                                        stream);
  });
}

template <class P>
void backward_training_impl(const TensorDesc& desc, const void* x, const void* dy, void* dx,
                            const TrainingBackwardArgs<P>& args, Workspace ws,
                            cudaStream_t stream) {
  nvtx3::scoped_range range{kBackwardCall};
  const detail::Problem p = checked_problem<P>(kBackwardCall, desc);
  check_training_backward(kBackwardCall, p, x, dy, dx, args);
  const EpilogueGrad& e = args.epilogue;
  const kernels::SeqGeometry seq =
      checked_lengths(kBackwardCall, desc, p, args.lengths, {{dx, "dx"}});
  detail::BackwardPlan plan = detail::plan_backward(
      p, detail::current_device_info(), detail::aligned16(x, dy, e.residual),
      detail::aligned16(x, dy, dx, e.residual, e.dz), reduce_blocks(p, true, e));
  plan.seq = seq;
  check_workspace(kBackwardCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                  {{x, "x"}, {dy, "dy"}, {dx, "dx"}}, regions(p, args));
  check_lengths_apart(kBackwardCall, desc, args.lengths, ws, plan.scratch.bytes, regions(p, args));
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_backward_training<T>(p, plan, static_cast<const T*>(x),
                                        static_cast<const T*>(dy), static_cast<T*>(dx), args,
                                        ws.ptr, stream);
  });
}

template <class P>
void backward_frozen_impl(const TensorDesc& desc, const void* x, const void* dy, void* dx,
                          const FrozenBackwardArgs<P>& args, Workspace ws, cudaStream_t stream) {
  nvtx3::scoped_range range{kFrozenCall};
  const detail::Problem p = checked_problem<P>(kFrozenCall, desc);
  const bool sums = args.grads.dscale != nullptr || args.grads.doffset != nullptr;
  const EpilogueGrad& e = args.epilogue;
  const bool silu = e.activation == Activation::kSilu;
  // x: for dscale, and for SiLU's pre-activation
  check_tensor(kFrozenCall, p, x, "x", args.grads.dscale == nullptr && !silu);
  check_tensor(kFrozenCall, p, dy, "dy");
  check_tensor(kFrozenCall, p, dx, "dx", true);
  check_overlap(kFrozenCall, p, x, "x", dx, "dx");
  check_overlap(kFrozenCall, p, dy, "dy", dx, "dx");
  check_epsilon(kFrozenCall, args.epsilon);
  detail::check_pointer(kFrozenCall, "args.scale", args.scale, sizeof(P), true);
  detail::check_pointer(kFrozenCall, "args.running.mean", args.running.mean, sizeof(P));
  detail::check_pointer(kFrozenCall, "args.running.var", args.running.var, sizeof(P));
  check_grads(kFrozenCall, args.grads);
  detail::check_pointer(kFrozenCall, "args.offset", args.offset, sizeof(P), true);
  check_epilogue_grad(kFrozenCall, p, x, dy, dx, e, false);
  const kernels::SeqGeometry seq =
      checked_lengths(kFrozenCall, desc, p, args.lengths, {{dx, "dx"}});
  detail::BackwardPlan plan = detail::plan_backward(
      p, detail::current_device_info(), detail::aligned16(x, dy, e.residual),
      detail::aligned16(dy, dx, e.dz, e.residual, silu ? x : nullptr), reduce_blocks(p, true, e));
  plan.seq = seq;
  if (sums)
    check_workspace(kFrozenCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                    {{x, "x"}, {dy, "dy"}, {dx, "dx"}}, regions(p, args));
  check_lengths_apart(kFrozenCall, desc, args.lengths, ws, sums ? plan.scratch.bytes : 0,
                      regions(p, args));
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_backward_frozen<T>(p, plan, static_cast<const T*>(x), static_cast<const T*>(dy),
                                      static_cast<T*>(dx), args, ws.ptr, stream);
  });
}

}  // namespace

std::size_t forward_training_workspace_size(const TensorDesc& x) {
  const char* call = "cubn::forward_training_workspace_size";
  const detail::Problem p = detail::at_least_one_sample(detail::canonicalize(call, "x", x, true));
  return detail::plan_training(p, detail::current_device_info(), true, true).scratch.bytes;
}

void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<float>& args, Workspace workspace,
                      cudaStream_t stream) {
  forward_training_impl(x_desc, x, y, args, workspace, stream);
}

void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<double>& args, Workspace workspace,
                      cudaStream_t stream) {
  forward_training_impl(x_desc, x, y, args, workspace, stream);
}

void forward_inference(const TensorDesc& x_desc, const void* x, void* y,
                       const InferenceForwardArgs<float>& args, cudaStream_t stream) {
  forward_inference_impl(x_desc, x, y, args, stream);
}

void forward_inference(const TensorDesc& x_desc, const void* x, void* y,
                       const InferenceForwardArgs<double>& args, cudaStream_t stream) {
  forward_inference_impl(x_desc, x, y, args, stream);
}

std::size_t activation_reserve_size(const TensorDesc& x, Activation activation) {
  const char* call = "cubn::activation_reserve_size";
  const detail::Problem p = detail::canonicalize(call, "x", x, true);
  check_activation(call, "activation", activation);
  return reserve_size(p, activation);
}

std::size_t backward_workspace_size(const TensorDesc& x) {
  const detail::Problem p = detail::at_least_one_sample(
      detail::canonicalize("cubn::backward_workspace_size", "x", x, true));
  return detail::plan_backward(p, detail::current_device_info(), true, true).scratch.bytes;
}

void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<float>& args, Workspace workspace,
                       cudaStream_t stream) {
  backward_training_impl(x_desc, x, dy, dx, args, workspace, stream);
}

void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<double>& args, Workspace workspace,
                       cudaStream_t stream) {
  backward_training_impl(x_desc, x, dy, dx, args, workspace, stream);
}

void backward_frozen(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                     const FrozenBackwardArgs<float>& args, Workspace workspace,
                     cudaStream_t stream) {
  backward_frozen_impl(x_desc, x, dy, dx, args, workspace, stream);
}

void backward_frozen(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                     const FrozenBackwardArgs<double>& args, Workspace workspace,
                     cudaStream_t stream) {
  backward_frozen_impl(x_desc, x, dy, dx, args, workspace, stream);
}

}  // namespace cubn
