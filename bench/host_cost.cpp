// The host cost of cubn's C++ API per call, kernels excluded: argument checks, planning and launch
// preparation, on the executor build with CUBN_SIM_SKIP_KERNELS=1 (every launch is checked and
// counted, then returns without running its kernel; bench/torch_overhead.py's C++ twin).
//
//   CUBN_SIM_SKIP_KERNELS=1 build/<preset>/bench/cubn_host_cost [--csv FILE] [--calls N]
//
// Per call: the median over 7 rounds of N calls each (default 20,000) of the round's mean, on
// ResNet-50's shapes at N = 32 (the executor's device: 132 SMs, as an H100 or H200). The buffers
// are allocated and never touched (the kernels do not run).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "cubn/sim/executor.hpp"

namespace {

struct Shape {
  const char* label;
  cubn::DataType dtype;
  cubn::MemoryOrder order;
  std::int64_t n, c, h, w;
};

// Untouched memory of `bytes` (256-byte aligned).
struct Buffer {
  explicit Buffer(std::size_t bytes) : p(::operator new(bytes, std::align_val_t(256))) {}
  ~Buffer() { ::operator delete(p, std::align_val_t(256)); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* p;
};

// Microseconds per call of f: the median over 7 rounds of `calls` calls each.
double per_call_us(const std::function<void()>& f, int calls) {
  for (int i = 0; i < calls / 10; ++i) f();
  std::vector<double> rounds;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) f();
    const auto t1 = std::chrono::steady_clock::now();
    rounds.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / calls);
  }
  std::sort(rounds.begin(), rounds.end());
  return rounds[rounds.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const char* csv_path = nullptr;
  int calls = 20000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--csv") == 0 && i + 1 < argc) {
      csv_path = argv[++i];
    } else if (std::strcmp(argv[i], "--calls") == 0 && i + 1 < argc) {
      calls = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: CUBN_SIM_SKIP_KERNELS=1 %s [--csv FILE] [--calls N]\n", argv[0]);
      return 2;
    }
  }
  const char* skip = std::getenv("CUBN_SIM_SKIP_KERNELS");
  if (skip == nullptr || std::string(skip) != "1") {
    std::fprintf(stderr, "cubn_host_cost: set CUBN_SIM_SKIP_KERNELS=1 (the kernels would run on "
                         "the executor and be timed)\n");
    return 2;
  }
  cubn::sim::set_sm_count(132);
  using cubn::DataType;
  using cubn::MemoryOrder;
  const std::vector<Shape> shapes = {
      {"resnet50 32x256x56x56", DataType::kBFloat16, MemoryOrder::kChannelsLast, 32, 256, 56, 56},
      {"resnet50 32x64x112x112", DataType::kBFloat16, MemoryOrder::kChannelsLast, 32, 64, 112, 112},
      {"resnet50 32x2048x7x7", DataType::kFloat32, MemoryOrder::kChannelsFirst, 32, 2048, 7, 7},
  };
  std::FILE* csv = csv_path != nullptr ? std::fopen(csv_path, "w") : nullptr;
  if (csv_path != nullptr && csv == nullptr) {
    std::fprintf(stderr, "cubn_host_cost: cannot write %s\n", csv_path);
    return 2;
  }
  if (csv != nullptr) std::fprintf(csv, "shape,dtype,order,call,host_us\n");
  std::printf("%-24s %-5s %-14s %-20s %9s\n", "shape", "dtype", "order", "call", "host us");
  for (const Shape& s : shapes) {
    const cubn::TensorDesc desc(s.dtype, s.order, {s.n, s.c, s.h, s.w});
    const std::size_t bytes =
        static_cast<std::size_t>(s.n * s.c * s.h * s.w) * cubn::element_size(s.dtype);
    const auto C = static_cast<std::size_t>(s.c);
    Buffer x(bytes), y(bytes), dy(bytes), dx(bytes), params(8 * C * sizeof(float));
    const std::size_t ws_bytes = std::max(cubn::forward_training_workspace_size(desc),
                                          cubn::backward_workspace_size(desc));
    Buffer ws(ws_bytes);
    float* p = static_cast<float*>(params.p);
    float *scale = p, *offset = p + C, *rmean = p + 2 * C, *rvar = p + 3 * C, *smean = p + 4 * C,
          *sinvstd = p + 5 * C, *dscale = p + 6 * C, *doffset = p + 7 * C;
    const cubn::Workspace workspace{ws.p, ws_bytes};

    cubn::TrainingForwardArgs<float> train;
    train.affine = {scale, offset};
    train.running = {rmean, rvar};
    train.saved = {smean, sinvstd};
    cubn::InferenceForwardArgs<float> infer;
    infer.affine = {scale, offset};
    infer.running = {rmean, rvar};
    cubn::TrainingBackwardArgs<float> back;
    back.scale = scale;
    back.saved = {smean, sinvstd};
    back.grads = {dscale, doffset};
    cubn::FrozenBackwardArgs<float> frozen;
    frozen.scale = scale;
    frozen.running = {rmean, rvar};
    frozen.grads = {dscale, doffset};

    const std::vector<std::pair<const char*, std::function<void()>>> rows = {
        {"forward_training",
         [&] { cubn::forward_training(desc, x.p, y.p, train, workspace, nullptr); }},
        {"forward_inference", [&] { cubn::forward_inference(desc, x.p, y.p, infer, nullptr); }},
        {"backward_training",
         [&] { cubn::backward_training(desc, x.p, dy.p, dx.p, back, workspace, nullptr); }},
        {"backward_frozen",
         [&] { cubn::backward_frozen(desc, x.p, dy.p, dx.p, frozen, workspace, nullptr); }},
        {"workspace_size", [&] { (void)cubn::forward_training_workspace_size(desc); }},
    };
    for (const auto& [call, f] : rows) {
      const double us = per_call_us(f, calls);
      std::printf("%-24s %-5s %-14s %-20s %9.3f\n", s.label, cubn::to_string(s.dtype),
                  cubn::to_string(s.order), call, us);
      if (csv != nullptr)
        std::fprintf(csv, "%s,%s,%s,%s,%.4f\n", s.label, cubn::to_string(s.dtype),
                     cubn::to_string(s.order), call, us);
    }
  }
  if (csv != nullptr) std::fclose(csv);
  return 0;
}
