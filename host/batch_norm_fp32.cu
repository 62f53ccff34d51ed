// The launchers for fp32 tensors.
#include "backward_launch.cuh"
#include "distributed_launch.cuh"
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(float)
CUBN_INSTANTIATE_BACKWARD(float)
CUBN_INSTANTIATE_DISTRIBUTED(float)
}  // namespace cubn::detail
