/// @file cuda_check.hpp
/// @brief Turns CUDA runtime errors into cubn::Error (CUDA build only).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "cubn/error.hpp"

namespace cubn::detail {

/// Throws Error(kCudaError) naming `what` when `err` is not cudaSuccess.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(Status::kCudaError, std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                                        cudaGetErrorString(err) + ")");
}

}  // namespace cubn::detail
