/// @file call_checks.hpp
/// @brief The argument checks every public call shares (the single calls in batch_norm.cpp, the
/// split-phase calls in split_phase.cpp): each throws Error naming the argument, before anything
/// is launched or written.
#pragma once

#include <array>
#include <cstddef>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

#include "cubn/batch_norm.hpp"
#include "geometry.hpp"
#include "problem.hpp"

namespace cubn::detail {

/// The blocks per SM the reduction kernel of a call with epilogue e is compiled for (one wave of
/// them is what plan_reduce launches): the training forward's statistics, or the gradient sums.
template <class E>
int reduce_blocks(const detail::Problem& p, bool backward, const E& e) {
  return kernels::reduce_blocks_per_sm(element_size(p.dtype), backward,
                                       static_cast<int>(e.activation), e.residual != nullptr);
}

/// The problem of x_desc, checked for a call with parameters of type P (N may be 0 with
/// `empty_batch`).
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

void check_epsilon(const char* call, double epsilon);

void check_momentum(const char* call, const char* arg, double m);

/// `out` and `in` (either may be null) are the same pointer or do not overlap.
void check_overlap(const char* call, const detail::Problem& p, const void* in, const char* in_name,
                   const void* out, const char* out_name);

/// A tensor argument: present (unless optional) and aligned to its element size.
void check_tensor(const char* call, const detail::Problem& p, const void* t, const char* name,
                  bool optional = false);

template <class P>
void check_grads(const char* call, const ParamGradients<P>& g) {
  detail::check_pointer(call, "args.grads.dscale", g.dscale, sizeof(P), true);
  detail::check_pointer(call, "args.grads.doffset", g.doffset, sizeof(P), true);
}

/// The byte ranges [a, a + an) and [b, b + bn) (either pointer may be null) do not overlap.
void check_disjoint(const char* call, const void* a, std::size_t an, const char* a_name,
                    const void* b, std::size_t bn, const char* b_name);

std::size_t reserve_size(const detail::Problem& p, Activation a);

/// Memory a call reads or writes besides its workspace (null or 0 bytes: none).
struct Region {
  const void* ptr;
  std::size_t bytes;
  const char* name;
};

/// The per-channel arrays and epilogue tensors the arguments of each kind of call name.
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

/// The workspace: large enough, 16-byte aligned, and apart from every tensor (`tensors`, x's
/// bytes each) and argument array (`args`) of the call: its kernels write the first `needed`
/// bytes while they read and write the others, so an overlap would corrupt both.
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

void check_activation(const char* call, const char* arg, Activation a);

/// A reserve of `needed` bytes at `ptr` (`bytes` long): 16-byte aligned, long enough, and apart
/// from the call's tensors.
void check_reserve(const char* call, const detail::Problem& p, const void* ptr, std::size_t bytes,
                   std::size_t needed, bool optional,
                   std::initializer_list<std::pair<const void*, const char*>> tensors);

/// The forward epilogue: the residual (same pointer as y or apart from it) and the reserve
/// (required in training for ReLU and SiLU; inference writes ReLU's mask when given one).
void check_epilogue(const char* call, const detail::Problem& p, const void* x, const void* y,
                    const Epilogue& e, bool training);

/// The backward epilogue: what the forward's activation needs (ReLU's mask; SiLU's coefficients in
/// training), dz only with a residual, dz apart from dx.
void check_epilogue_grad(const char* call, const detail::Problem& p, const void* x, const void* dy,
                         const void* dx, const EpilogueGrad& e, bool training);

template <class P>
void check_affine(const char* call, const Affine<P>& a) {
  detail::check_pointer(call, "args.affine.scale", a.scale, sizeof(P), true);
  detail::check_pointer(call, "args.affine.offset", a.offset, sizeof(P), true);
}

/// The arguments of a training forward (forward_training, forward_training_apply) on `p`; x and y
/// may be null only for a problem without samples.
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

/// The arguments of a training backward (backward_training and its split phases) on `p`; x and dy
/// may be null only for a problem without samples.
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

/// Bytes of the lengths array of a call on tensors of `desc`: N integers of lengths.type.
inline std::size_t length_bytes(const TensorDesc& desc, const Lengths& lengths) {
  return static_cast<std::size_t>(desc.dims[0]) * (lengths.type == LengthType::kInt64 ? 8 : 4);
}

/// The variable-length batch of `lengths` on the tensors of `desc` (canonicalized as `p`) for the
/// kernels; lengths null: none (a null SeqGeometry::lengths). Checks the type, the padding choice,
/// the pointer's alignment, a time axis (rank 3 to 5), and the array apart from the tensors the
/// call writes (`outputs`, x's bytes each; check_lengths_apart: the rest). Errors name the argument
/// `name` (and its fields).
kernels::SeqGeometry checked_lengths(
    const char* call, const TensorDesc& desc, const Problem& p, const Lengths& lengths,
    std::initializer_list<std::pair<const void*, const char*>> outputs,
    const char* name = "args.lengths");

/// The lengths (`name`; checked by checked_lengths first) apart from the first `needed` bytes of
/// the workspace and from the arguments' arrays (`args`): the call writes the workspace and the
/// statistics and gradients among them while its kernels read the lengths.
template <std::size_t N = 0>
void check_lengths_apart(const char* call, const TensorDesc& desc, const Lengths& lengths,
                         const Workspace& ws, std::size_t needed,
                         const std::array<Region, N>& args = {},
                         const char* name = "args.lengths") {
  if (lengths.ptr == nullptr) return;
  const std::size_t bytes = length_bytes(desc, lengths);
  check_disjoint(call, lengths.ptr, bytes, name, ws.ptr, needed, "workspace");
  for (const Region& r : args)
    check_disjoint(call, lengths.ptr, bytes, name, r.ptr, r.bytes, r.name);
}

}  // namespace cubn::detail
