#include "reference.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>

namespace cubn::ref {

namespace {

double param_or(const std::vector<double>& v, std::int64_t c, double fallback) {
  return v.empty() ? fallback : v.at(static_cast<std::size_t>(c));
}

// Calls f(c, index) for every element of channel c.
template <class F>
void for_channel(const Shape& sh, std::int64_t c, F&& f) {
  for (std::int64_t n = 0; n < sh.n(); ++n)
    for (std::int64_t s = 0; s < sh.s(); ++s) f(sh.index(n, c, s));
}

}  // namespace

std::int64_t Shape::s() const {
  if (dims.size() < 2 || dims.size() > 5) throw std::invalid_argument("rank must be 2..5");
  std::int64_t s = 1;
  for (std::size_t i = 2; i < dims.size(); ++i) s *= dims[i];
  return s;
}

BatchStats batch_stats(const Shape& sh, const std::vector<double>& x, double eps) {
  const auto C = static_cast<std::size_t>(sh.c());
  const double m = static_cast<double>(sh.m());
  BatchStats st{std::vector<double>(C), std::vector<double>(C), std::vector<double>(C),
                std::vector<double>(C)};
  for (std::int64_t c = 0; c < sh.c(); ++c) {
    double sum = 0;
    for_channel(sh, c, [&](std::int64_t i) { sum += x[i]; });
    const double mean = sum / m;
    double m2 = 0;
    for_channel(sh, c, [&](std::int64_t i) { m2 += (x[i] - mean) * (x[i] - mean); });
    st.mean[c] = mean;
    st.var[c] = m2 / m;
    st.var_unbiased[c] = sh.m() > 1 ? m2 / (m - 1) : std::numeric_limits<double>::quiet_NaN();
    st.invstd[c] = 1.0 / std::sqrt(st.var[c] + eps);
  }
  return st;
}

namespace {

std::vector<double> normalize(const Shape& sh, const std::vector<double>& x, const Params& p,
                              const std::vector<double>& mean, const std::vector<double>& invstd) {
  std::vector<double> y(x.size());
  for (std::int64_t c = 0; c < sh.c(); ++c) {
    const double g = param_or(p.scale, c, 1.0), b = param_or(p.offset, c, 0.0);
    for_channel(sh, c, [&](std::int64_t i) { y[i] = (x[i] - mean[c]) * invstd[c] * g + b; });
  }
  return y;
}

}  // namespace

Gradients backward_with_stats(const Shape& sh, const std::vector<double>& x,
                              const std::vector<double>& dy, const Params& p,
                              const std::vector<double>& mean, const std::vector<double>& invstd,
                              bool batch) {
  const auto C = static_cast<std::size_t>(sh.c());
  const double m = static_cast<double>(sh.m());
  Gradients g{std::vector<double>(x.size()), std::vector<double>(C), std::vector<double>(C)};
  for (std::int64_t c = 0; c < sh.c(); ++c) {
    double sum_dy = 0, sum_dy_xhat = 0;
    for_channel(sh, c, [&](std::int64_t i) {
      sum_dy += dy[i];
      sum_dy_xhat += dy[i] * (x[i] - mean[c]) * invstd[c];
    });
    g.doffset[c] = sum_dy;
    g.dscale[c] = sum_dy_xhat;
    const double a = param_or(p.scale, c, 1.0) * invstd[c];
    for_channel(sh, c, [&](std::int64_t i) {
      const double xhat = (x[i] - mean[c]) * invstd[c];
      g.dx[i] = batch ? a / m * (m * dy[i] - sum_dy - xhat * sum_dy_xhat) : a * dy[i];
    });
  }
  return g;
}

TrainingForward forward_training(const Shape& sh, const std::vector<double>& x, const Params& p,
                                 double momentum_mean, double momentum_var,
                                 const std::vector<double>& running_mean,
                                 const std::vector<double>& running_var) {
  TrainingForward r;
  r.stats = batch_stats(sh, x, p.eps);
  r.y = normalize(sh, x, p, r.stats.mean, r.stats.invstd);
  r.running_mean = running_mean;
  r.running_var = running_var;
  for (std::size_t c = 0; c < running_mean.size(); ++c)
    r.running_mean[c] = (1 - momentum_mean) * running_mean[c] + momentum_mean * r.stats.mean[c];
  for (std::size_t c = 0; c < running_var.size(); ++c)
    r.running_var[c] = (1 - momentum_var) * running_var[c] + momentum_var * r.stats.var_unbiased[c];
  return r;
}

std::vector<double> forward_inference(const Shape& sh, const std::vector<double>& x,
                                      const Params& p, const std::vector<double>& running_mean,
                                      const std::vector<double>& running_var) {
  std::vector<double> invstd(running_var.size());
  for (std::size_t c = 0; c < invstd.size(); ++c)
    invstd[c] = 1.0 / std::sqrt(running_var[c] + p.eps);
  return normalize(sh, x, p, running_mean, invstd);
}

Gradients backward_training(const Shape& sh, const std::vector<double>& x,
                            const std::vector<double>& dy, const Params& p) {
  const BatchStats st = batch_stats(sh, x, p.eps);
  return backward_with_stats(sh, x, dy, p, st.mean, st.invstd, true);
}

Gradients backward_frozen(const Shape& sh, const std::vector<double>& x,
                          const std::vector<double>& dy, const Params& p,
                          const std::vector<double>& running_mean,
                          const std::vector<double>& running_var) {
  std::vector<double> invstd(running_var.size());
  for (std::size_t c = 0; c < invstd.size(); ++c)
    invstd[c] = 1.0 / std::sqrt(running_var[c] + p.eps);
  return backward_with_stats(sh, x, dy, p, running_mean, invstd, false);
}

std::vector<double> reorder(const Shape& from, const std::vector<double>& x, Order to) {
  Shape dst = from;
  dst.order = to;
  std::vector<double> out(x.size());
  for (std::int64_t n = 0; n < from.n(); ++n)
    for (std::int64_t c = 0; c < from.c(); ++c)
      for (std::int64_t s = 0; s < from.s(); ++s) out[dst.index(n, c, s)] = x[from.index(n, c, s)];
  return out;
}

double activate(Act a, double p) {
  switch (a) {
    case Act::kRelu: return p <= 0 ? 0.0 : p;
    case Act::kSilu: return p / (1 + std::exp(-p));
    case Act::kNone: break;
  }
  return p;
}

double activation_derivative(Act a, double p) {
  switch (a) {
    case Act::kRelu: return p > 0 ? 1.0 : 0.0;
    case Act::kSilu: {
      const double s = 1 / (1 + std::exp(-p));
      return s * (1 + p * (1 - s));
    }
    case Act::kNone: break;
  }
  return 1.0;
}

std::vector<double> epilogue(Act a, const std::vector<double>& bn, const std::vector<double>& z,
                             std::vector<double>* pre) {
  std::vector<double> y(bn.size());
  if (pre != nullptr) pre->resize(bn.size());
  for (std::size_t i = 0; i < bn.size(); ++i) {
    const double p = bn[i] + (z.empty() ? 0.0 : z[i]);
    if (pre != nullptr) (*pre)[i] = p;
    y[i] = activate(a, p);
  }
  return y;
}

std::vector<double> epilogue_grad(Act a, const std::vector<double>& pre,
                                  const std::vector<double>& dy) {
  std::vector<double> g(dy.size());
  for (std::size_t i = 0; i < dy.size(); ++i) g[i] = dy[i] * activation_derivative(a, pre[i]);
  return g;
}

}  // namespace cubn::ref
