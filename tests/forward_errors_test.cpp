// Bad input to the forward calls: each case gets its error, naming the argument, and leaves every
// output byte and running statistic as it was (sentinel-filled buffers are compared after).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"
#include "support/errors.hpp"

namespace {

using namespace cubn;
using namespace cubn::test;

class ForwardErrors : public DeviceTest {
 protected:
  static constexpr std::int64_t kN = 4, kC = 6, kS = 9;
  const TensorDesc desc_ =
      TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {kN, kC, 3, 3});
  // made in SetUp, after the device check: a GPU build without a device skips instead
  struct Buffers {
    DeviceBuffer<float> x{std::vector<float>(kN * kC * kS, 1.5f)};
    DeviceBuffer<float> y{kN * kC * kS};
    DeviceBuffer<float> rmean{kC}, rvar{kC}, smean{kC}, sinvstd{kC};
    DeviceBytes ws{1 << 16};
  };
  std::unique_ptr<Buffers> b_;
  void SetUp() override {
    DeviceTest::SetUp();
    if (IsSkipped()) return;
    b_ = std::make_unique<Buffers>();
    for (auto* b : outputs()) b->fill_bytes(kSentinel);
    b_->ws.fill(kSentinel);
  }
  std::vector<DeviceBuffer<float>*> outputs() {
    return {&b_->y, &b_->rmean, &b_->rvar, &b_->smean, &b_->sinvstd};
  }
  float* x() { return b_->x.data(); }
  float* y() { return b_->y.data(); }

  TrainingForwardArgs<float> training_args() {
    TrainingForwardArgs<float> a;
    a.running = {b_->rmean.data(), b_->rvar.data()};
    a.saved = {b_->smean.data(), b_->sinvstd.data()};
    return a;
  }
  Workspace workspace() { return {b_->ws.data(), b_->ws.bytes()}; }

  void expect_error(const std::function<void()>& call, Status status, const std::string& needle) {
    std::vector<const DeviceBytes*> out;
    for (auto* b : outputs()) out.push_back(&b->bytes());
    expect_error_and_no_writes(call, status, needle, out);
  }

  void train(const TensorDesc& d, const void* x, void* y, const TrainingForwardArgs<float>& a,
             Workspace w) {
    forward_training(d, x, y, a, w, nullptr);
  }
};

TEST_F(ForwardErrors, NullAndMisalignedTensors) {
  expect_error([&] { train(desc_, nullptr, y(), training_args(), workspace()); },
               Status::kInvalidArgument, "x is null");
  expect_error([&] { train(desc_, x(), nullptr, training_args(), workspace()); },
               Status::kInvalidArgument, "y is null");
  const void* odd = reinterpret_cast<const char*>(x()) + 2;
  expect_error([&] { train(desc_, odd, y(), training_args(), workspace()); },
               Status::kMisalignedOperand, "x is not aligned to 4 bytes");
  auto a = training_args();
  a.running.mean = reinterpret_cast<float*>(reinterpret_cast<char*>(b_->rmean.data()) + 1);
  expect_error([&] { train(desc_, x(), y(), a, workspace()); }, Status::kMisalignedOperand,
               "args.running.mean");
}

TEST_F(ForwardErrors, PartialOverlapOfInputAndOutput) {
  DeviceBuffer<float> big(kN * kC * kS + 1);
  expect_error([&] { train(desc_, big.data(), big.data() + 1, training_args(), workspace()); },
               Status::kInvalidArgument, "y overlaps x");
}

// The workspace's first forward_training_workspace_size() bytes are written while every other
// argument is read or written: a workspace overlapping any of them is refused by name, nothing
// written; one that ends where y begins is taken. (The fuzzer found the overlap unchecked: the
// statistics written into the Welford partials gave a count overflow.)
TEST_F(ForwardErrors, WorkspaceApartFromEveryArgument) {
  const std::size_t need = forward_training_workspace_size(desc_);
  const std::size_t y_bytes = kN * kC * kS * sizeof(float);
  DeviceBytes pool(need + y_bytes);
  pool.fill(kSentinel);
  auto* base = static_cast<unsigned char*>(pool.data());
  auto* inside = reinterpret_cast<float*>(base + need - 16);  // the workspace's last 16 bytes
  auto refused =
      [&](const std::function<void(TrainingForwardArgs<float>&, const void*&, void*&)>& place,
          const std::string& name) {
        auto a = training_args();
        const void* xp = x();
        void* yp = y();
        place(a, xp, yp);
        std::vector<const DeviceBytes*> out{&pool};
        for (auto* b : outputs()) out.push_back(&b->bytes());
        expect_error_and_no_writes(
            [&] {
              train(desc_, xp, yp, a, {base, need});
            },
            Status::kInvalidArgument, "workspace overlaps " + name, out);
      };
  refused([&](auto&, const void*& xp, void*&) { xp = inside; }, "x");
  refused([&](auto&, const void*&, void*& yp) { yp = inside; }, "y");
  refused([&](auto& a, const void*&, void*&) { a.affine.scale = inside; }, "args.affine.scale");
  refused([&](auto& a, const void*&, void*&) { a.affine.offset = inside; }, "args.affine.offset");
  refused([&](auto& a, const void*&, void*&) { a.running.mean = inside; }, "args.running.mean");
  refused([&](auto& a, const void*&, void*&) { a.running.var = inside; }, "args.running.var");
  refused([&](auto& a, const void*&, void*&) { a.saved.mean = inside; }, "args.saved.mean");
  refused([&](auto& a, const void*&, void*&) { a.saved.invstd = inside; }, "args.saved.invstd");
  refused([&](auto& a, const void*&, void*&) { a.epilogue.residual = inside; },
          "args.epilogue.residual");
  refused(
      [&](auto& a, const void*&, void*&) {
        a.epilogue.activation = Activation::kSilu;
        a.epilogue.reserve = {inside, activation_reserve_size(desc_, Activation::kSilu)};
      },
      "args.epilogue.reserve");
  // adjacent is apart: y right after the workspace's last byte, same y as elsewhere
  DeviceBuffer<float> elsewhere(kN * kC * kS);
  pool.fill(0);
  train(desc_, x(), elsewhere.data(), training_args(), {base, need});
  pool.fill(0);
  train(desc_, x(), base + need, training_args(), {base, need});
  device_sync();
  std::vector<float> adjacent(kN * kC * kS);
  pool.download(adjacent.data(), y_bytes, need);
  EXPECT_EQ(adjacent, elsewhere.download());
}

TEST_F(ForwardErrors, BadDescriptors) {
  auto with = [&](TensorDesc d) {
    return [this, d] { train(d, x(), y(), training_args(), workspace()); };
  };
  expect_error(with(TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {kN})),
               Status::kInvalidLayout, "x_desc has rank 1");
  expect_error(
      with(TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {1, 2, 3, 4, 5, 6})),
      Status::kInvalidLayout, "rank 6");
  expect_error(with(TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {kN, 0, 3, 3})),
               Status::kInvalidArgument, "x_desc.dims[1] (C) is 0");
  expect_error(with(TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {kN, kC, -3, 3})),
               Status::kInvalidArgument, "x_desc.dims[2]");
  expect_error(with(TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst,
                               {std::int64_t{1} << 40, std::int64_t{1} << 30})),
               Status::kSizeOverflow, "x_desc has more elements");
  TensorDesc bad_type = desc_;
  bad_type.dtype = static_cast<DataType>(42);
  expect_error(with(bad_type), Status::kInvalidDataType, "x_desc.dtype");
  TensorDesc bad_order = desc_;
  bad_order.order = static_cast<MemoryOrder>(7);
  expect_error(with(bad_order), Status::kInvalidLayout, "x_desc.order");
  // fp64 tensors take double parameters
  expect_error(with(TensorDesc(DataType::kFloat64, MemoryOrder::kChannelsFirst, {kN, kC, 3, 3})),
               Status::kInvalidDataType, "fp64");
}

TEST_F(ForwardErrors, OneElementPerChannelInTraining) {
  const TensorDesc one(DataType::kFloat32, MemoryOrder::kChannelsLast, {1, kC, 1, 1});
  expect_error([&] { train(one, x(), y(), training_args(), workspace()); },
               Status::kInvalidArgument, "one element per channel");
}

TEST_F(ForwardErrors, EpsilonAndMomentumOutOfRange) {
  for (double eps : {0.0, -1e-5, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    auto a = training_args();
    a.epsilon = eps;
    expect_error([&] { train(desc_, x(), y(), a, workspace()); }, Status::kInvalidArgument,
                 "epsilon");
  }
  for (double m : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    auto a = training_args();
    a.momentum.mean = m;
    expect_error([&] { train(desc_, x(), y(), a, workspace()); }, Status::kInvalidArgument,
                 "args.momentum.mean");
    a = training_args();
    a.momentum.var = m;
    expect_error([&] { train(desc_, x(), y(), a, workspace()); }, Status::kInvalidArgument,
                 "args.momentum.var");
  }
}

// Numbers in messages print as given, not rounded to six decimals ("-0.000000").
TEST_F(ForwardErrors, MessagesPrintNumbersAsGiven) {
  auto a = training_args();
  a.epsilon = -1e-9;
  expect_error([&] { train(desc_, x(), y(), a, workspace()); }, Status::kInvalidArgument,
               "epsilon is -1e-09;");
  a = training_args();
  a.momentum.var = 1.0000001;
  expect_error([&] { train(desc_, x(), y(), a, workspace()); }, Status::kInvalidArgument,
               "args.momentum.var is 1.0000001;");
}

TEST_F(ForwardErrors, WorkspaceTooSmallNullOrMisaligned) {
  const std::size_t need = forward_training_workspace_size(desc_);
  ASSERT_LE(need, b_->ws.bytes());
  expect_error(
      [&] {
        train(desc_, x(), y(), training_args(), {b_->ws.data(), need - 1});
      },
      Status::kWorkspaceTooSmall, "workspace.bytes");
  expect_error(
      [&] {
        train(desc_, x(), y(), training_args(), {nullptr, need});
      },
      Status::kInvalidArgument, "workspace.ptr is null");
  expect_error(
      [&] {
        train(desc_, x(), y(), training_args(), {static_cast<char*>(b_->ws.data()) + 8, need});
      },
      Status::kMisalignedOperand, "workspace.ptr");
}

TEST_F(ForwardErrors, InferenceNeedsBothRunningStatistics) {
  InferenceForwardArgs<float> a;
  a.running = {b_->rmean.data(), nullptr};
  expect_error([&] { forward_inference(desc_, x(), y(), a, nullptr); }, Status::kInvalidArgument,
               "args.running.var is null");
  a.running = {nullptr, b_->rvar.data()};
  expect_error([&] { forward_inference(desc_, x(), y(), a, nullptr); }, Status::kInvalidArgument,
               "args.running.mean is null");
  a.running = {b_->rmean.data(), b_->rvar.data()};
  a.epsilon = 0;
  expect_error([&] { forward_inference(desc_, x(), y(), a, nullptr); }, Status::kInvalidArgument,
               "epsilon");
}

TEST(ForwardSizes, TensorsPastTwoToTheThirtyOneByShapeArithmetic) {
  // No allocation: the size query plans the call. 2^38 elements channels-first and 2^36
  // channels-last, and C past 2^31 / 2^16.
  const TensorDesc huge_cf(DataType::kFloat16, MemoryOrder::kChannelsFirst,
                           {std::int64_t{1} << 20, 64, 64, 64});
  const TensorDesc huge_cl(DataType::kBFloat16, MemoryOrder::kChannelsLast,
                           {std::int64_t{1} << 16, 1024, 32, 32});
  const TensorDesc many_channels(DataType::kFloat32, MemoryOrder::kChannelsLast,
                                 {4, std::int64_t{1} << 24});
  try {
    for (const TensorDesc& d : {huge_cf, huge_cl, many_channels}) {
      const std::size_t bytes = forward_training_workspace_size(d);
      EXPECT_GT(bytes, 0u);
      // at most 65535 splits per channel, 16 bytes per partial state, plus a and b
      EXPECT_LE(bytes,
                65535u * static_cast<std::size_t>(d.dims[1]) * 16 + 2 * 4 * d.dims[1] + 1024);
    }
  } catch (const Error& e) {
    if (e.status() != Status::kCudaError) throw;
    GTEST_SKIP() << "the size query needs the device's properties: " << e.what();
  }
}

}  // namespace
