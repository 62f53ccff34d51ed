#include "device_info.hpp"

#include <array>
#include <mutex>
#include <string>

#if defined(CUBN_SIM)
#include "cubn/sim/executor.hpp"
#else
#include "cuda_check.hpp"
#endif

namespace cubn::detail {

#if defined(CUBN_SIM)

const DeviceInfo& current_device_info() {
  thread_local DeviceInfo info;
  const sim::SmLimits& sm = sim::sm_limits();
  info.sm_count = sim::sm_count();
  info.limits = sim::device_limits();
  info.cooperative = true;
  info.shared_per_sm = sm.shared_bytes;
  info.shared_per_block_optin = sm.shared_per_block_optin;
  info.reserved_shared_per_block = sm.reserved_per_block;
  return info;
}

#else

namespace {

constexpr int kMaxDevices = 64;

DeviceInfo query(int device) {
  auto attr = [device](cudaDeviceAttr a, const char* name) {
    int v = 0;
    check_cuda(cudaDeviceGetAttribute(&v, a, device), name);
    return v;
  };
  DeviceInfo info;
  info.device = device;
  info.sm_count = attr(cudaDevAttrMultiProcessorCount, "cudaDeviceGetAttribute(SM count)");
  LaunchLimits& l = info.limits;
  l.max_threads_per_block =
      static_cast<unsigned>(attr(cudaDevAttrMaxThreadsPerBlock, "max threads"));
  l.max_block_x = static_cast<unsigned>(attr(cudaDevAttrMaxBlockDimX, "max block x"));
  l.max_block_y = static_cast<unsigned>(attr(cudaDevAttrMaxBlockDimY, "max block y"));
  l.max_block_z = static_cast<unsigned>(attr(cudaDevAttrMaxBlockDimZ, "max block z"));
  l.max_grid_x = static_cast<unsigned>(attr(cudaDevAttrMaxGridDimX, "max grid x"));
  l.max_grid_y = static_cast<unsigned>(attr(cudaDevAttrMaxGridDimY, "max grid y"));
  l.max_grid_z = static_cast<unsigned>(attr(cudaDevAttrMaxGridDimZ, "max grid z"));
  l.max_shared_per_block =
      static_cast<std::size_t>(attr(cudaDevAttrMaxSharedMemoryPerBlock, "max shared memory"));
  info.cooperative = attr(cudaDevAttrCooperativeLaunch, "cooperative launch") != 0;
  info.shared_per_sm = static_cast<std::size_t>(
      attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor, "shared memory per SM"));
  info.shared_per_block_optin = static_cast<std::size_t>(
      attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, "shared memory per block (opt-in)"));
  info.reserved_shared_per_block = static_cast<std::size_t>(
      attr(cudaDevAttrReservedSharedMemoryPerBlock, "reserved shared memory per block"));
  return info;
}

}  // namespace

const DeviceInfo& current_device_info() {
  static std::array<std::once_flag, kMaxDevices> once;
  static std::array<DeviceInfo, kMaxDevices> cache;
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  if (device < 0 || device >= kMaxDevices)
    throw Error(Status::kCudaError, "device " + std::to_string(device) + " is beyond the " +
                                        std::to_string(kMaxDevices) + " devices cubn supports");
  std::call_once(once[device], [&] { cache[device] = query(device); });
  return cache[device];
}

#endif

}  // namespace cubn::detail
