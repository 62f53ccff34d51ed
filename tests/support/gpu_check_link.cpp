// bench/gpu_check.sh --dry-run builds this against the GoogleTest it stages for the GPU machine and
// the cuDNN and NCCL its lookup found (a wheel-like layout there), then runs it here: it proves the
// GPU build links and loads them as the GPU machine's will, without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>

#if defined(CUBN_LINK_CUDNN)
#include <cudnn.h>
#endif
#if defined(CUBN_LINK_NCCL)
#include <nccl.h>
#endif

TEST(GpuCheckLink, LoadsWhatTheGpuBuildLinks) {
  int runtime = 0;
  ASSERT_EQ(cudaRuntimeGetVersion(&runtime), cudaSuccess);
  EXPECT_GE(runtime, 13000);
  std::printf("CUDA runtime %d\n", runtime);
#if defined(CUBN_LINK_CUDNN)
  EXPECT_GE(cudnnGetVersion(), 90000u);
  std::printf("cuDNN %zu\n", cudnnGetVersion());
#else
  GTEST_FAIL() << "cuDNN was not found: cubn_bench would have no comparison";
#endif
#if defined(CUBN_LINK_NCCL)
  int nccl = 0;
  ASSERT_EQ(ncclGetVersion(&nccl), ncclSuccess);
  EXPECT_GT(nccl, 0);
  std::printf("NCCL %d\n", nccl);
#else
  GTEST_FAIL() << "NCCL was not found: cubn_nccl_tests would not be built";
#endif
}
