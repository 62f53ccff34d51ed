#include "device.hpp"

#include <cstdlib>
#include <new>
#include <stdexcept>

namespace cubn::test {

#if defined(CUBN_SIM)

std::string no_device_reason() { return ""; }
void device_sync() {}

DeviceBytes::DeviceBytes(std::size_t bytes) : bytes_(bytes) {
  ptr_ = ::operator new(bytes == 0 ? 1 : bytes, std::align_val_t(256));
  std::memset(ptr_, 0, bytes);
}
DeviceBytes::~DeviceBytes() { ::operator delete(ptr_, std::align_val_t(256)); }
void DeviceBytes::upload(const void* src, std::size_t bytes, std::size_t offset) {
  if (bytes == 0) return;  // src may be null
  std::memcpy(static_cast<char*>(ptr_) + offset, src, bytes);
}
void DeviceBytes::download(void* dst, std::size_t bytes, std::size_t offset) const {
  if (bytes == 0) return;  // dst may be null
  std::memcpy(dst, static_cast<const char*>(ptr_) + offset, bytes);
}
void DeviceBytes::fill(unsigned char byte) { std::memset(ptr_, byte, bytes_); }

#else

namespace {
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + " " +
                             cudaGetErrorString(err));
}
}  // namespace

std::string no_device_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess)
    return std::string("no usable CUDA device: cudaGetDeviceCount returned ") +
           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (count == 0) return "no CUDA device present";
  return "";
}

void device_sync() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

// Each write below is complete on return (a device synchronization after it): cudaMemset and a
// cudaMemcpy from pageable memory may return before the device has done them, ordered only on the
// legacy default stream, and a test's stream created with cudaStreamNonBlocking is not ordered
// after that stream. (CapturesIntoACudaGraph's first replay read x before its upload had landed.)
DeviceBytes::DeviceBytes(std::size_t bytes) : bytes_(bytes) {
  check(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), "cudaMalloc");
  check(cudaMemset(ptr_, 0, bytes == 0 ? 1 : bytes), "cudaMemset");
  device_sync();
}
DeviceBytes::~DeviceBytes() { cudaFree(ptr_); }
void DeviceBytes::upload(const void* src, std::size_t bytes, std::size_t offset) {
  if (bytes == 0) return;
  check(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice),
        "cudaMemcpy to device");
  device_sync();
}
void DeviceBytes::download(void* dst, std::size_t bytes, std::size_t offset) const {
  if (bytes == 0) return;
  check(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost),
        "cudaMemcpy to host");
}
void DeviceBytes::fill(unsigned char byte) {
  check(cudaMemset(ptr_, byte, bytes_), "cudaMemset");
  device_sync();
}

#endif

}  // namespace cubn::test
