// Forward launchers for fp16 tensors.
#include "forward_launch.cuh"

namespace cubn::detail {
CUBN_INSTANTIATE_FORWARD(__half)
}  // namespace cubn::detail
