// The native ops' kernels for one backend (torch_kernels.cpp, compiled once per backend; the
// build names CUBN_TORCH_REGISTER register_executor_kernels or register_cuda_kernels).
#pragma once

#include <torch/library.h>

void register_executor_kernels(torch::Library& m);
void register_cuda_kernels(torch::Library& m);
