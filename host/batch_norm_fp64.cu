// The launchers for fp64 tensors.
#include "backward_launch.cuh"
#include "distributed_launch.cuh"
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(double)
CUBN_INSTANTIATE_BACKWARD(double)
CUBN_INSTANTIATE_DISTRIBUTED(double)
}  // namespace cubn::detail
