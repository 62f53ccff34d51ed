// Forward batch norm, training and inference, against the double-precision reference: every
// dtype, both memory orders, ranks 2 to 5, edge and random shapes. Runs on the executor and, in
// the GPU binary, on a device. Tolerances: support/tolerance.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "cubn/cubn.hpp"
#include "device_info.hpp"
#include "geometry.hpp"
#include "plan.hpp"
#include "problem.hpp"
#include "reference.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"

#if defined(CUBN_SIM)
#include "cubn/sim/executor.hpp"
#endif

namespace {

using namespace cubn;
using namespace cubn::test;

// A few random shapes per run of a dtype/order, from a fixed seed so failures reproduce.
std::vector<Dims> random_shapes(unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> rank(2, 5), small(1, 9), n(1, 12), c(1, 40);
  std::vector<Dims> out;
  for (int k = 0; k < 3; ++k) {
    Dims d{n(rng), c(rng)};
    for (int r = 2, R = rank(rng); r < R; ++r) d.push_back(small(rng));
    if (d[0] *
            [&] {
              std::int64_t s = 1;
              for (std::size_t i = 2; i < d.size(); ++i) s *= d[i];
              return s;
            }() <
        2)
      d[0] = 2;
    out.push_back(d);
  }
  return out;
}

template <class T>
class Forward : public DeviceTest {};
using DTypes = ::testing::Types<__half, __nv_bfloat16, float, double>;
TYPED_TEST_SUITE(Forward, DTypes);

// Training forward of one case against the reference: y, saved statistics, running statistics.
template <class T>
void check_training(const Dims& dims, MemoryOrder order, unsigned seed, bool affine = true,
                    double momentum = 0.1) {
  using P = param_of<T>;
  const std::string what = std::string(to_string(dtype_of<T>())) + " " + shape_string(dims, order);
  const Data<T> d = make_data<T>(dims, order, seed);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size();

  DeviceBuffer<T> x(d.x), y(d.x.size());
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
  DeviceBuffer<P> rmean(to_params<P>(d.running_mean)), rvar(to_params<P>(d.running_var));
  DeviceBuffer<P> smean(C), sinvstd(C);
  DeviceBytes ws(forward_training_workspace_size(desc));

  TrainingForwardArgs<P> args;
  if (affine) args.affine = {scale.data(), offset.data()};
  args.epsilon = 1e-3;
  args.running = {rmean.data(), rvar.data()};
  args.momentum = Momentum::pytorch(momentum);
  args.saved = {smean.data(), sinvstd.data()};
  forward_training(desc, x.data(), y.data(), args, {ws.data(), ws.bytes()}, nullptr);
  device_sync();

  ref::Params p;
  if (affine) {
    p.scale = to_doubles(to_params<P>(d.scale));
    p.offset = to_doubles(to_params<P>(d.offset));
  }
  p.eps = 1e-3;
  const auto r = ref::forward_training(
      d.shape, d.xd, p, static_cast<double>(static_cast<P>(momentum)),
      static_cast<double>(static_cast<P>(momentum)), to_doubles(to_params<P>(d.running_mean)),
      to_doubles(to_params<P>(d.running_var)));
  const Rounding u = rounding_of<T>();
  const double m = static_cast<double>(d.shape.m());
  std::vector<StatTolerance> st(C);
  const auto got_mean = to_doubles(smean.download()), got_invstd = to_doubles(sinvstd.download());
  const auto got_rmean = to_doubles(rmean.download()), got_rvar = to_doubles(rvar.download());
  for (std::size_t c = 0; c < C; ++c) {
    st[c] = stat_tolerance(u, m, r.stats.mean[c], std::sqrt(r.stats.var[c]));
    EXPECT_NEAR(got_mean[c], r.stats.mean[c], st[c].mean) << what << " saved mean, c=" << c;
    EXPECT_NEAR(got_invstd[c], r.stats.invstd[c],
                r.stats.invstd[c] * (st[c].rel_var / 2 + 4 * u.acc))
        << what << " saved invstd, c=" << c;
    EXPECT_NEAR(got_rmean[c], r.running_mean[c],
                momentum * st[c].mean + 4 * u.acc * std::fabs(r.running_mean[c]))
        << what << " running mean, c=" << c;
    EXPECT_NEAR(got_rvar[c], r.running_var[c],
                momentum * r.stats.var_unbiased[c] * (st[c].rel_var + 4 * u.acc) +
                    4 * u.acc * r.running_var[c])
        << what << " running var, c=" << c;
  }
  expect_y_near(d, to_doubles(y.download()), r.y, r.stats.mean, r.stats.invstd, p.offset, p.scale,
                st, what);
}

template <class T>
void check_inference(const Dims& dims, MemoryOrder order, unsigned seed) {
  using P = param_of<T>;
  const std::string what =
      std::string(to_string(dtype_of<T>())) + " inference " + shape_string(dims, order);
  const Data<T> d = make_data<T>(dims, order, seed);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  DeviceBuffer<T> x(d.x), y(d.x.size());
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
  DeviceBuffer<P> rmean(to_params<P>(d.running_mean)), rvar(to_params<P>(d.running_var));
  InferenceForwardArgs<P> args;
  args.affine = {scale.data(), offset.data()};
  args.running = {rmean.data(), rvar.data()};
  args.epsilon = 1e-3;
  forward_inference(desc, x.data(), y.data(), args, nullptr);
  device_sync();

  const InferenceReference r = inference_reference(d);
  expect_y_near(d, to_doubles(y.download()), r.y, r.mean, r.invstd, r.p.offset, r.p.scale, r.st,
                what);
}

TYPED_TEST(Forward, TrainingMatchesTheReferenceOnEdgeShapes) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (std::size_t i = 0; i < edge_shapes().size(); ++i)
      check_training<TypeParam>(edge_shapes()[i], order, 100 + static_cast<unsigned>(i));
}

TYPED_TEST(Forward, TrainingMatchesTheReferenceOnRandomShapes) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (const Dims& dims : random_shapes(7 + static_cast<unsigned>(order)))
      check_training<TypeParam>(dims, order, 200);
}

TYPED_TEST(Forward, TrainingWithoutScaleAndOffset) {
  check_training<TypeParam>({4, 6, 5, 5}, MemoryOrder::kChannelsLast, 300, false);
  check_training<TypeParam>({4, 6, 5, 5}, MemoryOrder::kChannelsFirst, 301, false);
}

TYPED_TEST(Forward, InferenceMatchesTheReference) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (std::size_t i = 0; i < edge_shapes().size(); ++i)
      check_inference<TypeParam>(edge_shapes()[i], order, 400 + static_cast<unsigned>(i));
  // one element per channel is fine in inference
  check_inference<TypeParam>({1, 9}, MemoryOrder::kChannelsFirst, 450);
  check_inference<TypeParam>({1, 3, 1, 1}, MemoryOrder::kChannelsLast, 451);
}

}  // namespace

namespace {

// Runs training on `d` with the given running statistics; returns y and (through the args) the
// updated statistics.
template <class T>
struct TrainingRun {
  std::vector<T> y;
  std::vector<param_of<T>> rmean, rvar, smean, sinvstd;
};

template <class T>
TrainingRun<T> run_training(const TensorDesc& desc, const std::vector<T>& x,
                            const std::vector<param_of<T>>& rmean0,
                            const std::vector<param_of<T>>& rvar0, double momentum = 0.1) {
  using P = param_of<T>;
  const std::size_t C = rmean0.size();
  DeviceBuffer<T> dx(x), dy(x.size());
  DeviceBuffer<P> rmean(rmean0), rvar(rvar0), smean(C), sinvstd(C);
  DeviceBytes ws(forward_training_workspace_size(desc));
  TrainingForwardArgs<P> args;
  args.running = {rmean.data(), rvar.data()};
  args.momentum = Momentum::pytorch(momentum);
  args.saved = {smean.data(), sinvstd.data()};
  forward_training(desc, dx.data(), dy.data(), args, {ws.data(), ws.bytes()}, nullptr);
  device_sync();
  return {dy.download(), rmean.download(), rvar.download(), smean.download(), sinvstd.download()};
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

class ForwardProperties : public DeviceTest {};

TEST_F(ForwardProperties, TrainingOutputIgnoresRunningStatisticsWhichItOnlyUpdates) {
  const Dims dims{8, 6, 5, 5};
  const auto d = make_data<float>(dims, MemoryOrder::kChannelsLast, 500);
  const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsLast, dims);
  const std::vector<float> zeros(6, 0.0f), ones(6, 1.0f), wild(6, 1e6f);
  const auto a = run_training<float>(desc, d.x, zeros, ones);
  const auto b = run_training<float>(desc, d.x, wild, wild);
  EXPECT_TRUE(bitwise_equal(a.y, b.y)) << "training y depends on the running statistics passed in";
  EXPECT_TRUE(bitwise_equal(a.smean, b.smean));
  EXPECT_FALSE(bitwise_equal(a.rmean, b.rmean)) << "the running statistics were not updated";

  // inference reads them: different running statistics, different y
  DeviceBuffer<float> x(d.x), y1(d.x.size()), y2(d.x.size()), m0(zeros), v1(ones), mw(wild),
      vw(wild);
  InferenceForwardArgs<float> args;
  args.running = {m0.data(), v1.data()};
  forward_inference(desc, x.data(), y1.data(), args, nullptr);
  args.running = {mw.data(), vw.data()};
  forward_inference(desc, x.data(), y2.data(), args, nullptr);
  device_sync();
  EXPECT_FALSE(bitwise_equal(y1.download(), y2.download()));
}

TEST_F(ForwardProperties, RunningStatisticsFollowTheReferenceOverSeveralSteps) {
  const Dims dims{4, 5, 6, 7};
  const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsFirst, dims);
  std::vector<float> rmean(5, 0.0f), rvar(5, 1.0f);
  std::vector<double> ref_mean(5, 0.0), ref_var(5, 1.0);
  const double momentum = 0.25;
  for (int step = 0; step < 4; ++step) {
    const auto d = make_data<float>(dims, MemoryOrder::kChannelsFirst, 600 + step);
    const auto r = run_training<float>(desc, d.x, rmean, rvar, momentum);
    rmean = r.rmean;
    rvar = r.rvar;
    const auto ref =
        ref::forward_training(d.shape, d.xd, {}, momentum, momentum, ref_mean, ref_var);
    ref_mean = ref.running_mean;
    ref_var = ref.running_var;
  }
  // each step adds at most the one-step error (stat tolerance at M = 168, about 1e-4 relative);
  // 1e-4 absolute on values of order 1 after 4 steps
  for (int c = 0; c < 5; ++c) {
    EXPECT_NEAR(rmean[c], ref_mean[c], 1e-4) << "c=" << c;
    EXPECT_NEAR(rvar[c], ref_var[c], 1e-4 * ref_var[c]) << "c=" << c;
  }
}

TEST_F(ForwardProperties, CumulativeMomentumAveragesEqually) {
  // Momentum::cumulative(k) at step k gives the plain average of the batch statistics
  const Dims dims{2, 3, 4};
  const TensorDesc desc = make_desc(DataType::kFloat64, MemoryOrder::kChannelsFirst, dims);
  std::vector<double> rmean(3, 123.0), rvar(3, 456.0), sum_mean(3, 0.0);
  for (int k = 0; k < 3; ++k) {
    const auto d = make_data<double>(dims, MemoryOrder::kChannelsFirst, 650 + k);
    EXPECT_EQ(Momentum::cumulative(k).mean, 1.0 / (k + 1));
    const auto r = run_training<double>(desc, d.x, rmean, rvar, Momentum::cumulative(k).mean);
    rmean = r.rmean;
    const auto st = ref::batch_stats(d.shape, d.xd, 1e-5);
    for (int c = 0; c < 3; ++c) sum_mean[c] += st.mean[c];
  }
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(rmean[c], sum_mean[c] / 3, 1e-12);
}

// Bitwise the same every run, and whatever order blocks finish in: partials merge in a fixed
// order (thread rows, then a fixed tree over splits), never in arrival order. The shapes take the
// multi-block paths: planes split over several blocks (unaligned planes of 33 x 33), periodic
// columns with channels spanning column blocks (C = 100: two rows a period, second-level ticket),
// several column blocks each split over blocks, and more channels than tickets.
TEST_F(ForwardProperties, DeterministicBitForBit) {
  const std::vector<std::pair<MemoryOrder, Dims>> cases = {
      {MemoryOrder::kChannelsFirst, {64, 3, 33, 33}},
      {MemoryOrder::kChannelsLast, {512, 100, 3, 3}},
      {MemoryOrder::kChannelsFirst, {16, 12, 9, 9}},
      {MemoryOrder::kChannelsLast, {512, 1024}},
      {MemoryOrder::kChannelsFirst, {8, 1500, 19, 1}}};
  for (const auto& [order, dims] : cases) {
    const std::string what = shape_string(dims, order);
    const auto d = make_data<__nv_bfloat16>(dims, order, 700);
    const TensorDesc desc = make_desc(DataType::kBFloat16, order, dims);
    const std::vector<float> m(static_cast<std::size_t>(dims[1]), 0.0f),
        v(static_cast<std::size_t>(dims[1]), 1.0f);
    const auto a = run_training<__nv_bfloat16>(desc, d.x, m, v);
    const auto b = run_training<__nv_bfloat16>(desc, d.x, m, v);
    EXPECT_TRUE(bitwise_equal(a.y, b.y)) << what;
    EXPECT_TRUE(bitwise_equal(a.smean, b.smean)) << what;
    EXPECT_TRUE(bitwise_equal(a.sinvstd, b.sinvstd)) << what;
    EXPECT_TRUE(bitwise_equal(a.rvar, b.rvar)) << what;
#if defined(CUBN_SIM)
    // another thread order changes which thread reaches each sync point first, and shuffled
    // block orders change which block takes the last ticket, as timing would on a GPU
    for (int run = 0; run < 4; ++run) {
      cubn::sim::set_schedule(run % 2 ? cubn::sim::Schedule::kReverse
                                      : cubn::sim::Schedule::kForward);
      cubn::sim::set_block_order(cubn::sim::BlockOrder::kShuffled, 17 + run);
      const auto c = run_training<__nv_bfloat16>(desc, d.x, m, v);
      cubn::sim::set_schedule(cubn::sim::Schedule::kForward);
      cubn::sim::set_block_order(cubn::sim::BlockOrder::kInOrder);
      EXPECT_TRUE(bitwise_equal(a.y, c.y)) << what << " run " << run;
      EXPECT_TRUE(bitwise_equal(a.smean, c.smean)) << what << " run " << run;
      EXPECT_TRUE(bitwise_equal(a.sinvstd, c.sinvstd)) << what << " run " << run;
      EXPECT_TRUE(bitwise_equal(a.rmean, c.rmean)) << what << " run " << run;
    }
#endif
  }
}

#if defined(CUBN_SIM)
// The shapes above do take the multi-block paths this test is for (on the executor's device).
TEST(ForwardPlans, DeterminismShapesSplitChannelsOverBlocks) {
  const auto& dev = detail::current_device_info();
  const auto plan = [&](MemoryOrder o, std::initializer_list<std::int64_t> dims) {
    return detail::plan_training(
        detail::canonicalize("test", "x", TensorDesc(DataType::kBFloat16, o, dims)), dev, true,
        true);
  };
  EXPECT_GT(plan(MemoryOrder::kChannelsFirst, {64, 3, 33, 33}).stats.splits, 1);
  const auto cl = plan(MemoryOrder::kChannelsLast, {512, 100, 3, 3});
  EXPECT_GT(cl.stats.splits, 1);
  EXPECT_GT(cl.stats.totals, 0u);
  const auto wide = plan(MemoryOrder::kChannelsLast, {512, 1024});  // column blocks and splits
  EXPECT_GT(wide.stats.grid.x, 1u);
  EXPECT_GT(wide.stats.splits, 1);
  // more channels than tickets: one block each, no ticket
  const auto many = plan(MemoryOrder::kChannelsFirst, {8, 1500, 19, 1});
  EXPECT_GT(many.stats.grid.x, static_cast<unsigned>(kernels::kTickets));
  EXPECT_EQ(many.stats.splits, 1);
}
#endif

// One workspace serves calls of any shape one after another, and what it holds before a call
// does not matter: a fresh workspace, one reused, and ones filled with random bytes, with ones, or
// with ticket words one arrival short of finishing under another call's tag, give the same bits.
// Each call leaves the tickets it used at zero.
TEST_F(ForwardProperties, OneWorkspaceServesCallsOfEveryShapeAndIsLeftReady) {
  std::size_t bytes = 0;
  const std::vector<std::pair<MemoryOrder, Dims>> cases = {
      {MemoryOrder::kChannelsLast, {512, 100, 3, 3}},
      {MemoryOrder::kChannelsFirst, {64, 3, 33, 33}},
      {MemoryOrder::kChannelsFirst, {8, 1500, 19, 1}},
      {MemoryOrder::kChannelsLast, {4, 8, 4, 4}}};
  for (const auto& [order, dims] : cases)
    bytes = std::max(bytes,
                     forward_training_workspace_size(make_desc(DataType::kFloat32, order, dims)));
  DeviceBytes ws(bytes);  // zero-filled once
  for (int round = 0; round < 2; ++round) {
    for (const auto& [order, dims] : cases) {
      const auto d = make_data<float>(dims, order, 1200 + round);
      const TensorDesc desc = make_desc(DataType::kFloat32, order, dims);
      const auto C = static_cast<std::size_t>(dims[1]);
      DeviceBuffer<float> x(d.x), y(d.x.size()), sm(C), si(C);
      TrainingForwardArgs<float> args;
      args.saved = {sm.data(), si.data()};
      forward_training(desc, x.data(), y.data(), args, {ws.data(), ws.bytes()}, nullptr);
      device_sync();
      // the same call on a fresh workspace gives the same bits
      DeviceBytes fresh(forward_training_workspace_size(desc));
      DeviceBuffer<float> y2(d.x.size()), sm2(C), si2(C);
      args.saved = {sm2.data(), si2.data()};
      forward_training(desc, x.data(), y2.data(), args, {fresh.data(), fresh.bytes()}, nullptr);
      device_sync();
      EXPECT_TRUE(bitwise_equal(y.download(), y2.download())) << shape_string(dims, order);
      EXPECT_TRUE(bitwise_equal(si.download(), si2.download())) << shape_string(dims, order);
      std::vector<unsigned char> tickets(kernels::kTicketBytes);
      ws.download(tickets.data(), tickets.size());
      EXPECT_EQ(std::count(tickets.begin(), tickets.end(), 0), static_cast<long>(tickets.size()))
          << "tickets not left at zero after " << shape_string(dims, order);
    }
  }
  // the streaming path's tickets (the persistent path takes none) on dirty workspaces
  const ForcePath streaming(detail::Path::kStreaming);
  for (const auto& [order, dims] : cases) {
    const TensorDesc desc = make_desc(DataType::kFloat32, order, dims);
    const auto d = make_data<float>(dims, order, 77);
    const auto C = static_cast<std::size_t>(dims[1]);
    DeviceBuffer<float> x(d.x);
    std::vector<std::vector<float>> first;
    for (int fill = 0; fill < 4; ++fill) {
      const std::size_t bytes = forward_training_workspace_size(desc);
      std::vector<unsigned char> host(bytes, 0);
      if (fill == 1) {
        std::mt19937 rng(9);
        for (auto& b : host) b = static_cast<unsigned char>(rng());
      } else if (fill == 2) {
        std::fill(host.begin(), host.end(), 0xFF);
      } else if (fill == 3) {  // every ticket word one short of the most blocks a group has
        const auto plan = detail::plan_training(detail::canonicalize("t", "x", desc),
                                                detail::current_device_info(), true, true);
        const unsigned long long word =
            (0x123456789ABCull << kernels::kTicketCountBits) |
            static_cast<unsigned long long>(std::max<std::int64_t>(
                std::max<std::int64_t>(plan.stats.splits, plan.stats.grid.x) - 1, 1));
        for (std::size_t i = 0; i + 8 <= kernels::kTicketBytes; i += 8)
          std::memcpy(&host[i], &word, 8);
      }
      DeviceBytes ws(bytes);
      ws.upload(host.data(), host.size());
      DeviceBuffer<float> y(d.x.size()), sm(C), si(C);
      TrainingForwardArgs<float> args;
      args.saved = {sm.data(), si.data()};
      forward_training(desc, x.data(), y.data(), args, {ws.data(), ws.bytes()}, nullptr);
      device_sync();
      std::vector<std::vector<float>> got = {y.download(), sm.download(), si.download()};
      if (fill == 0) {
        first = got;
      } else {
        for (std::size_t k = 0; k < got.size(); ++k)
          EXPECT_TRUE(bitwise_equal(got[k], first[k]))
              << shape_string(dims, order) << ", workspace fill " << fill << ", output " << k;
      }
    }
  }
}

// Item 7 of the streaming rewrite: fp32 outputs stay within 32 ulp of max(|y|, 1) of the float64
// truth on the same rounded inputs when a channel's mean is far from zero in units of its
// standard deviation (up to 1e4), in both memory orders, on the multi-block and single-launch
// paths. Without the per-channel shift the mean's own rounding put 1,500 to 3,700 ulp there.
TEST_F(ForwardProperties, Fp32OutputsStayAccurateFarFromZero) {
  struct Case {
    Dims dims;
    double mean, sigma;
  };
  const std::vector<Case> cases = {{{8, 16, 32, 32}, 1000, 1},
                                   {{64, 8, 14, 14}, 3, 0.01},
                                   {{16, 4, 16, 16}, -1e4, 1},
                                   {{4, 8, 7, 7}, 500, 0.05}};
  for (const auto& cs : cases) {
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
      const std::string what = shape_string(cs.dims, order) + " mean " + std::to_string(cs.mean) +
                               " sigma " + std::to_string(cs.sigma);
      ref::Shape shape{cs.dims, ref_order(order)};
      std::mt19937 rng(31);
      std::normal_distribution<double> z(0, 1);
      std::vector<float> x(static_cast<std::size_t>(shape.numel()));
      std::vector<double> xd(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        x[i] = static_cast<float>(cs.mean + cs.sigma * z(rng));
        xd[i] = x[i];
      }
      const TensorDesc desc = make_desc(DataType::kFloat32, order, cs.dims);
      const auto C = static_cast<std::size_t>(cs.dims[1]);
      const auto run =
          run_training<float>(desc, x, std::vector<float>(C, 0.0f), std::vector<float>(C, 1.0f));
      ref::Params p;
      p.eps = 1e-5;
      const auto r = ref::forward_training(shape, xd, p, 0.1, 0.1, std::vector<double>(C, 0.0),
                                           std::vector<double>(C, 1.0));
      double worst = 0;
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double scale = std::max(std::fabs(r.y[i]), 1.0);
        const double ulp = std::ldexp(1.0, std::ilogb(scale) - 23);
        worst = std::max(worst, std::fabs(run.y[i] - r.y[i]) / ulp);
      }
      EXPECT_LE(worst, 32) << what << ": worst error in ulp of max(|y|, 1)";
      for (std::size_t c = 0; c < C; ++c)
        EXPECT_NEAR(run.smean[c], r.stats.mean[c],
                    2 * std::ldexp(std::fabs(r.stats.mean[c]), -23) + 1e-6 * cs.sigma)
            << what << " saved mean, c=" << c;
    }
  }
}

// A common offset of 1e4 with sigma 1: the variance survives in fp32 and fp16. In fp16 the data
// itself rounds to multiples of 8 near 1e4 (some channels collapse to one value, variance 0), so
// the reference is the variance of the rounded data, whatever it is.
// Bounds: the fp32 running mean is held to ulp(1e4) = 2^-10; each update or merge rounds it by
// half that, and we allow 8 ulp over the per-thread updates and the merge tree. Each M2 increment
// then carries up to 2^-11 |x - mean| of error, so the variance is good to about 2^-11 sigma
// absolute (Welford's analysis in welford_test.cpp); we allow 4x that, plus the rounding of
// invstd (4 u (var + eps)) through which we read the variance back.
template <class T>
void check_large_offset(MemoryOrder order) {
  const Dims dims{16, 4, 16, 16};
  const auto d = make_data<T>(dims, order, 800, 1e4);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const auto r =
      run_training<T>(desc, d.x, std::vector<float>(4, 0.0f), std::vector<float>(4, 1.0f));
  const auto st = ref::batch_stats(d.shape, d.xd, 1e-5);
  const double u = std::ldexp(1.0, -24);
  for (int c = 0; c < 4; ++c) {
    const double var = 1.0 / (double(r.sinvstd[c]) * r.sinvstd[c]) - 1e-5;
    EXPECT_NEAR(var, st.var[c],
                4 * std::ldexp(1.0, -11) * std::sqrt(st.var[c]) + 4 * u * (st.var[c] + 1e-5))
        << to_string(dtype_of<T>()) << " c=" << c;
    EXPECT_NEAR(r.smean[c], st.mean[c], 8 * std::ldexp(1.0, -10))
        << to_string(dtype_of<T>()) << " c=" << c;
  }
}

TEST_F(ForwardProperties, LargeCommonOffsetKeepsTheVariance) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    check_large_offset<float>(order);
    check_large_offset<__half>(order);
  }
}

TEST_F(ForwardProperties, NanAndInfStayInTheirChannel) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{6, 4, 5, 5};
    auto d = make_data<float>(dims, order, 900);
    d.x[d.shape.index(3, 1, 7)] = std::numeric_limits<float>::quiet_NaN();
    d.x[d.shape.index(0, 2, 0)] = std::numeric_limits<float>::infinity();
    const TensorDesc desc = make_desc(DataType::kFloat32, order, dims);
    const auto r =
        run_training<float>(desc, d.x, std::vector<float>(4, 0.0f), std::vector<float>(4, 1.0f));
    EXPECT_TRUE(std::isnan(r.smean[1]));
    EXPECT_TRUE(std::isnan(r.rmean[1]) && std::isnan(r.rvar[1]));
    EXPECT_FALSE(std::isfinite(r.smean[2]));
    EXPECT_TRUE(std::isnan(r.sinvstd[2]));
    std::vector<double> xd(d.xd);
    for (std::int64_t n = 0; n < 6; ++n)
      for (std::int64_t s = 0; s < 25; ++s) {
        EXPECT_TRUE(std::isnan(r.y[d.shape.index(n, 1, s)]));
        EXPECT_TRUE(std::isnan(r.y[d.shape.index(n, 2, s)]));
      }
    // channels 0 and 3 are untouched: same as a run without the bad values
    auto clean = make_data<float>(dims, order, 900);
    const auto rc = run_training<float>(desc, clean.x, std::vector<float>(4, 0.0f),
                                        std::vector<float>(4, 1.0f));
    for (int c : {0, 3}) {
      EXPECT_EQ(r.smean[c], rc.smean[c]);
      EXPECT_EQ(r.sinvstd[c], rc.sinvstd[c]);
      EXPECT_EQ(r.rvar[c], rc.rvar[c]);
      for (std::int64_t n = 0; n < 6; ++n)
        for (std::int64_t s = 0; s < 25; ++s)
          ASSERT_EQ(r.y[d.shape.index(n, c, s)], rc.y[d.shape.index(n, c, s)]);
    }
  }
}

TEST_F(ForwardProperties, InPlaceGivesTheSameResult) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{4, 8, 6, 6};
    const auto d = make_data<__half>(dims, order, 1000);
    const TensorDesc desc = make_desc(DataType::kFloat16, order, dims);
    const auto out =
        run_training<__half>(desc, d.x, std::vector<float>(8, 0.0f), std::vector<float>(8, 1.0f));
    DeviceBuffer<__half> xy(d.x);
    DeviceBytes ws(forward_training_workspace_size(desc));
    forward_training(desc, xy.data(), xy.data(), TrainingForwardArgs<float>{},
                     {ws.data(), ws.bytes()}, nullptr);
    device_sync();
    EXPECT_TRUE(bitwise_equal(out.y, xy.download()));

    DeviceBuffer<float> m(std::vector<float>(8, 0.5f)), v(std::vector<float>(8, 2.0f));
    DeviceBuffer<__half> x2(d.x), y2(d.x.size()), in_place(d.x);
    InferenceForwardArgs<float> args;
    args.running = {m.data(), v.data()};
    forward_inference(desc, x2.data(), y2.data(), args, nullptr);
    forward_inference(desc, in_place.data(), in_place.data(), args, nullptr);
    device_sync();
    EXPECT_TRUE(bitwise_equal(y2.download(), in_place.download()));
  }
}

// x and y one element past a 16-byte boundary: the kernels fall back to scalar access.
TEST_F(ForwardProperties, MisalignedPointersUseTheScalarPath) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{4, 8, 4, 4};  // C and S divide by every vector width
    const auto d = make_data<float>(dims, order, 1100);
    const TensorDesc desc = make_desc(DataType::kFloat32, order, dims);
    const auto aligned =
        run_training<float>(desc, d.x, std::vector<float>(8, 0.0f), std::vector<float>(8, 1.0f));
    DeviceBuffer<float> x(d.x.size() + 1), y(d.x.size() + 1);
    std::vector<float> shifted(d.x.size() + 1, 0.0f);
    std::copy(d.x.begin(), d.x.end(), shifted.begin() + 1);
    x.upload(shifted);
    DeviceBytes ws(forward_training_workspace_size(desc));
    forward_training(desc, x.data() + 1, y.data() + 1, TrainingForwardArgs<float>{},
                     {ws.data(), ws.bytes()}, nullptr);
    device_sync();
    const auto got = y.download();
    // same arithmetic in the same order per thread? Not necessarily (another vector width
    // changes the per-thread grouping), so compare with the tolerance of the reference check
    const auto ref = ref::forward_training(d.shape, d.xd, {}, 0, 0, {}, {});
    for (std::size_t i = 0; i < d.x.size(); ++i) {
      ASSERT_NEAR(got[i + 1], ref.y[i], 1e-4) << "i=" << i;
      ASSERT_NEAR(got[i + 1], aligned.y[i], 1e-4) << "i=" << i;
    }
  }
}

// Each host thread with its own workspace (tickets included); a shape whose channels split over
// blocks, so the tickets are taken.
TEST_F(ForwardProperties, SeveralHostThreadsAtOnce) {
  const Dims dims{512, 16, 3, 3};
  const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsLast, dims);
  std::vector<Data<float>> data;
  std::vector<TrainingRun<float>> serial, parallel(4);
  for (int t = 0; t < 4; ++t) {
    data.push_back(make_data<float>(dims, MemoryOrder::kChannelsLast, 1200 + t));
    serial.push_back(run_training<float>(desc, data[t].x, std::vector<float>(16, 0.0f),
                                         std::vector<float>(16, 1.0f)));
  }
  // the threads take the path (and on the executor the device size) this thread's calls take
  const detail::Path path = detail::forced_path();
#if defined(CUBN_SIM)
  const int sms = cubn::sim::sm_count();
#endif
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t)
    pool.emplace_back([&, t] {
      detail::force_path(path);
#if defined(CUBN_SIM)
      cubn::sim::set_sm_count(sms);
#endif
      parallel[t] = run_training<float>(desc, data[t].x, std::vector<float>(16, 0.0f),
                                        std::vector<float>(16, 1.0f));
    });
  for (auto& th : pool) th.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_TRUE(bitwise_equal(serial[t].y, parallel[t].y));
    EXPECT_TRUE(bitwise_equal(serial[t].rvar, parallel[t].rvar));
  }
}

}  // namespace

#if !defined(CUBN_SIM)
#include <cuda_runtime_api.h>

namespace {

// GPU only: the calls capture into a CUDA graph (global capture mode turns any hidden
// synchronization, allocation or host-device copy into an error) and every replay gives the eager
// results bit for bit: the kernels put their tickets back to zero, so a replay finds the workspace
// as the first run did. One shape per path with tickets (split planes, periodic columns with a
// second-level ticket) and the one-launch path.
TEST_F(ForwardProperties, CapturesIntoACudaGraph) {
  const std::vector<std::pair<MemoryOrder, Dims>> cases = {
      {MemoryOrder::kChannelsLast, {8, 32, 7, 7}},
      {MemoryOrder::kChannelsFirst, {64, 3, 33, 33}},
      {MemoryOrder::kChannelsLast, {512, 100, 3, 3}}};
  for (const auto& [order, dims] : cases) {
    const auto C = static_cast<std::size_t>(dims[1]);
    const auto d = make_data<__half>(dims, order, 1300);
    const TensorDesc desc = make_desc(DataType::kFloat16, order, dims);
    const auto eager =
        run_training<__half>(desc, d.x, std::vector<float>(C, 0.0f), std::vector<float>(C, 1.0f));

    DeviceBuffer<__half> x(d.x), y(d.x.size()), y2(d.x.size());
    DeviceBuffer<float> rm(std::vector<float>(C, 0.0f)), rv(std::vector<float>(C, 1.0f)), sm(C),
        si(C);
    DeviceBytes ws(forward_training_workspace_size(desc));
    TrainingForwardArgs<float> args;
    args.running = {rm.data(), rv.data()};
    args.saved = {sm.data(), si.data()};
    InferenceForwardArgs<float> inf;
    inf.running = {rm.data(), rv.data()};
    cudaStream_t stream;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    cudaGraph_t graph;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    forward_training(desc, x.data(), y.data(), args, {ws.data(), ws.bytes()}, stream);
    forward_inference(desc, x.data(), y2.data(), inf, stream);
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int replay = 0; replay < 3; ++replay) {
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      EXPECT_TRUE(bitwise_equal(eager.y, y.download()))
          << shape_string(dims, order) << " replay " << replay;
      EXPECT_TRUE(bitwise_equal(eager.sinvstd, si.download())) << shape_string(dims, order);
      if (replay == 0) {
        EXPECT_TRUE(bitwise_equal(eager.rvar, rv.download()));
      }
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

// GPU only: two streams, each with its own workspace, running the same calls at once give the
// eager results; their kernels overlap on the device, their tickets do not.
TEST_F(ForwardProperties, TwoStreamsWithTheirOwnWorkspaces) {
  const Dims dims{64, 3, 33, 33};
  const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsFirst, dims);
  const auto d = make_data<float>(dims, MemoryOrder::kChannelsFirst, 1400);
  const auto eager =
      run_training<float>(desc, d.x, std::vector<float>(3, 0.0f), std::vector<float>(3, 1.0f));
  DeviceBuffer<float> x(d.x), y0(d.x.size()), y1(d.x.size()), s0(3), s1(3), i0(3), i1(3);
  DeviceBytes w0(forward_training_workspace_size(desc)), w1(forward_training_workspace_size(desc));
  cudaStream_t st[2];
  for (auto& s : st) ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  for (int round = 0; round < 4; ++round) {
    TrainingForwardArgs<float> a0, a1;
    a0.saved = {s0.data(), i0.data()};
    a1.saved = {s1.data(), i1.data()};
    forward_training(desc, x.data(), y0.data(), a0, {w0.data(), w0.bytes()}, st[0]);
    forward_training(desc, x.data(), y1.data(), a1, {w1.data(), w1.bytes()}, st[1]);
  }
  for (auto& s : st) ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_TRUE(bitwise_equal(eager.y, y0.download()));
  EXPECT_TRUE(bitwise_equal(eager.y, y1.download()));
  EXPECT_TRUE(bitwise_equal(eager.sinvstd, i0.download()));
  for (auto& s : st) cudaStreamDestroy(s);
}

}  // namespace
#endif

#if defined(CUBN_SIM)
namespace {
// Under CTest's persistent.* twins (CUBN_TEST_PATH=persistent) the training calls of these tests
// do take the persistent path; otherwise the planner's choice.
TEST(ForwardPaths, TheForcedPathIsTheOneTaken) {
  const Dims dims{16, 6, 9, 9};
  const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsFirst, dims);
  const auto d = make_data<float>(dims, MemoryOrder::kChannelsFirst, 3);
  DeviceBuffer<float> x(d.x), y(d.x.size());
  DeviceBytes ws(forward_training_workspace_size(desc));
  cubn::sim::ProfileScope scope;
  forward_training(desc, x.data(), y.data(), TrainingForwardArgs<float>{}, {ws.data(), ws.bytes()},
                   nullptr);
  const bool persistent =
      scope.launches().front().name == std::string("cubn::bn_forward_persistent");
  if (detail::forced_path() == detail::Path::kPersistent) {
    EXPECT_TRUE(persistent);
  } else if (detail::forced_path() == detail::Path::kStreaming) {
    EXPECT_FALSE(persistent);
  }
}
}  // namespace
#endif
