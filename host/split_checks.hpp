/// @file split_checks.hpp
/// @brief The split-phase apply calls' argument checks on their own, launching nothing: a caller
/// that runs the phases itself (cubn/nccl.hpp) checks the apply phase before it launches the
/// local one, so that a call that throws has launched nothing.
#pragma once

#include "cubn/batch_norm.hpp"
#include "cubn/distributed.hpp"

namespace cubn::detail {

/// Throws what forward_training_apply() would throw for these arguments; launches nothing.
void check_forward_training_apply(const TensorDesc& x_desc, const void* x, const void* y,
                                  const TrainingForwardArgs<float>& args, GatheredRecords gathered,
                                  Workspace workspace);
void check_forward_training_apply(const TensorDesc& x_desc, const void* x, const void* y,
                                  const TrainingForwardArgs<double>& args, GatheredRecords gathered,
                                  Workspace workspace);

/// Throws what backward_training_apply() would throw for these arguments; launches nothing.
void check_backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy,
                                   const void* dx, const TrainingBackwardArgs<float>& args,
                                   GatheredRecords gathered, Workspace workspace);
void check_backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy,
                                   const void* dx, const TrainingBackwardArgs<double>& args,
                                   GatheredRecords gathered, Workspace workspace);

}  // namespace cubn::detail
