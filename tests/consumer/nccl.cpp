// cubn::nccl links through the installed package (running it needs GPUs).
#include <cubn/nccl.hpp>

int main(int argc, char**) {
  if (argc > 1) (void)&cubn::nccl::forward_training_workspace_size;
  return 0;
}
