// One training step (forward training) and one inference pass of a ResNet-50-like batch-norm
// layer through cubn, checked against a double-precision reference on sampled channels.
//
// train_step.inc holds the code a user would copy; it is compiled twice: against the CUDA library
// (train_step_gpu.cpp) and against the CPU executor build (train_step_executor.cpp), and main.cpp
// picks one at run time.
#pragma once

#include <cstdint>

struct LayerShape {
  std::int64_t n, c, h, w;
};

/// Runs the example on the GPU; returns 0 when every check passed.
int train_step_gpu(const LayerShape& shape);
/// Runs the example on the CPU executor (a test backend: slow, for correctness only).
int train_step_executor(const LayerShape& shape);
