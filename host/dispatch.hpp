/// @file dispatch.hpp
/// @brief The one place a runtime DataType becomes a compile-time element type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cubn/tensor.hpp"

namespace cubn::detail {

template <class T>
struct TypeTag {
  using type = T;
};

/// Calls f(TypeTag<T>{}) with T the element type of `t` (__half, __nv_bfloat16, float, double)
/// among those whose parameter type is P: double for P = double, the other three for P = float.
/// The caller has checked that `t` takes parameters of type P.
template <class P, class F>
decltype(auto) dispatch_dtype(DataType t, F&& f) {
  if constexpr (std::is_same_v<P, double>) {
    return f(TypeTag<double>{});
  } else {
    switch (t) {
      case DataType::kFloat16: return f(TypeTag<__half>{});
      case DataType::kBFloat16: return f(TypeTag<__nv_bfloat16>{});
      default: return f(TypeTag<float>{});
    }
  }
}

}  // namespace cubn::detail
