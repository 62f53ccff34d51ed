/// @file nccl.hpp
/// @brief Synchronized batch norm over an NCCL communicator (target cubn::nccl): the training
/// calls of cubn/batch_norm.hpp with statistics taken over the whole global batch, each rank
/// holding its shard (cubn/distributed.hpp's phases, with NCCL's all-gather between them).
///
/// Each call runs, on the caller's stream: the local phase (a reduction over this rank's shard),
/// ncclAllGather of every rank's record (in place, in the call's workspace), and the apply phase
/// (one small merge kernel of the R records in rank order, then the normalization or dx). NCCL
/// only moves bytes: the merge order is fixed, so every rank computes bitwise the same statistics
/// and results do not depend on the algorithm or protocol NCCL picks.
/// Bytes each rank sends: 16 + 2 * C * sizeof(P) per call (P float, or double for fp64 tensors),
/// rounded up to 16: a count, then mean and M2 per channel forward, sum(dy) and sum(dy * (x -
/// mean)) backward; each rank receives R times that.
///
/// No host synchronization, no allocation, no host-device copy: the calls can be captured in a
/// CUDA graph (NCCL 2.9 and newer capture collectives). Call them outside ncclGroupStart() /
/// ncclGroupEnd(): inside a group NCCL defers the all-gather past the apply phase's kernels.
/// Every rank must make the same calls in the same order, with tensors of the same C and spatial
/// dims (N may differ, and may be 0), as with any collective.
///
/// dscale and doffset are this rank's share (as PyTorch's SyncBatchNorm): a data-parallel
/// trainer's gradient all-reduce adds them up with every other parameter's gradient.
#pragma once

#include <driver_types.h>
#include <nccl.h>

#include <cstddef>

#include "cubn/batch_norm.hpp"
#include "cubn/distributed.hpp"
#include "cubn/tensor.hpp"

namespace cubn::nccl {

/// Workspace bytes of forward_training() for `x` on `comm`'s ranks: the split calls' workspace and
/// room for every rank's record. Any content, as any cubn workspace.
std::size_t forward_training_workspace_size(const TensorDesc& x, ncclComm_t comm);

/// forward_training() over the global batch: y from this rank's x with the statistics of every
/// rank's x; args.running updated with the global mean and unbiased variance and args.saved
/// written with the global mean and invstd (bitwise the same on every rank). Arguments as
/// cubn::forward_training, except that N may be 0 (x and y may then be null) and the global count
/// must be at least 2 (not checked: it would take a synchronization; with fewer, the defined
/// result cubn/distributed.hpp states). args.lengths: this rank's (cubn::Lengths; statistics over
/// every rank's valid positions). Throws Error before
/// launching anything for bad arguments; Error(kCommunicationError) when NCCL fails.
void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<float>& args, Workspace workspace, ncclComm_t comm,
                      cudaStream_t stream);
/// The same for fp64 tensors.
void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<double>& args, Workspace workspace, ncclComm_t comm,
                      cudaStream_t stream);

/// Workspace bytes of backward_training() for `x` on `comm`'s ranks.
std::size_t backward_workspace_size(const TensorDesc& x, ncclComm_t comm);

/// backward_training() over the global batch: dx (and args.epilogue.dz) of this rank's shard with
/// the sums of every rank; args.grads receives this rank's share of dscale and doffset. Reads what
/// forward_training above saved. Arguments as cubn::backward_training (N may be 0).
void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<float>& args, Workspace workspace,
                       ncclComm_t comm, cudaStream_t stream);
/// The same for fp64 tensors.
void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<double>& args, Workspace workspace,
                       ncclComm_t comm, cudaStream_t stream);

}  // namespace cubn::nccl
