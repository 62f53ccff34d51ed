// Performance proxies on the executor (no GPU needed): the global-memory bytes each call moves
// equal the algorithmic model, and warp accesses of contiguous shapes use at least 90% of the
// 32-byte sectors they touch. See bench/proxy_report.cpp for the full report.
//
// Model, in passes over the tensor (reads + writes): forward training 2 + 1 (x for statistics, x
// to normalize, y), inference 1 + 1, backward training 4 + 1 (dy and x for the sums, dy and x for
// dx, dx), frozen backward dx 1 + 1 (dy, dx). Per-channel vectors are not counted.
// "Contiguous" shapes: every row of the contiguous extent (S channels-first, C channels-last)
// starts on a 32-byte sector and the pointers are 256-byte aligned (as cudaMalloc's); the
// scalar fallback for misaligned pointers is not held to the bound.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "cubn/sim/executor.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"

namespace {

using namespace cubn;
using namespace cubn::test;

struct Traffic {
  double read_passes = 0, write_passes = 0;
  std::vector<sim::LaunchProfile> kernels;
};

Traffic profile(double tensor_bytes, const std::function<void()>& call) {
  sim::ProfileScope scope;
  call();
  Traffic t;
  t.kernels = scope.launches();
  for (const auto& k : t.kernels) {
    t.read_passes += k.read_bytes / tensor_bytes;
    t.write_passes += k.write_bytes / tensor_bytes;
  }
  return t;
}

void expect_traffic(const Traffic& t, double reads, double writes, bool contiguous,
                    const std::string& what) {
  EXPECT_EQ(t.read_passes, reads) << what;
  EXPECT_EQ(t.write_passes, writes) << what;
  if (!contiguous) return;
  for (const auto& k : t.kernels) {
    if (k.warp_accesses == 0) continue;
    EXPECT_GE(k.sector_efficiency(), 0.9) << what << " " << k.name << ": " << k.sectors_needed
                                          << " sectors needed, " << k.sectors_touched << " touched";
  }
}

template <class T>
void check(const Dims& dims, MemoryOrder order) {
  using P = param_of<T>;
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const auto d = make_data<T>(dims, order, 1);
  const std::size_t C = static_cast<std::size_t>(dims[1]);
  const double bytes = static_cast<double>(d.x.size() * sizeof(T));
  const std::int64_t extent = order == MemoryOrder::kChannelsFirst ? d.shape.s() : d.shape.c();
  const bool contiguous = extent * static_cast<std::int64_t>(sizeof(T)) % 32 == 0;
  const std::string what = std::string(to_string(dtype_of<T>())) + " " + shape_string(dims, order);
  DeviceBuffer<T> x(d.x), y(d.x.size()), dy(d.x), dx(d.x.size());
  DeviceBuffer<P> rm(std::vector<P>(C, 0)), rv(std::vector<P>(C, 1)), sm(C), si(C), ds(C), dof(C);
  DeviceBytes ws(std::max(forward_training_workspace_size(desc), backward_workspace_size(desc)));
  const Workspace w{ws.data(), ws.bytes()};

  TrainingForwardArgs<P> ta;
  ta.running = {rm.data(), rv.data()};
  ta.saved = {sm.data(), si.data()};
  expect_traffic(
      profile(bytes, [&] { forward_training(desc, x.data(), y.data(), ta, w, nullptr); }), 2, 1,
      contiguous, what + " forward_training");
  InferenceForwardArgs<P> ia;
  ia.running = {rm.data(), rv.data()};
  expect_traffic(profile(bytes, [&] { forward_inference(desc, x.data(), y.data(), ia, nullptr); }),
                 1, 1, contiguous, what + " forward_inference");
  TrainingBackwardArgs<P> ba;
  ba.saved = {sm.data(), si.data()};
  ba.grads = {ds.data(), dof.data()};
  expect_traffic(
      profile(bytes,
              [&] { backward_training(desc, x.data(), dy.data(), dx.data(), ba, w, nullptr); }),
      4, 1, contiguous, what + " backward_training");
  FrozenBackwardArgs<P> fa;
  fa.running = {rm.data(), rv.data()};
  expect_traffic(
      profile(bytes,
              [&] { backward_frozen(desc, x.data(), dy.data(), dx.data(), fa, w, nullptr); }),
      1, 1, contiguous, what + " backward_frozen");
}

TEST(Proxies, BytesMovedMatchTheModelAndWarpAccessesAreCoalesced) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    check<__half>({8, 64, 28, 28}, order);
    check<__nv_bfloat16>({4, 256, 14, 14}, order);
    check<float>({8, 32, 16, 16}, order);
    check<float>({4, 48, 7, 7}, order);  // S * 4 bytes = 196: not contiguous channels-first
    check<double>({2, 16, 4, 5, 6}, order);
    check<__half>({2048, 64}, order);
  }
}

TEST(Proxies, EveryLaunchIsNamedAfterItsKernel) {
  const TensorDesc desc(DataType::kFloat32, MemoryOrder::kChannelsLast, {4, 8, 4, 4});
  DeviceBuffer<float> x(std::vector<float>(512, 1.0f)), y(512);
  DeviceBytes ws(forward_training_workspace_size(desc));
  sim::ProfileScope scope;
  forward_training(desc, x.data(), y.data(), TrainingForwardArgs<float>{}, {ws.data(), ws.bytes()},
                   nullptr);
  ASSERT_EQ(scope.launches().size(), 3u);
  EXPECT_EQ(scope.launches()[0].name, "cubn::bn_stats");
  EXPECT_EQ(scope.launches()[1].name, "cubn::bn_finalize_stats");
  EXPECT_EQ(scope.launches()[2].name, "cubn::bn_normalize");
}

}  // namespace
