// Variable-length batches (cubn::Lengths) against the double-precision reference of the same math
// on the valid positions: each channel's valid elements, gathered into a compact (1, C, K)
// channels-first tensor, go through the existing reference (ref::forward_training,
// ref::backward_with_stats, ...) and its tolerances (support/tolerance.hpp, backward_check.hpp)
// with M = K, the channel's valid elements; results are compared at the valid positions, and the
// padded positions must hold exactly what Lengths::padding says (0, or the bytes the buffer held).
// Padded inputs are NaN throughout, so a padded value that reached any output or statistic would
// show. Every dtype, both memory orders, ranks 3 to 5 (time last), lengths 0, 1, L, random, and
// lengths outside [0, L] (clamped). Runs on the executor and, in the GPU binary, on a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cubn/cubn.hpp"
#include "reference.hpp"
#include "support/backward_check.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"
#include "support/errors.hpp"
#include "support/padded.hpp"

namespace {

using namespace cubn;
using namespace cubn::test;

template <class T>
class Lengths : public DeviceTest {};
using DTypes = ::testing::Types<__half, __nv_bfloat16, float, double>;
TYPED_TEST_SUITE(Lengths, DTypes);

// The shapes every call is checked on (time last): rank 3 with C = 1, C not a multiple of any
// vector width (channels-last then takes scalar accesses), L under a vector, a channel over
// several blocks; ranks 4 and 5 with W as time. Channels-last with C at least a vector and not a
// multiple of it ({7, 6, 3} and {3, 5, 4, 7} for fp32, {5, 12, 37}, {3, 10, 3, 9} and
// {4, 12, 5, 150} for every dtype): vectors that run into the next position; {4, 12, 5, 150}
// also gives each thread several visits of U vectors (channels-first: rows of 150 in planes of
// 5 rows, vectors that run into the next row). {1100, 2, 9}: more sequences than a streaming
// kernel keeps in shared memory (kernels/channel_ops.cuh kLengthTable), so that its one-row
// planes take the loop of several rows.
const std::vector<Dims>& shapes() {
  static const std::vector<Dims> s = {{4, 3, 17},      {5, 16, 64},   {3, 40, 33},
                                      {6, 3, 50},      {4, 1, 50},    {7, 6, 3},
                                      {3, 5, 4, 7},    {2, 8, 6, 16}, {2, 3, 2, 3, 10},
                                      {9, 2, 3000},    {5, 12, 37},   {3, 10, 3, 9},
                                      {4, 12, 5, 150}, {1100, 2, 9}};
  return s;
}

// One training forward with lengths against the compact reference.
template <class T>
void check_training(const Dims& dims, MemoryOrder order, const std::vector<std::int64_t>& lengths,
                    bool wide, Padding padding, unsigned seed) {
  using P = param_of<T>;
  const std::string what = std::string(to_string(dtype_of<T>())) + " " +
                           shape_string(dims, order) + lengths_string(lengths);
  Data<T> d = make_data<T>(dims, order, seed);
  const Padded pad = padded(d.shape, lengths);
  ASSERT_GE(pad.k, 2) << what;
  poison(d.x, pad);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size();
  DeviceBuffer<T> x(d.x), y(d.x.size());
  y.fill_bytes(kUntouchedByte);
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
  DeviceBuffer<P> rmean(to_params<P>(d.running_mean)), rvar(to_params<P>(d.running_var));
  DeviceBuffer<P> smean(C), sinvstd(C);
  DeviceBytes ws(forward_training_workspace_size(desc));
  DeviceLengths len(lengths, wide, padding);
  TrainingForwardArgs<P> args;
  args.affine = {scale.data(), offset.data()};
  args.epsilon = 1e-3;
  args.running = {rmean.data(), rvar.data()};
  args.saved = {smean.data(), sinvstd.data()};
  args.lengths = len.arg;
  forward_training(desc, x.data(), y.data(), args, {ws.data(), ws.bytes()}, nullptr);
  device_sync();

  const Data<T> cd = compact(d, pad);
  ref::Params p;
  p.scale = to_doubles(to_params<P>(d.scale));
  p.offset = to_doubles(to_params<P>(d.offset));
  p.eps = 1e-3;
  const double mom = static_cast<double>(static_cast<P>(0.1));
  const auto r = ref::forward_training(cd.shape, cd.xd, p, mom, mom,
                                       to_doubles(to_params<P>(d.running_mean)),
                                       to_doubles(to_params<P>(d.running_var)));
  const Rounding u = rounding_of<T>();
  std::vector<StatTolerance> st(C);
  const auto got_mean = to_doubles(smean.download()), got_invstd = to_doubles(sinvstd.download());
  const auto got_rmean = to_doubles(rmean.download()), got_rvar = to_doubles(rvar.download());
  for (std::size_t c = 0; c < C; ++c) {
    st[c] = stat_tolerance(u, static_cast<double>(pad.k), r.stats.mean[c],
                           std::sqrt(r.stats.var[c]));
    EXPECT_NEAR(got_mean[c], r.stats.mean[c], st[c].mean) << what << " saved mean, c=" << c;
    EXPECT_NEAR(got_invstd[c], r.stats.invstd[c],
                r.stats.invstd[c] * (st[c].rel_var / 2 + 4 * u.acc))
        << what << " saved invstd, c=" << c;
    EXPECT_NEAR(got_rmean[c], r.running_mean[c],
                0.1 * st[c].mean + 4 * u.acc * std::fabs(r.running_mean[c]))
        << what << " running mean, c=" << c;
    EXPECT_NEAR(got_rvar[c], r.running_var[c],
                0.1 * r.stats.var_unbiased[c] * (st[c].rel_var + 4 * u.acc) +
                    4 * u.acc * r.running_var[c])
        << what << " running var, c=" << c;
  }
  const std::vector<T> out = y.download();
  expect_y_near(cd, to_doubles(gather(out, pad)), r.y, r.stats.mean, r.stats.invstd, p.offset,
                p.scale, st, what);
  expect_padding(out, pad, padding, what);
}

TYPED_TEST(Lengths, TrainingForwardMatchesTheReferenceOnTheValidPositions) {
  // the streaming kernels, then the persistent one (forced: which the plan picks depends on the
  // shape and the device)
  for (const detail::Path path : {detail::Path::kStreaming, detail::Path::kPersistent}) {
    const ForcePath forced(path);
    SCOPED_TRACE(path == detail::Path::kPersistent ? "persistent" : "streaming");
    unsigned seed = 100;
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : shapes()) {
        ++seed;
        check_training<TypeParam>(dims, order, some_lengths(dims, seed), seed % 2 == 0,
                                  seed % 3 == 0 ? Padding::kUntouched : Padding::kZero, seed);
      }
  }
}

// The training backward with lengths: the forward's statistics of the valid positions (the
// reference's, rounded to P, as forward_training would save them), then dx, dscale and doffset
// against ref::backward_with_stats on the compact case; padded dx 0 (or untouched). Padded x and
// dy are NaN.
template <class T>
void check_backward(const Dims& dims, MemoryOrder order, const std::vector<std::int64_t>& lengths,
                    bool frozen, Padding padding, unsigned seed) {
  using P = param_of<T>;
  const std::string what = std::string(to_string(dtype_of<T>())) +
                           (frozen ? " frozen " : " training ") + shape_string(dims, order) +
                           lengths_string(lengths);
  Data<T> d = make_data<T>(dims, order, seed);
  const Padded pad = padded(d.shape, lengths);
  ASSERT_GE(pad.k, 2) << what;
  const Data<T> cd = compact(d, pad);
  poison(d.x, pad);
  std::vector<T> dy = make_dy<T>(d.x.size(), seed + 7);
  const std::vector<T> dyc = gather(dy, pad);
  poison(dy, pad);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size();

  ref::Params p;
  p.scale = to_doubles(to_params<P>(d.scale));
  p.offset = to_doubles(to_params<P>(d.offset));
  p.eps = 1e-3;
  std::vector<double> mean(C), invstd(C);
  if (frozen) {
    mean = to_doubles(to_params<P>(d.running_mean));
    const auto rv = to_doubles(to_params<P>(d.running_var));
    for (std::size_t c = 0; c < C; ++c) invstd[c] = 1 / std::sqrt(rv[c] + p.eps);
  } else {
    const ref::BatchStats bs = ref::batch_stats(cd.shape, cd.xd, p.eps);
    mean = to_doubles(to_params<P>(bs.mean));
    invstd = to_doubles(to_params<P>(bs.invstd));
  }
  DeviceBuffer<T> x(d.x), dyb(dy), dx(d.x.size());
  dx.fill_bytes(kUntouchedByte);
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
  DeviceBuffer<P> smean(to_params<P>(mean)), sinvstd(to_params<P>(invstd));
  DeviceBuffer<P> rmean(to_params<P>(d.running_mean)), rvar(to_params<P>(d.running_var));
  DeviceBuffer<P> dscale(C), doffset(C);
  DeviceBytes ws(backward_workspace_size(desc));
  DeviceLengths len(lengths, seed % 2 == 1, padding);
  if (frozen) {
    FrozenBackwardArgs<P> args;
    args.scale = scale.data();
    args.running = {rmean.data(), rvar.data()};
    args.epsilon = p.eps;
    args.grads = {dscale.data(), doffset.data()};
    args.lengths = len.arg;
    backward_frozen(desc, x.data(), dyb.data(), dx.data(), args, {ws.data(), ws.bytes()}, nullptr);
  } else {
    TrainingBackwardArgs<P> args;
    args.scale = scale.data();
    args.saved = {smean.data(), sinvstd.data()};
    args.grads = {dscale.data(), doffset.data()};
    args.lengths = len.arg;
    backward_training(desc, x.data(), dyb.data(), dx.data(), args, {ws.data(), ws.bytes()},
                      nullptr);
  }
  device_sync();

  const auto dycd = to_doubles(dyc);
  const ref::Gradients r = ref::backward_with_stats(cd.shape, cd.xd, dycd, p, mean, invstd, !frozen);
  const BackwardTolerance t =
      backward_tolerance<T>(cd.shape, cd.xd, dycd, p.scale, mean, invstd, r);
  const std::vector<T> out = dx.download();
  expect_gradients_near<T>(cd.shape, cd.xd, dycd, r, to_doubles(gather(out, pad)),
                           to_doubles(dscale.download()), to_doubles(doffset.download()), t,
                           !frozen, what);
  expect_padding(out, pad, padding, what);
}

TYPED_TEST(Lengths, TrainingBackwardMatchesTheReferenceOnTheValidPositions) {
  // the streaming kernels (their own sums and dx kernels), then the persistent one (forced, as
  // above)
  for (const detail::Path path : {detail::Path::kStreaming, detail::Path::kPersistent}) {
    const ForcePath forced(path);
    SCOPED_TRACE(path == detail::Path::kPersistent ? "persistent" : "streaming");
    unsigned seed = 200;
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : shapes()) {
        ++seed;
        check_backward<TypeParam>(dims, order, some_lengths(dims, seed), false,
                                  seed % 3 == 0 ? Padding::kUntouched : Padding::kZero, seed);
      }
  }
}

TYPED_TEST(Lengths, FrozenBackwardMatchesTheReferenceOnTheValidPositions) {
  unsigned seed = 300;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (const Dims& dims : shapes()) {
      ++seed;
      check_backward<TypeParam>(dims, order, some_lengths(dims, seed), true,
                                seed % 3 == 0 ? Padding::kUntouched : Padding::kZero, seed);
    }
}

TYPED_TEST(Lengths, InferenceMatchesTheReferenceOnTheValidPositions) {
  using T = TypeParam;
  using P = param_of<T>;
  unsigned seed = 400;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (const Dims& dims : shapes()) {
      ++seed;
      const auto lengths = some_lengths(dims, seed);
      const Padding padding = seed % 3 == 0 ? Padding::kUntouched : Padding::kZero;
      const std::string what = std::string(to_string(dtype_of<T>())) + " inference " +
                               shape_string(dims, order) + lengths_string(lengths);
      Data<T> d = make_data<T>(dims, order, seed);
      const Padded pad = padded(d.shape, lengths);
      const Data<T> cd = compact(d, pad);
      poison(d.x, pad);
      const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
      DeviceBuffer<T> x(d.x), y(d.x.size());
      y.fill_bytes(kUntouchedByte);
      DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
      DeviceBuffer<P> rmean(to_params<P>(d.running_mean)), rvar(to_params<P>(d.running_var));
      DeviceLengths len(lengths, seed % 2 == 0, padding);
      InferenceForwardArgs<P> args;
      args.affine = {scale.data(), offset.data()};
      args.running = {rmean.data(), rvar.data()};
      args.epsilon = 1e-3;
      args.lengths = len.arg;
      forward_inference(desc, x.data(), y.data(), args, nullptr);
      device_sync();
      const InferenceReference r = inference_reference(cd);
      const std::vector<T> out = y.download();
      expect_y_near(cd, to_doubles(gather(out, pad)), r.y, r.mean, r.invstd, r.p.offset,
                    r.p.scale, r.st, what);
      expect_padding(out, pad, padding, what);
    }
}

// Every output of the four calls with lengths, for comparing runs bit for bit.
template <class T>
struct Outputs {
  std::vector<T> y, dx, y_inf, dx_frozen;
  std::vector<param_of<T>> smean, sinvstd, rmean, rvar, dscale, doffset, fdscale, fdoffset;
  // The names of the outputs that differ from o's in any bit ("" when none).
  std::string differences(const Outputs& o) const {
    std::string r;
    const auto same = [&](const auto& a, const auto& b, const char* name) {
      if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) != 0)
        r += std::string(" ") + name;
    };
    same(y, o.y, "y");
    same(dx, o.dx, "dx");
    same(y_inf, o.y_inf, "y_inf");
    same(dx_frozen, o.dx_frozen, "dx_frozen");
    same(smean, o.smean, "saved.mean");
    same(sinvstd, o.sinvstd, "saved.invstd");
    same(rmean, o.rmean, "running.mean");
    same(rvar, o.rvar, "running.var");
    same(dscale, o.dscale, "dscale");
    same(doffset, o.doffset, "doffset");
    same(fdscale, o.fdscale, "frozen dscale");
    same(fdoffset, o.fdoffset, "frozen doffset");
    return r;
  }
};

// Runs the four calls on `d` (x; dy from `dy`) with `lengths` (none where null), in place when
// asked (y over x, dx over dy).
template <class T>
Outputs<T> run_all(const Dims& dims, MemoryOrder order, const Data<T>& d, const std::vector<T>& dy,
                   const std::vector<std::int64_t>* lengths, bool in_place = false,
                   detail::Path path = detail::Path::kStreaming) {
  using P = param_of<T>;
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size();
  std::unique_ptr<DeviceLengths> len;
  bool wide = false;  // int32 where every length fits
  if (lengths != nullptr)
    for (std::int64_t v : *lengths) wide = wide || v != static_cast<std::int32_t>(v);
  if (lengths != nullptr) len = std::make_unique<DeviceLengths>(*lengths, wide, Padding::kZero);
  const cubn::Lengths arg = len ? len->arg : cubn::Lengths{};
  Outputs<T> o;
  const ForcePath forced(path);  // the streaming kernels unless told
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
  DeviceBuffer<P> rmean(to_params<P>(d.running_mean)), rvar(to_params<P>(d.running_var));
  DeviceBuffer<P> smean(C), sinvstd(C), dscale(C), doffset(C);
  DeviceBytes fws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
  {
    DeviceBuffer<T> x(d.x), y(d.x.size());
    TrainingForwardArgs<P> args;
    args.affine = {scale.data(), offset.data()};
    args.running = {rmean.data(), rvar.data()};
    args.saved = {smean.data(), sinvstd.data()};
    args.lengths = arg;
    forward_training(desc, x.data(), in_place ? x.data() : y.data(), args,
                     {fws.data(), fws.bytes()}, nullptr);
    device_sync();
    o.y = in_place ? x.download() : y.download();
  }
  o.smean = smean.download();
  o.sinvstd = sinvstd.download();
  o.rmean = rmean.download();
  o.rvar = rvar.download();
  {
    DeviceBuffer<T> x(d.x), dyb(dy), dx(d.x.size());
    TrainingBackwardArgs<P> args;
    args.scale = scale.data();
    args.saved = {smean.data(), sinvstd.data()};
    args.grads = {dscale.data(), doffset.data()};
    args.lengths = arg;
    backward_training(desc, x.data(), dyb.data(), in_place ? dyb.data() : dx.data(), args,
                      {bws.data(), bws.bytes()}, nullptr);
    device_sync();
    o.dx = in_place ? dyb.download() : dx.download();
    o.dscale = dscale.download();
    o.doffset = doffset.download();
  }
  {
    DeviceBuffer<T> x(d.x), y(d.x.size());
    InferenceForwardArgs<P> args;
    args.affine = {scale.data(), offset.data()};
    args.running = {rmean.data(), rvar.data()};
    args.lengths = arg;
    forward_inference(desc, x.data(), in_place ? x.data() : y.data(), args, nullptr);
    device_sync();
    o.y_inf = in_place ? x.download() : y.download();
  }
  {
    DeviceBuffer<T> x(d.x), dyb(dy), dx(d.x.size());
    FrozenBackwardArgs<P> args;
    args.scale = scale.data();
    args.running = {rmean.data(), rvar.data()};
    args.grads = {dscale.data(), doffset.data()};
    args.lengths = arg;
    backward_frozen(desc, x.data(), dyb.data(), in_place ? dyb.data() : dx.data(), args,
                    {bws.data(), bws.bytes()}, nullptr);
    device_sync();
    o.dx_frozen = in_place ? dyb.download() : dx.download();
    o.fdscale = dscale.download();
    o.fdoffset = doffset.download();
  }
  return o;
}

TYPED_TEST(Lengths, EveryLengthLIsTheUnmaskedCallBitForBit) {
  using T = TypeParam;
  // the streaming kernels, then the persistent ones (forced: these tensors are under their 2^31
  // elements): each against the unmasked call on that path
  for (const detail::Path path : {detail::Path::kStreaming, detail::Path::kPersistent}) {
    unsigned seed = 500;
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : shapes()) {
        ++seed;
        const Data<T> d = make_data<T>(dims, order, seed);
        const std::vector<T> dy = make_dy<T>(d.x.size(), seed);
        const std::vector<std::int64_t> full(static_cast<std::size_t>(dims[0]), dims.back());
        EXPECT_EQ(run_all(dims, order, d, dy, &full, false, path)
                      .differences(run_all(dims, order, d, dy, nullptr, false, path)),
                  "")
            << to_string(dtype_of<T>()) << " " << shape_string(dims, order)
            << (path == detail::Path::kPersistent ? " (persistent)" : " (streaming)");
      }
  }
}

TYPED_TEST(Lengths, LengthsOutsideZeroToLAreClampedAndInPlaceEqualsOutOfPlace) {
  using T = TypeParam;
  unsigned seed = 600;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (const Dims& dims : {Dims{4, 3, 17}, Dims{3, 5, 4, 7}}) {
      ++seed;
      const Data<T> d = make_data<T>(dims, order, seed);
      const std::vector<T> dy = make_dy<T>(d.x.size(), seed);
      const std::int64_t l = dims.back();
      const std::vector<std::int64_t> clamped{l, 0, 3, l};
      const std::vector<std::int64_t> given{l + 5, -7, 3, std::int64_t{1} << 40};
      std::vector<std::int64_t> in(given.begin(), given.begin() + dims[0]);
      std::vector<std::int64_t> want(clamped.begin(), clamped.begin() + dims[0]);
      const std::string what = std::string(to_string(dtype_of<T>())) + " " +
                               shape_string(dims, order);
      EXPECT_EQ(run_all(dims, order, d, dy, &in).differences(run_all(dims, order, d, dy, &want)),
                "")
          << what;
      // int64 lengths whose low word alone would say another length (3, a negative one, 2), and
      // an int32 one at its most negative: the clamp reads the whole value
      constexpr std::int64_t k32 = std::int64_t{1} << 32;
      for (const auto& [odd, want_odd] :
           {std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>>{
                {3 - k32, (k32 >> 1) + 1, k32 + 2, 5}, {0, l, l, 5}},
            {{std::numeric_limits<std::int32_t>::min(), 2, l + 1, 0}, {0, 2, l, 0}}}) {
        std::vector<std::int64_t> a(odd.begin(), odd.begin() + dims[0]);
        std::vector<std::int64_t> b(want_odd.begin(), want_odd.begin() + dims[0]);
        EXPECT_EQ(run_all(dims, order, d, dy, &a).differences(run_all(dims, order, d, dy, &b)), "")
            << what << lengths_string(a);
      }
      EXPECT_EQ(
          run_all(dims, order, d, dy, &want, true).differences(run_all(dims, order, d, dy, &want)),
          "")
          << what << " in place";
    }
}

// Pointers one element off 16 bytes take the scalar masked path: the same valid outputs as the
// aligned (vector) call within the reference check's tolerance (another vector width groups a
// thread's values differently), the same padding, and nothing written outside the tensor.
TEST(LengthsEdges, MisalignedPointersTakeTheScalarPathWithTheSameResults) {
  if (!no_device_reason().empty()) GTEST_SKIP() << no_device_reason();
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{4, 8, 24};
    const std::vector<std::int64_t> lengths{24, 5, 0, 13};
    Data<float> d = make_data<float>(dims, order, 2400);
    const Padded pad = padded(d.shape, lengths);
    poison(d.x, pad);
    const TensorDesc desc = make_desc(DataType::kFloat32, order, dims);
    const std::size_t numel = d.x.size();
    DeviceLengths len(lengths, false, Padding::kZero);
    const auto run = [&](std::size_t shift) {
      std::vector<float> host(numel + 2, 0.0f);
      std::copy(d.x.begin(), d.x.end(), host.begin() + static_cast<std::ptrdiff_t>(shift));
      DeviceBuffer<float> x(host), y(numel + 2);
      y.fill_bytes(kUntouchedByte);
      DeviceBytes ws(forward_training_workspace_size(desc));
      TrainingForwardArgs<float> args;
      args.lengths = len.arg;
      forward_training(desc, x.data() + shift, y.data() + shift, args, {ws.data(), ws.bytes()},
                       nullptr);
      device_sync();
      return y.download();
    };
    const std::vector<float> aligned = run(0), shifted = run(1);
    const auto ref = ref::forward_training(compact(d, pad).shape, compact(d, pad).xd, {}, 0, 0,
                                           {}, {});
    for (std::size_t j = 0; j < pad.valid.size(); ++j) {
      const std::size_t i = pad.valid[j];
      ASSERT_NEAR(shifted[i + 1], ref.y[j], 1e-4) << to_string(order) << " i=" << i;
      ASSERT_NEAR(shifted[i + 1], aligned[i], 1e-4) << to_string(order) << " i=" << i;
    }
    for (std::size_t i = 0; i < numel; ++i) {
      if (!pad.is_valid[i]) {
        ASSERT_EQ(shifted[i + 1], 0.0f) << to_string(order) << " i=" << i;
      }
    }
    unsigned char edge[sizeof(float)];
    std::memcpy(edge, &shifted[0], sizeof(float));
    EXPECT_EQ(edge[0], kUntouchedByte) << "written before the tensor";
    std::memcpy(edge, &shifted[numel + 1], sizeof(float));
    EXPECT_EQ(edge[0], kUntouchedByte) << "written after the tensor";
  }
}

// A channel with fewer than two valid elements: M = 0 gives mean 0, invstd 1 / sqrt(epsilon),
// running statistics unchanged, every output 0; M = 1 its value as the mean, the running mean
// updated and the running variance unchanged, y = offset there.
TEST(LengthsEdges, ChannelsWithoutTwoValidElementsGetTheDocumentedResults) {
  if (!no_device_reason().empty()) GTEST_SKIP() << no_device_reason();
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (std::int64_t valid : {0, 1}) {
      const Dims dims{3, 2, 5};
      const std::string what = shape_string(dims, order) + " M=" + std::to_string(valid);
      Data<float> d = make_data<float>(dims, order, 7);
      const std::vector<std::int64_t> lengths{0, valid, 0};
      const Padded pad = padded(d.shape, lengths);
      poison(d.x, pad);
      std::vector<float> dy = make_dy<float>(d.x.size(), 8);
      poison(dy, pad);
      Outputs<float> o = run_all(dims, order, d, dy, &lengths);
      const float invstd = 1.0f / std::sqrt(1e-5f);
      for (std::size_t c = 0; c < 2; ++c) {
        const float x0 = valid ? d.x[pad.valid[c]] : 0.0f;
        EXPECT_EQ(o.smean[c], x0) << what;
        EXPECT_FLOAT_EQ(o.sinvstd[c], invstd) << what;
        const auto rm = static_cast<float>(d.running_mean[c]);
        EXPECT_FLOAT_EQ(o.rmean[c], valid ? 0.9f * rm + 0.1f * x0 : rm) << what;
        EXPECT_EQ(o.rvar[c], static_cast<float>(d.running_var[c])) << what;
        if (valid) {
          EXPECT_FLOAT_EQ(o.y[pad.valid[c]], static_cast<float>(d.offset[c])) << what;
        }
        if (!valid) {
          EXPECT_EQ(o.dscale[c], 0.0f) << what;
          EXPECT_EQ(o.doffset[c], 0.0f) << what;
        }
      }
      for (std::size_t i = 0; i < d.x.size(); ++i) {
        if (pad.is_valid[i]) continue;
        EXPECT_EQ(o.y[i], 0.0f) << what;
        EXPECT_EQ(o.dx[i], 0.0f) << what;
        EXPECT_EQ(o.y_inf[i], 0.0f) << what;
        EXPECT_EQ(o.dx_frozen[i], 0.0f) << what;
      }
      for (float v : o.dx) EXPECT_TRUE(std::isfinite(v)) << what;
    }
}

// Bad lengths arguments: each refused naming the argument, nothing written.
TEST(LengthsErrors, BadLengthsArgumentsAreRefusedNamingTheArgument) {
  if (!no_device_reason().empty()) GTEST_SKIP() << no_device_reason();
  const TensorDesc desc = make_desc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {2, 3, 8});
  DeviceBuffer<float> x(48), y(48), z(48);
  DeviceBuffer<std::int64_t> len(std::vector<std::int64_t>{8, 4});
  DeviceBytes ws(forward_training_workspace_size(desc));
  y.fill_bytes(kSentinel);
  const auto expect = [&](const TrainingForwardArgs<float>& a, Status status,
                          const std::string& needle, const TensorDesc& dsc) {
    expect_error_and_no_writes(
        [&] {
          forward_training(dsc, x.data(), y.data(), a, {ws.data(), ws.bytes()}, nullptr);
        },
        status, needle, {&y.bytes()});
  };
  TrainingForwardArgs<float> a;
  a.lengths.ptr = len.data();
  a.lengths.type = LengthType::kInt64;
  {
    TrainingForwardArgs<float> b = a;
    b.lengths.type = static_cast<LengthType>(7);
    expect(b, Status::kInvalidArgument, "args.lengths.type", desc);
  }
  {
    TrainingForwardArgs<float> b = a;
    b.lengths.padding = static_cast<Padding>(9);
    expect(b, Status::kInvalidArgument, "args.lengths.padding", desc);
  }
  {
    TrainingForwardArgs<float> b = a;
    b.lengths.ptr = reinterpret_cast<const char*>(len.data()) + 4;
    expect(b, Status::kMisalignedOperand, "args.lengths.ptr", desc);
  }
  expect(a, Status::kInvalidArgument, "rank 2",
         make_desc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {2, 24}));
  // N or S past 32 bits (shape arithmetic, in place so that no overlap check comes first:
  // refused before anything is read or written)
  for (const Dims& big : std::vector<Dims>{
           {std::int64_t{1} << 31, 2, 3}, {2, 2, std::int64_t{1} << 31}, {2, 2, 65536, 32768}}) {
    expect_error_and_no_writes(
        [&] {
          forward_training(make_desc(DataType::kFloat32, MemoryOrder::kChannelsLast, big), y.data(),
                           y.data(), a, {ws.data(), ws.bytes()}, nullptr);
        },
        Status::kSizeOverflow, "at most 2^31 - 1", {&y.bytes()});
  }
  // the fused epilogue's outputs: ReLU's mask, dz
  DeviceBytes mask(activation_reserve_size(desc, Activation::kRelu));
  ASSERT_GE(mask.bytes(), 16u);
  {
    TrainingForwardArgs<float> b = a;
    b.epilogue = {Activation::kRelu, z.data(), {mask.data(), mask.bytes()}};
    b.lengths.ptr = mask.data();
    expect(b, Status::kInvalidArgument, "args.lengths overlaps args.epilogue.reserve", desc);
    InferenceForwardArgs<float> inf;
    DeviceBuffer<float> stats(std::vector<float>(3, 1.0f));
    inf.running = {stats.data(), stats.data()};
    inf.epilogue = b.epilogue;
    inf.lengths = b.lengths;
    expect_error_and_no_writes([&] { forward_inference(desc, x.data(), y.data(), inf, nullptr); },
                               Status::kInvalidArgument,
                               "args.lengths overlaps args.epilogue.reserve", {&y.bytes()});
    TrainingBackwardArgs<float> g;
    g.saved = {stats.data(), stats.data()};
    g.epilogue = {Activation::kNone, z.data(), {}, y.data()};
    g.lengths = a.lengths;
    g.lengths.ptr = y.data();
    DeviceBytes bws(backward_workspace_size(desc));
    expect_error_and_no_writes(
        [&] {
          backward_training(desc, x.data(), z.data(), x.data(), g, {bws.data(), bws.bytes()},
                            nullptr);
        },
        Status::kInvalidArgument, "args.lengths overlaps args.epilogue.dz", {&y.bytes()});
  }
  {
    TrainingForwardArgs<float> b = a;
    b.lengths.ptr = y.data();
    expect(b, Status::kInvalidArgument, "args.lengths overlaps y", desc);
  }
  // the split-phase calls check lengths as the single calls do
  DeviceBytes rec(local_stats_bytes(desc) * 2);
  rec.fill(kSentinel);
  // the local phases into rec with workspace w: refused, naming `needle`, rec untouched
  const auto expect_local_forward = [&](const cubn::Lengths& l, Workspace w, Status status,
                                        const std::string& needle) {
    expect_error_and_no_writes(
        [&] {
          forward_training_local(desc, x.data(), l, {rec.data(), local_stats_bytes(desc)}, w,
                                 nullptr);
        },
        status, needle, {&rec});
  };
  const auto expect_local_backward = [&](const TrainingBackwardArgs<float>& g, Workspace w,
                                         const std::string& needle) {
    expect_error_and_no_writes(
        [&] {
          backward_training_local(desc, x.data(), z.data(), g,
                                  {rec.data(), local_grad_sums_bytes(desc)}, w, nullptr);
        },
        Status::kInvalidArgument, needle, {&rec});
  };
  {  // inside the workspace or a statistics array the call writes while its kernels read lengths
    ASSERT_GE(ws.bytes(), 16u);
    TrainingForwardArgs<float> b = a;
    b.lengths.ptr = ws.data();
    expect(b, Status::kInvalidArgument, "args.lengths overlaps workspace", desc);
    DeviceBuffer<float> mean(4), invstd(4);
    b.lengths.ptr = mean.data();
    b.saved = {mean.data(), invstd.data()};
    expect(b, Status::kInvalidArgument, "args.lengths overlaps args.saved.mean", desc);
    TrainingBackwardArgs<float> g;
    g.saved = {invstd.data(), invstd.data()};
    g.grads.dscale = mean.data();
    g.lengths = b.lengths;
    DeviceBytes bws(backward_workspace_size(desc));
    expect_error_and_no_writes(
        [&] {
          backward_training(desc, x.data(), z.data(), y.data(), g, {bws.data(), bws.bytes()},
                            nullptr);
        },
        Status::kInvalidArgument, "args.lengths overlaps args.grads.dscale", {&y.bytes()});
    g.lengths.ptr = bws.data();
    g.grads.dscale = nullptr;
    expect_local_backward(g, {bws.data(), bws.bytes()}, "args.lengths overlaps workspace");
  }
  {
    TrainingForwardArgs<float> b = a;
    b.lengths.type = static_cast<LengthType>(2);
    expect_error_and_no_writes(
        [&] {
          forward_training_apply(desc, x.data(), y.data(), b, {rec.data(), rec.bytes(), 1},
                                 {ws.data(), ws.bytes()}, nullptr);
        },
        Status::kInvalidArgument, "args.lengths.type", {&y.bytes()});
  }
  expect_local_forward(a.lengths, {ws.data(), 0}, Status::kWorkspaceTooSmall, "workspace.bytes");
  {
    cubn::Lengths l = a.lengths;
    l.ptr = rec.data();  // the array inside the record the call writes
    l.type = LengthType::kInt32;
    expect_local_forward(l, {ws.data(), ws.bytes()}, Status::kInvalidArgument,
                         "lengths overlaps local");
    l.padding = static_cast<Padding>(5);
    expect_local_forward(l, {ws.data(), ws.bytes()}, Status::kInvalidArgument, "lengths.padding");
  }
  {
    DeviceBuffer<float> mean(3), invstd(3);
    TrainingBackwardArgs<float> b;
    b.saved = {mean.data(), invstd.data()};
    b.lengths = a.lengths;
    b.lengths.ptr = mask.data();  // inside ReLU's mask, which the kernels read beside it
    b.epilogue = {Activation::kRelu, z.data(), {mask.data(), mask.bytes()}};
    expect_local_backward(b, {ws.data(), ws.bytes()},
                          "args.lengths overlaps args.epilogue.reserve");
  }
  InferenceForwardArgs<float> inf;
  DeviceBuffer<float> stats(std::vector<float>(3, 1.0f));
  inf.running = {stats.data(), stats.data()};
  inf.lengths = a.lengths;
  inf.lengths.type = static_cast<LengthType>(-1);
  expect_error_and_no_writes([&] { forward_inference(desc, x.data(), y.data(), inf, nullptr); },
                             Status::kInvalidArgument, "args.lengths.type", {&y.bytes()});
}

}  // namespace
