// The C ABI of cubn::nccl (cubn/cubn_nccl.h) over the C++ calls, with cubn/cubn.h's conversions.
#include "c_api_support.hpp"
#include "cubn/cubn_nccl.h"
#include "cubn/nccl.hpp"

namespace {

using namespace cubn;
using namespace cubn::c_api;

static_assert(std::is_same_v<cubn_nccl_comm, ncclComm_t>, "cubn_nccl_comm is ncclComm_t");

}  // namespace

extern "C" {

cubn_status cubn_nccl_forward_training_workspace_size(const cubn_tensor_desc* x_desc,
                                                      cubn_nccl_comm comm, size_t* bytes) {
  constexpr const char* call = "cubn_nccl_forward_training_workspace_size";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    if (bytes == nullptr) null_argument(call, "bytes");
    *bytes = nccl::forward_training_workspace_size(d, comm);
  });
}

cubn_status cubn_nccl_backward_workspace_size(const cubn_tensor_desc* x_desc, cubn_nccl_comm comm,
                                              size_t* bytes) {
  constexpr const char* call = "cubn_nccl_backward_workspace_size";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    if (bytes == nullptr) null_argument(call, "bytes");
    *bytes = nccl::backward_workspace_size(d, comm);
  });
}

cubn_status cubn_nccl_forward_training(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                       const cubn_training_forward_args* args, void* workspace,
                                       size_t workspace_bytes, cubn_nccl_comm comm,
                                       cubn_stream stream) {
  constexpr const char* call = "cubn_nccl_forward_training";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      nccl::forward_training(d, x, y, training_forward<P>(a), {workspace, workspace_bytes}, comm,
                             stream);
    });
  });
}

cubn_status cubn_nccl_backward_training(const cubn_tensor_desc* x_desc, const void* x,
                                        const void* dy, void* dx,
                                        const cubn_training_backward_args* args, void* workspace,
                                        size_t workspace_bytes, cubn_nccl_comm comm,
                                        cubn_stream stream) {
  constexpr const char* call = "cubn_nccl_backward_training";
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const auto& a = required(call, "args", args);
    with_param_type(*x_desc, [&](auto* p) {
      using P = std::remove_pointer_t<decltype(p)>;
      nccl::backward_training(d, x, dy, dx, training_backward<P>(a), {workspace, workspace_bytes},
                              comm, stream);
    });
  });
}

}  // extern "C"
