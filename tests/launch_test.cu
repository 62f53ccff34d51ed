// The launch helper host/ uses: the same shape checks and errors on the executor and a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "launch.hpp"
#include "platform.cuh"
#include "support/device.hpp"

namespace {

using cubn::Status;

__global__ void fill_index(int* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = i;
}

class Launch : public cubn::test::DeviceTest {};

Status status_of_launch(dim3 grid, dim3 block, std::size_t smem, int* out, int n) {
  try {
    cubn::detail::launch("fill_index", fill_index, grid, block, smem, nullptr, out, n);
  } catch (const cubn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("fill_index"), std::string::npos) << e.what();
    return e.status();
  }
  return Status::kSuccess;
}

TEST_F(Launch, RunsAValidShape) {
  cubn::test::DeviceBuffer<int> out(1000);
  EXPECT_EQ(status_of_launch(dim3(4), dim3(256), 0, out.data(), 1000), Status::kSuccess);
  cubn::test::device_sync();
  const auto host = out.download();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(host[i], i);
}

TEST_F(Launch, RefusesWhatTheDeviceRefusesBeforeLaunching) {
  cubn::test::DeviceBuffer<int> out(2048);
  out.fill_bytes(0xAB);
  EXPECT_EQ(status_of_launch(dim3(1), dim3(1025), 0, out.data(), 2048), Status::kInvalidLaunch);
  EXPECT_EQ(status_of_launch(dim3(1), dim3(32, 32, 2), 0, out.data(), 2048),
            Status::kInvalidLaunch);
  EXPECT_EQ(status_of_launch(dim3(1), dim3(1, 1, 65), 0, out.data(), 2048), Status::kInvalidLaunch);
  EXPECT_EQ(status_of_launch(dim3(1, 65536), dim3(32), 0, out.data(), 2048),
            Status::kInvalidLaunch);
  EXPECT_EQ(status_of_launch(dim3(0), dim3(32), 0, out.data(), 2048), Status::kInvalidLaunch);
  EXPECT_EQ(status_of_launch(dim3(1), dim3(32), 1 << 20, out.data(), 2048), Status::kInvalidLaunch);
  cubn::test::device_sync();
  for (int v : out.download())
    ASSERT_EQ(v, static_cast<int>(0xABABABAB)) << "a refused launch wrote";
}

}  // namespace
