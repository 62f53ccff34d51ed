/// @file device.hpp
/// @brief What a test needs to run the same case on the CPU executor (CUBN_SIM) and on a GPU:
/// device memory, a device check that skips GPU tests cleanly, and synchronization.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#if !defined(CUBN_SIM)
#include <cuda_runtime_api.h>
#endif

namespace cubn::test {

/// Why no CUDA device can run this test binary's kernels, or "" when one can. The executor
/// build always can. In the CUDA build, cudaGetDeviceCount failing (cudaErrorNoDevice,
/// cudaErrorInsufficientDriver on a machine without a driver) means "no device", not a failure.
std::string no_device_reason();

/// Waits for the device's work to finish and throws on an asynchronous error (no-op on the
/// executor, whose launches are synchronous).
void device_sync();

/// A fixture for tests that run kernels: skips with the reason when no device is usable.
class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = no_device_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

/// Raw device memory of `bytes` bytes, zero-filled; host memory in the executor build, sized exactly so that AddressSanitizer sees any
/// access past its end.
class DeviceBytes {
 public:
  explicit DeviceBytes(std::size_t bytes);
  ~DeviceBytes();
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  void* data() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  void upload(const void* src, std::size_t bytes, std::size_t offset = 0);
  void download(void* dst, std::size_t bytes, std::size_t offset = 0) const;
  void fill(unsigned char byte);

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Typed device memory of n elements of T.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t n) : mem_(n * sizeof(T)), n_(n) {}
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  T* data() const { return static_cast<T*>(mem_.data()); }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& host) { mem_.upload(host.data(), host.size() * sizeof(T)); }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    mem_.download(host.data(), n_ * sizeof(T));
    return host;
  }
  void fill_bytes(unsigned char byte) { mem_.fill(byte); }
  const DeviceBytes& bytes() const { return mem_; }

 private:
  DeviceBytes mem_;
  std::size_t n_;
};

}  // namespace cubn::test
