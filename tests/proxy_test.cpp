// Performance proxies on the executor (no GPU needed): the global-memory bytes each call moves
// equal the byte model, calls launch the planned number of kernels (training forward and backward
// at most 2), every access of the benchmark's shape families moves at least 12 bytes per lane with
// aligned pointers, and warp accesses of contiguous shapes use at least 90% of the 32-byte sectors
// they touch. See bench/proxy_report.cpp for the full report.
//
// Model, in passes over the tensor (reads + writes): forward training r + 1 + 1 (x for the
// statistics, x to normalize, y), inference 1 + 1, backward training 2r + 2 + 1 (dy and x for the
// sums, dy and x for dx, dx), frozen backward dx 1 + 1 (dy, dx), where r is the reduction's
// passes: 1, or a little more on channels-first planes that do not start on a 16-byte boundary,
// whose shared edge packs both neighbouring channels load (detail::reduce_loaded_elements).
// The persistent training path, where the tensor fits on chip: forward r + l + 1, backward
// 2r + 2l + 1, in one launch, where l is the fraction of elements past the last whole vector
// (fewer than 16 bytes' worth, read once more to be written).
// The split-phase calls (cubn/distributed.hpp) stream: forward local r (x), apply 1 + 1 (x, y)
// after the merge kernel; backward local 2r (dy, x), apply 2 + 1 (dy, x, dx): the streaming
// single call's passes, one more over x (backward dy and x) than the persistent one where the
// tensor fits on chip, for the collective between the phases.
// Per-channel vectors, the ranks' records, and the one element per channel the statistics take as
// their shift, are not counted.
// The fused epilogue (FusedCallsMatchTheirByteModel, on shapes without edge packs or leftovers)
// adds: the residual z, read once per pass that writes (forward), or per pass (SiLU's backward,
// which recomputes p); dz, written once; the ReLU mask, written by the forward (fp16/bf16: one
// byte per 8-element vector, numel / 8 bytes; fp32 and fp64, whose vectors own a nibble or two
// bits of a byte, set their bits with word atomics: 4 bytes per vector as the executor counts
// them) and read by every backward pass (one byte per vector). Warp accesses stay within 90% of the
// sectors they touch, except ReLU's over channels-first planes under 64 elements: a plane's mask
// is then under 8 bytes, and a warp's lanes, on different planes, each touch a sector for a byte
// or two of it (0.65 to 0.83 overall on 4 x 4 planes; 1.0 on 16 x 16).
// "Contiguous" shapes: every row of the contiguous extent (S channels-first, C channels-last)
// starts on a 32-byte sector and the pointers are 256-byte aligned (as cudaMalloc's); the
// scalar fallback for misaligned pointers is not held to the bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "cubn/sim/executor.hpp"
#include "device_info.hpp"
#include "plan.hpp"
#include "problem.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"

namespace {

using namespace cubn;
using namespace cubn::test;

struct Traffic {
  double read_passes = 0, write_passes = 0;
  std::uint64_t bytes = 0, lane_accesses = 0;
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
    t.bytes += k.read_bytes + k.write_bytes;
    t.lane_accesses += k.lane_accesses;
  }
  return t;
}

struct Expect {
  double reads, writes;
  std::size_t launches;
};

void expect_traffic(const Traffic& t, const Expect& e, bool contiguous, double min_lane_bytes,
                    const std::string& what) {
  EXPECT_NEAR(t.read_passes, e.reads, 1e-12) << what;
  EXPECT_NEAR(t.write_passes, e.writes, 1e-12) << what;
  EXPECT_EQ(t.kernels.size(), e.launches) << what << ": kernel launches";
  const double per_lane = static_cast<double>(t.bytes) / static_cast<double>(t.lane_accesses);
  EXPECT_GE(per_lane, min_lane_bytes) << what << ": bytes per lane access";
  if (!contiguous) return;
  for (const auto& k : t.kernels) {
    if (k.warp_accesses == 0) continue;
    EXPECT_GE(k.sector_efficiency(), 0.9) << what << " " << k.name << ": " << k.sectors_needed
                                          << " sectors needed, " << k.sectors_touched << " touched";
  }
}

// Every call on one shape against the model. min_lane_bytes: what each call must move per lane
// access (0: not held).
template <class T>
void check(const Dims& dims, MemoryOrder order, double min_lane_bytes = 0) {
  using P = param_of<T>;
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const auto d = make_data<T>(dims, order, 1);
  const std::size_t C = static_cast<std::size_t>(dims[1]);
  const double bytes = static_cast<double>(d.x.size() * sizeof(T));
  const std::int64_t extent = order == MemoryOrder::kChannelsFirst ? d.shape.s() : d.shape.c();
  const bool contiguous = extent * static_cast<std::int64_t>(sizeof(T)) % 32 == 0;
  const std::string what = std::string(to_string(dtype_of<T>())) + " " + shape_string(dims, order);
  const auto p = detail::canonicalize("test", "x", desc);
  const auto& dev = detail::current_device_info();
  const double r = static_cast<double>(detail::reduce_loaded_elements(p, 16 / sizeof(T))) /
                   static_cast<double>(p.numel);
  const double l = static_cast<double>(p.numel % (16 / sizeof(T))) / static_cast<double>(p.numel);
  const std::size_t training_launches = [&] {
    const ForcePath streaming(detail::Path::kStreaming);
    return detail::plan_training(p, dev, true, true).launches();
  }();
  EXPECT_LE(training_launches, 2u) << what;
  // the persistent model holds where the tensor fits on chip; elsewhere part is read again
  const bool fits[2] = {detail::plan_persistent(p, dev, true, 1).kept == 1.0,
                        detail::plan_persistent(p, dev, true, 2).kept == 1.0};
  DeviceBuffer<T> x(d.x), y(d.x.size()), dy(d.x), dx(d.x.size());
  DeviceBuffer<P> rm(std::vector<P>(C, 0)), rv(std::vector<P>(C, 1)), sm(C), si(C), ds(C), dof(C);
  DeviceBytes ws(std::max(forward_training_workspace_size(desc), backward_workspace_size(desc)));
  const Workspace w{ws.data(), ws.bytes()};

  TrainingForwardArgs<P> ta;
  ta.running = {rm.data(), rv.data()};
  ta.saved = {sm.data(), si.data()};
  TrainingBackwardArgs<P> ba;
  ba.saved = {sm.data(), si.data()};
  ba.grads = {ds.data(), dof.data()};
  for (const auto path : {detail::Path::kStreaming, detail::Path::kPersistent}) {
    const bool persistent = path == detail::Path::kPersistent;
    const std::string how = persistent ? " persistent" : " streaming";
    const ForcePath forced(path);
    const auto forward =
        profile(bytes, [&] { forward_training(desc, x.data(), y.data(), ta, w, nullptr); });
    const auto backward = profile(
        bytes, [&] { backward_training(desc, x.data(), dy.data(), dx.data(), ba, w, nullptr); });
    if (!persistent) {
      expect_traffic(forward, {r + 1, 1, training_launches}, contiguous, min_lane_bytes,
                     what + how + " forward_training");
      expect_traffic(backward, {2 * r + 2, 1, 2}, contiguous, min_lane_bytes,
                     what + how + " backward_training");
      continue;
    }
    if (fits[0]) {
      expect_traffic(forward, {r + l, 1, 1}, contiguous, min_lane_bytes,
                     what + how + " forward_training");
    } else {
      EXPECT_LT(forward.read_passes, r + 1) << what << how << ": part kept on chip";
    }
    if (fits[1]) {
      expect_traffic(backward, {2 * r + 2 * l, 1, 1}, contiguous, min_lane_bytes,
                     what + how + " backward_training");
    } else {
      EXPECT_LT(backward.read_passes, 2 * r + 2) << what << how << ": part kept on chip";
    }
  }
  InferenceForwardArgs<P> ia;
  ia.running = {rm.data(), rv.data()};
  expect_traffic(profile(bytes, [&] { forward_inference(desc, x.data(), y.data(), ia, nullptr); }),
                 {1, 1, 1}, contiguous, min_lane_bytes, what + " forward_inference");
  FrozenBackwardArgs<P> fa;
  fa.running = {rm.data(), rv.data()};
  expect_traffic(
      profile(bytes,
              [&] { backward_frozen(desc, x.data(), dy.data(), dx.data(), fa, w, nullptr); }),
      {1, 1, 1}, contiguous, min_lane_bytes, what + " backward_frozen");

  // the split-phase calls (two ranks' worth of records, this tensor as both): local x (dy and x)
  // r, apply 1 + 1 (2 + 1) with the small merge kernel, which moves no tensor
  const std::size_t record = local_stats_bytes(desc);
  DeviceBytes local(record), gathered(2 * record);
  const GatheredRecords both{gathered.data(), gathered.bytes(), 2};
  expect_traffic(profile(bytes,
                         [&] {
                           forward_training_local(desc, x.data(), {local.data(), record}, w,
                                                  nullptr);
                         }),
                 {r, 0, 1}, contiguous, min_lane_bytes, what + " forward_training_local");
  expect_traffic(
      profile(bytes,
              [&] { forward_training_apply(desc, x.data(), y.data(), ta, both, w, nullptr); }),
      {1, 1, 2}, contiguous, min_lane_bytes, what + " forward_training_apply");
  expect_traffic(profile(bytes,
                         [&] {
                           backward_training_local(desc, x.data(), dy.data(), ba,
                                                   {local.data(), record}, w, nullptr);
                         }),
                 {2 * r, 0, 1}, contiguous, min_lane_bytes, what + " backward_training_local");
  TrainingBackwardArgs<P> bapply = ba;
  bapply.grads = {};
  expect_traffic(profile(bytes,
                         [&] {
                           backward_training_apply(desc, x.data(), dy.data(), dx.data(), bapply,
                                                   both, w, nullptr);
                         }),
                 {2, 1, 2}, contiguous, min_lane_bytes, what + " backward_training_apply");
}

// The fused calls of every variant against the model in the file comment, both paths.
template <class T>
void check_fused(const Dims& dims, MemoryOrder order) {
  using P = param_of<T>;
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const auto d = make_data<T>(dims, order, 1);
  const std::size_t C = static_cast<std::size_t>(dims[1]);
  constexpr int V = static_cast<int>(16 / sizeof(T));
  const double bytes = static_cast<double>(d.x.size() * sizeof(T));
  const double packs = static_cast<double>(d.x.size()) / V;
  const double mask_write = (V == 8 ? packs : 4 * packs) / bytes, mask_read = packs / bytes;
  const auto p = detail::canonicalize("test", "x", desc);
  const auto& dev = detail::current_device_info();
  ASSERT_EQ(detail::reduce_loaded_elements(p, V), p.numel) << "a shape without edge packs";
  ASSERT_EQ(p.numel % V, 0) << "a shape without leftovers";
  const std::size_t training_launches = [&] {
    const ForcePath streaming(detail::Path::kStreaming);
    return detail::plan_training(p, dev, true, true).launches();
  }();
  ASSERT_EQ(detail::plan_persistent(p, dev, true, 2).kept, 1.0) << "a shape that fits on chip";
  DeviceBuffer<T> x(d.x), z(d.x), y(d.x.size()), dy(d.x), dx(d.x.size()), dz(d.x.size());
  DeviceBuffer<P> rm(std::vector<P>(C, 0)), rv(std::vector<P>(C, 1)), sm(C), si(C), ds(C), dof(C);
  DeviceBytes ws(std::max(forward_training_workspace_size(desc), backward_workspace_size(desc)));
  DeviceBytes reserve(std::max(activation_reserve_size(desc, Activation::kRelu),
                               activation_reserve_size(desc, Activation::kSilu)));
  const Workspace w{ws.data(), ws.bytes()};
  for (const Activation act : {Activation::kNone, Activation::kRelu, Activation::kSilu})
    for (const bool residual : {false, true}) {
      if (act == Activation::kNone && !residual) continue;  // the plain calls: the test above
      const bool relu = act == Activation::kRelu, silu = act == Activation::kSilu;
      const double zr = residual ? 1 : 0, mw = relu ? mask_write : 0, mr = relu ? mask_read : 0;
      const double sz = silu ? zr : 0;  // SiLU's backward reads z again
      const Epilogue fe{act, residual ? z.data() : nullptr, {reserve.data(), reserve.bytes()}};
      const EpilogueGrad be{act, residual ? z.data() : nullptr, {reserve.data(), reserve.bytes()},
                            residual ? dz.data() : nullptr};
      const std::string what = std::string(to_string(dtype_of<T>())) + " " +
                               shape_string(dims, order) + (relu ? " relu" : silu ? " silu" : "") +
                               (residual ? " +z" : "");
      const bool coalesced = !(relu && order == MemoryOrder::kChannelsFirst && d.shape.s() < 64);
      TrainingForwardArgs<P> ta;
      ta.saved = {sm.data(), si.data()};
      ta.epilogue = fe;
      TrainingBackwardArgs<P> ba;
      ba.saved = {sm.data(), si.data()};
      ba.grads = {ds.data(), dof.data()};
      ba.epilogue = be;
      for (const auto path : {detail::Path::kStreaming, detail::Path::kPersistent}) {
        const bool persistent = path == detail::Path::kPersistent;
        const ForcePath forced(path);
        const std::string how = what + (persistent ? " persistent" : " streaming");
        expect_traffic(
            profile(bytes, [&] { forward_training(desc, x.data(), y.data(), ta, w, nullptr); }),
            {(persistent ? 1 : 2) + zr, 1 + mw, persistent ? 1 : training_launches}, coalesced, 0,
            how + " forward_training");
        expect_traffic(profile(bytes,
                               [&] {
                                 backward_training(desc, x.data(), dy.data(), dx.data(), ba, w,
                                                   nullptr);
                               }),
                       {(persistent ? 2 : 4) + 2 * mr + 2 * sz, 1 + zr, persistent ? 1u : 2u},
                       coalesced, 0, how + " backward_training");
      }
      InferenceForwardArgs<P> ia;
      ia.running = {rm.data(), rv.data()};
      ia.epilogue = fe;
      expect_traffic(
          profile(bytes, [&] { forward_inference(desc, x.data(), y.data(), ia, nullptr); }),
          {1 + zr, 1 + mw, 1}, coalesced, 0, what + " forward_inference");
      FrozenBackwardArgs<P> fa;
      fa.running = {rm.data(), rv.data()};
      fa.epilogue = be;
      expect_traffic(
          profile(bytes,
                  [&] { backward_frozen(desc, x.data(), dy.data(), dx.data(), fa, w, nullptr); }),
          {1 + mr + (silu ? 1 + zr : 0), 1 + zr, 1}, coalesced, 0, what + " backward_frozen");
    }
}

TEST(Proxies, FusedCallsMatchTheirByteModel) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    check_fused<__half>({4, 8, 16, 16}, order);
    check_fused<__nv_bfloat16>({8, 64, 4, 4}, order);
    check_fused<float>({4, 8, 16, 16}, order);
    check_fused<float>({8, 64, 4, 4}, order);
    check_fused<double>({2, 16, 4, 4}, order);
  }
}

TEST(Proxies, BytesMovedMatchTheModelAndWarpAccessesAreCoalesced) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    check<__half>({8, 64, 28, 28}, order);
    check<__nv_bfloat16>({4, 256, 14, 14}, order);
    check<float>({8, 32, 16, 16}, order);
    check<float>({4, 48, 7, 7}, order);  // S * 4 bytes = 196: not contiguous channels-first
    check<double>({2, 16, 4, 5, 6}, order);
    check<__half>({2048, 64}, order);
    check<__nv_bfloat16>({6, 100, 3, 5}, order);  // C = 100, planes of 15
    check<float>({3, 7, 2, 2}, order);            // planes under two vectors, leftovers
  }
}

// The benchmark's shape families (bench/cubn_bench.cu) at executor size: the same plane sizes
// channels-first and the same channel counts channels-last, in every benchmark dtype. With
// aligned pointers every call moves at least 12 bytes per lane access (16 is the vector; edge
// packs and leftovers cost a little).
template <class T>
void benchmark_families() {
  const std::vector<Dims> planes = {{1, 4, 112, 112},  {2, 8, 56, 56}, {2, 16, 28, 28},
                                    {4, 64, 7, 7},     {1, 64, 8, 8},  {8, 32, 16, 16},
                                    {1, 2, 32, 32, 32}};
  const std::vector<Dims> columns = {{1, 64, 8, 8},   {1, 256, 4, 4}, {1, 512, 4, 4},
                                     {2, 2048, 2, 2}, {64, 1024},     {8, 32, 16, 16},
                                     {1, 64, 4, 8, 8}};
  for (const Dims& d : planes) check<T>(d, MemoryOrder::kChannelsFirst, 12);
  for (const Dims& d : columns) check<T>(d, MemoryOrder::kChannelsLast, 12);
  check<T>({256, 1024}, MemoryOrder::kChannelsFirst, 12);  // BatchNorm1d: (N, C) is [N][C]
}

TEST(Proxies, BenchmarkFamiliesMoveTwelveBytesPerLaneAccessFp32) { benchmark_families<float>(); }
TEST(Proxies, BenchmarkFamiliesMoveTwelveBytesPerLaneAccessFp16) { benchmark_families<__half>(); }
TEST(Proxies, BenchmarkFamiliesMoveTwelveBytesPerLaneAccessBf16) {
  benchmark_families<__nv_bfloat16>();
}

// The names nsys shows, and the launch counts: a small training forward in one launch (statistics,
// finishing and normalization), a larger one in one cooperative launch, or streaming in two.
TEST(Proxies, EveryLaunchIsNamedAfterItsKernel) {
  const auto names = [](const Dims& dims, detail::Path path = detail::Path::kAuto) {
    const ForcePath forced(path);
    const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsLast, dims);
    const auto d = make_data<float>(dims, MemoryOrder::kChannelsLast, 1);
    DeviceBuffer<float> x(d.x), y(d.x.size());
    DeviceBytes ws(forward_training_workspace_size(desc));
    sim::ProfileScope scope;
    forward_training(desc, x.data(), y.data(), TrainingForwardArgs<float>{},
                     {ws.data(), ws.bytes()}, nullptr);
    std::vector<std::string> out;
    for (const auto& k : scope.launches()) out.push_back(k.name);
    return out;
  };
  EXPECT_EQ(names({4, 8, 4, 4}), std::vector<std::string>{"cubn::bn_stats"});
  EXPECT_EQ(names({64, 8, 16, 16}), std::vector<std::string>{"cubn::bn_forward_persistent"});
  EXPECT_EQ(names({64, 8, 16, 16}, detail::Path::kStreaming),
            (std::vector<std::string>{"cubn::bn_stats", "cubn::bn_normalize"}));
}

// Variable-length batches (cubn::Lengths): the masked loops read only the packs that hold a valid
// element, so a call reads the valid bytes plus at most one partly padded vector per sequence and
// channel (channels-first planes of L; channels-last rows are whole: C here is a multiple of the
// vector), and writes the whole tensor with Padding::kZero or only the valid bytes with
// kUntouched (the streaming path; the persistent path reads each input once). Model in valid-byte
// passes v (the valid elements' bytes, each sequence's rounded up to whole vectors, over the
// tensor's): forward training reads 2v (x for the statistics, x to
// normalize), inference v, backward training 4v (dy and x twice), frozen backward dx v (dy) and its
// sums 2v; every call writes 1 pass (kZero) or the valid elements' bytes exactly (kUntouched: a
// partly padded vector is written lane by lane).
TEST(Proxies, CallsWithLengthsReadOnlyTheValidVectors) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (Padding padding : {Padding::kZero, Padding::kUntouched}) {
      const Dims dims{6, 16, 96};
      const std::vector<std::int32_t> lengths{96, 48, 0, 1, 37, 60};
      const TensorDesc desc = make_desc(DataType::kFloat16, order, dims);
      const std::int64_t numel = 6 * 16 * 96, v = 8;
      std::int64_t valid = 0, exact = 0;  // elements read per pass; valid elements
      for (std::int32_t len : lengths) {
        valid += 16 * (order == MemoryOrder::kChannelsFirst ? (len + v - 1) / v * v : len);
        exact += 16 * len;
      }
      const double vp = static_cast<double>(valid) / static_cast<double>(numel);
      const double wp =
          padding == Padding::kZero ? 1.0 : static_cast<double>(exact) / static_cast<double>(numel);
      const std::string what = std::string(to_string(order)) +
                               (padding == Padding::kZero ? " zero" : " untouched");
      const Data<__half> d = make_data<__half>(dims, order, 3);
      DeviceBuffer<__half> x(d.x), y(d.x.size()), dy(d.x);
      DeviceBuffer<float> mean(std::vector<float>(16, 0.f)), var(std::vector<float>(16, 1.f)),
          invstd(std::vector<float>(16, 1.f)), dscale(16), doffset(16);
      DeviceBuffer<std::int32_t> len(lengths);
      cubn::Lengths arg;
      arg.ptr = len.data();
      arg.padding = padding;
      DeviceBytes fws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
      const double bytes = static_cast<double>(numel) * 2;
      const auto check = [&](const char* call, const std::function<void()>& run, double reads,
                             double writes) {
        const Traffic t = profile(bytes, run);
        EXPECT_NEAR(t.read_passes, reads, 1e-12) << what << " " << call;
        EXPECT_NEAR(t.write_passes, writes, 1e-12) << what << " " << call;
      };
      ASSERT_LT(vp, 0.55) << what;  // about half the batch is padding
      auto streaming = std::make_unique<ForcePath>(detail::Path::kStreaming);
      const auto forward = [&] {
        TrainingForwardArgs<float> a;
        a.saved = {mean.data(), invstd.data()};
        a.lengths = arg;
        forward_training(desc, x.data(), y.data(), a, {fws.data(), fws.bytes()}, nullptr);
      };
      const auto backward = [&] {
        TrainingBackwardArgs<float> a;
        a.saved = {mean.data(), invstd.data()};
        a.grads = {dscale.data(), doffset.data()};
        a.lengths = arg;
        backward_training(desc, x.data(), dy.data(), y.data(), a, {bws.data(), bws.bytes()},
                          nullptr);
      };
      check("forward_training", forward, 2 * vp, wp);
      check("forward_inference", [&] {
        InferenceForwardArgs<float> a;
        a.running = {mean.data(), var.data()};
        a.lengths = arg;
        forward_inference(desc, x.data(), y.data(), a, nullptr);
      }, vp, wp);
      check("backward_training", backward, 4 * vp, wp);
      check("backward_frozen", [&] {
        FrozenBackwardArgs<float> a;
        a.running = {mean.data(), var.data()};
        a.grads = {dscale.data(), doffset.data()};
        a.lengths = arg;
        backward_frozen(desc, x.data(), dy.data(), y.data(), a, {bws.data(), bws.bytes()},
                        nullptr);
      }, 3 * vp, wp);
      // the fused epilogue: z read for the vectors with a valid element only, ReLU's mask (a bit per
      // 2-byte element: 1/16 pass) written whole (0 at padded positions) and read for the vectors
      // with a valid element by each backward pass; dz written as dx
      DeviceBuffer<__half> z(d.x), dz(d.x.size());
      const std::size_t mask_bytes = activation_reserve_size(desc, Activation::kRelu);
      DeviceBytes mask(mask_bytes);
      const double mp = 1.0 / 16;
      check("forward_training relu+z", [&] {
        TrainingForwardArgs<float> a;
        a.saved = {mean.data(), invstd.data()};
        a.epilogue = {Activation::kRelu, z.data(), {mask.data(), mask_bytes}};
        a.lengths = arg;
        forward_training(desc, x.data(), y.data(), a, {fws.data(), fws.bytes()}, nullptr);
      }, 3 * vp, wp + mp);
      check("backward_training relu+z", [&] {
        TrainingBackwardArgs<float> a;
        a.saved = {mean.data(), invstd.data()};
        a.grads = {dscale.data(), doffset.data()};
        a.epilogue = {Activation::kRelu, z.data(), {mask.data(), mask_bytes}, dz.data()};
        a.lengths = arg;
        backward_training(desc, x.data(), dy.data(), y.data(), a, {bws.data(), bws.bytes()},
                          nullptr);
      }, 4 * vp + 2 * vp * mp, 2 * wp);
      // the persistent path keeps the vectors with a valid element on chip (those alone take
      // slots): x read once forward, dy and x once backward
      streaming.reset();
      const ForcePath persistent(detail::Path::kPersistent);
      check("persistent forward_training", forward, vp, wp);
      check("persistent backward_training", backward, 2 * vp, wp);
    }
}

}  // namespace
