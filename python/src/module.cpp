// The extension modules of the Python package: cubn._cubn_sim (the CPU executor build, cubn::sim)
// and cubn._cubn_cuda (the CUDA library, cubn::cubn), one source compiled once per library. Each
// is a thin layer over the C ABI (cubn/cubn.h): the array's facts from DLPack (array_info), and
// each C call with pointers as integers. The checks of arrays against each other (shapes,
// strides, devices, dtypes) are the Python layer's (cubn/_core.py); everything else is cubn's.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cubn/cubn.h"

namespace nb = nanobind;

namespace {

using Ptr = std::uintptr_t;
using Dims = std::vector<std::int64_t>;

template <class T = void>
T* ptr(Ptr p) {
  return reinterpret_cast<T*>(p);
}

cubn_stream stream_of(Ptr s) { return reinterpret_cast<cubn_stream>(s); }

// A descriptor of dims; a rank beyond 5 keeps its rank (cubn names it) but only 5 dims.
cubn_tensor_desc desc(int dtype, int order, const Dims& dims) {
  cubn_tensor_desc d{};
  d.dtype = dtype;
  d.order = order;
  d.rank = static_cast<std::int32_t>(dims.size());
  for (std::size_t i = 0; i < dims.size() && i < 5; ++i) d.dims[i] = dims[i];
  return d;
}

// (data pointer, (dtype code, bits, lanes), shape, strides in elements, device type, device id,
// read-only) of any object that supports DLPack.
nb::tuple array_info(nb::ndarray<nb::ro> a) {
  Dims shape(a.ndim()), strides(a.ndim());
  for (std::size_t i = 0; i < a.ndim(); ++i) {
    shape[i] = static_cast<std::int64_t>(a.shape(i));
    strides[i] = a.stride(i);
  }
  const nb::dlpack::dtype t = a.dtype();
  return nb::make_tuple(reinterpret_cast<Ptr>(a.data()),
                        nb::make_tuple(int(t.code), int(t.bits), int(t.lanes)), shape, strides,
                        a.device_type(), a.device_id());
}

// (status, bytes) of a size query; the message of a failure is read as for the calls.
template <class F>
nb::tuple size_query(F f, int dtype, int order, const Dims& dims, std::int32_t activation = 0) {
  const cubn_tensor_desc d = desc(dtype, order, dims);
  std::size_t bytes = 0;
  cubn_status s;
  if constexpr (std::is_invocable_v<F, const cubn_tensor_desc*, std::int32_t, std::size_t*>)
    s = f(&d, activation, &bytes);
  else
    s = f(&d, &bytes);
  return nb::make_tuple(int(s), bytes);
}

cubn_epilogue epilogue(std::int32_t activation, Ptr residual, Ptr reserve,
                       std::size_t reserve_bytes) {
  return {activation, ptr<const void>(residual), ptr(reserve), reserve_bytes};
}

cubn_epilogue_grad epilogue_grad(std::int32_t activation, Ptr residual, Ptr reserve,
                                 std::size_t reserve_bytes, Ptr dz) {
  return {activation, ptr<const void>(residual), ptr<const void>(reserve), reserve_bytes, ptr(dz)};
}

// A variable-length batch: lengths (0: none), its cubn_length_type and cubn_padding.
cubn_lengths lengths(Ptr p, std::int32_t type, std::int32_t padding) {
  return {ptr<const void>(p), type, padding};
}

// Each C call returns its status (a size query, (status, bytes)); the message is read with
// last_error_message() on the same thread (the calls release the GIL while they run).
using Release = nb::call_guard<nb::gil_scoped_release>;

}  // namespace

NB_MODULE(CUBN_MODULE_NAME, m) {
  m.doc() = "cubn's C ABI for the Python package (cubn/_core.py); not for direct use";
#ifdef CUBN_SIM
  m.attr("executor") = true;
#else
  m.attr("executor") = false;
#endif
  m.attr("cuda_architectures") = CUBN_MODULE_CUDA_ARCHITECTURES;  // CMake's syntax; "" for the executor
  m.def("array_info", &array_info);
  m.def("last_error_message", [] { return std::string(cubn_last_error_message()); });
  m.def("status_string", [](int s) { return std::string(cubn_status_string(cubn_status(s))); });

  m.def("forward_training_workspace_size", [](int t, int o, const Dims& d) {
    return size_query(cubn_forward_training_workspace_size, t, o, d);
  });
  m.def("backward_workspace_size", [](int t, int o, const Dims& d) {
    return size_query(cubn_backward_workspace_size, t, o, d);
  });
  m.def("activation_reserve_size", [](int t, int o, const Dims& d, std::int32_t a) {
    return size_query(cubn_activation_reserve_size, t, o, d, a);
  });
  m.def("local_stats_bytes",
        [](int t, int o, const Dims& d) { return size_query(cubn_local_stats_bytes, t, o, d); });
  m.def("local_grad_sums_bytes", [](int t, int o, const Dims& d) {
    return size_query(cubn_local_grad_sums_bytes, t, o, d);
  });

  m.def(
      "forward_training",
      [](int t, int o, const Dims& d, Ptr x, Ptr y, Ptr scale, Ptr offset, double epsilon,
         Ptr running_mean, Ptr running_var, double momentum_mean, double momentum_var,
         Ptr saved_mean, Ptr saved_invstd, std::int32_t activation, Ptr residual, Ptr reserve,
         std::size_t reserve_bytes, bool apply, Ptr gathered, std::size_t gathered_bytes, int ranks,
         Ptr ws, std::size_t ws_bytes, Ptr stream, Ptr lens, std::int32_t lens_type,
         std::int32_t padding) {
        const cubn_tensor_desc xd = desc(t, o, d);
        cubn_training_forward_args a;
        cubn_training_forward_args_init(&a);
        a.scale = ptr<const void>(scale);
        a.offset = ptr<const void>(offset);
        a.epsilon = epsilon;
        a.running_mean = ptr(running_mean);
        a.running_var = ptr(running_var);
        a.momentum_mean = momentum_mean;
        a.momentum_var = momentum_var;
        a.saved_mean = ptr(saved_mean);
        a.saved_invstd = ptr(saved_invstd);
        a.epilogue = epilogue(activation, residual, reserve, reserve_bytes);
        a.lengths = lengths(lens, lens_type, padding);
        if (!apply)  // the single call
          return int(cubn_forward_training(&xd, ptr<const void>(x), ptr(y), &a, ptr(ws), ws_bytes,
                                           stream_of(stream)));
        return int(cubn_forward_training_apply(&xd, ptr<const void>(x), ptr(y), &a,
                                               ptr<const void>(gathered), gathered_bytes, ranks,
                                               ptr(ws), ws_bytes, stream_of(stream)));
      },
      Release());

  m.def(
      "forward_training_local",
      [](int t, int o, const Dims& d, Ptr x, Ptr local, std::size_t local_bytes, Ptr ws,
         std::size_t ws_bytes, Ptr stream, Ptr lens, std::int32_t lens_type, std::int32_t padding) {
        const cubn_tensor_desc xd = desc(t, o, d);
        const cubn_lengths l = lengths(lens, lens_type, padding);
        return int(cubn_forward_training_local_lengths(&xd, ptr<const void>(x), &l, ptr(local),
                                                       local_bytes, ptr(ws), ws_bytes,
                                                       stream_of(stream)));
      },
      Release());

  m.def(
      "forward_inference",
      [](int t, int o, const Dims& d, Ptr x, Ptr y, Ptr scale, Ptr offset, Ptr running_mean,
         Ptr running_var, double epsilon, std::int32_t activation, Ptr residual, Ptr reserve,
         std::size_t reserve_bytes, Ptr stream, Ptr lens, std::int32_t lens_type,
         std::int32_t padding) {
        const cubn_tensor_desc xd = desc(t, o, d);
        cubn_inference_forward_args a;
        cubn_inference_forward_args_init(&a);
        a.scale = ptr<const void>(scale);
        a.offset = ptr<const void>(offset);
        a.running_mean = ptr<const void>(running_mean);
        a.running_var = ptr<const void>(running_var);
        a.epsilon = epsilon;
        a.epilogue = epilogue(activation, residual, reserve, reserve_bytes);
        a.lengths = lengths(lens, lens_type, padding);
        return int(cubn_forward_inference(&xd, ptr<const void>(x), ptr(y), &a, stream_of(stream)));
      },
      Release());

  // phase: 0 the single call, 1 the local phase (writes `local` and the gradients), 2 the apply
  // phase (reads `gathered`, writes dx and dz)
  m.def(
      "backward_training",
      [](int t, int o, const Dims& d, Ptr x, Ptr dy, Ptr dx, Ptr scale, Ptr saved_mean,
         Ptr saved_invstd, Ptr dscale, Ptr doffset, bool accumulate, std::int32_t activation,
         Ptr residual, Ptr reserve, std::size_t reserve_bytes, Ptr dz, int phase, Ptr records,
         std::size_t records_bytes, int ranks, Ptr ws, std::size_t ws_bytes, Ptr stream, Ptr lens,
         std::int32_t lens_type, std::int32_t padding) {
        const cubn_tensor_desc xd = desc(t, o, d);
        cubn_training_backward_args a;
        cubn_training_backward_args_init(&a);
        a.scale = ptr<const void>(scale);
        a.saved_mean = ptr<const void>(saved_mean);
        a.saved_invstd = ptr<const void>(saved_invstd);
        a.grads = {ptr(dscale), ptr(doffset), accumulate ? 1 : 0};
        a.epilogue = epilogue_grad(activation, residual, reserve, reserve_bytes, dz);
        a.lengths = lengths(lens, lens_type, padding);
        switch (phase) {
          case 1:
            return int(cubn_backward_training_local(&xd, ptr<const void>(x), ptr<const void>(dy),
                                                    &a, ptr(records), records_bytes, ptr(ws),
                                                    ws_bytes, stream_of(stream)));
          case 2:
            return int(cubn_backward_training_apply(
                &xd, ptr<const void>(x), ptr<const void>(dy), ptr(dx), &a, ptr<const void>(records),
                records_bytes, ranks, ptr(ws), ws_bytes, stream_of(stream)));
          default:
            return int(cubn_backward_training(&xd, ptr<const void>(x), ptr<const void>(dy), ptr(dx),
                                              &a, ptr(ws), ws_bytes, stream_of(stream)));
        }
      },
      Release());

  m.def(
      "backward_frozen",
      [](int t, int o, const Dims& d, Ptr x, Ptr dy, Ptr dx, Ptr scale, Ptr offset,
         Ptr running_mean, Ptr running_var, double epsilon, Ptr dscale, Ptr doffset,
         bool accumulate, std::int32_t activation, Ptr residual, Ptr reserve,
         std::size_t reserve_bytes, Ptr dz, Ptr ws, std::size_t ws_bytes, Ptr stream, Ptr lens,
         std::int32_t lens_type, std::int32_t padding) {
        const cubn_tensor_desc xd = desc(t, o, d);
        cubn_frozen_backward_args a;
        cubn_frozen_backward_args_init(&a);
        a.scale = ptr<const void>(scale);
        a.offset = ptr<const void>(offset);
        a.running_mean = ptr<const void>(running_mean);
        a.running_var = ptr<const void>(running_var);
        a.epsilon = epsilon;
        a.grads = {ptr(dscale), ptr(doffset), accumulate ? 1 : 0};
        a.epilogue = epilogue_grad(activation, residual, reserve, reserve_bytes, dz);
        a.lengths = lengths(lens, lens_type, padding);
        return int(cubn_backward_frozen(&xd, ptr<const void>(x), ptr<const void>(dy), ptr(dx), &a,
                                        ptr(ws), ws_bytes, stream_of(stream)));
      },
      Release());
}
