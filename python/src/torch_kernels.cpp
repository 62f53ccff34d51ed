// The native PyTorch ops' kernels (python/src/torch_ops.cpp registers them): cubn's C++ API called
// with the tensors' data pointers, shapes and strides, on PyTorch's current stream, outputs and
// workspaces from PyTorch's allocator. One source compiled once per backend: with cubn::sim (the
// CPU executor; its namespace renamed cubn_sim by the target, so this file names no other thing
// "cubn") for CPU tensors, and with cubn::cubn (CUBN_TORCH_CUDA) for CUDA tensors.
//
// Per call this does what cubn.torch's Python layer did, without DLPack: one layout check of x,
// the parameters' dtype (converted to float32, or float64 for float64 x, where a module holds
// another: a .half() module), and a workspace that needs no zero-filling: cubn's kernels take one
// of any content (cubn::Workspace; see workspace() below).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstddef>
#include <memory>
#include <string>
#include <tuple>

#include "cubn/cubn.hpp"
#include "torch_kernels.hpp"

#if defined(CUBN_TORCH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

namespace api = ::cubn;  // cubn_sim in the executor's compile

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The facts of x a call needs.
struct Input {
  api::TensorDesc desc;
  at::ScalarType param;  // the parameters' and statistics' dtype: float32 (float64 for float64)
  cudaStream_t stream = nullptr;
};

// Whether x is dense with its dims nested as `outer_to_inner` says (a size-1 dim takes any stride).
bool dense(const Tensor& x, const std::int64_t* outer_to_inner) {
  std::int64_t expected = 1;
  for (auto i = x.dim() - 1; i >= 0; --i) {
    const std::int64_t d = outer_to_inner[i];
    if (x.size(d) != 1 && x.stride(d) != expected) return false;
    expected *= x.size(d);
  }
  return true;
}

// The dense layout of x, or an error naming what it is (the Python layer's wording, _core.py).
api::MemoryOrder order_of(const char* call, const Tensor& x) {
  static constexpr std::int64_t kFirst[] = {0, 1, 2, 3, 4};
  std::int64_t last[5] = {0};  // N, the spatial dims, C
  for (std::int64_t i = 1; i + 1 < x.dim(); ++i) last[i] = i + 1;
  last[x.dim() - 1] = 1;
  if (dense(x, kFirst)) return api::MemoryOrder::kChannelsFirst;
  if (dense(x, last)) return api::MemoryOrder::kChannelsLast;
  if (x.numel() == 0) return api::MemoryOrder::kChannelsFirst;  // no layout to keep
  TORCH_CHECK_VALUE(false, call, ": x has strides ", x.strides(), " (in elements) for shape ",
                    x.sizes(),
                    ": neither contiguous (N, C, ...) nor channels-last (C fastest, N slowest); "
                    "make it dense first (torch: .contiguous() or "
                    ".contiguous(memory_format=torch.channels_last))");
  return api::MemoryOrder::kChannelsFirst;
}

Input input_of(const char* call, const Tensor& x) {
  Input in;
  switch (x.scalar_type()) {
    case at::kHalf: in.desc.dtype = api::DataType::kFloat16; break;
    case at::kBFloat16: in.desc.dtype = api::DataType::kBFloat16; break;
    case at::kFloat: in.desc.dtype = api::DataType::kFloat32; break;
    case at::kDouble: in.desc.dtype = api::DataType::kFloat64; break;
    default:
      TORCH_CHECK_TYPE(false, call, ": x has dtype ", x.scalar_type(),
                       "; cubn takes float16, bfloat16, float32 and float64");
  }
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.dim() <= 5, call, ": x has shape ", x.sizes(),
                    "; batch norm takes (N, C) to (N, C, D, H, W), 2 to 5 dims");
  in.desc.order = order_of(call, x);
  in.desc.rank = static_cast<int>(x.dim());
  for (int i = 0; i < in.desc.rank; ++i) in.desc.dims[i] = x.size(i);
  in.param = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
#if defined(CUBN_TORCH_CUDA)
  in.stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
#endif
  return in;
}

// A parameter or statistic in the parameter dtype (a converted copy where it holds another).
OptTensor as_param(const OptTensor& t, at::ScalarType p) {
  if (!t.has_value() || t->scalar_type() == p) return t;
  return t->to(p);
}

template <class P>
P* data(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<P>() : nullptr;
}

// A tensor with x's shape and strides (empty_like keeps a dense layout's strides).
Tensor like(const Tensor& x) { return at::empty_like(x); }
Tensor per_channel(const Tensor& x, at::ScalarType p) {
  return at::empty({x.size(1)}, x.options().dtype(p));
}
// dy in x's memory order (autograd may hand it back in another)
Tensor in_order_of(const Tensor& x, const Tensor& t) {
  return t.strides() == x.strides() ? t : at::empty_like(x).copy_(t);
}
// The workspace of a call: uninitialized (cubn's kernels take any content), at least 16 bytes (cubn
// takes a pointer always). CUDA: from the caching allocator, ordered on the current stream (the
// block is reused only by work queued after this call's on that stream, or, under graph capture,
// from the graph's private pool). CPU tensors run on the executor, synchronously on the calling
// thread: a buffer of the thread's own, grown as needed, serves every call.
struct Scratch {
  Tensor held;  // CUDA: keeps the block for the call
  api::Workspace ws;
};
Scratch workspace(const Tensor& x, std::size_t bytes) {
  bytes = bytes < 16 ? 16 : bytes;
#if defined(CUBN_TORCH_CUDA)
  Scratch s;
  s.held = at::empty({static_cast<std::int64_t>(bytes)}, x.options().dtype(at::kByte));
  s.ws = {s.held.data_ptr(), bytes};
  return s;
#else
  (void)x;
  struct Buffer {
    std::unique_ptr<std::max_align_t[]> p;
    std::size_t bytes = 0;
  };
  thread_local Buffer buffer;
  if (buffer.bytes < bytes) {
    const std::size_t n = (bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    buffer.p = std::make_unique<std::max_align_t[]>(n);
    buffer.bytes = n * sizeof(std::max_align_t);
  }
  return {Tensor(), {buffer.p.get(), buffer.bytes}};
#endif
}

// A variable-length batch's lengths (torch's padded sequences): N int32 or int64 values on x's
// device, contiguous; padded outputs 0 (a tensor torch returns must hold no uninitialized value).
api::Lengths lengths_of(const char* call, const Tensor& x, const OptTensor& lengths) {
  api::Lengths r;
  if (!lengths.has_value()) return r;
  const Tensor& l = *lengths;
  TORCH_CHECK_TYPE(l.scalar_type() == at::kInt || l.scalar_type() == at::kLong, call,
                   ": lengths has dtype ", l.scalar_type(), "; it must be int32 or int64");
  TORCH_CHECK_VALUE(l.dim() == 1 && l.size(0) == x.size(0) && l.is_contiguous(), call,
                    ": lengths has shape ", l.sizes(), "; it must be a contiguous 1-D tensor of N = ",
                    x.size(0), " values");
  TORCH_CHECK_VALUE(l.device() == x.device(), call, ": lengths is on ", l.device(), ", x on ",
                    x.device());
  r.ptr = l.data_ptr();
  r.type = l.scalar_type() == at::kLong ? api::LengthType::kInt64 : api::LengthType::kInt32;
  return r;
}

// cubn's error as the Python layer raises it: cubn.Error, through a ValueError whose message the
// Python side recognizes (cubn/torch.py, _native_error) with its status.
template <class F>
void run(F&& f) {
  try {
    f();
  } catch (const api::Error& e) {
    TORCH_CHECK_VALUE(false, "[cubn status ", static_cast<int>(e.status()), "] ", e.what());
  }
}

template <class P>
std::tuple<Tensor, Tensor, Tensor> train_forward(const Input& in, const Tensor& x,
                                                 const OptTensor& weight, const OptTensor& bias,
                                                 const OptTensor& running_mean,
                                                 const OptTensor& running_var, double momentum,
                                                 double eps, const OptTensor& lengths) {
  const OptTensor w = as_param(weight, in.param), b = as_param(bias, in.param),
                  rm = as_param(running_mean, in.param), rv = as_param(running_var, in.param);
  Tensor y = like(x), saved_mean = per_channel(x, in.param),
         saved_invstd = per_channel(x, in.param);
  api::TrainingForwardArgs<P> args;
  args.affine = {data<P>(w), data<P>(b)};
  args.epsilon = eps;
  args.running = {data<P>(rm), data<P>(rv)};
  args.momentum = api::Momentum::pytorch(momentum);
  args.saved = {saved_mean.data_ptr<P>(), saved_invstd.data_ptr<P>()};
  args.lengths = lengths_of("cubn.forward_training", x, lengths);
  const Scratch ws = workspace(x, api::forward_training_workspace_size(in.desc));
  run([&] { api::forward_training(in.desc, x.data_ptr(), y.data_ptr(), args, ws.ws, in.stream); });
  // statistics kept in another dtype get the update back (as the Python layer's _Stats)
  if (running_mean.has_value() && !rm->is_same(*running_mean)) running_mean->copy_(*rm);
  if (running_var.has_value() && !rv->is_same(*running_var)) running_var->copy_(*rv);
  return {y, saved_mean, saved_invstd};
}

template <class P>
std::tuple<Tensor, Tensor, Tensor> train_backward(const Input& in, const Tensor& dy,
                                                  const Tensor& x, const OptTensor& weight,
                                                  const Tensor& saved_mean,
                                                  const Tensor& saved_invstd,
                                                  const OptTensor& lengths) {
  const OptTensor w = as_param(weight, in.param);
  const Tensor g = in_order_of(x, dy);
  Tensor dx = like(x), dscale = per_channel(x, in.param), doffset = per_channel(x, in.param);
  api::TrainingBackwardArgs<P> args;
  args.scale = data<P>(w);
  args.saved = {saved_mean.data_ptr<P>(), saved_invstd.data_ptr<P>()};
  args.grads = {dscale.data_ptr<P>(), doffset.data_ptr<P>()};
  args.lengths = lengths_of("cubn.backward_training", x, lengths);
  const Scratch ws = workspace(x, api::backward_workspace_size(in.desc));
  run([&] {
    api::backward_training(in.desc, x.data_ptr(), g.data_ptr(), dx.data_ptr(), args, ws.ws,
                           in.stream);
  });
  return {dx, dscale, doffset};
}

template <class P>
Tensor eval_forward(const Input& in, const Tensor& x, const OptTensor& weight,
                    const OptTensor& bias, const Tensor& running_mean, const Tensor& running_var,
                    double eps, const OptTensor& lengths) {
  const OptTensor w = as_param(weight, in.param), b = as_param(bias, in.param),
                  rm = as_param(running_mean, in.param), rv = as_param(running_var, in.param);
  Tensor y = like(x);
  api::InferenceForwardArgs<P> args;
  args.affine = {data<P>(w), data<P>(b)};
  args.running = {data<P>(rm), data<P>(rv)};
  args.epsilon = eps;
  args.lengths = lengths_of("cubn.forward_inference", x, lengths);
  run([&] { api::forward_inference(in.desc, x.data_ptr(), y.data_ptr(), args, in.stream); });
  return y;
}

template <class P>
std::tuple<Tensor, Tensor, Tensor> eval_backward(const Input& in, const Tensor& dy,
                                                 const Tensor& x, const OptTensor& weight,
                                                 const Tensor& running_mean,
                                                 const Tensor& running_var, double eps,
                                                 const OptTensor& lengths) {
  const OptTensor w = as_param(weight, in.param), rm = as_param(running_mean, in.param),
                  rv = as_param(running_var, in.param);
  const Tensor g = in_order_of(x, dy);
  Tensor dx = like(x), dscale = per_channel(x, in.param), doffset = per_channel(x, in.param);
  api::FrozenBackwardArgs<P> args;
  args.scale = data<P>(w);
  args.running = {data<P>(rm), data<P>(rv)};
  args.epsilon = eps;
  args.grads = {dscale.data_ptr<P>(), doffset.data_ptr<P>()};
  args.lengths = lengths_of("cubn.backward_frozen", x, lengths);
  const Scratch ws = workspace(x, api::backward_workspace_size(in.desc));
  run([&] {
    api::backward_frozen(in.desc, x.data_ptr(), g.data_ptr(), dx.data_ptr(), args, ws.ws,
                         in.stream);
  });
  return {dx, dscale, doffset};
}

#if defined(CUBN_TORCH_CUDA)
#define CUBN_TORCH_GUARD(x) const c10::cuda::CUDAGuard guard((x).device())
#else
#define CUBN_TORCH_GUARD(x) (void)0
#endif

std::tuple<Tensor, Tensor, Tensor> batch_norm_train(const Tensor& x, const OptTensor& weight,
                                                    const OptTensor& bias,
                                                    const OptTensor& running_mean,
                                                    const OptTensor& running_var, double momentum,
                                                    double eps, const OptTensor& lengths) {
  CUBN_TORCH_GUARD(x);
  const Input in = input_of("cubn.forward_training", x);
  return in.param == at::kDouble ? train_forward<double>(in, x, weight, bias, running_mean,
                                                         running_var, momentum, eps, lengths)
                                 : train_forward<float>(in, x, weight, bias, running_mean,
                                                        running_var, momentum, eps, lengths);
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_train_backward(const Tensor& dy, const Tensor& x,
                                                             const OptTensor& weight,
                                                             const Tensor& saved_mean,
                                                             const Tensor& saved_invstd,
                                                             const OptTensor& lengths) {
  CUBN_TORCH_GUARD(x);
  const Input in = input_of("cubn.backward_training", x);
  return in.param == at::kDouble
             ? train_backward<double>(in, dy, x, weight, saved_mean, saved_invstd, lengths)
             : train_backward<float>(in, dy, x, weight, saved_mean, saved_invstd, lengths);
}

Tensor batch_norm_eval(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, double eps,
                       const OptTensor& lengths) {
  CUBN_TORCH_GUARD(x);
  const Input in = input_of("cubn.forward_inference", x);
  return in.param == at::kDouble
             ? eval_forward<double>(in, x, weight, bias, running_mean, running_var, eps, lengths)
             : eval_forward<float>(in, x, weight, bias, running_mean, running_var, eps, lengths);
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_eval_backward(const Tensor& dy, const Tensor& x,
                                                            const OptTensor& weight,
                                                            const Tensor& running_mean,
                                                            const Tensor& running_var,
                                                            double eps,
                                                            const OptTensor& lengths) {
  CUBN_TORCH_GUARD(x);
  const Input in = input_of("cubn.backward_frozen", x);
  return in.param == at::kDouble
             ? eval_backward<double>(in, dy, x, weight, running_mean, running_var, eps, lengths)
             : eval_backward<float>(in, dy, x, weight, running_mean, running_var, eps, lengths);
}

}  // namespace

void CUBN_TORCH_REGISTER(torch::Library& m) {
  m.impl("batch_norm_train", &batch_norm_train);
  m.impl("batch_norm_train_backward", &batch_norm_train_backward);
  m.impl("batch_norm_eval", &batch_norm_eval);
  m.impl("batch_norm_eval_backward", &batch_norm_eval_backward);
}
