// Forward launchers for fp64 tensors.
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(double)
}  // namespace cubn::detail
