/// @file batch_norm.hpp
/// @brief Batch normalization: the argument types and the calls.
///
/// Training and inference are separate calls, so statistics are never passed to a mode that
/// ignores them:
///  - forward_training() normalizes x with the statistics of this batch. It never reads running
///    statistics to normalize; it only updates them (when given) and can save the batch mean and
///    inverse standard deviation for the backward pass.
///  - forward_inference() normalizes x with the running statistics the caller passes and reads
///    nothing else; it computes no batch statistics.
///
/// Every call is asynchronous on the caller's CUDA stream: it does not synchronize the host with
/// the device, allocates nothing and copies nothing between host and device, so calls can be
/// captured in a CUDA graph and made from several host threads at once (each with its own
/// outputs and workspace). Pointers are device pointers (host pointers in the cubn::sim build,
/// whose calls run on the CPU executor before returning). A call that throws has launched
/// nothing and written nothing.
///
/// Per channel c over its M = N * S elements:
///   mean = sum(x) / M, var = sum((x - mean)^2) / M (biased), invstd = 1 / sqrt(var + epsilon),
///   y = (x - mean) * invstd * scale + offset, computed as y = x * a + b with a = scale * invstd,
///   b = offset - mean * a.
#pragma once

#include <cstddef>
#include <cstdint>

#include <driver_types.h>  // cudaStream_t

#include "cubn/config.hpp"
#include "cubn/error.hpp"
#include "cubn/tensor.hpp"

namespace cubn {

/// Optional per-channel scale (gamma) and offset (beta), C values each. A null scale means 1,
/// a null offset means 0. Read only.
template <class P>
struct Affine {
  const P* scale = nullptr;
  const P* offset = nullptr;
};

/// Running (moving-average) statistics, C values each: the mean and the unbiased variance.
/// forward_training() reads and writes them (the update below); forward_inference() reads them.
template <class P>
struct RunningStats {
  P* mean = nullptr;
  P* var = nullptr;
};

/// Statistics of one batch that forward_training() saves for the backward pass, C values each:
/// the batch mean and 1 / sqrt(biased batch variance + epsilon). Written only.
template <class P>
struct SavedStats {
  P* mean = nullptr;
  P* invstd = nullptr;
};

/// How much of this batch's statistics go into the running statistics:
///   running_mean = (1 - mean) * running_mean + mean * batch_mean
///   running_var  = (1 - var)  * running_var  + var  * batch_var * M / (M - 1)
/// The running variance is unbiased (M / (M - 1), Bessel's correction), as in PyTorch, cuDNN and
/// MATLAB. Each factor must lie in [0, 1]; 0 leaves a statistic as it is, 1 replaces it.
struct Momentum {
  double mean = 0.1;
  double var = 0.1;

  /// PyTorch's `momentum` (default 0.1): the same convention.
  static constexpr Momentum pytorch(double momentum) { return {momentum, momentum}; }
  /// cuDNN's `exponentialAverageFactor`: the same convention.
  static constexpr Momentum cudnn(double exponential_average_factor) {
    return {exponential_average_factor, exponential_average_factor};
  }
  /// MATLAB's 'MeanDecay' and 'VarianceDecay' (default 0.1 each): the weight of the new batch
  /// statistic, so the same convention with one factor per statistic.
  static constexpr Momentum matlab(double mean_decay, double variance_decay) {
    return {mean_decay, variance_decay};
  }
  /// Keras' `momentum` (default 0.99) weights the old value: ours is 1 - momentum.
  static constexpr Momentum keras(double momentum) { return {1 - momentum, 1 - momentum}; }
  /// A cumulative (equal-weight) average over the batches seen so far, as PyTorch's
  /// momentum=None and cuDNN's factor 1 / (1 + n): pass the number of earlier updates (0 for the
  /// first batch, which then replaces the running statistics).
  static constexpr Momentum cumulative(std::int64_t earlier_updates) {
    return {1.0 / (1.0 + static_cast<double>(earlier_updates)),
            1.0 / (1.0 + static_cast<double>(earlier_updates))};
  }
};

/// Caller-owned device memory for a call's intermediate results; size it with the call's
/// *_workspace_size() query for the same descriptor on the same device.
struct Workspace {
  void* ptr = nullptr;
  std::size_t bytes = 0;
};

/// Arguments of forward_training(). P is float for fp16/bf16/fp32 tensors, double for fp64.
template <class P>
struct TrainingForwardArgs {
  Affine<P> affine;        ///< read; optional
  double epsilon = 1e-5;   ///< added to the batch variance; must be > 0
  RunningStats<P> running; ///< read and written (updated with `momentum`); optional, each pointer on its own
  Momentum momentum;       ///< used only to update `running`
  SavedStats<P> saved;     ///< written; optional, each pointer on its own
};

/// Arguments of forward_inference(). P is float for fp16/bf16/fp32 tensors, double for fp64.
template <class P>
struct InferenceForwardArgs {
  Affine<P> affine;              ///< read; optional
  RunningStats<const P> running; ///< read; both required
  double epsilon = 1e-5;         ///< added to the running variance; must be > 0
};

inline namespace CUBN_BACKEND_NAMESPACE {
#include "cubn/detail/batch_norm_api.inc"
}  // namespace CUBN_BACKEND_NAMESPACE

}  // namespace cubn
