// The public calls of cubn/batch_norm.hpp: check every argument, plan, launch.
#include "cubn/batch_norm.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <nvtx3/nvtx3.hpp>
#include <string>
#include <tuple>
#include <utility>

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

using detail::fail;

constexpr const char* kTrainingCall = "cubn::forward_training";
constexpr const char* kInferenceCall = "cubn::forward_inference";
constexpr const char* kBackwardCall = "cubn::backward_training";
constexpr const char* kFrozenCall = "cubn::backward_frozen";

// The blocks per SM the reduction kernel of a call with epilogue e is compiled for (one wave of
// them is what plan_reduce launches): the training forward's statistics, or the gradient sums.
template <class E>
int reduce_blocks(const detail::Problem& p, bool backward, const E& e) {
  return kernels::reduce_blocks_per_sm(element_size(p.dtype), backward,
                                       static_cast<int>(e.activation), e.residual != nullptr);
}

// The problem of x_desc, checked for a call with parameters of type P (N may be 0 with
// `empty_batch`).
template <class P>
detail::Problem checked_problem(const char* call, const TensorDesc& desc,
                                bool empty_batch = false) {
  const detail::Problem p = detail::canonicalize(call, "x_desc", desc, empty_batch);
  const bool wants_double = p.dtype == DataType::kFloat64;
  if (wants_double != std::is_same_v<P, double>)
    fail(Status::kInvalidDataType, call,
         std::string("x_desc.dtype is ") + to_string(p.dtype) +
             ", whose parameters and statistics are " +
             (wants_double ? "double: pass the <double> arguments"
                           : "float: pass the <float> arguments"));
  return p;
}

void check_epsilon(const char* call, double epsilon) {
  if (!(epsilon > 0) || !std::isfinite(epsilon))
    fail(Status::kInvalidArgument, call,
         "epsilon is " + detail::number(epsilon) + "; it must be finite and greater than 0");
}

void check_momentum(const char* call, const char* arg, double m) {
  if (!(m >= 0 && m <= 1))
    fail(Status::kInvalidArgument, call,
         std::string(arg) + " is " + detail::number(m) + "; it must lie in [0, 1]");
}

// `out` and `in` (either may be null) are the same pointer or do not overlap.
void check_overlap(const char* call, const detail::Problem& p, const void* in, const char* in_name,
                   const void* out, const char* out_name) {
  if (in == nullptr || out == nullptr) return;
  const auto a = reinterpret_cast<std::uintptr_t>(in), b = reinterpret_cast<std::uintptr_t>(out);
  if (a != b && a < b + p.bytes() && b < a + p.bytes())
    fail(Status::kInvalidArgument, call,
         std::string(out_name) + " overlaps " + in_name +
             " without being the same pointer; only exact in-place operation is supported");
}

// A tensor argument: present (unless optional) and aligned to its element size.
void check_tensor(const char* call, const detail::Problem& p, const void* t, const char* name,
                  bool optional = false) {
  detail::check_pointer(call, name, t, element_size(p.dtype), optional);
}

template <class P>
void check_grads(const char* call, const ParamGradients<P>& g) {
  detail::check_pointer(call, "args.grads.dscale", g.dscale, sizeof(P), true);
  detail::check_pointer(call, "args.grads.doffset", g.doffset, sizeof(P), true);
}

// The byte ranges [a, a + an) and [b, b + bn) (either pointer may be null) do not overlap.
void check_disjoint(const char* call, const void* a, std::size_t an, const char* a_name,
                    const void* b, std::size_t bn, const char* b_name) {
  if (a == nullptr || b == nullptr) return;
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  if (x < y + bn && y < x + an)
    fail(Status::kInvalidArgument, call,
         std::string(a_name) + " overlaps " + b_name + "; they must be separate memory");
}

std::size_t reserve_size(const detail::Problem& p, Activation a) {
  switch (a) {
    case Activation::kRelu: return static_cast<std::size_t>(kernels::relu_mask_bytes(p.numel));
    case Activation::kSilu:
      return (static_cast<std::size_t>(kernels::kAffineCoeffs * p.c) * p.param_bytes() + 15) / 16 *
             16;
    case Activation::kNone: return 0;
  }
  return 0;
}

// Memory a call reads or writes besides its workspace (null or 0 bytes: none).
struct Region {
  const void* ptr;
  std::size_t bytes;
  const char* name;
};

// The per-channel arrays and epilogue tensors the arguments of each kind of call name.
template <class P>
std::array<Region, 8> regions(const detail::Problem& p, const TrainingForwardArgs<P>& a) {
  const std::size_t c = static_cast<std::size_t>(p.c) * sizeof(P);
  const Epilogue& e = a.epilogue;
  return {{{a.affine.scale, c, "args.affine.scale"},
           {a.affine.offset, c, "args.affine.offset"},
           {a.running.mean, c, "args.running.mean"},
           {a.running.var, c, "args.running.var"},
           {a.saved.mean, c, "args.saved.mean"},
           {a.saved.invstd, c, "args.saved.invstd"},
           {e.residual, p.bytes(), "args.epilogue.residual"},
           {e.reserve.ptr, reserve_size(p, e.activation), "args.epilogue.reserve"}}};
}
template <class P>
std::array<Region, 8> regions(const detail::Problem& p, const TrainingBackwardArgs<P>& a) {
  const std::size_t c = static_cast<std::size_t>(p.c) * sizeof(P);
  const EpilogueGrad& e = a.epilogue;
  return {{{a.scale, c, "args.scale"},
           {a.saved.mean, c, "args.saved.mean"},
           {a.saved.invstd, c, "args.saved.invstd"},
           {a.grads.dscale, c, "args.grads.dscale"},
           {a.grads.doffset, c, "args.grads.doffset"},
           {e.residual, p.bytes(), "args.epilogue.residual"},
           {e.dz, p.bytes(), "args.epilogue.dz"},
           {e.reserve.ptr, reserve_size(p, e.activation), "args.epilogue.reserve"}}};
}
template <class P>
std::array<Region, 9> regions(const detail::Problem& p, const FrozenBackwardArgs<P>& a) {
  const std::size_t c = static_cast<std::size_t>(p.c) * sizeof(P);
  const EpilogueGrad& e = a.epilogue;
  return {{{a.scale, c, "args.scale"},
           {a.offset, c, "args.offset"},
           {a.running.mean, c, "args.running.mean"},
           {a.running.var, c, "args.running.var"},
           {a.grads.dscale, c, "args.grads.dscale"},
           {a.grads.doffset, c, "args.grads.doffset"},
           {e.residual, p.bytes(), "args.epilogue.residual"},
           {e.dz, p.bytes(), "args.epilogue.dz"},
           {e.reserve.ptr, reserve_size(p, e.activation), "args.epilogue.reserve"}}};
}

// The workspace: large enough, 16-byte aligned, and apart from every tensor (`tensors`, x's
// bytes each) and argument array (`args`) of the call: its kernels write the first `needed`
// bytes while they read and write the others, so an overlap would corrupt both.
template <std::size_t N = 0>
void check_workspace(const char* call, const detail::Problem& p, const Workspace& ws,
                     std::size_t needed, const char* query,
                     std::initializer_list<std::pair<const void*, const char*>> tensors,
                     const std::array<Region, N>& args = {}) {
  if (ws.bytes < needed)
    fail(Status::kWorkspaceTooSmall, call,
         "workspace.bytes is " + std::to_string(ws.bytes) + "; this call needs " +
             std::to_string(needed) + " (" + query + ")");
  detail::check_pointer(call, "workspace.ptr", ws.ptr, 16);
  for (const auto& [t, name] : tensors)
    check_disjoint(call, ws.ptr, needed, "workspace", t, p.bytes(), name);
  for (const Region& r : args)
    check_disjoint(call, ws.ptr, needed, "workspace", r.ptr, r.bytes, r.name);
}

void check_activation(const char* call, const char* arg, Activation a) {
  if (a != Activation::kNone && a != Activation::kRelu && a != Activation::kSilu)
    fail(Status::kInvalidArgument, call,
         std::string(arg) + " is " + std::to_string(static_cast<int>(a)) +
             ", not an Activation (kNone, kRelu, kSilu)");
}

// A reserve of `needed` bytes at `ptr` (`bytes` long): 16-byte aligned, long enough, and apart from
// the call's tensors.
void check_reserve(const char* call, const detail::Problem& p, const void* ptr, std::size_t bytes,
                   std::size_t needed, bool optional,
                   std::initializer_list<std::pair<const void*, const char*>> tensors) {
  detail::check_pointer(call, "args.epilogue.reserve.ptr", ptr, 16, optional);
  if (ptr == nullptr) return;
  if (bytes < needed)
    fail(Status::kInvalidArgument, call,
         "args.epilogue.reserve.bytes is " + std::to_string(bytes) + "; this activation needs " +
             std::to_string(needed) + " (activation_reserve_size)");
  for (const auto& [t, name] : tensors)
    check_disjoint(call, ptr, needed, "args.epilogue.reserve", t, p.bytes(), name);
}

// The forward epilogue: the residual (same pointer as y or apart from it) and the reserve
// (required in training for ReLU and SiLU; inference writes ReLU's mask when given one).
void check_epilogue(const char* call, const detail::Problem& p, const void* x, const void* y,
                    const Epilogue& e, bool training) {
  check_activation(call, "args.epilogue.activation", e.activation);
  detail::check_pointer(call, "args.epilogue.residual", e.residual, element_size(p.dtype), true);
  check_overlap(call, p, e.residual, "args.epilogue.residual", y, "y");
  const bool relu = e.activation == Activation::kRelu;
  if (relu || (training && e.activation == Activation::kSilu)) {
    // (a rank without samples writes no ReLU mask)
    check_reserve(call, p, e.reserve.ptr, e.reserve.bytes, reserve_size(p, e.activation),
                  !training || (relu && p.numel == 0),
                  {{x, "x"}, {y, "y"}, {e.residual, "args.epilogue.residual"}});
  }
}

// The backward epilogue: what the forward's activation needs (ReLU's mask; SiLU's coefficients in
// training), dz only with a residual, dz apart from dx.
void check_epilogue_grad(const char* call, const detail::Problem& p, const void* x, const void* dy,
                         const void* dx, const EpilogueGrad& e, bool training) {
  check_activation(call, "args.epilogue.activation", e.activation);
  detail::check_pointer(call, "args.epilogue.residual", e.residual, element_size(p.dtype), true);
  detail::check_pointer(call, "args.epilogue.dz", e.dz, element_size(p.dtype), true);
  if (e.dz != nullptr && e.residual == nullptr)
    fail(Status::kInvalidArgument, call,
         "args.epilogue.dz is given but args.epilogue.residual is null: dz is the gradient of the "
         "forward's residual; pass the residual the forward added");
  check_disjoint(call, e.dz, p.bytes(), "args.epilogue.dz", dx, p.bytes(), "dx");
  check_overlap(call, p, dy, "dy", e.dz, "args.epilogue.dz");
  check_overlap(call, p, x, "x", e.dz, "args.epilogue.dz");
  check_overlap(call, p, e.residual, "args.epilogue.residual", e.dz, "args.epilogue.dz");
  check_overlap(call, p, e.residual, "args.epilogue.residual", dx, "dx");
  const bool relu = e.activation == Activation::kRelu;
  if (relu || (training && e.activation == Activation::kSilu))
    check_reserve(call, p, e.reserve.ptr, e.reserve.bytes, reserve_size(p, e.activation),
                  relu && p.numel == 0, {{dx, "dx"}, {e.dz, "args.epilogue.dz"}});
}

template <class P>
void check_affine(const char* call, const Affine<P>& a) {
  detail::check_pointer(call, "args.affine.scale", a.scale, sizeof(P), true);
  detail::check_pointer(call, "args.affine.offset", a.offset, sizeof(P), true);
}

// The arguments of a training forward (forward_training, forward_training_apply) on `p`; x and y
// may be null only for a problem without samples.
template <class P>
void check_training_forward(const char* call, const detail::Problem& p, const void* x,
                            const void* y, const TrainingForwardArgs<P>& args) {
  const bool empty = p.numel == 0;
  check_tensor(call, p, x, "x", empty);
  check_tensor(call, p, y, "y", empty);
  check_overlap(call, p, x, "x", y, "y");
  check_epsilon(call, args.epsilon);
  check_momentum(call, "args.momentum.mean", args.momentum.mean);
  check_momentum(call, "args.momentum.var", args.momentum.var);
  check_affine(call, args.affine);
  detail::check_pointer(call, "args.running.mean", args.running.mean, sizeof(P), true);
  detail::check_pointer(call, "args.running.var", args.running.var, sizeof(P), true);
  detail::check_pointer(call, "args.saved.mean", args.saved.mean, sizeof(P), true);
  detail::check_pointer(call, "args.saved.invstd", args.saved.invstd, sizeof(P), true);
  check_epilogue(call, p, x, y, args.epilogue, true);
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
  check_training_forward(kTrainingCall, p, x, y, args);

  const detail::TrainingPlan plan = detail::plan_training(
      p, detail::current_device_info(), detail::aligned16(x),
      detail::aligned16(x, y, args.epilogue.residual), reduce_blocks(p, false, args.epilogue));
  check_workspace(kTrainingCall, p, ws, plan.scratch.bytes, "forward_training_workspace_size",
                  {{x, "x"}, {y, "y"}}, regions(p, args));

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

  const detail::MapPlan plan = detail::plan_map(p, detail::current_device_info(),
                                                detail::aligned16(x, y, args.epilogue.residual));
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_forward_inference<T>(p, plan, static_cast<const T*>(x), static_cast<T*>(y), args,
                                        stream);
  });
}

// The arguments of a training backward (backward_training and its split phases) on `p`; x and dy
// may be null only for a problem without samples.
template <class P>
void check_training_backward(const char* call, const detail::Problem& p, const void* x,
                             const void* dy, const void* dx, const TrainingBackwardArgs<P>& args) {
  const bool empty = p.numel == 0;
  check_tensor(call, p, x, "x", empty);
  check_tensor(call, p, dy, "dy", empty);
  check_tensor(call, p, dx, "dx", true);
  check_overlap(call, p, x, "x", dx, "dx");
  check_overlap(call, p, dy, "dy", dx, "dx");
  detail::check_pointer(call, "args.scale", args.scale, sizeof(P), true);
  detail::check_pointer(call, "args.saved.mean", args.saved.mean, sizeof(P));
  detail::check_pointer(call, "args.saved.invstd", args.saved.invstd, sizeof(P));
  check_grads(call, args.grads);
  check_epilogue_grad(call, p, x, dy, dx, args.epilogue, true);
}

template <class P>
void backward_training_impl(const TensorDesc& desc, const void* x, const void* dy, void* dx,
                            const TrainingBackwardArgs<P>& args, Workspace ws,
                            cudaStream_t stream) {
  nvtx3::scoped_range range{kBackwardCall};
  const detail::Problem p = checked_problem<P>(kBackwardCall, desc);
  check_training_backward(kBackwardCall, p, x, dy, dx, args);
  const EpilogueGrad& e = args.epilogue;
  const detail::BackwardPlan plan = detail::plan_backward(
      p, detail::current_device_info(), detail::aligned16(x, dy, e.residual),
      detail::aligned16(x, dy, dx, e.residual, e.dz), reduce_blocks(p, true, e));
  check_workspace(kBackwardCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                  {{x, "x"}, {dy, "dy"}, {dx, "dx"}}, regions(p, args));
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
  const detail::BackwardPlan plan = detail::plan_backward(
      p, detail::current_device_info(), detail::aligned16(x, dy, e.residual),
      detail::aligned16(dy, dx, e.dz, e.residual, silu ? x : nullptr), reduce_blocks(p, true, e));
  if (sums)
    check_workspace(kFrozenCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                    {{x, "x"}, {dy, "dy"}, {dx, "dx"}}, regions(p, args));
  detail::dispatch_dtype<P>(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::launch_backward_frozen<T>(p, plan, static_cast<const T*>(x), static_cast<const T*>(dy),
                                      static_cast<T*>(dx), args, ws.ptr, stream);
  });
}

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
void forward_local_impl(const detail::Problem& p, const void* x, RankRecord local, Workspace ws,
                        cudaStream_t stream) {
  check_tensor(kForwardLocalCall, p, x, "x", p.numel == 0);
  const detail::SplitPlan plan =
      detail::plan_split(p, detail::current_device_info(), false, detail::aligned16(x),
                         detail::aligned16(x), reduce_blocks(p, false, Epilogue{}));
  check_workspace(kForwardLocalCall, p, ws, plan.scratch.bytes, "forward_training_workspace_size",
                  {{x, "x"}});
  check_record(kForwardLocalCall, p, local, plan.record_bytes, ws, {{x, "x"}});
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
  const detail::SplitPlan plan =
      detail::plan_split(p, detail::current_device_info(), false, detail::aligned16(x),
                         detail::aligned16(x, y, e.residual), reduce_blocks(p, false, e));
  check_workspace(kForwardApplyCall, p, ws, plan.scratch.bytes, "forward_training_workspace_size",
                  {{x, "x"}, {y, "y"}}, regions(p, args));
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
  const detail::SplitPlan plan = detail::plan_split(
      p, detail::current_device_info(), true, detail::aligned16(x, dy, e.residual),
      detail::aligned16(x, dy, e.residual), reduce_blocks(p, true, e));
  check_workspace(kBackwardLocalCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                  {{x, "x"}, {dy, "dy"}}, regions(p, args));
  check_record(kBackwardLocalCall, p, local, plan.record_bytes, ws,
               {{x, "x"}, {dy, "dy"}, {e.residual, "args.epilogue.residual"}});
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
  const detail::SplitPlan plan = detail::plan_split(
      p, detail::current_device_info(), true, detail::aligned16(x, dy, e.residual),
      detail::aligned16(x, dy, dx, e.residual, e.dz), reduce_blocks(p, true, e));
  check_workspace(kBackwardApplyCall, p, ws, plan.scratch.bytes, "backward_workspace_size",
                  {{x, "x"}, {dy, "dy"}, {dx, "dx"}}, regions(p, args));
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

void forward_training_local(const TensorDesc& x_desc, const void* x, RankRecord local,
                            Workspace workspace, cudaStream_t stream) {
  nvtx3::scoped_range range{kForwardLocalCall};
  const detail::Problem p = detail::canonicalize(kForwardLocalCall, "x_desc", x_desc, true);
  if (p.dtype == DataType::kFloat64) {
    forward_local_impl<double>(p, x, local, workspace, stream);
  } else {
    forward_local_impl<float>(p, x, local, workspace, stream);
  }
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
