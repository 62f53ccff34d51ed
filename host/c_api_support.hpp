/// @file c_api_support.hpp
/// @brief What the C ABIs (cubn/cubn.h in c_api.cpp, cubn/cubn_nccl.h in nccl_c_api.cpp) share:
/// the conversions of their structs to the C++ API's, and the guard that turns every exception
/// into a status and this thread's last message.
#pragma once

#include <exception>
#include <new>
#include <string>
#include <type_traits>

#include "cubn/cubn.h"
#include "cubn/cubn.hpp"

namespace cubn::c_api {

/// This thread's message of the last failed call (c_api.cpp).
std::string& last_message();

/// Runs `body`; every exception becomes a status and this thread's last message.
template <class F>
cubn_status guarded(F&& body) noexcept {
  try {
    body();
    return CUBN_STATUS_SUCCESS;
  } catch (const Error& e) {
    try {
      last_message() = e.what();
    } catch (...) {
    }
    return static_cast<cubn_status>(e.status());
  } catch (const std::bad_alloc&) {
    last_message().clear();  // no memory for a message either
    return CUBN_STATUS_INTERNAL_ERROR;
  } catch (const std::exception& e) {
    try {
      last_message() = std::string("cubn: internal error: ") + e.what();
    } catch (...) {
    }
    return CUBN_STATUS_INTERNAL_ERROR;
  } catch (...) {
    try {
      last_message() = "cubn: internal error: an unknown exception";
    } catch (...) {
    }
    return CUBN_STATUS_INTERNAL_ERROR;
  }
}

[[noreturn]] inline void null_argument(const char* call, const char* arg) {
  throw Error(Status::kInvalidArgument, std::string(call) + ": " + arg + " is null");
}

template <class T>
const T& required(const char* call, const char* arg, const T* p) {
  if (p == nullptr) null_argument(call, arg);
  return *p;
}

// Values outside the enums pass through: the C++ checks name them.
inline TensorDesc tensor_desc(const char* call, const cubn_tensor_desc* d) {
  const cubn_tensor_desc& c = required(call, "x_desc", d);
  TensorDesc t;
  t.dtype = static_cast<DataType>(c.dtype);
  t.order = static_cast<MemoryOrder>(c.order);
  t.rank = c.rank;
  for (int i = 0; i < TensorDesc::kMaxRank; ++i) t.dims[i] = c.dims[i];
  return t;
}

inline Epilogue epilogue(const cubn_epilogue& e) {
  Epilogue r;
  r.activation = static_cast<Activation>(e.activation);
  r.residual = e.residual;
  r.reserve = {e.reserve, e.reserve_bytes};
  return r;
}

inline EpilogueGrad epilogue_grad(const cubn_epilogue_grad& e) {
  EpilogueGrad r;
  r.activation = static_cast<Activation>(e.activation);
  r.residual = e.residual;
  r.reserve = {e.reserve, e.reserve_bytes};
  r.dz = e.dz;
  return r;
}

inline Lengths lengths(const cubn_lengths& l) {
  Lengths r;
  r.ptr = l.ptr;
  r.type = static_cast<LengthType>(l.type);
  r.padding = static_cast<Padding>(l.padding);
  return r;
}

template <class P>
ParamGradients<P> grads(const cubn_param_gradients& g) {
  return {static_cast<P*>(g.dscale), static_cast<P*>(g.doffset), g.accumulate != 0};
}

// The C++ arguments of a C argument struct, with parameters of type P (chosen by with_args).
template <class P>
TrainingForwardArgs<P> to_cxx(const cubn_training_forward_args& a) {
  TrainingForwardArgs<P> r;
  r.affine = {static_cast<const P*>(a.scale), static_cast<const P*>(a.offset)};
  r.epsilon = a.epsilon;
  r.running = {static_cast<P*>(a.running_mean), static_cast<P*>(a.running_var)};
  r.momentum = {a.momentum_mean, a.momentum_var};
  r.saved = {static_cast<P*>(a.saved_mean), static_cast<P*>(a.saved_invstd)};
  r.epilogue = epilogue(a.epilogue);
  r.lengths = lengths(a.lengths);
  return r;
}

template <class P>
InferenceForwardArgs<P> to_cxx(const cubn_inference_forward_args& a) {
  InferenceForwardArgs<P> r;
  r.affine = {static_cast<const P*>(a.scale), static_cast<const P*>(a.offset)};
  r.running = {static_cast<const P*>(a.running_mean), static_cast<const P*>(a.running_var)};
  r.epsilon = a.epsilon;
  r.epilogue = epilogue(a.epilogue);
  r.lengths = lengths(a.lengths);
  return r;
}

template <class P>
TrainingBackwardArgs<P> to_cxx(const cubn_training_backward_args& a) {
  TrainingBackwardArgs<P> r;
  r.scale = static_cast<const P*>(a.scale);
  r.saved = {static_cast<const P*>(a.saved_mean), static_cast<const P*>(a.saved_invstd)};
  r.grads = grads<P>(a.grads);
  r.epilogue = epilogue_grad(a.epilogue);
  r.lengths = lengths(a.lengths);
  return r;
}

template <class P>
FrozenBackwardArgs<P> to_cxx(const cubn_frozen_backward_args& a) {
  FrozenBackwardArgs<P> r;
  r.scale = static_cast<const P*>(a.scale);
  r.running = {static_cast<const P*>(a.running_mean), static_cast<const P*>(a.running_var)};
  r.epsilon = a.epsilon;
  r.grads = grads<P>(a.grads);
  r.epilogue = epilogue_grad(a.epilogue);
  r.offset = static_cast<const P*>(a.offset);
  r.lengths = lengths(a.lengths);
  return r;
}

/// A size query: `query(desc)` into *bytes.
template <class Q>
cubn_status size_query(const char* call, const cubn_tensor_desc* d, size_t* bytes, Q&& query) {
  return guarded([&] {
    const TensorDesc desc = tensor_desc(call, d);
    if (bytes == nullptr) null_argument(call, "bytes");
    *bytes = query(desc);
  });
}

/// A call with an argument struct: checks x_desc and args, converts args with parameters of x's
/// type (double for fp64, float otherwise: an invalid dtype takes float, and the C++ call rejects
/// it) and runs `body(desc, cxx_args)`, guarded.
template <class Args, class F>
cubn_status with_args(const char* call, const cubn_tensor_desc* x_desc, const Args* args,
                      F&& body) {
  return guarded([&] {
    const TensorDesc d = tensor_desc(call, x_desc);
    const Args& a = required(call, "args", args);
    if (x_desc->dtype == CUBN_FLOAT64)
      body(d, to_cxx<double>(a));
    else
      body(d, to_cxx<float>(a));
  });
}

}  // namespace cubn::c_api
