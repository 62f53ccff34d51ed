// The planner (host/plan.cpp): launch shapes within device limits and 64-bit geometry for
// tensors far past 2^31 elements, checked by shape arithmetic without allocating them.
#include "plan.hpp"

#include <gtest/gtest.h>

#include <cstdint>

#include "cubn/sim/executor.hpp"
#include "device_info.hpp"
#include "problem.hpp"

namespace {

using namespace cubn;
using cubn::detail::Problem;

Problem problem(DataType t, MemoryOrder o, std::initializer_list<std::int64_t> dims) {
  return cubn::detail::canonicalize("test", "x", TensorDesc(t, o, dims));
}

void expect_within_limits(dim3 g) {
  EXPECT_GE(g.x, 1u);
  EXPECT_GE(g.y, 1u);
  EXPECT_LE(g.y, 65535u);
  EXPECT_LE(g.z, 65535u);
}

TEST(Plan, CanonicalizationFoldsDegenerateOrders) {
  auto p = problem(DataType::kFloat32, MemoryOrder::kChannelsLast, {8, 1, 5, 5});
  EXPECT_EQ(p.order, MemoryOrder::kChannelsFirst);  // C = 1: one contiguous channel
  EXPECT_EQ(p.n, 1);
  EXPECT_EQ(p.s, 200);
  p = problem(DataType::kFloat32, MemoryOrder::kChannelsFirst, {8, 3, 1, 1});
  EXPECT_EQ(p.order, MemoryOrder::kChannelsLast);  // S = 1: [N][C] either way
  EXPECT_EQ(p.m(), 8);
}

TEST(Plan, ChannelsFirstPastTwoToTheThirtyOne) {
  // 2^20 x 64 x 64^2 fp16 = 2^38 elements
  const Problem p = problem(DataType::kFloat16, MemoryOrder::kChannelsFirst, {1 << 20, 64, 64, 64});
  EXPECT_EQ(p.numel, std::int64_t{1} << 38);
  const auto& dev = cubn::detail::current_device_info();
  const auto plan = cubn::detail::plan_training(p, dev, true, true);
  expect_within_limits(plan.stats.grid);
  expect_within_limits(plan.normalize.grid);
  EXPECT_EQ(plan.stats.vec, 8);
  const auto& g = plan.stats.cf;
  // every element is covered: chunks of bx * V span a row, rows times chunks are the tiles
  EXPECT_GE(g.chunks * g.bx * plan.stats.vec, p.s);
  EXPECT_LT((g.chunks - 1) * g.bx * plan.stats.vec, p.s);
  EXPECT_GT(p.n * g.chunks, std::int64_t{1} << 20);
  // the last element's offset needs 64 bits
  EXPECT_GT(((p.n - 1) * p.c + (p.c - 1)) * p.s + p.s - 1, std::int64_t{1} << 31);
  EXPECT_EQ(plan.stats.splits, 17);  // ceil(8 blocks x 132 SMs / 64 channels)
}

TEST(Plan, ChannelsLastPastTwoToTheThirtyOne) {
  const Problem p =
      problem(DataType::kBFloat16, MemoryOrder::kChannelsLast, {1 << 16, 1024, 32, 32});
  const auto plan = cubn::detail::plan_training(p, cubn::detail::current_device_info(), true, true);
  expect_within_limits(plan.stats.grid);
  expect_within_limits(plan.normalize.grid);
  EXPECT_EQ(plan.stats.cl.rows, std::int64_t{1} << 26);
  EXPECT_EQ(plan.stats.grid.x * plan.stats.cl.bx * plan.stats.vec, 1024u);
  EXPECT_EQ(plan.stats.splits, 1056);  // one block covers the 1024 channels: 8 x 132 splits
}

TEST(Plan, WorkspaceDoesNotDependOnPointerAlignment) {
  for (auto o : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Problem p = problem(DataType::kFloat16, o, {32, 64, 56, 56});
    const auto& dev = cubn::detail::current_device_info();
    const auto a = cubn::detail::plan_training(p, dev, true, true);
    const auto b = cubn::detail::plan_training(p, dev, false, false);
    EXPECT_EQ(a.workspace_bytes, b.workspace_bytes);
    EXPECT_EQ(a.stats.splits, b.stats.splits);
    EXPECT_EQ(b.stats.vec, 1);
  }
}

TEST(Plan, ManyChannelsAreRefusedPastTheGridLimit) {
  const Problem p =
      problem(DataType::kFloat16, MemoryOrder::kChannelsFirst, {1, std::int64_t{1} << 32, 2});
  EXPECT_THROW(cubn::detail::plan_training(p, cubn::detail::current_device_info(), true, true),
               Error);
}

}  // namespace
