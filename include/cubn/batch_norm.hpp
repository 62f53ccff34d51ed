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

#include <driver_types.h>  // cudaStream_t

#include <cstddef>
#include <cstdint>

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
/// The running variance is unbiased (M / (M - 1), Bessel's correction), as in PyTorch and cuDNN.
/// Each factor must lie in [0, 1]; 0 leaves a statistic as it is, 1 replaces it.
struct Momentum {
  double mean = 0.1;
  double var = 0.1;

  /// PyTorch's `momentum` (default 0.1): the same convention.
  static constexpr Momentum pytorch(double momentum) { return {momentum, momentum}; }
  /// cuDNN's `exponentialAverageFactor`: the same convention.
  static constexpr Momentum cudnn(double exponential_average_factor) {
    return {exponential_average_factor, exponential_average_factor};
  }
  /// MATLAB's 'MeanDecay' and 'VarianceDecay' (default 0.1 each; s = decay * batch + (1 - decay) *
  /// s in its batchnorm documentation): the weight of the new batch statistic, so the same
  /// convention with one factor per statistic.
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
/// *_workspace_size() query for the same descriptor on the same device. The bytes a call uses
/// (the first *_workspace_size() of them) must not overlap any other memory the call reads or
/// writes (tensors, parameters, statistics, gradients, reserve): a call refuses that overlap
/// ("workspace overlaps <argument>").
///
/// Any content will do: no zero-filling, before the first use or after (memory fresh from
/// cudaMalloc, from a caching allocator, or left by other kernels). Its first bytes hold the
/// tickets with which the last block of a reduction finds out that it is last: each word carries
/// a tag the call draws (a process-wide sequence from a random start, 48 bits) beside its count,
/// and a word whose tag is not the call's counts as zero, whatever it holds; a word is mistaken for
/// one of the call's only when its top 48 bits equal the call's tag by chance (2^-48 per word of
/// bytes that are not another cubn call's tickets, which are left at zero). It costs no launch, no
/// memset and no host work, so one workspace serves any number of later calls, of any shape, in
/// order on one stream, and CUDA-graph replays. Calls that may run at the same time (several
/// streams, several host threads) need a workspace each.
struct Workspace {
  void* ptr = nullptr;
  std::size_t bytes = 0;
};

/// The activation a forward call applies after the normalization and the residual add:
///   y = act(x * a + b + z)
/// (z optional). Room is left for more (a clipped ReLU, GELU).
///  - kNone: y = p.
///  - kRelu: y = max(p, 0); a NaN p gives NaN, as PyTorch's relu. The forward records p > 0 in a
///    one-bit-per-element mask (the reserve); the backward reads the mask, so it needs neither x
///    nor z to know where the ReLU passed, and at p == 0 the gradient is 0.
///  - kSilu: y = p / (1 + exp(-p)), PyTorch's formula (silu(-Inf) is NaN there and here; where
///    exp(-p) overflows, y is -0 and the gradient 0, as there). Its derivative needs p, so the
///    backward recomputes the sigmoid's argument from x, z (read again when the forward added one)
///    and the forward's own per-channel coefficients, bit for bit as the forward formed it.
enum class Activation { kNone, kRelu, kSilu };

/// Caller memory a forward call with an activation writes for the backward call (as cuDNN's
/// reserve space); size it with activation_reserve_size(). Keep it unchanged between the two.
struct Reserve {
  void* ptr = nullptr;
  std::size_t bytes = 0;
};
/// The reserve as the backward reads it.
struct ConstReserve {
  const void* ptr = nullptr;
  std::size_t bytes = 0;
};

/// Bytes of the reserve for `activation` on tensors of `x`: ReLU, the mask (1 bit per element,
/// numel / 8 rounded up to 16 bytes: 1/16 of a bf16 tensor); SiLU, the forward's three per-channel
/// coefficients (3 * C parameters, rounded up to 16 bytes; forward_training writes them,
/// forward_inference does not need to); none, 0. Throws Error for a descriptor the calls reject.
std::size_t activation_reserve_size(const TensorDesc& x, Activation activation);

/// What a forward call fuses after the normalization: y = act(x * a + b + z).
struct Epilogue {
  Activation activation = Activation::kNone;
  /// z: read; optional (null adds nothing). x's descriptor, aligned to its element size; it may
  /// be the same pointer as y (in place) but must not otherwise overlap y.
  const void* residual = nullptr;
  /// Written: ReLU's mask; SiLU's coefficients (training). forward_training needs one for ReLU and
  /// SiLU; forward_inference writes ReLU's mask when one is given (for backward_frozen) and
  /// nothing for SiLU. 16-byte aligned, at least activation_reserve_size() bytes, overlapping no
  /// tensor of the call.
  Reserve reserve;
};

/// What a backward call differentiates through: the forward call's epilogue.
struct EpilogueGrad {
  Activation activation = Activation::kNone;  ///< the forward's
  /// The forward's z (null if it had none): read for SiLU only; required with dz.
  const void* residual = nullptr;
  /// Read: what the forward wrote to its epilogue.reserve (ReLU: always; SiLU: training).
  ConstReserve reserve;
  /// Written: the gradient with respect to z (dy * act'(p)); optional, x's descriptor. It may be
  /// the same pointer as dy, x or z; it must not overlap dx or otherwise overlap them.
  void* dz = nullptr;
};

/// The integer type of a Lengths array.
enum class LengthType { kInt32, kInt64 };

/// What a call with Lengths writes at the padded positions of its outputs (y; dx and dz).
///  - kZero: 0, so the output is a padded batch as the input was (what a following convolution or
///    masked sum expects) and no padded value, NaN included, reaches it. The default.
///  - kUntouched: nothing: the output buffer keeps what it held there, and the call writes only the
///    valid positions' bytes (for callers that mask or pack the output themselves).
enum class Padding { kZero, kUntouched };

/// Batch norm over variable-length sequences (padded batches): sample n's valid positions along the
/// tensor's last spatial axis, the time axis (L of NCL and NLC; W of NCHW and NHWC; W of NCDHW and
/// NDHWC: put time last), are the first lengths[n]; the rest is padding. Statistics (mean,
/// variance, the running statistics' unbiased update) and gradient sums then run over the valid
/// positions only: per channel M = (sum of lengths) * (S / L) elements; padded positions are never
/// read except within a 16-byte vector that also holds valid ones, and nothing read there reaches
/// an output. Lengths live on the device and are not checked on the host (that would synchronize):
/// each is clamped to [0, L] where it is read, so a length outside it reads and writes nothing out
/// of bounds. A channel with no valid position (M = 0) gets mean 0 and invstd 1 / sqrt(epsilon);
/// with M < 2 the running variance is left as it was (its unbiased estimate is undefined).
/// N and a channel's positions per sample (S) must each be at most 2^31 - 1 (kSizeOverflow).
/// With a fused epilogue, ReLU's mask bits are 0 at padded positions and z's padded values, like
/// x's and dy's, reach nothing. The split-phase calls (cubn/distributed.hpp) and cubn::nccl take
/// them too. On the persistent (single-read) path only vectors with a valid element take on-chip
/// slots.
struct Lengths {
  /// N lengths on the device, aligned to their size, apart from the call's outputs (y, dx, dz,
  /// the reserve), workspace and per-channel arrays (kInvalidArgument naming both otherwise);
  /// null: all valid
  const void* ptr = nullptr;
  LengthType type = LengthType::kInt32;
  Padding padding = Padding::kZero;  ///< what the padded positions of y, dx or dz receive
};

/// Arguments of forward_training(). P is float for fp16/bf16/fp32 tensors, double for fp64.
template <class P>
struct TrainingForwardArgs {
  Affine<P> affine;       ///< read; optional
  double epsilon = 1e-5;  ///< added to the batch variance; must be > 0
  RunningStats<P>
      running;  ///< read and written (updated with `momentum`); optional, each pointer on its own
  Momentum momentum;    ///< used only to update `running`
  SavedStats<P> saved;  ///< written; optional, each pointer on its own
  Epilogue epilogue;    ///< activation and residual fused into the normalization; optional
  Lengths lengths;      ///< valid positions of a padded batch; optional (all valid)
};

/// Arguments of forward_inference(). P is float for fp16/bf16/fp32 tensors, double for fp64.
template <class P>
struct InferenceForwardArgs {
  Affine<P> affine;               ///< read; optional
  RunningStats<const P> running;  ///< read; both required
  double epsilon = 1e-5;          ///< added to the running variance; must be > 0
  Epilogue epilogue;              ///< activation and residual fused into the normalization
  Lengths lengths;  ///< valid positions of a padded batch: y there as Lengths::padding says
};

/// Gradients of the affine parameters, C values each, optional each. By default a call
/// overwrites them (as PyTorch does); with `accumulate` it adds to what they hold (cuDNN's
/// beta = 1 blending), for gradients summed over several calls.
template <class P>
struct ParamGradients {
  P* dscale = nullptr;   ///< sum(dy * xhat)
  P* doffset = nullptr;  ///< sum(dy)
  bool accumulate = false;
};

/// Arguments of backward_training(): the gradient of forward_training(). P is float for
/// fp16/bf16/fp32 tensors, double for fp64.
template <class P>
struct TrainingBackwardArgs {
  const P* scale = nullptr;  ///< read; the forward call's scale (null means 1)
  /// Read: what forward_training() wrote to its args.saved for this batch (mean and invstd; not
  /// running statistics, which this call cannot take). Both required.
  SavedStats<const P> saved;
  ParamGradients<P> grads;  ///< written (or added to); optional
  EpilogueGrad epilogue;    ///< the forward's activation and residual; dz
  Lengths lengths;          ///< the forward call's: sums over valid positions, dx there only
};

/// Arguments of backward_frozen(): the gradient of forward_inference(), for layers whose
/// statistics are frozen while the rest of the network trains. P as above.
template <class P>
struct FrozenBackwardArgs {
  const P* scale = nullptr;       ///< read (null means 1)
  RunningStats<const P> running;  ///< read: the statistics forward_inference() used; both required
  double epsilon = 1e-5;          ///< the forward call's epsilon; must be > 0
  ParamGradients<P> grads;        ///< written (or added to); optional
  EpilogueGrad epilogue;          ///< the forward's activation and residual; dz
  /// read: the forward's offset (null means 0); used only to recompute SiLU's pre-activation
  const P* offset = nullptr;
  Lengths lengths;  ///< the forward call's: sums over valid positions, dx there only
};

/// Workspace bytes forward_training() needs for `x` on the current device (0 never: at least
/// the per-channel partial statistics). Throws Error for a descriptor forward_training() would
/// reject.
std::size_t forward_training_workspace_size(const TensorDesc& x);

/// Training-mode forward batch normalization (fp16/bf16/fp32 tensors with float parameters).
///
/// Reads x, args.affine, args.running (to update it), args.epilogue.residual. Writes y (fused
/// with args.epilogue: y = act(x * a + b + z)), args.running (updated with args.momentum from this
/// batch's mean and unbiased variance), args.saved (batch mean and invstd), the workspace, and
/// args.epilogue.reserve (ReLU: the mask; SiLU: the coefficients its backward needs). The running
/// statistics never affect y. y may be the same pointer as x or as the residual (in place); any
/// other overlap of y with x is an error.
/// Deterministic: the same inputs give bitwise-identical outputs on the same device and build.
/// Does not synchronize the host with the device.
///
/// @param[in]  x_desc    dtype, memory order and dims of x and y; N * S must exceed 1.
/// @param[in]  x         input, x_desc.dtype, aligned to its element size.
/// @param[out] y         output, same descriptor as x.
/// @param[in,out] args   parameters and statistics, see TrainingForwardArgs.
/// @param[in]  workspace at least forward_training_workspace_size(x_desc) bytes, 16-byte aligned,
///                       any content (see Workspace).
/// @param[in]  stream    the CUDA stream every kernel runs on.
/// @throws Error naming the argument for bad input (nothing is written), or a CUDA error.
void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<float>& args, Workspace workspace,
                      cudaStream_t stream);
/// The same for fp64 tensors (double parameters and statistics).
void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<double>& args, Workspace workspace,
                      cudaStream_t stream);

/// Inference-mode forward batch normalization: y = (x - running.mean) / sqrt(running.var +
/// epsilon) * scale + offset, one or two fused operations per element, no reduction, no workspace.
///
/// Reads x, args.running, args.affine, args.epilogue.residual. Writes y (fused with
/// args.epilogue), and ReLU's mask to args.epilogue.reserve when one is given (for
/// backward_frozen). y may be the same pointer as x or as the residual.
/// Does not synchronize the host with the device.
/// @throws Error naming the argument for bad input (nothing is written), or a CUDA error.
void forward_inference(const TensorDesc& x_desc, const void* x, void* y,
                       const InferenceForwardArgs<float>& args, cudaStream_t stream);
/// The same for fp64 tensors.
void forward_inference(const TensorDesc& x_desc, const void* x, void* y,
                       const InferenceForwardArgs<double>& args, cudaStream_t stream);

/// Workspace bytes backward_training() and backward_frozen() need for `x` on the current device.
/// Throws Error for a descriptor the calls would reject.
std::size_t backward_workspace_size(const TensorDesc& x);

/// Training-mode backward: the gradient of forward_training() with respect to x, scale and
/// offset, through the batch statistics.
///   dx = scale * invstd / M * (M dy - sum(dy) - xhat sum(dy xhat)), xhat = (x - mean) invstd
///   dscale = sum(dy xhat), doffset = sum(dy)
/// With a fused epilogue (args.epilogue: the forward's), dy is first taken through the activation:
/// g = dy * act'(p), and the formulas above use g; dz = g.
/// Reads x, dy, args.scale, args.saved, args.epilogue.reserve (ReLU, SiLU), args.epilogue.residual
/// (SiLU with a residual). Writes dx (when not null), args.grads (overwritten, or added to with
/// args.grads.accumulate), args.epilogue.dz (when not null), the workspace. dx may be the same
/// pointer as dy or x; any other overlap is an error. Deterministic. Does not synchronize the host
/// with the device.
///
/// @param[in]  x_desc    the descriptor of x, dy and dx (as in the forward call).
/// @param[in]  x         the forward call's input.
/// @param[in]  dy        gradient of the loss with respect to y.
/// @param[out] dx        gradient with respect to x; null skips it (a first layer).
/// @param[in,out] args   see TrainingBackwardArgs.
/// @param[in]  workspace at least backward_workspace_size(x_desc) bytes, 16-byte aligned,
///                       any content (see Workspace).
/// @param[in]  stream    the CUDA stream every kernel runs on.
/// @throws Error naming the argument for bad input (nothing is written), or a CUDA error.
void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<float>& args, Workspace workspace,
                       cudaStream_t stream);
/// The same for fp64 tensors.
void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<double>& args, Workspace workspace,
                       cudaStream_t stream);

/// Frozen-statistics backward: the gradient of forward_inference().
///   dx = scale / sqrt(running.var + epsilon) * dy
///   dscale = sum(dy xhat) with xhat from the running statistics, doffset = sum(dy)
/// With a fused epilogue, dy is first taken through the activation as in backward_training.
/// Reads dy, args.scale, args.running, x only when dscale is asked for or the activation is SiLU
/// (with args.offset and args.epilogue.residual, to recompute its pre-activation), and
/// args.epilogue.reserve for ReLU (the mask forward_inference wrote). Writes dx (when not null),
/// args.grads, args.epilogue.dz (when not null), the workspace (only when dscale or doffset is
/// asked for). dx may be the same pointer as dy or x. Does not synchronize the host with the
/// device.
/// @throws Error naming the argument for bad input (nothing is written), or a CUDA error.
void backward_frozen(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                     const FrozenBackwardArgs<float>& args, Workspace workspace,
                     cudaStream_t stream);
/// The same for fp64 tensors.
void backward_frozen(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                     const FrozenBackwardArgs<double>& args, Workspace workspace,
                     cudaStream_t stream);

}  // namespace cubn
