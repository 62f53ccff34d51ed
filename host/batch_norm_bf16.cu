// The launchers for bf16 tensors.
#include "backward_launch.cuh"
#include "distributed_launch.cuh"
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(__nv_bfloat16)
CUBN_INSTANTIATE_BACKWARD(__nv_bfloat16)
CUBN_INSTANTIATE_DISTRIBUTED(__nv_bfloat16)
}  // namespace cubn::detail
