// Backward batch norm, training-mode and frozen-statistics, against the double-precision
// reference (itself checked against finite differences in reference_test.cpp): every dtype,
// both memory orders, ranks 2 to 5, the forward tests' edge shapes. Runs on the executor and, in
// the GPU binary, on a device.
//
// Tolerances. Given the statistics (mean, invstd rounded to the parameter type P, the same values
// the reference uses), the error comes from the two sums and the dx formula:
//   sum(dy) and sum(dy (x - mean)) accumulate per thread and merge in a tree; with the growth
//   factor g = 8 u_acc (sqrt(M) + log2(M) + 8) of support/tolerance.hpp:
//     tol(doffset) = g sum|dy|,  tol(dscale) = g sum|dy xhat| + 2 u_acc |dscale|
//   dx = a dy + k_x (x - mean) + k_1 with k_x = -a invstd dscale / M and k_1 = -a doffset / M:
//     tol(dx) = |a invstd (x - mean) / M| tol(dscale) + |a / M| tol(doffset)
//             + 4 u_acc (|a dy| + 8 |k_x (x - mean)| + 8 |a|) + u_out |dx| + out_abs,
//   the 8s covering the roundings inside k_x and k_1, and out_abs fp16's subnormal spacing.
// Frozen statistics: dx = (scale * rsqrt(var + eps)) * dy in the accumulation type. The sum
// rounds (u_acc, halved through rsqrt), rsqrt errs by up to r ulp (CUDA's documented maximum: 2
// for rsqrtf, 1 for double; one ulp is at most 2 u_acc relative), and the two products round:
//     tol(dx) = (2.5 + 2 r) u_acc |a dy| + (u_out + 4.5 u_double) |dx| + out_abs,
// the u_double term for the double reference's own roundings of the same formula (add, sqrt,
// divide, two products), which for fp64 are as large as the kernel's. (The first GPU run found
// the former 4 u_acc |a dy| + u_out |dx| too tight for fp64: 5.3 u off, rsqrt being 1 ulp.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "cubn/cubn.hpp"
#include "reference.hpp"
#include "support/backward_check.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"

#if defined(CUBN_SIM)
#include "cubn/sim/executor.hpp"
#endif

namespace {

using namespace cubn;
using namespace cubn::test;

template <class T>
class Backward : public DeviceTest {};
using DTypes = ::testing::Types<__half, __nv_bfloat16, float, double>;
TYPED_TEST_SUITE(Backward, DTypes);

// Device buffers and the call of one backward case.
template <class T>
struct BackwardRun {
  using P = param_of<T>;
  std::vector<double> dx, dscale, doffset;
};

// Training-mode backward with the given saved statistics (rounded to P).
template <class T>
BackwardRun<T> run_training_backward(const TensorDesc& desc, const std::vector<T>& x,
                                     const std::vector<T>& dy,
                                     const std::vector<param_of<T>>& scale,
                                     const std::vector<param_of<T>>& mean,
                                     const std::vector<param_of<T>>& invstd) {
  using P = param_of<T>;
  const std::size_t C = mean.size();
  DeviceBuffer<T> dx_(x), dy_(dy), out(x.size());
  DeviceBuffer<P> sc(scale), m(mean), is(invstd), ds(C), dof(C);
  DeviceBytes ws(backward_workspace_size(desc));
  TrainingBackwardArgs<P> args;
  args.scale = scale.empty() ? nullptr : sc.data();
  args.saved = {m.data(), is.data()};
  args.grads = {ds.data(), dof.data()};
  backward_training(desc, dx_.data(), dy_.data(), out.data(), args, {ws.data(), ws.bytes()},
                    nullptr);
  device_sync();
  return {to_doubles(out.download()), to_doubles(ds.download()), to_doubles(dof.download())};
}

template <class T>
void check_training_backward(const Dims& dims, MemoryOrder order, unsigned seed) {
  using P = param_of<T>;
  const std::string what =
      std::string(to_string(dtype_of<T>())) + " backward " + shape_string(dims, order);
  const Data<T> d = make_data<T>(dims, order, seed);
  const auto dy = make_dy<T>(d.x.size(), seed + 1);
  const auto dyd = to_doubles(dy);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const auto st = ref::batch_stats(d.shape, d.xd, 1e-3);
  const auto mean = to_params<P>(st.mean), invstd = to_params<P>(st.invstd),
             scale = to_params<P>(d.scale);
  const auto got = run_training_backward<T>(desc, d.x, dy, scale, mean, invstd);
  ref::Params p;
  p.scale = to_doubles(scale);
  const auto r =
      ref::backward_with_stats(d.shape, d.xd, dyd, p, to_doubles(mean), to_doubles(invstd), true);
  const auto tol =
      backward_tolerance<T>(d.shape, d.xd, dyd, p.scale, to_doubles(mean), to_doubles(invstd), r);
  expect_gradients_near<T>(d.shape, d.xd, dyd, r, got.dx, got.dscale, got.doffset, tol, true, what);
}

template <class T>
void check_frozen_backward(const Dims& dims, MemoryOrder order, unsigned seed) {
  using P = param_of<T>;
  const std::string what =
      std::string(to_string(dtype_of<T>())) + " frozen backward " + shape_string(dims, order);
  const Data<T> d = make_data<T>(dims, order, seed);
  const auto dy = make_dy<T>(d.x.size(), seed + 1);
  const auto dyd = to_doubles(dy);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size();
  const auto scale = to_params<P>(d.scale), rm = to_params<P>(d.running_mean),
             rv = to_params<P>(d.running_var);
  DeviceBuffer<T> x(d.x), dyb(dy), dx(d.x.size());
  DeviceBuffer<P> sc(scale), m(rm), v(rv), ds(C), dof(C);
  DeviceBytes ws(backward_workspace_size(desc));
  FrozenBackwardArgs<P> args;
  args.scale = sc.data();
  args.running = {m.data(), v.data()};
  args.epsilon = 1e-3;
  args.grads = {ds.data(), dof.data()};
  backward_frozen(desc, x.data(), dyb.data(), dx.data(), args, {ws.data(), ws.bytes()}, nullptr);
  device_sync();
  ref::Params p;
  p.scale = to_doubles(scale);
  p.eps = 1e-3;
  const auto r = ref::backward_frozen(d.shape, d.xd, dyd, p, to_doubles(rm), to_doubles(rv));
  std::vector<double> invstd(C);
  for (std::size_t c = 0; c < C; ++c) invstd[c] = 1 / std::sqrt(double(rv[c]) + 1e-3);
  const auto tol = backward_tolerance<T>(d.shape, d.xd, dyd, p.scale, to_doubles(rm), invstd, r);
  expect_gradients_near<T>(d.shape, d.xd, dyd, r, to_doubles(dx.download()),
                           to_doubles(ds.download()), to_doubles(dof.download()), tol, false, what);
}

TYPED_TEST(Backward, TrainingMatchesTheReference) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (std::size_t i = 0; i < edge_shapes().size(); ++i)
      check_training_backward<TypeParam>(edge_shapes()[i], order, 2000 + static_cast<unsigned>(i));
}

TYPED_TEST(Backward, FrozenMatchesTheReference) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (std::size_t i = 0; i < edge_shapes().size(); ++i)
      check_frozen_backward<TypeParam>(edge_shapes()[i], order, 3000 + static_cast<unsigned>(i));
}

// Forward training, then backward with what it saved, against the reference computing both in
// double. The saved statistics carry the forward's error (support/tolerance.hpp): to first order
// dx moves by rel_var / 2 of each term through invstd and by tol_mean * invstd through xhat.
TYPED_TEST(Backward, FullTrainingStepMatchesTheReference) {
  using T = TypeParam;
  using P = param_of<T>;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    for (const Dims& dims : {Dims{8, 6, 5, 5}, Dims{3, 17, 4, 4, 3}, Dims{64, 12}}) {
      const std::string what =
          std::string(to_string(dtype_of<T>())) + " step " + shape_string(dims, order);
      const Data<T> d = make_data<T>(dims, order, 4000);
      const auto dy = make_dy<T>(d.x.size(), 4001);
      const auto dyd = to_doubles(dy);
      const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
      const std::size_t C = d.scale.size();
      const auto scale = to_params<P>(d.scale), offset = to_params<P>(d.offset);
      DeviceBuffer<T> x(d.x), y(d.x.size()), dyb(dy), dx(d.x.size());
      DeviceBuffer<P> sc(scale), of(offset), sm(C), si(C), ds(C), dof(C);
      DeviceBytes fws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
      TrainingForwardArgs<P> fa;
      fa.affine = {sc.data(), of.data()};
      fa.saved = {sm.data(), si.data()};
      forward_training(desc, x.data(), y.data(), fa, {fws.data(), fws.bytes()}, nullptr);
      TrainingBackwardArgs<P> ba;
      ba.scale = sc.data();
      ba.saved = {sm.data(), si.data()};
      ba.grads = {ds.data(), dof.data()};
      backward_training(desc, x.data(), dyb.data(), dx.data(), ba, {bws.data(), bws.bytes()},
                        nullptr);
      device_sync();

      ref::Params p;
      p.scale = to_doubles(scale);
      p.offset = to_doubles(offset);
      const auto r = ref::backward_training(d.shape, d.xd, dyd, p);
      const auto st = ref::batch_stats(d.shape, d.xd, p.eps);
      const auto tol = backward_tolerance<T>(d.shape, d.xd, dyd, p.scale, st.mean, st.invstd, r);
      const Rounding u = rounding_of<T>();
      const double m = static_cast<double>(d.shape.m());
      std::vector<double> drift(C), sum_abs_dy_xhat(C, 0.0);
      for (std::size_t c = 0; c < C; ++c) {
        const StatTolerance s = stat_tolerance(u, m, st.mean[c], std::sqrt(st.var[c]));
        drift[c] = s.rel_var / 2 + s.mean * st.invstd[c];
      }
      for (std::int64_t n = 0; n < d.shape.n(); ++n)
        for (std::int64_t c = 0; c < d.shape.c(); ++c)
          for (std::int64_t s = 0; s < d.shape.s(); ++s) {
            const auto i = static_cast<std::size_t>(d.shape.index(n, c, s));
            sum_abs_dy_xhat[c] += std::fabs(dyd[i] * (d.xd[i] - st.mean[c]) * st.invstd[c]);
          }
      const auto got_dx = to_doubles(dx.download());
      const auto got_ds = to_doubles(ds.download()), got_do = to_doubles(dof.download());
      for (std::size_t c = 0; c < C; ++c) {
        EXPECT_NEAR(got_ds[c], r.dscale[c], tol.dscale[c] + drift[c] * sum_abs_dy_xhat[c])
            << what << " dscale c=" << c;
        EXPECT_NEAR(got_do[c], r.doffset[c], tol.doffset[c]) << what << " doffset c=" << c;
      }
      int bad = 0;
      for (std::int64_t n = 0; n < d.shape.n(); ++n)
        for (std::int64_t c = 0; c < d.shape.c(); ++c)
          for (std::int64_t s = 0; s < d.shape.s(); ++s) {
            const auto i = static_cast<std::size_t>(d.shape.index(n, c, s));
            const double a = p.scale[c] * st.invstd[c];
            const double xhat = (d.xd[i] - st.mean[c]) * st.invstd[c];
            // every term of a dy - a xhat dscale / M - a doffset / M moves by `drift` relative
            const double terms = std::fabs(a * dyd[i]) + std::fabs(a * xhat * r.dscale[c] / m) +
                                 std::fabs(a * r.doffset[c] / m);
            const double t = tol.dx(i, c, d.xd[i], dyd[i], r.dx[i], true) + 2 * drift[c] * terms;
            if (!(std::fabs(got_dx[i] - r.dx[i]) <= t) && bad++ < 5)
              ADD_FAILURE() << what << ": dx[" << i << "] = " << got_dx[i] << ", reference "
                            << r.dx[i] << ", tolerance " << t;
          }
      EXPECT_EQ(bad, 0) << what;
    }
  }
}

class BackwardProperties : public DeviceTest {};

TEST_F(BackwardProperties, ZeroUpstreamGradientGivesExactlyZero) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{6, 5, 7, 3};
    const auto d = make_data<float>(dims, order, 5000);
    const auto dy = make_dy<float>(d.x.size(), 0, 0.0);
    const auto st = ref::batch_stats(d.shape, d.xd, 1e-5);
    const auto got = run_training_backward<float>(
        make_desc(DataType::kFloat32, order, dims), d.x, dy, to_params<float>(d.scale),
        to_params<float>(st.mean), to_params<float>(st.invstd));
    for (double v : got.dx) ASSERT_EQ(v, 0.0);
    for (double v : got.dscale) ASSERT_EQ(v, 0.0);
    for (double v : got.doffset) ASSERT_EQ(v, 0.0);
  }
}

// dy = const: dx = a / M (M c - M c - xhat * c * sum(xhat)) = 0 since sum(xhat) = 0. Within
// the backward tolerance (the reference dx is zero up to double rounding).
TEST_F(BackwardProperties, ConstantUpstreamGradientGivesZeroDxInTraining) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{6, 5, 7, 3};
    const auto d = make_data<float>(dims, order, 5100);
    const auto dy = make_dy<float>(d.x.size(), 0, 0.75);
    const auto st = ref::batch_stats(d.shape, d.xd, 1e-5);
    const auto mean = to_params<float>(st.mean), invstd = to_params<float>(st.invstd);
    const auto got = run_training_backward<float>(make_desc(DataType::kFloat32, order, dims), d.x,
                                                  dy, to_params<float>(d.scale), mean, invstd);
    ref::Params p;
    p.scale = to_doubles(to_params<float>(d.scale));
    const auto dyd = to_doubles(dy);
    const auto r =
        ref::backward_with_stats(d.shape, d.xd, dyd, p, to_doubles(mean), to_doubles(invstd), true);
    const auto tol = backward_tolerance<float>(d.shape, d.xd, dyd, p.scale, to_doubles(mean),
                                               to_doubles(invstd), r);
    for (std::int64_t c = 0; c < 5; ++c)
      for (std::int64_t n = 0; n < 6; ++n)
        for (std::int64_t s = 0; s < 21; ++s) {
          const auto i = static_cast<std::size_t>(d.shape.index(n, c, s));
          ASSERT_NEAR(got.dx[i], 0.0, tol.dx(i, c, d.xd[i], dyd[i], 0.0, true) + 1e-9) << "i=" << i;
        }
  }
}

TEST_F(BackwardProperties, AccumulateAddsAndOverwriteReplaces) {
  // the sums alone (dx null) always stream; so does `once` here, for the same bits (the persistent
  // path merges its partials over other splits: equal within tolerance, not bit for bit)
  const ForcePath streaming(detail::Path::kStreaming);
  const Dims dims{4, 3, 5, 5};
  const auto d = make_data<float>(dims, MemoryOrder::kChannelsLast, 5200);
  const auto dy = make_dy<float>(d.x.size(), 5201);
  const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsLast, dims);
  const auto st = ref::batch_stats(d.shape, d.xd, 1e-5);
  const auto once = run_training_backward<float>(desc, d.x, dy, {}, to_params<float>(st.mean),
                                                 to_params<float>(st.invstd));
  DeviceBuffer<float> x(d.x), dyb(dy), m(to_params<float>(st.mean)),
      is(to_params<float>(st.invstd));
  DeviceBuffer<float> ds(std::vector<float>(3, 100.0f)), dof(std::vector<float>(3, -7.0f));
  DeviceBytes ws(backward_workspace_size(desc));
  TrainingBackwardArgs<float> args;
  args.saved = {m.data(), is.data()};
  args.grads = {ds.data(), dof.data(), true};
  backward_training(desc, x.data(), dyb.data(), nullptr, args, {ws.data(), ws.bytes()}, nullptr);
  backward_training(desc, x.data(), dyb.data(), nullptr, args, {ws.data(), ws.bytes()}, nullptr);
  device_sync();
  const auto acc_s = ds.download(), acc_o = dof.download();
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(acc_s[c],
              static_cast<float>(static_cast<float>(100.0f + static_cast<float>(once.dscale[c])) +
                                 static_cast<float>(once.dscale[c])));
    EXPECT_EQ(acc_o[c],
              static_cast<float>(static_cast<float>(-7.0f + static_cast<float>(once.doffset[c])) +
                                 static_cast<float>(once.doffset[c])));
  }
  args.grads.accumulate = false;  // overwrite: the 100 and -7 are gone
  backward_training(desc, x.data(), dyb.data(), nullptr, args, {ws.data(), ws.bytes()}, nullptr);
  device_sync();
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(ds.download()[c], static_cast<float>(once.dscale[c]));
    EXPECT_EQ(dof.download()[c], static_cast<float>(once.doffset[c]));
  }
}

TEST_F(BackwardProperties, OptionalOutputsAndInPlaceGiveTheSameResults) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{4, 8, 6, 6};
    const auto d = make_data<__half>(dims, order, 5300);
    const auto dy = make_dy<__half>(d.x.size(), 5301);
    const TensorDesc desc = make_desc(DataType::kFloat16, order, dims);
    const auto st = ref::batch_stats(d.shape, d.xd, 1e-5);
    const auto mean = to_params<float>(st.mean), invstd = to_params<float>(st.invstd);
    const auto full = run_training_backward<__half>(desc, d.x, dy, {}, mean, invstd);
    DeviceBuffer<__half> x(d.x), dyb(dy);
    DeviceBuffer<float> m(mean), is(invstd), ds(8);
    DeviceBytes ws(backward_workspace_size(desc));
    TrainingBackwardArgs<float> args;
    args.saved = {m.data(), is.data()};
    // dx in place of dy, no doffset
    args.grads = {ds.data(), nullptr};
    backward_training(desc, x.data(), dyb.data(), dyb.data(), args, {ws.data(), ws.bytes()},
                      nullptr);
    device_sync();
    EXPECT_EQ(to_doubles(dyb.download()), full.dx);
    EXPECT_EQ(to_doubles(ds.download()), full.dscale);
    // dx in place of x, no parameter gradients
    dyb.upload(dy);
    args.grads = {};
    backward_training(desc, x.data(), dyb.data(), x.data(), args, {ws.data(), ws.bytes()}, nullptr);
    device_sync();
    EXPECT_EQ(to_doubles(x.download()), full.dx);
  }
}

// Bitwise the same every run and whatever order blocks finish in (thread schedule reversed,
// block order shuffled), on the multi-block paths: split planes, periodic columns whose channels
// span column blocks, and column blocks split over blocks (the shapes of the forward's test).
TEST_F(BackwardProperties, DeterministicBitForBit) {
  const std::vector<std::pair<MemoryOrder, Dims>> cases = {
      {MemoryOrder::kChannelsLast, {16, 12, 9, 9}},
      {MemoryOrder::kChannelsFirst, {64, 3, 33, 33}},
      {MemoryOrder::kChannelsLast, {512, 100, 3, 3}},
      {MemoryOrder::kChannelsLast, {512, 1024}}};
  for (const auto& [order, dims] : cases) {
    const std::string what = shape_string(dims, order);
    const auto d = make_data<__nv_bfloat16>(dims, order, 5400);
    const auto dy = make_dy<__nv_bfloat16>(d.x.size(), 5401);
    const TensorDesc desc = make_desc(DataType::kBFloat16, order, dims);
    const auto st = ref::batch_stats(d.shape, d.xd, 1e-5);
    const auto mean = to_params<float>(st.mean), invstd = to_params<float>(st.invstd);
    const auto a = run_training_backward<__nv_bfloat16>(desc, d.x, dy, {}, mean, invstd);
    const auto b = run_training_backward<__nv_bfloat16>(desc, d.x, dy, {}, mean, invstd);
    EXPECT_EQ(a.dx, b.dx) << what;
    EXPECT_EQ(a.dscale, b.dscale) << what;
#if defined(CUBN_SIM)
    for (int run = 0; run < 4; ++run) {
      cubn::sim::set_schedule(run % 2 ? cubn::sim::Schedule::kReverse
                                      : cubn::sim::Schedule::kForward);
      cubn::sim::set_block_order(cubn::sim::BlockOrder::kShuffled, 40 + run);
      const auto c = run_training_backward<__nv_bfloat16>(desc, d.x, dy, {}, mean, invstd);
      cubn::sim::set_schedule(cubn::sim::Schedule::kForward);
      cubn::sim::set_block_order(cubn::sim::BlockOrder::kInOrder);
      EXPECT_EQ(a.dx, c.dx) << what << " run " << run;
      EXPECT_EQ(a.dscale, c.dscale) << what << " run " << run;
      EXPECT_EQ(a.doffset, c.doffset) << what << " run " << run;
    }
#endif
  }
}

TEST_F(BackwardProperties, FrozenDxNeedsNeitherXNorWorkspace) {
  const Dims dims{4, 6, 5};
  const auto d = make_data<double>(dims, MemoryOrder::kChannelsFirst, 5500);
  const auto dy = make_dy<double>(d.x.size(), 5501);
  DeviceBuffer<double> dyb(dy), dx(d.x.size()), m(d.running_mean), v(d.running_var), sc(d.scale);
  FrozenBackwardArgs<double> args;
  args.scale = sc.data();
  args.running = {m.data(), v.data()};
  backward_frozen(make_desc(DataType::kFloat64, MemoryOrder::kChannelsFirst, dims), nullptr,
                  dyb.data(), dx.data(), args, {}, nullptr);
  device_sync();
  const auto got = dx.download();
  for (std::int64_t n = 0; n < 4; ++n)
    for (std::int64_t c = 0; c < 6; ++c)
      for (std::int64_t s = 0; s < 5; ++s) {
        const auto i = static_cast<std::size_t>(d.shape.index(n, c, s));
        EXPECT_NEAR(got[i], d.scale[c] / std::sqrt(d.running_var[c] + 1e-5) * dy[i], 1e-14);
      }
}

// doffset alone needs no x (the fuzzer found the sums kernel reading a null x): sum(dy) per
// channel, the same bits as with x given, and within fp32's accumulation error of the double sum
// (M terms: M * 2^-24 * sum |dy|, taken with a factor 4).
TEST_F(BackwardProperties, FrozenDoffsetNeedsNoX) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{5, 6, 7, 3};
    const auto d = make_data<float>(dims, order, 5600);
    const auto dy = make_dy<float>(d.x.size(), 5601);
    const TensorDesc desc = make_desc(DataType::kFloat32, order, dims);
    DeviceBuffer<float> x(d.x), dyb(dy), dof(6), ds(6);
    DeviceBuffer<float> m(to_params<float>(d.running_mean)), v(to_params<float>(d.running_var));
    DeviceBytes ws(backward_workspace_size(desc));
    ws.fill(0);
    FrozenBackwardArgs<float> args;
    args.running = {m.data(), v.data()};
    args.grads = {nullptr, dof.data()};
    backward_frozen(desc, nullptr, dyb.data(), nullptr, args, {ws.data(), ws.bytes()}, nullptr);
    device_sync();
    const auto without_x = dof.download();
    args.grads = {ds.data(), dof.data()};
    backward_frozen(desc, x.data(), dyb.data(), nullptr, args, {ws.data(), ws.bytes()}, nullptr);
    device_sync();
    EXPECT_EQ(without_x, dof.download()) << to_string(order);
    std::vector<double> sum(6, 0.0), abs_sum(6, 0.0);
    for (std::int64_t n = 0; n < 5; ++n)
      for (std::int64_t c = 0; c < 6; ++c)
        for (std::int64_t s = 0; s < 21; ++s) {
          const double g = dy[static_cast<std::size_t>(d.shape.index(n, c, s))];
          sum[c] += g;
          abs_sum[c] += std::fabs(g);
        }
    for (std::size_t c = 0; c < 6; ++c)
      EXPECT_NEAR(without_x[c], sum[c], 4 * 105 * std::ldexp(abs_sum[c], -24))
          << to_string(order) << " c=" << c;
  }
}

}  // namespace
