// cubn's native PyTorch ops (the shared library cubn/_cubn_torch_ops.so, which cubn/torch.py loads
// with torch.ops.load_library where the package was built against torch): their schemas, and the
// kernels for CPU tensors (the CPU executor) and, in a CUDA build, CUDA tensors. The schemas are
// those cubn.torch's Python custom ops had, so torch.ops.cubn.* and torch.compile see the same
// ops either way; the Python side adds their fake (meta) implementations. Autograd is here too, in
// C++ (the training forward's and the eval forward's, each calling its backward op): a Python
// autograd.Function or torch.library.register_autograd cost more host time per call than torch's
// whole batch norm (bench/torch_overhead.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include "torch_kernels.hpp"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::variable_list;
using Three = std::tuple<Tensor, Tensor, Tensor>;

// The ops, called through the dispatcher (below autograd inside the Functions' forwards).
const auto& train_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cubn::batch_norm_train", "")
          .typed<Three(const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                       const OptTensor&, double, double, const OptTensor&)>();
  return op;
}
const auto& train_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cubn::batch_norm_train_backward", "")
          .typed<Three(const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                       const Tensor&, const OptTensor&)>();
  return op;
}
const auto& eval_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cubn::batch_norm_eval", "")
                             .typed<Tensor(const Tensor&, const OptTensor&, const OptTensor&,
                                           const Tensor&, const Tensor&, double,
                                           const OptTensor&)>();
  return op;
}
const auto& eval_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cubn::batch_norm_eval_backward", "")
          .typed<Three(const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                       const Tensor&, double, const OptTensor&)>();
  return op;
}

OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The parameters' dtypes, for their gradients: cubn computes them in the parameter type (float32,
// or float64), and a module converted with .half() holds fp16 parameters.
std::optional<at::ScalarType> dtype_of(const OptTensor& t) {
  return t.has_value() ? std::optional<at::ScalarType>(t->scalar_type()) : std::nullopt;
}
Tensor as_dtype(const Tensor& g, std::optional<at::ScalarType> type) {
  if (!type.has_value() || g.scalar_type() == *type) return g;  // Tensor::to dispatches even then
  return g.to(*type);
}

// The autograd nodes of the two forwards, written as PyTorch's generated ones are (a Node with
// its saved variables; set_history on the output) rather than as torch::autograd::Function, whose
// context (a map of saved values, the checks of every output) cost more host time per call than
// torch's own batch norm backward (bench/torch_overhead.py).
struct BatchNormBackward : torch::autograd::Node {
  torch::autograd::SavedVariable x, weight, a, b;  // training: saved mean, invstd; eval: running
  std::optional<at::ScalarType> weight_type, bias_type;
  OptTensor lengths;  // the forward's (an integer tensor: no gradient, not a saved variable)
  double eps = 0;
  bool training = true;

  std::string name() const override {
    return training ? "CubnBatchNormTrainBackward" : "CubnBatchNormEvalBackward";
  }
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    const Tensor xs = x.unpack(), w = weight.unpack(), as = a.unpack(), bs = b.unpack();
    auto [dx, dscale, doffset] =
        training ? train_backward_op().call(grads[0], xs, optional(w), as, bs, lengths)
                 : eval_backward_op().call(grads[0], xs, optional(w), as, bs, eps, lengths);
    if (task_should_compute_output(0)) out[0] = dx;
    if (task_should_compute_output(1) && weight_type.has_value())
      out[1] = as_dtype(dscale, weight_type);
    if (task_should_compute_output(2) && bias_type.has_value())
      out[2] = as_dtype(doffset, bias_type);
    return out;
  }
  void release_variables() override {
    x.reset_data();
    weight.reset_data();
    a.reset_data();
    b.reset_data();
    lengths.reset();
  }
};

// y's history: a node whose next edges are x, weight and bias, holding what its backward reads.
void record(const Tensor& y, const Tensor& x, const OptTensor& weight, const OptTensor& bias,
            const Tensor& a, const Tensor& b, bool training, double eps,
            const OptTensor& lengths) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias)) return;
  const auto node = c10::make_intrusive<BatchNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, weight, bias));
  node->x = torch::autograd::SavedVariable(x, false);
  node->weight = torch::autograd::SavedVariable(weight.value_or(Tensor()), false);
  node->a = torch::autograd::SavedVariable(a, false);
  node->b = torch::autograd::SavedVariable(b, false);
  node->weight_type = dtype_of(weight);
  node->bias_type = dtype_of(bias);
  node->training = training;
  node->eps = eps;
  node->lengths = lengths;
  torch::autograd::set_history(y, node);
}

// The ops' Autograd kernels: the op below autograd, then y's history. The training op updates the
// running statistics in place (they take no gradient); saved mean and invstd take none either.
Three train_autograd(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                     const OptTensor& running_mean, const OptTensor& running_var, double momentum,
                     double eps, const OptTensor& lengths) {
  Three out;
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    out = train_op().call(x, weight, bias, running_mean, running_var, momentum, eps, lengths);
  }
  record(std::get<0>(out), x, weight, bias, std::get<1>(out), std::get<2>(out), true, eps,
         lengths);
  return out;
}

// The eval forward's: its backward is the frozen one (the statistics are constants).
Tensor eval_autograd(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                     const Tensor& running_mean, const Tensor& running_var, double eps,
                     const OptTensor& lengths) {
  Tensor y;
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    y = eval_op().call(x, weight, bias, running_mean, running_var, eps, lengths);
  }
  record(y, x, weight, bias, running_mean, running_var, false, eps, lengths);
  return y;
}

}  // namespace

TORCH_LIBRARY(cubn, m) {
  m.def(
      "batch_norm_train(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, Tensor? lengths=None) -> "
      "(Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_train_backward(Tensor dy, Tensor x, Tensor? weight, Tensor saved_mean, "
      "Tensor saved_invstd, Tensor? lengths=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_eval(Tensor x, Tensor? weight, Tensor? bias, Tensor running_mean, "
      "Tensor running_var, float eps, Tensor? lengths=None) -> Tensor");
  m.def(
      "batch_norm_eval_backward(Tensor dy, Tensor x, Tensor? weight, Tensor running_mean, "
      "Tensor running_var, float eps, Tensor? lengths=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cubn, CPU, m) { register_executor_kernels(m); }

#if defined(CUBN_TORCH_CUDA)
TORCH_LIBRARY_IMPL(cubn, CUDA, m) { register_cuda_kernels(m); }
#endif

TORCH_LIBRARY_IMPL(cubn, Autograd, m) {
  m.impl("batch_norm_train", &train_autograd);
  m.impl("batch_norm_eval", &eval_autograd);
}
