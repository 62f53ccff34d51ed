// Forward batch norm, training and inference, against the double-precision reference: every
// dtype, both memory orders, ranks 2 to 5, edge and random shapes. Runs on the executor and, in
// the GPU binary, on a device. Tolerances: support/tolerance.hpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "cubn/cubn.hpp"
#include "reference.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"

#if defined(CUBN_SIM)
#include "cubn/sim/executor.hpp"
#endif

namespace {

using namespace cubn;
using namespace cubn::test;
using Dims = std::vector<std::int64_t>;

// Shapes: one element per channel but two per batch, C = 1, S = 1, N = 1, odd and prime sizes,
// every rank, C past 2^16, S not a multiple of any vector width, and sizes that split channels
// over several blocks.
const std::vector<Dims> kShapes = {
    {2, 3},          {7, 1},        {1, 5, 3},      {3, 5, 7},        {4, 1, 5, 5},
    {2, 3, 4, 5},    {2, 3, 2, 3, 4}, {1, 2, 1025},  {5, 17, 13, 1},   {1, 64, 3, 3},
    {32, 16, 8, 8},  {3, 40, 7, 7}, {2, 70000},     {16, 8, 1, 96},   {2, 3, 1, 1, 1},
    {64, 24, 16, 16}};

// A few random shapes per run of a dtype/order, from a fixed seed so failures reproduce.
std::vector<Dims> random_shapes(unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> rank(2, 5), small(1, 9), n(1, 12), c(1, 40);
  std::vector<Dims> out;
  for (int k = 0; k < 3; ++k) {
    Dims d{n(rng), c(rng)};
    for (int r = 2, R = rank(rng); r < R; ++r) d.push_back(small(rng));
    if (d[0] * [&] { std::int64_t s = 1; for (std::size_t i = 2; i < d.size(); ++i) s *= d[i]; return s; }() < 2)
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
  const auto r = ref::forward_training(d.shape, d.xd, p, static_cast<double>(static_cast<P>(momentum)),
                                       static_cast<double>(static_cast<P>(momentum)),
                                       to_doubles(to_params<P>(d.running_mean)),
                                       to_doubles(to_params<P>(d.running_var)));
  const Rounding u = rounding_of<T>();
  const double m = static_cast<double>(d.shape.m());
  std::vector<StatTolerance> st(C);
  const auto got_mean = to_doubles(smean.download()), got_invstd = to_doubles(sinvstd.download());
  const auto got_rmean = to_doubles(rmean.download()), got_rvar = to_doubles(rvar.download());
  for (std::size_t c = 0; c < C; ++c) {
    st[c] = stat_tolerance(u, m, r.stats.mean[c], std::sqrt(r.stats.var[c]));
    EXPECT_NEAR(got_mean[c], r.stats.mean[c], st[c].mean) << what << " saved mean, c=" << c;
    EXPECT_NEAR(got_invstd[c], r.stats.invstd[c], r.stats.invstd[c] * (st[c].rel_var / 2 + 4 * u.acc))
        << what << " saved invstd, c=" << c;
    EXPECT_NEAR(got_rmean[c], r.running_mean[c], momentum * st[c].mean + 4 * u.acc * std::fabs(r.running_mean[c]))
        << what << " running mean, c=" << c;
    EXPECT_NEAR(got_rvar[c], r.running_var[c],
                momentum * r.stats.var_unbiased[c] * (st[c].rel_var + 4 * u.acc) + 4 * u.acc * r.running_var[c])
        << what << " running var, c=" << c;
  }
  expect_y_near(d, to_doubles(y.download()), r.y, r.stats.mean, r.stats.invstd, p.offset, p.scale,
                st, what);
}

template <class T>
void check_inference(const Dims& dims, MemoryOrder order, unsigned seed) {
  using P = param_of<T>;
  const std::string what = std::string(to_string(dtype_of<T>())) + " inference " + shape_string(dims, order);
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

  ref::Params p;
  p.scale = to_doubles(to_params<P>(d.scale));
  p.offset = to_doubles(to_params<P>(d.offset));
  p.eps = 1e-3;
  const auto rm = to_doubles(to_params<P>(d.running_mean)), rv = to_doubles(to_params<P>(d.running_var));
  const auto y_ref = ref::forward_inference(d.shape, d.xd, p, rm, rv);
  std::vector<double> invstd(rv.size());
  for (std::size_t c = 0; c < rv.size(); ++c) invstd[c] = 1 / std::sqrt(rv[c] + 1e-3);
  // no statistics are computed: only the rounding of invstd, a, b and the output
  const Rounding u = rounding_of<T>();
  std::vector<StatTolerance> st(rv.size(), StatTolerance{0, 8 * u.acc});
  expect_y_near(d, to_doubles(y.download()), y_ref, rm, invstd, p.offset, p.scale, st, what);
}

TYPED_TEST(Forward, TrainingMatchesTheReferenceOnEdgeShapes) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (std::size_t i = 0; i < kShapes.size(); ++i)
      check_training<TypeParam>(kShapes[i], order, 100 + static_cast<unsigned>(i));
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
    for (std::size_t i = 0; i < kShapes.size(); ++i)
      check_inference<TypeParam>(kShapes[i], order, 400 + static_cast<unsigned>(i));
  // one element per channel is fine in inference
  check_inference<TypeParam>({1, 9}, MemoryOrder::kChannelsFirst, 450);
  check_inference<TypeParam>({1, 3, 1, 1}, MemoryOrder::kChannelsLast, 451);
}

}  // namespace
