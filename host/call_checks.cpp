// The non-template argument checks of call_checks.hpp.
#include "call_checks.hpp"

#include <cmath>
#include <cstdint>
#include <string>

namespace cubn::detail {

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

void check_overlap(const char* call, const detail::Problem& p, const void* in, const char* in_name,
                   const void* out, const char* out_name) {
  if (in == nullptr || out == nullptr) return;
  const auto a = reinterpret_cast<std::uintptr_t>(in), b = reinterpret_cast<std::uintptr_t>(out);
  if (a != b && a < b + p.bytes() && b < a + p.bytes())
    fail(Status::kInvalidArgument, call,
         std::string(out_name) + " overlaps " + in_name +
             " without being the same pointer; only exact in-place operation is supported");
}

void check_tensor(const char* call, const detail::Problem& p, const void* t, const char* name,
                  bool optional) {
  detail::check_pointer(call, name, t, element_size(p.dtype), optional);
}

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

void check_activation(const char* call, const char* arg, Activation a) {
  if (a != Activation::kNone && a != Activation::kRelu && a != Activation::kSilu)
    fail(Status::kInvalidArgument, call,
         std::string(arg) + " is " + std::to_string(static_cast<int>(a)) +
             ", not an Activation (kNone, kRelu, kSilu)");
}

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

kernels::SeqGeometry checked_lengths(
    const char* call, const TensorDesc& desc, const Problem& p, const Lengths& lengths,
    std::initializer_list<std::pair<const void*, const char*>> outputs, const char* arg) {
  kernels::SeqGeometry seq;
  if (lengths.ptr == nullptr) return seq;
  const std::string name = arg;
  if (lengths.type != LengthType::kInt32 && lengths.type != LengthType::kInt64)
    fail(Status::kInvalidArgument, call,
         name + ".type is " + std::to_string(static_cast<int>(lengths.type)) +
             ", not a LengthType (kInt32, kInt64)");
  if (lengths.padding != Padding::kZero && lengths.padding != Padding::kUntouched)
    fail(Status::kInvalidArgument, call,
         name + ".padding is " + std::to_string(static_cast<int>(lengths.padding)) +
             ", not a Padding (kZero, kUntouched)");
  const bool wide = lengths.type == LengthType::kInt64;
  check_pointer(call, (name + ".ptr").c_str(), lengths.ptr, wide ? 8 : 4);
  if (desc.rank < 3)
    fail(Status::kInvalidArgument, call,
         name +
             " is given but x_desc has rank 2 (N, C): lengths count positions along the "
             "last spatial (time) axis, which needs rank 3 to 5");
  std::int64_t positions = 1;  // a channel's positions per sample
  for (int i = 2; i < desc.rank; ++i) positions *= desc.dims[i];
  if (desc.dims[0] > kernels::kMaxSeqIndex || positions > kernels::kMaxSeqIndex)
    fail(Status::kSizeOverflow, call,
         name + " is given for " + std::to_string(desc.dims[0]) + " samples of " +
             std::to_string(positions) +
             " positions per channel; variable-length batches take at most 2^31 - 1 of each "
             "(the masked loops count them in 32 bits)");
  const std::size_t bytes = length_bytes(desc, lengths);
  for (const auto& [t, t_name] : outputs)
    check_disjoint(call, lengths.ptr, bytes, arg, t, p.bytes(), t_name);
  if (p.numel == 0) return seq;  // nothing to read or write: no mask (and no 0 to divide by)
  const std::int64_t n = desc.dims[0], c = desc.dims[1];
  return kernels::SeqGeometry::of(lengths.ptr, wide, lengths.padding == Padding::kZero, n, c,
                                  p.numel / n / c, desc.dims[desc.rank - 1],
                                  desc.order == MemoryOrder::kChannelsLast);
}

}  // namespace cubn::detail
