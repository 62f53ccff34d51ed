/// @file reference.hpp
/// @brief The double-precision batch-norm reference every kernel is checked against.
///
/// Plain two-pass arithmetic in double, written for clarity, not speed, independent of the
/// kernels' Welford code. A tensor is N x C x S (S the product of the spatial dims) in one of two
/// memory orders; shapes come in logical order (N, C, spatial...), ranks 2 to 5.
#pragma once

#include <cstdint>
#include <vector>

namespace cubn::ref {

enum class Order { kChannelsFirst, kChannelsLast };

/// A logical shape (N, C, D1, ...) and a memory order.
struct Shape {
  std::vector<std::int64_t> dims;
  Order order = Order::kChannelsFirst;

  std::int64_t n() const { return dims.at(0); }
  std::int64_t c() const { return dims.at(1); }
  /// Product of the spatial dims (1 for an (N, C) tensor).
  std::int64_t s() const;
  std::int64_t numel() const { return n() * c() * s(); }
  /// Elements per channel: N * S.
  std::int64_t m() const { return n() * s(); }
  /// Offset of element (n, c, s) in memory.
  std::int64_t index(std::int64_t n, std::int64_t c, std::int64_t s) const {
    return order == Order::kChannelsFirst ? (n * this->c() + c) * this->s() + s
                                          : (n * this->s() + s) * this->c() + c;
  }
};

/// Mean and biased variance of one run of values.
struct Moments {
  double mean, var;
};

/// Two-pass mean and biased variance of x[begin, end) in double.
template <class T>
Moments moments(const std::vector<T>& x, std::size_t begin, std::size_t end) {
  double sum = 0;
  for (std::size_t i = begin; i < end; ++i) sum += x[i];
  const double mean = sum / static_cast<double>(end - begin);
  double m2 = 0;
  for (std::size_t i = begin; i < end; ++i) m2 += (x[i] - mean) * (x[i] - mean);
  return {mean, m2 / static_cast<double>(end - begin)};
}

/// Per-channel statistics of a batch.
struct BatchStats {
  std::vector<double> mean;
  std::vector<double> var;           ///< biased: M2 / M
  std::vector<double> var_unbiased;  ///< M2 / (M - 1); NaN when M == 1
  std::vector<double> invstd;        ///< 1 / sqrt(var + eps)
};

BatchStats batch_stats(const Shape& shape, const std::vector<double>& x, double eps);

/// Parameters of a forward call. Empty scale/offset mean 1 and 0.
struct Params {
  std::vector<double> scale, offset;
  double eps = 1e-5;
};

struct TrainingForward {
  std::vector<double> y;
  BatchStats stats;
  std::vector<double> running_mean, running_var;  ///< after the update
};

/// Training forward: normalizes with the batch statistics and updates the running statistics:
/// r_mean = (1 - momentum_mean) * r_mean + momentum_mean * mean,
/// r_var = (1 - momentum_var) * r_var + momentum_var * var_unbiased.
TrainingForward forward_training(const Shape& shape, const std::vector<double>& x, const Params& p,
                                 double momentum_mean, double momentum_var,
                                 const std::vector<double>& running_mean,
                                 const std::vector<double>& running_var);

/// Inference forward: y = (x - running_mean) / sqrt(running_var + eps) * scale + offset.
std::vector<double> forward_inference(const Shape& shape, const std::vector<double>& x,
                                      const Params& p, const std::vector<double>& running_mean,
                                      const std::vector<double>& running_var);

struct Gradients {
  std::vector<double> dx, dscale, doffset;
};

/// Gradient of forward_training's y (batch statistics recomputed from x).
Gradients backward_training(const Shape& shape, const std::vector<double>& x,
                            const std::vector<double>& dy, const Params& p);

/// Gradient of forward_inference's y (statistics frozen).
Gradients backward_frozen(const Shape& shape, const std::vector<double>& x,
                          const std::vector<double>& dy, const Params& p,
                          const std::vector<double>& running_mean,
                          const std::vector<double>& running_var);

/// The gradient with the statistics given instead of computed: `mean` and `invstd` per channel;
/// `batch` adds the terms through the batch statistics (training), else they are constants
/// (frozen). backward_training and backward_frozen are this with their own statistics.
Gradients backward_with_stats(const Shape& shape, const std::vector<double>& x,
                              const std::vector<double>& dy, const Params& p,
                              const std::vector<double>& mean, const std::vector<double>& invstd,
                              bool batch);

/// The fused epilogue: y = act(p), p = bn(x) + z.
enum class Act { kNone, kRelu, kSilu };

/// act(p): ReLU max(p, 0) (NaN stays NaN), SiLU p / (1 + exp(-p)).
double activate(Act a, double p);
/// act'(p): ReLU 1 where p > 0 (0 at the kink), SiLU s (1 + p (1 - s)), s = 1 / (1 + exp(-p)).
double activation_derivative(Act a, double p);

/// y = act(bn + z) elementwise; z empty adds nothing. Returns y; `pre` receives p when not null.
std::vector<double> epilogue(Act a, const std::vector<double>& bn, const std::vector<double>& z,
                             std::vector<double>* pre = nullptr);

/// The gradient through the epilogue: g = dy * act'(p) (which is also dz).
std::vector<double> epilogue_grad(Act a, const std::vector<double>& pre,
                                  const std::vector<double>& dy);

/// The same logical tensor in the other memory order.
std::vector<double> reorder(const Shape& from, const std::vector<double>& x, Order to);

}  // namespace cubn::ref
