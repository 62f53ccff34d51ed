// The C ABI (cubn/cubn.h) over the C++ API: each call converts its structs, runs the C++ call and
// turns every exception into a status and a thread-local message.
#include <string>

#include "c_api_support.hpp"
#include "cubn/cubn.h"

namespace {

using namespace cubn;
using namespace cubn::c_api;

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

const char* cubn_last_error_message(void) { return last_message().c_str(); }

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
  return with_args("cubn_forward_training", x_desc, args, [&](const TensorDesc& d, const auto& a) {
    forward_training(d, x, y, a, {workspace, workspace_bytes}, stream);
  });
}

cubn_status cubn_forward_inference(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                   const cubn_inference_forward_args* args, cubn_stream stream) {
  return with_args("cubn_forward_inference", x_desc, args, [&](const TensorDesc& d, const auto& a) {
    forward_inference(d, x, y, a, stream);
  });
}

cubn_status cubn_backward_training(const cubn_tensor_desc* x_desc, const void* x, const void* dy,
                                   void* dx, const cubn_training_backward_args* args,
                                   void* workspace, size_t workspace_bytes, cubn_stream stream) {
  return with_args("cubn_backward_training", x_desc, args, [&](const TensorDesc& d, const auto& a) {
    backward_training(d, x, dy, dx, a, {workspace, workspace_bytes}, stream);
  });
}

cubn_status cubn_backward_frozen(const cubn_tensor_desc* x_desc, const void* x, const void* dy,
                                 void* dx, const cubn_frozen_backward_args* args, void* workspace,
                                 size_t workspace_bytes, cubn_stream stream) {
  return with_args("cubn_backward_frozen", x_desc, args, [&](const TensorDesc& d, const auto& a) {
    backward_frozen(d, x, dy, dx, a, {workspace, workspace_bytes}, stream);
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

cubn_status cubn_forward_training_local_lengths(const cubn_tensor_desc* x_desc, const void* x,
                                                const cubn_lengths* lengths, void* local,
                                                size_t local_bytes, void* workspace,
                                                size_t workspace_bytes, cubn_stream stream) {
  return guarded([&] {
    forward_training_local(tensor_desc("cubn_forward_training_local_lengths", x_desc), x,
                           lengths != nullptr ? c_api::lengths(*lengths) : Lengths{},
                           {local, local_bytes}, {workspace, workspace_bytes}, stream);
  });
}

cubn_status cubn_forward_training_apply(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                        const cubn_training_forward_args* args,
                                        const void* gathered, size_t gathered_bytes, int ranks,
                                        void* workspace, size_t workspace_bytes,
                                        cubn_stream stream) {
  return with_args("cubn_forward_training_apply", x_desc, args,
                   [&](const TensorDesc& d, const auto& a) {
                     forward_training_apply(d, x, y, a, {gathered, gathered_bytes, ranks},
                                            {workspace, workspace_bytes}, stream);
                   });
}

cubn_status cubn_backward_training_local(const cubn_tensor_desc* x_desc, const void* x,
                                         const void* dy, const cubn_training_backward_args* args,
                                         void* local, size_t local_bytes, void* workspace,
                                         size_t workspace_bytes, cubn_stream stream) {
  return with_args("cubn_backward_training_local", x_desc, args,
                   [&](const TensorDesc& d, const auto& a) {
                     backward_training_local(d, x, dy, a, {local, local_bytes},
                                             {workspace, workspace_bytes}, stream);
                   });
}

cubn_status cubn_backward_training_apply(const cubn_tensor_desc* x_desc, const void* x,
                                         const void* dy, void* dx,
                                         const cubn_training_backward_args* args,
                                         const void* gathered, size_t gathered_bytes, int ranks,
                                         void* workspace, size_t workspace_bytes,
                                         cubn_stream stream) {
  return with_args("cubn_backward_training_apply", x_desc, args,
                   [&](const TensorDesc& d, const auto& a) {
                     backward_training_apply(d, x, dy, dx, a, {gathered, gathered_bytes, ranks},
                                             {workspace, workspace_bytes}, stream);
                   });
}

}  // extern "C"

std::string& cubn::c_api::last_message() {
  thread_local std::string message;
  return message;
}
