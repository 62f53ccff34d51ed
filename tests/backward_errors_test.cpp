// Bad input to the backward calls: each case gets its error, naming the argument, and leaves dx
// and the parameter gradients as they were.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "support/device.hpp"
#include "support/errors.hpp"

namespace {

using namespace cubn;
using namespace cubn::test;

class BackwardErrors : public DeviceTest {
 protected:
  static constexpr std::int64_t kN = 4, kC = 6, kS = 9;
  const TensorDesc desc_ =
      TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsLast, {kN, kC, 3, 3});
  struct Buffers {  // made after the device check
    DeviceBuffer<float> x{std::vector<float>(kN * kC * kS, 1.0f)};
    DeviceBuffer<float> dy{std::vector<float>(kN * kC * kS, 0.5f)};
    DeviceBuffer<float> dx{kN * kC * kS}, dscale{kC}, doffset{kC};
    DeviceBuffer<float> mean{std::vector<float>(kC, 0.0f)}, invstd{std::vector<float>(kC, 1.0f)};
    DeviceBytes ws{1 << 16};
  };
  std::unique_ptr<Buffers> b_;

  void SetUp() override {
    DeviceTest::SetUp();
    if (IsSkipped()) return;
    b_ = std::make_unique<Buffers>();
    for (auto* o : {&b_->dx, &b_->dscale, &b_->doffset}) o->fill_bytes(kSentinel);
  }
  TrainingBackwardArgs<float> args() {
    TrainingBackwardArgs<float> a;
    a.saved = {b_->mean.data(), b_->invstd.data()};
    a.grads = {b_->dscale.data(), b_->doffset.data()};
    return a;
  }
  FrozenBackwardArgs<float> frozen() {
    FrozenBackwardArgs<float> a;
    a.running = {b_->mean.data(), b_->invstd.data()};
    a.grads = {b_->dscale.data(), b_->doffset.data()};
    return a;
  }
  Workspace ws() { return {b_->ws.data(), b_->ws.bytes()}; }
  void expect_error(const std::function<void()>& call, Status status, const std::string& needle) {
    expect_error_and_no_writes(call, status, needle,
                               {&b_->dx.bytes(), &b_->dscale.bytes(), &b_->doffset.bytes()});
  }
  void train(const void* x, const void* dy, void* dx, const TrainingBackwardArgs<float>& a,
             Workspace w) {
    backward_training(desc_, x, dy, dx, a, w, nullptr);
  }
};

TEST_F(BackwardErrors, TrainingArguments) {
  float* x = b_->x.data();
  float* dy = b_->dy.data();
  float* dx = b_->dx.data();
  expect_error([&] { train(nullptr, dy, dx, args(), ws()); }, Status::kInvalidArgument,
               "x is null");
  expect_error([&] { train(x, nullptr, dx, args(), ws()); }, Status::kInvalidArgument,
               "dy is null");
  auto a = args();
  a.saved.invstd = nullptr;
  expect_error([&] { train(x, dy, dx, a, ws()); }, Status::kInvalidArgument,
               "args.saved.invstd is null");
  a = args();
  a.saved.mean = nullptr;
  expect_error([&] { train(x, dy, dx, a, ws()); }, Status::kInvalidArgument,
               "args.saved.mean is null");
  a = args();
  a.grads.dscale = reinterpret_cast<float*>(reinterpret_cast<char*>(b_->dscale.data()) + 2);
  expect_error([&] { train(x, dy, dx, a, ws()); }, Status::kMisalignedOperand, "args.grads.dscale");
  expect_error([&] { train(x, dy, reinterpret_cast<char*>(dx) + 1, args(), ws()); },
               Status::kMisalignedOperand, "dx is not aligned");
  const std::size_t need = backward_workspace_size(desc_);
  expect_error(
      [&] {
        train(x, dy, dx, args(), {b_->ws.data(), need - 1});
      },
      Status::kWorkspaceTooSmall, "backward_workspace_size");
}

TEST_F(BackwardErrors, PartialOverlaps) {
  DeviceBuffer<float> big(kN * kC * kS + 1);
  big.fill_bytes(0);
  expect_error([&] { train(big.data(), b_->dy.data(), big.data() + 1, args(), ws()); },
               Status::kInvalidArgument, "dx overlaps x");
  expect_error([&] { train(b_->x.data(), big.data(), big.data() + 1, args(), ws()); },
               Status::kInvalidArgument, "dx overlaps dy");
}

TEST_F(BackwardErrors, FrozenArguments) {
  auto call = [&](const void* x, const FrozenBackwardArgs<float>& a) {
    return [=, this] { backward_frozen(desc_, x, b_->dy.data(), b_->dx.data(), a, ws(), nullptr); };
  };
  auto a = frozen();
  a.epsilon = -1;
  expect_error(call(b_->x.data(), a), Status::kInvalidArgument, "epsilon");
  a = frozen();
  a.running.var = nullptr;
  expect_error(call(b_->x.data(), a), Status::kInvalidArgument, "args.running.var is null");
  // dscale needs x; dx and doffset do not
  expect_error(call(nullptr, frozen()), Status::kInvalidArgument, "x is null");
  const TensorDesc f64(DataType::kFloat64, MemoryOrder::kChannelsLast, {kN, kC, 3, 3});
  expect_error(
      [&] {
        backward_frozen(f64, b_->x.data(), b_->dy.data(), b_->dx.data(), frozen(), ws(), nullptr);
      },
      Status::kInvalidDataType, "fp64");
}

// The workspace is written while every other argument is read or written: any overlap is refused
// by name and nothing is written (training and frozen backward; the frozen one uses a workspace
// only for dscale and doffset).
TEST_F(BackwardErrors, WorkspaceApartFromEveryArgument) {
  const std::size_t need = backward_workspace_size(desc_);
  DeviceBytes pool(need);
  auto* inside = reinterpret_cast<float*>(static_cast<unsigned char*>(pool.data()) + need - 16);
  const Workspace w{pool.data(), need};
  auto refused = [&](const std::function<void()>& call, const std::string& name) {
    pool.fill(kSentinel);
    expect_error_and_no_writes(call, Status::kInvalidArgument, "workspace overlaps " + name,
                               {&pool, &b_->dx.bytes(), &b_->dscale.bytes(), &b_->doffset.bytes()});
  };
  float* x = b_->x.data();
  float* dy = b_->dy.data();
  float* dx = b_->dx.data();
  refused([&] { train(inside, dy, dx, args(), w); }, "x");
  refused([&] { train(x, inside, dx, args(), w); }, "dy");
  refused([&] { train(x, dy, inside, args(), w); }, "dx");
  auto with = [&](auto edit) {
    auto a = args();
    edit(a);
    return [=, this] { train(x, dy, dx, a, w); };
  };
  refused(with([&](auto& a) { a.scale = inside; }), "args.scale");
  refused(with([&](auto& a) { a.saved.mean = inside; }), "args.saved.mean");
  refused(with([&](auto& a) { a.saved.invstd = inside; }), "args.saved.invstd");
  refused(with([&](auto& a) { a.grads.dscale = inside; }), "args.grads.dscale");
  refused(with([&](auto& a) { a.grads.doffset = inside; }), "args.grads.doffset");
  refused(with([&](auto& a) { a.epilogue.residual = inside; }), "args.epilogue.residual");
  refused(with([&](auto& a) {
            a.epilogue.residual = b_->x.data();
            a.epilogue.dz = inside;
          }),
          "args.epilogue.dz");
  refused(with([&](auto& a) {
            a.epilogue.activation = Activation::kRelu;
            a.epilogue.reserve = {inside, activation_reserve_size(desc_, Activation::kRelu)};
          }),
          "args.epilogue.reserve");
  auto frozen_with = [&](auto edit) {
    auto a = frozen();
    edit(a);
    return [=, this] { backward_frozen(desc_, x, dy, dx, a, w, nullptr); };
  };
  refused(frozen_with([&](auto& a) { a.offset = inside; }), "args.offset");
  refused(frozen_with([&](auto& a) { a.running.mean = inside; }), "args.running.mean");
  refused(frozen_with([&](auto& a) { a.running.var = inside; }), "args.running.var");
  refused(frozen_with([&](auto& a) { a.grads.doffset = inside; }), "args.grads.doffset");
  refused([&] { backward_frozen(desc_, x, dy, inside, frozen(), w, nullptr); }, "dx");
}

}  // namespace
