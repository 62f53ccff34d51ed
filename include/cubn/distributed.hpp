/// @file distributed.hpp
/// @brief Batch norm over a batch split across ranks (GPUs, processes): the training calls in
/// phases, with the exchange of per-channel statistics between them left to the caller's
/// transport (cubn/nccl.hpp does it with NCCL).
///
/// Forward, on every rank r of R, each with its own shard x_r of the global batch (the same C and
/// spatial dims; N_r may differ, and may be 0):
///   1. forward_training_local(x_r) writes this rank's record: count and, per channel, mean and M2.
///   2. The caller gathers the R records into one buffer, in rank order, on every rank (an
///      all-gather: records are plain bytes, local_stats_bytes() each).
///   3. forward_training_apply(x_r, gathered) merges the R records in rank order (Chan's merge; a
///      rank with no samples merges as the identity), normalizes x_r with the global statistics,
///      updates the running statistics with the global unbiased variance and saves the global
///      mean and invstd, exactly as forward_training() on the whole batch would.
/// Backward likewise: backward_training_local(x_r, dy_r) writes this rank's gradient sums (and its
/// own dscale and doffset, see below); gather; backward_training_apply(x_r, dy_r, gathered) writes
/// dx_r with the global sums and the global count.
///
/// Determinism: the local phases are the single call's reductions (the same kernels, the same
/// fixed merge order), and the apply phases merge the ranks in rank order, so every rank computes
/// bitwise the same global statistics, and the same shard split gives bitwise the same results on
/// every run, whatever order the transport delivers bytes in. Splitting a batch differently
/// changes roundings only (within the single call's tolerances), not results.
///
/// dscale and doffset: backward_training_local writes this rank's own contributions, sum over x_r
/// of dy * xhat and of dy (xhat with the global statistics), as PyTorch's SyncBatchNorm does: a
/// data-parallel trainer's gradient all-reduce then combines them with every other parameter's
/// gradient (their sum over the ranks is the whole batch's dscale and doffset).
///
/// R = 1 is the single-GPU case: the same result as forward_training() and backward_training()
/// within their tolerances (the apply phase normalizes around the merged mean itself instead of a
/// value of the channel). The split calls always stream (the persistent single-read path cannot
/// stop for a collective): local x (dy, x) once; apply x once and y once (backward dy, x, dx);
/// plus one small merge kernel of R records per channel.
///
/// Every call checks its arguments like the single calls (an error names the argument and nothing
/// is written), is asynchronous on the caller's stream, allocates nothing, synchronizes nothing
/// and copies nothing between host and device: the phases and the collective between them can be
/// captured in one CUDA graph. What the calls cannot check without synchronizing: that the
/// gathered records come from the same layer's local phase on every rank, in rank order, and that
/// the global count is at least 2. With fewer the apply phase gives the defined result of a
/// variable-length single call's channel without two valid elements (cubn::Lengths): count 0, mean
/// 0 and invstd 1 / sqrt(epsilon), running statistics left as they were; count 1, its value as the
/// mean, invstd 1 / sqrt(epsilon), the running mean updated and the running variance left.
///
/// Variable-length batches (cubn::Lengths): every phase takes this rank's lengths (N_r of them,
/// forward_training_local's `lengths`, the others' args.lengths), the same on the forward's and the
/// backward's phases. The records then hold the statistics and sums of the valid positions, with
/// their count, so the merged statistics are those of every rank's valid positions together (a
/// rank may have none: it merges as the identity); y and dx at padded positions as
/// Lengths::padding says. No fused activation or residual with lengths, as in the single calls.
#pragma once

#include <driver_types.h>  // cudaStream_t

#include <cstddef>
#include <cstdint>

#include "cubn/batch_norm.hpp"
#include "cubn/tensor.hpp"

namespace cubn {

/// One rank's record, written by a local phase; local_stats_bytes() (forward) or
/// local_grad_sums_bytes() (backward) bytes, 16-byte aligned. Its layout is stable, so a
/// collective can move it as bytes (P: float for fp16/bf16/fp32 tensors, double for fp64):
///   bytes [0, 8)   std::int64_t count: elements per channel on this rank (N_r * spatial; 0 for
///                  N_r = 0; with lengths, the valid ones: spatial / L * the sum of the lengths)
///   bytes [8, 16)  zero
///   bytes [16, ..) C pairs of P, channel after channel:
///                  forward:  mean, M2 (the sum of squared deviations from that mean)
///                  backward: sum(dy), sum(dy * (x - mean)) (mean: the saved global mean)
///   then zero padding to a multiple of 16 bytes.
struct RankRecord {
  void* ptr = nullptr;
  std::size_t bytes = 0;
};

/// R records back to back in rank order, as an all-gather leaves them: ranks * (record bytes)
/// bytes at `ptr`, 16-byte aligned. Every rank passes the same bytes, so every rank merges alike.
/// The backward records are sums, so a buffer that a transport reduced by summation instead
/// (every field in its own type: the count as int64, the pairs in P) may be passed as one record
/// (ranks = 1); the result then depends on that reduction's order. The forward records are not
/// sums (means and M2 merge by Chan's formula) and must be gathered.
struct GatheredRecords {
  const void* ptr = nullptr;
  std::size_t bytes = 0;
  int ranks = 0;  ///< R >= 1
};

/// Bytes of one rank's forward record for tensors like `x`: 16 + 2 * C * sizeof(P), rounded up to
/// 16 (3 values per channel and less: count once, mean and M2 per channel). N may be 0. Throws
/// Error for a descriptor the calls reject.
std::size_t local_stats_bytes(const TensorDesc& x);

/// Bytes of one rank's backward record: the same as the forward's (count, then 2 values per
/// channel).
std::size_t local_grad_sums_bytes(const TensorDesc& x);

/// Forward, phase 1: this rank's statistics of x into `local`. Reads x; writes `local` and the
/// workspace (forward_training_workspace_size(x_desc), as for forward_training; N may be 0 in
/// both, and then x is not read and may be null).
void forward_training_local(const TensorDesc& x_desc, const void* x, RankRecord local,
                            Workspace workspace, cudaStream_t stream);
/// The same for a variable-length batch (cubn::Lengths; this rank's N lengths, `lengths.padding`
/// unused here): the statistics of the valid positions, and their count, into `local`. Pass the
/// same lengths to forward_training_apply (args.lengths) and to the backward phases.
void forward_training_local(const TensorDesc& x_desc, const void* x, const Lengths& lengths,
                            RankRecord local, Workspace workspace, cudaStream_t stream);

/// Forward, phases 2 and 3: merges the R records of `gathered` in rank order, then does what
/// forward_training() does with the merged (global) statistics: writes y (with args.epilogue),
/// updates args.running with args.momentum and the global unbiased variance, writes args.saved
/// (global mean and invstd) and SiLU's coefficients to args.epilogue.reserve. Every rank writes the
/// same running and saved statistics, bit for bit. Reads x, gathered, args; writes y, args.running,
/// args.saved, the reserve, the workspace (forward_training_workspace_size(x_desc)). N may be 0
/// (only the statistics are written; x and y may be null).
void forward_training_apply(const TensorDesc& x_desc, const void* x, void* y,
                            const TrainingForwardArgs<float>& args, GatheredRecords gathered,
                            Workspace workspace, cudaStream_t stream);
/// The same for fp64 tensors.
void forward_training_apply(const TensorDesc& x_desc, const void* x, void* y,
                            const TrainingForwardArgs<double>& args, GatheredRecords gathered,
                            Workspace workspace, cudaStream_t stream);

/// Backward, phase 1: this rank's gradient sums into `local`, and this rank's dscale and doffset
/// into args.grads (overwritten, or added to with args.grads.accumulate; each optional). Reads x,
/// dy, args.saved (what forward_training_apply saved), args.scale, args.epilogue (activation,
/// residual, reserve, as backward_training). args.epilogue.dz must be null: backward_training_apply
/// writes it. Workspace: backward_workspace_size(x_desc). N may be 0 (x and dy may be null).
void backward_training_local(const TensorDesc& x_desc, const void* x, const void* dy,
                             const TrainingBackwardArgs<float>& args, RankRecord local,
                             Workspace workspace, cudaStream_t stream);
/// The same for fp64 tensors.
void backward_training_local(const TensorDesc& x_desc, const void* x, const void* dy,
                             const TrainingBackwardArgs<double>& args, RankRecord local,
                             Workspace workspace, cudaStream_t stream);

/// Backward, phases 2 and 3: sums the R records of `gathered` in rank order (counts too), then
/// writes dx (optional) and args.epilogue.dz (optional) as backward_training() does, with the
/// global sums and count. args.grads must be empty (the local phase wrote them). Reads x, dy,
/// gathered, args.scale, args.saved, args.epilogue; workspace: backward_workspace_size(x_desc).
/// N may be 0 (nothing is written; the pointers may be null).
void backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                             const TrainingBackwardArgs<float>& args, GatheredRecords gathered,
                             Workspace workspace, cudaStream_t stream);
/// The same for fp64 tensors.
void backward_training_apply(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                             const TrainingBackwardArgs<double>& args, GatheredRecords gathered,
                             Workspace workspace, cudaStream_t stream);

}  // namespace cubn
