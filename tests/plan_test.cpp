// The planner (host/plan.cpp): launch shapes within device limits and 64-bit geometry for
// tensors far past 2^31 elements, checked by shape arithmetic without allocating them.
#include "plan.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cubn/sim/executor.hpp"
#include "device_info.hpp"
#include "lengths.cuh"
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

// The variable-length batches' division by a launch's divisor (geometry.hpp FastDivisor): floor(n
// / d) exactly for every index n < 2^63, at the divisors and dividends where a rounding error of
// the multiplier would show first: every small divisor, powers of two and their neighbours (the
// multiplier's extremes), large random divisors; dividends at and around multiples of d and at
// 2^63 - 1.
TEST(Plan, FastDivisorDividesEveryIndexExactly) {
  using kernels::FastDivisor;
  constexpr std::uint64_t kTop = (std::uint64_t{1} << 63) - 1;
  std::mt19937_64 rng(24);
  std::vector<std::uint64_t> divisors;
  for (std::uint64_t d = 1; d <= 3000; ++d) divisors.push_back(d);
  for (int k = 2; k < 63; ++k)
    for (std::uint64_t d : {(std::uint64_t{1} << k) - 1, std::uint64_t{1} << k,
                            (std::uint64_t{1} << k) + 1})
      divisors.push_back(d);
  for (int i = 0; i < 2000; ++i) divisors.push_back(1 + (rng() >> (1 + rng() % 62)));
  int checked = 0;
  for (std::uint64_t d : divisors) {
    const FastDivisor f = FastDivisor::of(d);
    std::vector<std::uint64_t> ns{0, 1, d - 1, d, d + 1, kTop, kTop - 1, kTop - d, kTop / d * d,
                                  kTop / d * d - 1};
    for (int i = 0; i < 20; ++i) {
      const std::uint64_t q = rng() % (kTop / d + 1);
      ns.push_back(q * d);
      if (q > 0) ns.push_back(q * d - 1);
      ns.push_back(rng() & kTop);
    }
    for (std::uint64_t n : ns) {
      if (n > kTop) continue;
      ASSERT_EQ(f.divide(n), n / d) << n << " / " << d;
      ++checked;
    }
  }
  EXPECT_GT(checked, 200000);
}

// A variable-length batch past 2^31 elements (shape arithmetic: the lengths are a host array,
// which the executor reads as device memory; no tensor is allocated): SeqMask's pack bits and
// per-element validity, as call_checks.cpp sets them up, against the definition (element e of
// sample e / (C S), time step (e / inner) % L, valid below the sample's length) at packs across
// the whole range, the last ones included, in both memory orders; packs within a row and packs
// across rows (L and C not multiples of the pack).
TEST(Plan, LengthsMaskPastTwoToTheThirtyOne) {
  const std::int64_t n = 3, c = 100003, l = 20003;  // 6.0e9 elements: past 2^32 too
  const std::vector<std::int32_t> lengths{20003, 7, 12345};
  for (const bool channels_last : {false, true}) {
    kernels::SeqMask m;
    static_cast<kernels::SeqGeometry&>(m) =
        kernels::SeqGeometry::of(lengths.data(), false, true, n, c, l, l, channels_last);
    const auto valid = [&](std::int64_t e) {
      return (e / m.inner) % l < lengths[static_cast<std::size_t>(e / m.sample)];
    };
    const std::int64_t numel = n * c * l;
    ASSERT_GT(numel, std::int64_t{1} << 32);
    int packs = 0;
    for (std::int64_t at = 0; at + 8 <= numel; at += 8 * 999983 + 3) {  // every residue mod 8
      for (const std::int64_t a : {at, numel - 8 - at % 4096}) {
        unsigned want = 0;
        for (int k = 0; k < 8; ++k) want |= (valid(a + k) ? 1u : 0u) << k;
        ASSERT_EQ(m.bits<8>(a), want) << (channels_last ? "NLC" : "NCL") << " pack at " << a;
        ASSERT_EQ(m.valid(a), valid(a)) << a;
        ++packs;
      }
    }
    EXPECT_GT(packs, 1000);
  }
}

// SeqMask's pack bits against the definition at every pack offset of small tensors: both memory
// orders, ranks 3 to 5 (time the last axis); rows of exactly a pack and over it by 1 to 13 (a
// pack meets two rows: no loop over lanes), and rows under a pack (the out-of-line lane-by-lane
// path), channels-first L and channels-last C alike; lengths 0, 1, L - 1, L and between, int32
// and int64, and out of [0, L] (clamped). So are the walkers' queries (plane_bits, position_bits),
// which see a pack by where it lies instead of by its index.
TEST(Plan, LengthsMaskBitsMatchTheDefinition) {
  constexpr int kV = 8;
  int packs = 0;
  for (const bool channels_last : {false, true})
    for (const std::int64_t c : {1, 3, 8, 11}) {
      for (const std::int64_t l : {1, 3, 8, 9, 13, 16, 21}) {
        for (const std::int64_t h : {1, 2, 3}) {  // S = h * l: rank 3 (h = 1) and over
          const std::int64_t s = h * l, n = 5;
          const std::vector<std::int64_t> len{0, l, 1, l - 1, l / 2 + 1};
          const std::vector<std::int32_t> narrow{-4, 1, static_cast<std::int32_t>(l + 7),
                                                 static_cast<std::int32_t>(l - 1), 3};
          for (const bool wide : {true, false}) {
            kernels::SeqMask m;
            const void* ptr = wide ? static_cast<const void*>(len.data()) : narrow.data();
            static_cast<kernels::SeqGeometry&>(m) =
                kernels::SeqGeometry::of(ptr, wide, true, n, c, s, l, channels_last);
            const auto valid = [&](std::int64_t e) {
              const std::int64_t sample = e / (c * s);
              const std::int64_t t = channels_last ? (e % (c * s)) / c % l : e % l;
              std::int64_t v = wide ? len[static_cast<std::size_t>(sample)]
                                    : narrow[static_cast<std::size_t>(sample)];
              v = std::min(std::max<std::int64_t>(v, 0), l);
              return t < v;
            };
            for (std::int64_t at = 0; at + kV <= n * c * s; ++at) {
              unsigned want = 0;
              for (int k = 0; k < kV; ++k) want |= (valid(at + k) ? 1u : 0u) << k;
              ASSERT_EQ(m.bits<kV>(at), want)
                  << (channels_last ? "channels-last" : "channels-first") << " C " << c << " L "
                  << l << " S " << s << (wide ? " int64" : " int32") << " pack at " << at;
              ASSERT_EQ(m.valid(at), valid(at)) << at;
              ++packs;
              if (!m.packs_of(kV)) continue;
              // what the walkers ask: channels-first, by position in the plane (of sample n) the
              // pack lies inside; C = 1 also as one plane of every sample (host/problem.cpp);
              // channels-last (C >= V), by position r in sample n and value off of the position
              const auto where = [&] { return std::to_string(at); };
              if (m.inner == 1) {  // channels-first, or C = 1 (the same memory)
                const std::int64_t pos = at % s, plane = at / s;
                if (pos + kV <= s) {
                  ASSERT_EQ(m.plane_bits<kV>(static_cast<std::uint32_t>(pos),
                                             static_cast<int>(plane / c)),
                            want)
                      << "plane of C " << c << " L " << l << " S " << s << " at " << where();
                }
                if (c == 1) {
                  ASSERT_EQ(m.plane_bits<kV>(static_cast<std::uint32_t>(at), 0), want)
                      << "one plane of L " << l << " S " << s << " at " << where();
                }
              } else {
                const std::int64_t r = at % (c * s) / c;
                ASSERT_EQ(m.position_bits<kV>(static_cast<std::uint32_t>(r),
                                              static_cast<int>(at / (c * s)),
                                              static_cast<std::uint32_t>(at % c)),
                          want)
                    << "position of C " << c << " L " << l << " S " << s << " at " << where();
              }
            }
          }
        }
      }
    }
  EXPECT_GT(packs, 10000);
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
  ASSERT_TRUE(plan.stats.planes);
  const auto& g = plan.stats.cfr;
  EXPECT_EQ(g.wf * plan.stats.vec, p.s);  // whole packs cover every plane
  EXPECT_EQ(g.tiles, p.n * g.wf);
  EXPECT_EQ(plan.stats.splits, 9);  // ceil(4 blocks x 132 SMs / 64 channels)
  EXPECT_EQ(g.step, 9 * 256);
  EXPECT_EQ(g.step_j, g.step % g.wf);
  EXPECT_EQ(g.step_base, g.step / g.wf * p.c * p.s);
  // each thread folds few enough values for its float count: 2^32 per channel / 2304 threads
  EXPECT_LE(p.m() / g.step, std::int64_t{1} << 22);
  // the last element's offset needs 64 bits
  EXPECT_GT(((p.n - 1) * p.c + (p.c - 1)) * p.s + p.s - 1, std::int64_t{1} << 31);
  EXPECT_EQ(plan.launches(), 2);
  const auto& m = plan.normalize.cfm;
  EXPECT_EQ(m.packs, p.numel / 8);
  // a thread's tile and pack counts, and the grid's first packs, index in 32 bits
  EXPECT_LT(g.tiles_q + 1, std::int64_t{1} << 32);
  EXPECT_LT(m.packs_q + 1, std::int64_t{1} << 32);
  EXPECT_LT(m.step * 8, std::int64_t{1} << 32);
  EXPECT_EQ(m.step_pos, m.step * 8 % p.s);
  EXPECT_EQ(m.step_ch, m.step * 8 / p.s % p.c);
}

TEST(Plan, ChannelsLastPastTwoToTheThirtyOne) {
  const Problem p =
      problem(DataType::kBFloat16, MemoryOrder::kChannelsLast, {1 << 16, 1024, 32, 32});
  const auto plan = cubn::detail::plan_training(p, cubn::detail::current_device_info(), true, true);
  expect_within_limits(plan.stats.grid);
  expect_within_limits(plan.normalize.grid);
  ASSERT_FALSE(plan.stats.planes);
  const auto& g = plan.stats.cl;
  EXPECT_EQ(g.period, 1024);  // C divides by 8: one row per period
  EXPECT_EQ(g.lr, 1);
  EXPECT_EQ(g.periods, std::int64_t{1} << 26);
  EXPECT_EQ(g.bx, 16);  // 128 slots per column block
  EXPECT_EQ(plan.stats.grid.x, 8u);
  EXPECT_EQ(plan.stats.splits, 66);  // ceil(4 x 132 / 8)
  EXPECT_EQ(plan.stats.totals, 0u);  // column blocks hold whole channels
}

// Planes and channel counts that are not multiples of a vector take vectors all the same.
TEST(Plan, EveryShapeTakesSixteenByteVectors) {
  const auto& dev = cubn::detail::current_device_info();
  {  // ResNet-50's 7x7 planes in bf16: 49 elements, whole packs and edges
    const auto plan = cubn::detail::plan_training(
        problem(DataType::kBFloat16, MemoryOrder::kChannelsFirst, {8, 512, 7, 7}), dev, true, true);
    EXPECT_EQ(plan.stats.vec, 8);
    EXPECT_TRUE(plan.stats.planes);
    EXPECT_EQ(plan.stats.cfr.wf, 5);  // (49 - 7) / 8 whole packs in every plane, whatever its start
    EXPECT_EQ(plan.normalize.vec, 8);
  }
  {  // 14x14
    const auto plan = cubn::detail::plan_training(
        problem(DataType::kFloat16, MemoryOrder::kChannelsFirst, {8, 256, 14, 14}), dev, true,
        true);
    EXPECT_EQ(plan.stats.cfr.wf, 23);
  }
  {  // channels-last with C = 100: the pattern repeats every lcm(100, 8) = 200 elements, 2 rows
    const auto plan = cubn::detail::plan_training(
        problem(DataType::kBFloat16, MemoryOrder::kChannelsLast, {64, 100, 4, 4}), dev, true, true);
    EXPECT_EQ(plan.stats.vec, 8);
    EXPECT_FALSE(plan.stats.planes);
    EXPECT_EQ(plan.stats.cl.period, 200);
    EXPECT_EQ(plan.stats.cl.lr, 2);
    EXPECT_EQ(plan.stats.totals, 200u);  // channels span the slots of two rows: a second merge
  }
  {  // channels-first planes under two vectors are seen as rows of C * S columns
    const auto plan = cubn::detail::plan_training(
        problem(DataType::kBFloat16, MemoryOrder::kChannelsFirst, {16, 32, 2, 3}), dev, true, true);
    EXPECT_EQ(plan.stats.vec, 8);
    EXPECT_FALSE(plan.stats.planes);
    EXPECT_EQ(plan.stats.cl.cols, 32 * 6);
    EXPECT_EQ(plan.stats.cl.d, 6);
  }
}

// One launch when a block per channel (or column block) holds all of it: no cross-block merge.
// Streaming forced: otherwise those that take two launches go persistent (one launch).
TEST(Plan, SmallProblemsRunTheTrainingForwardInOneLaunch) {
  auto& dev = cubn::detail::current_device_info();
  cubn::detail::force_path(cubn::detail::Path::kStreaming);
  const auto one = [&](MemoryOrder o, std::initializer_list<std::int64_t> dims) {
    return cubn::detail::plan_training(problem(DataType::kBFloat16, o, dims), dev, true, true)
        .launches();
  };
  EXPECT_EQ(one(MemoryOrder::kChannelsFirst, {8, 512, 8, 8}), 1);    // 512 splits-of-one blocks
  EXPECT_EQ(one(MemoryOrder::kChannelsLast, {32, 1024}), 1);         // BatchNorm1d, batch 32
  EXPECT_EQ(one(MemoryOrder::kChannelsFirst, {8, 512, 7, 7}), 2);    // planes of 49: edges
  EXPECT_EQ(one(MemoryOrder::kChannelsLast, {256, 64, 56, 56}), 2);  // many rows: splits
  // misaligned y but aligned x: statistics and normalization take different widths
  EXPECT_EQ(cubn::detail::plan_training(
                problem(DataType::kBFloat16, MemoryOrder::kChannelsFirst, {8, 512, 8, 8}), dev,
                true, false)
                .launches(),
            2);
  cubn::detail::force_path(cubn::detail::Path::kAuto);
  EXPECT_EQ(one(MemoryOrder::kChannelsFirst, {8, 512, 7, 7}), 1);  // persistent
}

TEST(Plan, WorkspaceDoesNotDependOnPointerAlignment) {
  for (auto o : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    for (auto dims : {std::initializer_list<std::int64_t>{32, 64, 56, 56}, {8, 100, 7, 7}}) {
      const Problem p = problem(DataType::kFloat16, o, dims);
      const auto& dev = cubn::detail::current_device_info();
      const auto a = cubn::detail::plan_training(p, dev, true, true);
      const auto b = cubn::detail::plan_training(p, dev, false, false);
      EXPECT_EQ(a.scratch.bytes, b.scratch.bytes);
      EXPECT_EQ(b.stats.vec, 1);
      // the vector path's partials fit
      EXPECT_LE(a.scratch.partials_offset + a.stats.partials * 16, a.scratch.totals_offset);
      EXPECT_LE(b.scratch.partials_offset + b.stats.partials * 16, b.scratch.totals_offset);
    }
  }
}

// The persistent kernels index elements in 32 bits: a tensor of more than 2^32 - 1 elements
// streams even when the persistent path is forced; one of exactly that many may still go persistent.
TEST(Plan, PersistentOnlyForTensorsItsOffsetsReach) {
  auto& dev = cubn::detail::current_device_info();
  cubn::detail::force_path(cubn::detail::Path::kPersistent);
  const Problem big = problem(DataType::kFloat16, MemoryOrder::kChannelsFirst, {1 << 16, 64, 1024});
  ASSERT_GT(big.numel, cubn::kernels::kNarrowElements);
  EXPECT_FALSE(cubn::detail::plan_training(big, dev, true, true).use_persistent);
  EXPECT_FALSE(cubn::detail::plan_backward(big, dev, true, true).use_persistent);
  const Problem edge = problem(DataType::kFloat16, MemoryOrder::kChannelsLast, {3, 5, 17, 257, 65537});
  ASSERT_EQ(edge.numel, cubn::kernels::kNarrowElements);
  EXPECT_TRUE(cubn::detail::plan_training(edge, dev, true, true).use_persistent);
  cubn::detail::force_path(cubn::detail::Path::kAuto);
}

TEST(Plan, ManyChannelsAreRefusedPastTheGridLimit) {
  const Problem p =
      problem(DataType::kFloat16, MemoryOrder::kChannelsFirst, {1, std::int64_t{1} << 32, 2});
  EXPECT_THROW(cubn::detail::plan_training(p, cubn::detail::current_device_info(), true, true),
               Error);
}

}  // namespace

namespace {

// ResNet-50's batch-norm inputs (torchvision, stride in the 3x3 convolutions): channels and
// spatial size of each distinct one.
struct Layer {
  std::int64_t c, hw;
};
const Layer kResNet50[] = {{64, 112}, {64, 56},  {256, 56},  {128, 56}, {128, 28}, {512, 28},
                           {256, 28}, {256, 14}, {1024, 14}, {512, 14}, {512, 7},  {2048, 7}};

// An H100 SXM as the planner sees it: 132 SMs, 228 KB of shared memory per SM (227 KB per block
// with the opt-in), 1 KB reserved per block, cooperative launches.
cubn::detail::DeviceInfo h100() {
  cubn::detail::DeviceInfo d;
  d.sm_count = 132;
  d.cooperative = true;
  d.shared_per_sm = 233472;
  d.shared_per_block_optin = 232448;
  d.reserved_shared_per_block = 1024;
  return d;
}

}  // namespace

// The persistent path where most of the tensor fits on chip: every ResNet-50 layer at batch 32
// in bf16, both memory orders, forward and backward; at batch 256 the layers of 100 MB and more
// stream. (At 256 the smallest, 512 x 7 x 7 and 2048 x 7 x 7, are 12.8 and 51 MB: as large as
// layers at 32, and they go persistent too.)
TEST(Plan, ResNet50LayersTakeThePersistentPathAtBatch32) {
  const auto dev = h100();
  for (MemoryOrder o : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    for (const Layer& l : kResNet50) {
      for (std::int64_t n : {32, 256}) {
        const Problem p = problem(DataType::kBFloat16, o, {n, l.c, l.hw, l.hw});
        const auto fwd = cubn::detail::plan_training(p, dev, true, true);
        const auto bwd = cubn::detail::plan_backward(p, dev, true, true);
        const double mb = static_cast<double>(p.bytes()) / 1e6;
        const std::string what = std::to_string(n) + "x" + std::to_string(l.c) + "x" +
                                 std::to_string(l.hw) + "^2 " + to_string(o) + " (" +
                                 std::to_string(mb) + " MB), kept forward " +
                                 std::to_string(fwd.persistent.kept) + ", backward " +
                                 std::to_string(bwd.persistent.kept);
        if (n == 32) {
          EXPECT_TRUE(fwd.use_persistent) << what;
          EXPECT_TRUE(bwd.use_persistent) << what;
          EXPECT_EQ(fwd.launches(), 1) << what;
        } else if (mb > 100) {
          EXPECT_FALSE(fwd.use_persistent) << what;
          EXPECT_FALSE(bwd.use_persistent) << what;
        }
        // the workspace covers both paths
        EXPECT_GE(fwd.scratch.bytes - fwd.scratch.partials_offset,
                  fwd.persistent.partials * cubn::kernels::welford_state_bytes(4))
            << what;
        EXPECT_LE(fwd.persistent.grid, 2u * 132u) << what;
        EXPECT_LE(fwd.persistent.smem + 12 * 1024 + 1024, 233472u / 2) << what;
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}
