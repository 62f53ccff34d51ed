// The public calls of cubn/batch_norm.hpp: check every argument, plan, launch.
#include "cubn/batch_norm.hpp"

#include <cmath>
#include <cstdint>
#include <string>

#include <nvtx3/nvtx3.hpp>

#include "device_info.hpp"
#include "dispatch.hpp"
#include "forward_launch.hpp"
#include "plan.hpp"
#include "problem.hpp"

namespace cubn {

namespace {

using detail::fail;

constexpr const char* kTrainingCall = "cubn::forward_training";
constexpr const char* kInferenceCall = "cubn::forward_inference";

// The problem of x_desc, checked for a call with parameters of type P.
template <class P>
detail::Problem checked_problem(const char* call, const TensorDesc& desc) {
  const detail::Problem p = detail::canonicalize(call, "x_desc", desc);
  const bool wants_double = p.dtype == DataType::kFloat64;
  if (wants_double != std::is_same_v<P, double>)
    fail(Status::kInvalidDataType, call,
         std::string("x_desc.dtype is ") + to_string(p.dtype) + ", whose parameters and statistics are " +
             (wants_double ? "double: pass the <double> arguments" : "float: pass the <float> arguments"));
  return p;
}

void check_epsilon(const char* call, double epsilon) {
  if (!(epsilon > 0) || !std::isfinite(epsilon))
    fail(Status::kInvalidArgument, call,
         "epsilon is " + std::to_string(epsilon) + "; it must be finite and greater than 0");
}

void check_momentum(const char* call, const char* arg, double m) {
  if (!(m >= 0 && m <= 1))
    fail(Status::kInvalidArgument, call,
         std::string(arg) + " is " + std::to_string(m) + "; it must lie in [0, 1]");
}

// x and y: present, aligned to their element size, and either the same or disjoint.
void check_tensors(const char* call, const detail::Problem& p, const void* x, const char* x_name,
                   const void* y, const char* y_name) {
  const std::size_t es = element_size(p.dtype);
  detail::check_pointer(call, x_name, x, es);
  detail::check_pointer(call, y_name, y, es);
  const auto xa = reinterpret_cast<std::uintptr_t>(x), ya = reinterpret_cast<std::uintptr_t>(y);
  if (xa != ya && xa < ya + p.bytes() && ya < xa + p.bytes())
    fail(Status::kInvalidArgument, call,
         std::string(y_name) + " overlaps " + x_name +
             " without being the same pointer; only exact in-place operation is supported");
}

template <class P>
void check_affine(const char* call, const Affine<P>& a) {
  detail::check_pointer(call, "args.affine.scale", a.scale, sizeof(P), true);
  detail::check_pointer(call, "args.affine.offset", a.offset, sizeof(P), true);
}

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
  check_tensors(kTrainingCall, p, x, "x", y, "y");
  check_epsilon(kTrainingCall, args.epsilon);
  check_momentum(kTrainingCall, "args.momentum.mean", args.momentum.mean);
  check_momentum(kTrainingCall, "args.momentum.var", args.momentum.var);
  check_affine(kTrainingCall, args.affine);
  detail::check_pointer(kTrainingCall, "args.running.mean", args.running.mean, sizeof(P), true);
  detail::check_pointer(kTrainingCall, "args.running.var", args.running.var, sizeof(P), true);
  detail::check_pointer(kTrainingCall, "args.saved.mean", args.saved.mean, sizeof(P), true);
  detail::check_pointer(kTrainingCall, "args.saved.invstd", args.saved.invstd, sizeof(P), true);

  const detail::TrainingPlan plan = detail::plan_training(
      p, detail::current_device_info(), detail::aligned16(x), detail::aligned16(x, y));
  if (ws.bytes < plan.workspace_bytes)
    fail(Status::kWorkspaceTooSmall, kTrainingCall,
         "workspace.bytes is " + std::to_string(ws.bytes) + "; this call needs " +
             std::to_string(plan.workspace_bytes) + " (forward_training_workspace_size)");
  detail::check_pointer(kTrainingCall, "workspace.ptr", ws.ptr, 16);

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
  check_tensors(kInferenceCall, p, x, "x", y, "y");
  check_epsilon(kInferenceCall, args.epsilon);
  check_affine(kInferenceCall, args.affine);
  detail::check_pointer(kInferenceCall, "args.running.mean", args.running.mean, sizeof(P));
  detail::check_pointer(kInferenceCall, "args.running.var", args.running.var, sizeof(P));

  const detail::NormalizePlan plan =
      detail::plan_normalize(p, detail::current_device_info(), detail::aligned16(x, y));
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_forward_inference<T>(p, plan, static_cast<const T*>(x), static_cast<T*>(y),
                                        args, stream);
  });
}

}  // namespace

std::size_t forward_training_workspace_size(const TensorDesc& x) {
  const char* call = "cubn::forward_training_workspace_size";
  const detail::Problem p = detail::canonicalize(call, "x", x);
  return detail::plan_training(p, detail::current_device_info(), true, true).workspace_bytes;
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

}  // namespace cubn
