// Forward launchers for fp32 tensors.
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(float)
}  // namespace cubn::detail
