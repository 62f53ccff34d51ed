// Forward launchers for bf16 tensors.
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(__nv_bfloat16)
}  // namespace cubn::detail
