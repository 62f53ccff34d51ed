// The launchers for fp16 tensors.
#include "backward_launch.cuh"
#include "distributed_launch.cuh"
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(__half)
CUBN_INSTANTIATE_BACKWARD(__half)
CUBN_INSTANTIATE_DISTRIBUTED(__half)
}  // namespace cubn::detail
