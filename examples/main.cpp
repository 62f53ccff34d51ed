// cubn's main example: one training step and one inference pass of a ResNet-50 layer's batch
// norm (N=32, C=64, 56x56, channels-last, bf16) on a GPU, or of a smaller layer on the CPU
// executor when no GPU is usable.
#include <cstdio>
#include <exception>

#include "train_step.hpp"

#if defined(CUBN_EXAMPLE_HAS_CUDA)
#include <cuda_runtime_api.h>
#endif

int main() {
  try {
#if defined(CUBN_EXAMPLE_HAS_CUDA)
    int devices = 0;
    const cudaError_t err = cudaGetDeviceCount(&devices);
    if (err == cudaSuccess && devices > 0) return train_step_gpu({32, 64, 56, 56});
    std::printf("no usable CUDA device (%s): running a smaller layer on the CPU executor instead\n",
                err == cudaSuccess ? "none present" : cudaGetErrorString(err));
#else
    std::printf(
        "cubn was built without its CUDA library (configured where no GPU was visible, or without "
        "nvcc; -DCUBN_CUDA_ARCHITECTURES=90-real or =all builds it): running a smaller layer on "
        "the CPU executor\n");
#endif
    return train_step_executor({4, 64, 14, 14});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
