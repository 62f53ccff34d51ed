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
  return size_query(
      "cubn_nccl_forward_training_workspace_size", x_desc, bytes,
      [&](const TensorDesc& d) { return nccl::forward_training_workspace_size(d, comm); });
}

cubn_status cubn_nccl_backward_workspace_size(const cubn_tensor_desc* x_desc, cubn_nccl_comm comm,
                                              size_t* bytes) {
  return size_query("cubn_nccl_backward_workspace_size", x_desc, bytes,
                    [&](const TensorDesc& d) { return nccl::backward_workspace_size(d, comm); });
}

cubn_status cubn_nccl_forward_training(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                       const cubn_training_forward_args* args, void* workspace,
                                       size_t workspace_bytes, cubn_nccl_comm comm,
                                       cubn_stream stream) {
  return with_args("cubn_nccl_forward_training", x_desc, args,
                   [&](const TensorDesc& d, const auto& a) {
                     nccl::forward_training(d, x, y, a, {workspace, workspace_bytes}, comm, stream);
                   });
}

cubn_status cubn_nccl_backward_training(const cubn_tensor_desc* x_desc, const void* x,
                                        const void* dy, void* dx,
                                        const cubn_training_backward_args* args, void* workspace,
                                        size_t workspace_bytes, cubn_nccl_comm comm,
                                        cubn_stream stream) {
  return with_args(
      "cubn_nccl_backward_training", x_desc, args, [&](const TensorDesc& d, const auto& a) {
        nccl::backward_training(d, x, dy, dx, a, {workspace, workspace_bytes}, comm, stream);
      });
}

}  // extern "C"
