// CPU-side performance proxies, measured on the executor: global-memory bytes each API call
// moves (against the byte model), bytes per lane access, kernel launches, and the 32-byte-sector
// efficiency of each kernel's warp accesses, for the benchmark's shape families scaled down to
// executor size; training calls on both paths (the persistent model holds where the tensor fits on
// chip, as these do). Not GPU timings.
//
//   build/<preset>/bench/cubn_proxy_report [--markdown]
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "cubn/sim/executor.hpp"
#include "device_info.hpp"
#include "plan.hpp"
#include "problem.hpp"

namespace {

struct Case {
  const char* label;
  cubn::DataType dtype;
  cubn::MemoryOrder order;
  std::vector<std::int64_t> dims;
};

std::int64_t numel(const std::vector<std::int64_t>& d) {
  std::int64_t n = 1;
  for (auto v : d) n *= v;
  return n;
}

cubn::TensorDesc desc_of(const Case& c) {
  cubn::TensorDesc d;
  d.dtype = c.dtype;
  d.order = c.order;
  d.rank = static_cast<int>(c.dims.size());
  for (int i = 0; i < d.rank; ++i) d.dims[i] = c.dims[i];
  return d;
}

template <class T>
struct Aligned {
  explicit Aligned(std::size_t n)
      : p(static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(256)))) {}
  ~Aligned() { ::operator delete(p, std::align_val_t(256)); }
  T* p;
};

struct Row {
  std::string call;
  double read_passes, write_passes, model_read, model_write;
  std::vector<cubn::sim::LaunchProfile> kernels;
  double lane_bytes = 0;  // bytes per lane access over the call
};

void print(const Case& c, const std::vector<Row>& rows, bool markdown) {
  std::string shape;
  for (std::size_t i = 0; i < c.dims.size(); ++i)
    shape += (i ? "x" : "") + std::to_string(c.dims[i]);
  for (const Row& r : rows) {
    std::string eff;
    for (const auto& k : r.kernels) {
      if (k.warp_accesses == 0) continue;
      char buf[128];
      std::snprintf(buf, sizeof buf, "%s%s %.1f%%", eff.empty() ? "" : ", ", k.name.c_str() + 6,
                    100 * k.sector_efficiency());
      eff += buf;
    }
    if (markdown) {
      std::printf("| %s | %s %s %s | %s | %.3f / %.3f | %.2f / %.0f | %.1f | %zu | %s |\n", c.label,
                  shape.c_str(), cubn::to_string(c.dtype),
                  c.order == cubn::MemoryOrder::kChannelsLast ? "CL" : "CF", r.call.c_str(),
                  r.read_passes, r.model_read, r.write_passes, r.model_write, r.lane_bytes,
                  r.kernels.size(), eff.c_str());
    } else {
      std::printf(
          "%-10s %-18s %-5s %-3s %-18s reads %.3f (model %.3f)  writes %.2f (model %.0f)  "
          "%.1f B/lane  %zu launches  %s\n",
          c.label, shape.c_str(), cubn::to_string(c.dtype),
          c.order == cubn::MemoryOrder::kChannelsLast ? "CL" : "CF", r.call.c_str(), r.read_passes,
          r.model_read, r.write_passes, r.model_write, r.lane_bytes, r.kernels.size(), eff.c_str());
    }
  }
}

// Runs `call` under a profile and sums its traffic in passes over the tensor.
Row measure(const std::string& name, double model_read, double model_write, double tensor_bytes,
            const std::function<void()>& call) {
  cubn::sim::ProfileScope scope;
  call();
  Row r{name, 0, 0, model_read, model_write, scope.launches()};
  double bytes = 0, lanes = 0;
  for (const auto& k : r.kernels) {
    r.read_passes += k.read_bytes / tensor_bytes;
    r.write_passes += k.write_bytes / tensor_bytes;
    bytes += static_cast<double>(k.read_bytes + k.write_bytes);
    lanes += static_cast<double>(k.lane_accesses);
  }
  r.lane_bytes = lanes > 0 ? bytes / lanes : 0;
  return r;
}

template <class T>
void run(const Case& c, bool markdown) {
  const cubn::TensorDesc d = desc_of(c);
  const auto n = static_cast<std::size_t>(numel(c.dims));
  const auto C = static_cast<std::size_t>(c.dims[1]);
  const double bytes = static_cast<double>(n * sizeof(T));
  // 256-byte-aligned tensors, as cudaMalloc gives
  Aligned<T> xa(n), ya(n), dya(n), dxa(n);
  T *x = xa.p, *y = ya.p, *dy = dya.p, *dx = dxa.p;
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = static_cast<T>(static_cast<float>(i % 97) * 0.01f);
    dy[i] = static_cast<T>(static_cast<float>(i % 89) * 0.01f - 0.4f);
  }
  std::vector<float> rm(C, 0.0f), rv(C, 1.0f), sm(C), si(C), ds(C), dof(C);
  std::vector<unsigned char> ws(
      std::max(cubn::forward_training_workspace_size(d), cubn::backward_workspace_size(d)) + 256);
  void* wsp = ws.data() + (256 - reinterpret_cast<std::uintptr_t>(ws.data()) % 256) % 256;
  const cubn::Workspace w{wsp, ws.size() - 256};
  // the reduction's passes: 1, or a little more where channels-first planes share edge packs
  const auto p = cubn::detail::canonicalize("proxy_report", "x", d);
  const double r = static_cast<double>(cubn::detail::reduce_loaded_elements(p, 16 / sizeof(T))) /
                   static_cast<double>(p.numel);
  // the elements past the last whole vector: the persistent path reads them once more
  const double l =
      static_cast<double>(p.numel % static_cast<std::int64_t>(16 / sizeof(T))) / p.numel;
  using cubn::detail::Path;
  std::vector<Row> rows;
  cubn::TrainingForwardArgs<float> ta;
  ta.running = {rm.data(), rv.data()};
  ta.saved = {sm.data(), si.data()};
  cubn::TrainingBackwardArgs<float> ba;
  ba.saved = {sm.data(), si.data()};
  ba.grads = {ds.data(), dof.data()};
  for (const Path path : {Path::kStreaming, Path::kPersistent}) {
    cubn::detail::force_path(path);
    const bool persistent = path == Path::kPersistent;
    const auto& dev = cubn::detail::current_device_info();
    // the model is the whole tensor on chip; where the plan keeps less, more is read again
    const auto how = [&](int inputs) {
      if (!persistent) return std::string(" streaming");
      const double kept = cubn::detail::plan_persistent(p, dev, true, inputs).kept;
      return std::string(" persistent") + (kept < 1 ? " (part on chip)" : "");
    };
    rows.push_back(measure("forward_training" + how(1), persistent ? r + l : r + 1, 1, bytes,
                           [&] { cubn::forward_training(d, x, y, ta, w, nullptr); }));
    rows.push_back(measure("backward_training" + how(2), persistent ? 2 * r + 2 * l : 2 * r + 2,
                           1, bytes,
                           [&] { cubn::backward_training(d, x, dy, dx, ba, w, nullptr); }));
  }
  cubn::detail::force_path(Path::kAuto);
  cubn::InferenceForwardArgs<float> ia;
  ia.running = {rm.data(), rv.data()};
  rows.push_back(measure("forward_inference", 1, 1, bytes,
                         [&] { cubn::forward_inference(d, x, y, ia, nullptr); }));
  cubn::FrozenBackwardArgs<float> fa;
  fa.running = {rm.data(), rv.data()};
  rows.push_back(measure("backward_frozen(dx)", 1, 1, bytes,
                         [&] { cubn::backward_frozen(d, x, dy, dx, fa, w, nullptr); }));
  print(c, rows, markdown);
}

}  // namespace

int main(int argc, char** argv) {
  const bool markdown = argc > 1 && std::strcmp(argv[1], "--markdown") == 0;
  using cubn::DataType;
  using cubn::MemoryOrder;
  // the benchmark's shape families at executor scale
  const std::vector<Case> cases = {
      {"resnet", DataType::kFloat16, MemoryOrder::kChannelsLast, {8, 64, 28, 28}},
      {"resnet", DataType::kFloat16, MemoryOrder::kChannelsFirst, {8, 64, 28, 28}},
      {"resnet", DataType::kBFloat16, MemoryOrder::kChannelsLast, {4, 256, 14, 14}},
      {"resnet", DataType::kFloat32, MemoryOrder::kChannelsFirst, {4, 256, 14, 14}},
      {"resnet", DataType::kFloat32, MemoryOrder::kChannelsLast, {8, 2048, 7, 7}},
      {"resnet", DataType::kFloat32, MemoryOrder::kChannelsFirst, {8, 2048, 7, 7}},
      {"resnet", DataType::kBFloat16, MemoryOrder::kChannelsFirst, {8, 512, 7, 7}},
      {"resnet", DataType::kBFloat16, MemoryOrder::kChannelsFirst, {8, 256, 14, 14}},
      {"c100", DataType::kBFloat16, MemoryOrder::kChannelsLast, {64, 100, 4, 4}},
      {"bn1d", DataType::kFloat32, MemoryOrder::kChannelsFirst, {4096, 64}},
      {"small", DataType::kFloat16, MemoryOrder::kChannelsFirst, {1, 64, 8, 8}},
      {"small", DataType::kFloat32, MemoryOrder::kChannelsLast, {8, 32, 16, 16}},
      {"3d", DataType::kFloat16, MemoryOrder::kChannelsFirst, {2, 16, 16, 16, 16}},
      {"3d", DataType::kFloat16, MemoryOrder::kChannelsLast, {2, 16, 16, 16, 16}},
  };
  if (markdown) {
    std::printf(
        "| family | shape, dtype, order | call | reads / model (passes) | writes / model | bytes "
        "per lane access | launches | sector efficiency per kernel |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  }
  for (const Case& c : cases) {
    switch (c.dtype) {
      case DataType::kFloat16: run<__half>(c, markdown); break;
      case DataType::kBFloat16: run<__nv_bfloat16>(c, markdown); break;
      default: run<float>(c, markdown); break;
    }
  }
  return 0;
}
