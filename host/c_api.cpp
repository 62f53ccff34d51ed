// The C ABI (cubn/cubn.h) over the C++ API: each call converts its structs, runs the C++ call and
// turns every exception into a status and a thread-local message.
#include <exception>
#include <new>
#include <string>
#include <type_traits>

#include "cubn/cubn.h"
#include "cubn/cubn.hpp"

namespace {

using namespace cubn;

static_assert(static_cast<int>(Status::kSuccess) == CUBN_STATUS_SUCCESS &&
                  static_cast<int>(Status::kInvalidArgument) == CUBN_STATUS_INVALID_ARGUMENT &&
                  static_cast<int>(Status::kInvalidDataType) == CUBN_STATUS_INVALID_DATA_TYPE &&
                  static_cast<int>(Status::kInvalidLayout) == CUBN_STATUS_INVALID_LAYOUT &&
                  static_cast<int>(Status::kMisalignedOperand) == CUBN_STATUS_MISALIGNED_OPERAND &&
                  static_cast<int>(Status::kWorkspaceTooSmall) == CUBN_STATUS_WORKSPACE_TOO_SMALL &&
                  static_cast<int>(Status::kSizeOverflow) == CUBN_STATUS_SIZE_OVERFLOW &&
                  static_cast<int>(Status::kInvalidLaunch) == CUBN_STATUS_INVALID_LAUNCH &&
                  static_cast<int>(Status::kCudaError) == CUBN_STATUS_CUDA_ERROR &&
                  static_cast<int>(Status::kKernelFault) == CUBN_STATUS_KERNEL_FAULT &&
                  static_cast<int>(Status::kCommunicationError) == CUBN_STATUS_COMMUNICATION_ERROR,
              "cubn_status mirrors cubn::Status");
static_assert(static_cast<int>(DataType::kFloat16) == CUBN_FLOAT16 &&
                  static_cast<int>(DataType::kBFloat16) == CUBN_BFLOAT16 &&
                  static_cast<int>(DataType::kFloat32) == CUBN_FLOAT32 &&
                  static_cast<int>(DataType::kFloat64) == CUBN_FLOAT64 &&
                  static_cast<int>(MemoryOrder::kChannelsFirst) == CUBN_CHANNELS_FIRST &&
                  static_cast<int>(MemoryOrder::kChannelsLast) == CUBN_CHANNELS_LAST &&
                  static_cast<int>(Activation::kNone) == CUBN_ACTIVATION_NONE &&
                  static_cast<int>(Activation::kRelu) == CUBN_ACTIVATION_RELU &&
                  static_cast<int>(Activation::kSilu) == CUBN_ACTIVATION_SILU,
              "the C enums mirror the C++ ones");

thread_local std::string last_message;

// Runs `body`; every exception becomes a status and this thread's last message.
template <class F>
cubn_status guarded(F&& body) noexcept {
  try {
    body();
    return CUBN_STATUS_SUCCESS;
  } catch (const Error& e) {
    try {
      last_message = e.what();
    } catch (...) {
    }
    return static_cast<cubn_status>(e.status());
  } catch (const std::bad_alloc&) {
    last_message.clear();  // no memory for a message either
    return CUBN_STATUS_INTERNAL_ERROR;
  } catch (const std::exception& e) {
    try {
      last_message = std::string("cubn: internal error: ") + e.what();
    } catch (...) {
    }
    return CUBN_STATUS_INTERNAL_ERROR;
  } catch (...) {
    try {
      last_message = "cubn: internal error: an unknown exception";
    } catch (...) {
    }
    return CUBN_STATUS_INTERNAL_ERROR;
  }
}

[[noreturn]] void null_argument(const char* call, const char* arg) {
  throw Error(Status::kInvalidArgument, std::string(call) + ": " + arg + " is null");
}

template <class T>
const T& required(const char* call, const char* arg, const T* p) {
  if (p == nullptr) null_argument(call, arg);
  return *p;
}

// Values outside the enums pass through: the C++ checks name them.
TensorDesc tensor_desc(const char* call, const cubn_tensor_desc* d) {
  const cubn_tensor_desc& c = required(call, "x_desc", d);
  TensorDesc t;
  t.dtype = static_cast<DataType>(c.dtype);
  t.order = static_cast<MemoryOrder>(c.order);
  t.rank = c.rank;
  for (int i = 0; i < TensorDesc::kMaxRank; ++i) t.dims[i] = c.dims[i];
  return t;
}

// Calls `f` with a null pointer of the parameter type of `d`'s dtype: double for fp64, float
// otherwise (an invalid dtype takes float, and the C++ call rejects it).
template <class F>
void with_param_type(const cubn_tensor_desc& d, F&& f) {
  if (d.dtype == CUBN_FLOAT64)
    f(static_cast<double*>(nullptr));
  else
    f(static_cast<float*>(nullptr));
}

Epilogue epilogue(const cubn_epilogue& e) {
  Epilogue r;
  r.activation = static_cast<Activation>(e.activation);
  r.residual = e.residual;
  r.reserve = {e.reserve, e.reserve_bytes};
  return r;
}

EpilogueGrad epilogue_grad(const cubn_epilogue_grad& e) {
  EpilogueGrad r;
  r.activation = static_cast<Activation>(e.activation);
  r.residual = e.residual;
  r.reserve = {e.reserve, e.reserve_bytes};
  r.dz = e.dz;
  return r;
}

template <class P>
ParamGradients<P> grads(const cubn_param_gradients& g) {
  return {static_cast<P*>(g.dscale), static_cast<P*>(g.doffset), g.accumulate != 0};
}

template <class P>
TrainingForwardArgs<P> training_forward(const cubn_training_forward_args& a) {
  TrainingForwardArgs<P> r;
  r.affine = {static_cast<const P*>(a.scale), static_cast<const P*>(a.offset)};
  r.epsilon = a.epsilon;
  r.running = {static_cast<P*>(a.running_mean), static_cast<P*>(a.running_var)};
  r.momentum = {a.momentum_mean, a.momentum_var};
  r.saved = {static_cast<P*>(a.saved_mean), static_cast<P*>(a.saved_invstd)};
  r.epilogue = epilogue(a.epilogue);
  return r;
}

template <class P>
InferenceForwardArgs<P> inference_forward(const cubn_inference_forward_args& a) {
  InferenceForwardArgs<P> r;
  r.affine = {static_cast<const P*>(a.scale), static_cast<const P*>(a.offset)};
  r.running = {static_cast<const P*>(a.running_mean), static_cast<const P*>(a.running_var)};
  r.epsilon = a.epsilon;
  r.epilogue = epilogue(a.epilogue);
  return r;
}

template <class P>
TrainingBackwardArgs<P> training_backward(const cubn_training_backward_args& a) {
  TrainingBackwardArgs<P> r;
  r.scale = static_cast<const P*>(a.scale);
  r.saved = {static_cast<const P*>(a.saved_mean), static_cast<const P*>(a.saved_invstd)};
  r.grads = grads<P>(a.grads);
  r.epilogue = epilogue_grad(a.epilogue);
  return r;
}

template <class P>
FrozenBackwardArgs<P> frozen_backward(const cubn_frozen_backward_args& a) {
  FrozenBackwardArgs<P> r;
  r.scale = static_cast<const P*>(a.scale);
  r.running = {static_cast<const P*>(a.running_mean), static_cast<const P*>(a.running_var)};
  r.epsilon = a.epsilon;
  r.grads = grads<P>(a.grads);
  r.epilogue = epilogue_grad(a.epilogue);
  r.offset = static_cast<const P*>(a.offset);
  return r;
}

// A size query: `query(desc)` into *bytes.
template <class Q>
cubn_status size_query(const char* call, const cubn_tensor_desc* d, size_t* bytes, Q&& query) {
  return guarded([&] {
    const TensorDesc desc = tensor_desc(call, d);
    if (bytes == nullptr) null_argument(call, "bytes");
    *bytes = query(desc);
  });
}

}  // namespace

extern "C" {

void cubn_training_forward_args_init(cubn_training_forward_args* args) {
  if (args == nullptr) return;
  const TrainingForwardArgs<float> d;
  *args = cubn_training_forward_args{};
  args->epsilon = d.epsilon;
  args->momentum_mean = d.momentum.mean;
  args->momentum_var = d.momentum.var;
}

void cubn_inference_forward_args_init(cubn_inference_forward_args* args) {
  if (args == nullptr) return;
  *args = cubn_inference_forward_args{};
  args->epsilon = InferenceForwardArgs<float>{}.epsilon;
}

void cubn_training_backward_args_init(cubn_training_backward_args* args) {
  if (args != nullptr) *args = cubn_training_backward_args{};
}

void cubn_frozen_backward_args_init(cubn_frozen_backward_args* args) {
  if (args == nullptr) return;
  *args = cubn_frozen_backward_args{};
  args->epsilon = FrozenBackwardArgs<float>{}.epsilon;
}

const char* cubn_status_string(cubn_status status) {
  if (status == CUBN_STATUS_INTERNAL_ERROR) return "internal error";
  return to_string(static_cast<Status>(status));
}

const char* cubn_last_error_message(void) { return last_message.c_str(); }

cubn_status cubn_forward_training_workspace_size(const cubn_tensor_desc* x_desc, size_t* bytes) {
  return size_query("cubn_forward_training_workspace_size", x_desc, bytes,
                    [](const TensorDesc& d) { return forward_training_workspace_size(d); });
}

cubn_status cubn_backward_workspace_size(const cubn_tensor_desc* x_desc, size_t* bytes) {
  return size_query("cubn_backward_workspace_size", x_desc, bytes,
                    [](const TensorDesc& d) { return backward_workspace_size(d); });
}

cubn_status cubn_activation_reserve_size(const cubn_tensor_desc* x_desc, int32_t activation,
                                         size_t* bytes) {
  return size_query("cubn_activation_reserve_size", x_desc, bytes, [&](const TensorDesc& d) {
    return activation_reserve_size(d, static_cast<Activation>(activation));
  });
}

cubn_status cubn_local_stats_bytes(const cubn_tensor_desc* x_desc, size_t* bytes) {
  return size_query("cubn_local_stats_bytes", x_desc, bytes,
                    [](const TensorDesc& d) { return local_stats_bytes(d); });
}

cubn_status cubn_local_grad_sums_bytes(const cubn_tensor_desc* x_desc, size_t* bytes) {
  return size_query("cubn_local_grad_sums_bytes", x_desc, bytes,
                    [](const TensorDesc& d) { return local_grad_sums_bytes(d); });
}

cubn_status cubn_forward_training(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                  const cubn_training_forward_args* args, void* workspace,
                                  size_t workspace_bytes, cubn_stream stream) {
  constexpr const char* call = "cubn_forward_training";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      forward_training(d, x, y, training_forward<P>(a), {workspace, workspace_bytes}, stream);
    });
  });
}

cubn_status cubn_forward_inference(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                   const cubn_inference_forward_args* args, cubn_stream stream) {
  constexpr const char* call = "cubn_forward_inference";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      forward_inference(d, x, y, inference_forward<P>(a), stream);
    });
  });
}

cubn_status cubn_backward_training(const cubn_tensor_desc* x_desc, const void* x, const void* dy,
                                   void* dx, const cubn_training_backward_args* args,
                                   void* workspace, size_t workspace_bytes, cubn_stream stream) {
  constexpr const char* call = "cubn_backward_training";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      backward_training(d, x, dy, dx, training_backward<P>(a), {workspace, workspace_bytes},
                        stream);
    });
  });
}

cubn_status cubn_backward_frozen(const cubn_tensor_desc* x_desc, const void* x, const void* dy,
                                 void* dx, const cubn_frozen_backward_args* args, void* workspace,
                                 size_t workspace_bytes, cubn_stream stream) {
  constexpr const char* call = "cubn_backward_frozen";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      backward_frozen(d, x, dy, dx, frozen_backward<P>(a), {workspace, workspace_bytes}, stream);
    });
  });
}

cubn_status cubn_forward_training_local(const cubn_tensor_desc* x_desc, const void* x, void* local,
                                        size_t local_bytes, void* workspace, size_t workspace_bytes,
                                        cubn_stream stream) {
  return guarded([&] {
    forward_training_local(tensor_desc("cubn_forward_training_local", x_desc), x,
                           {local, local_bytes}, {workspace, workspace_bytes}, stream);
  });
}

cubn_status cubn_forward_training_apply(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                        const cubn_training_forward_args* args,
                                        const void* gathered, size_t gathered_bytes, int ranks,
                                        void* workspace, size_t workspace_bytes,
                                        cubn_stream stream) {
  constexpr const char* call = "cubn_forward_training_apply";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      forward_training_apply(d, x, y, training_forward<P>(a), {gathered, gathered_bytes, ranks},
                             {workspace, workspace_bytes}, stream);
    });
  });
}

cubn_status cubn_backward_training_local(const cubn_tensor_desc* x_desc, const void* x,
                                         const void* dy, const cubn_training_backward_args* args,
                                         void* local, size_t local_bytes, void* workspace,
                                         size_t workspace_bytes, cubn_stream stream) {
  constexpr const char* call = "cubn_backward_training_local";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      backward_training_local(d, x, dy, training_backward<P>(a), {local, local_bytes},
                              {workspace, workspace_bytes}, stream);
    });
  });
}

cubn_status cubn_backward_training_apply(const cubn_tensor_desc* x_desc, const void* x,
                                         const void* dy, void* dx,
                                         const cubn_training_backward_args* args,
                                         const void* gathered, size_t gathered_bytes, int ranks,
                                         void* workspace, size_t workspace_bytes,
                                         cubn_stream stream) {
  constexpr const char* call = "cubn_backward_training_apply";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      backward_training_apply(d, x, dy, dx, training_backward<P>(a),
                              {gathered, gathered_bytes, ranks}, {workspace, workspace_bytes},
                              stream);
    });
  });
}

}  // extern "C"
