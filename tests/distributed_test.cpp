// The split-phase calls (cubn/distributed.hpp): a batch split into K shards (uneven, some empty,
// K up to 8), each shard a rank, the all-gather done by copying the records into one buffer in
// rank order, gives the whole batch's result: y, the saved and running statistics (bitwise the
// same on every rank), dx, and dscale and doffset summed over the ranks, against the
// double-precision reference of the whole batch with the single call's tolerances
// (support/tolerance.hpp, backward_test.cpp): the shards change only where the roundings fall.
// The same split gives bitwise the same results on every run. Argument errors write nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "reference.hpp"
#include "support/backward_check.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"
#include "support/errors.hpp"
#include "support/padded.hpp"
#include "support/split_check.hpp"

namespace {

using namespace cubn;
using namespace cubn::test;

template <class T>
class Distributed : public DeviceTest {};
using DTypes = ::testing::Types<__half, __nv_bfloat16, float, double>;
TYPED_TEST_SUITE(Distributed, DTypes);

// Samples per rank: n split at k - 1 random cuts (repeated cuts make empty ranks); `empty_first`
// puts an empty rank first.
std::vector<std::int64_t> split_batch(std::int64_t n, int k, unsigned seed, bool empty_first) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> cut(0, n);
  std::vector<std::int64_t> cuts{0, n};
  for (int i = 0; i < k - 1; ++i) cuts.push_back(empty_first && i == 0 ? 0 : cut(rng));
  std::sort(cuts.begin(), cuts.end());
  std::vector<std::int64_t> sizes;
  for (std::size_t i = 1; i < cuts.size(); ++i) sizes.push_back(cuts[i] - cuts[i - 1]);
  return sizes;
}

// The device memory of one rank.
template <class T>
struct Rank {
  using P = param_of<T>;
  TensorDesc desc;
  std::size_t offset = 0, count = 0;  ///< its elements in the whole batch
  std::unique_ptr<DeviceBuffer<T>> x, y, dy, dx, z, dz;
  std::unique_ptr<DeviceBuffer<P>> rm, rv, sm, si, ds, dof;
  std::unique_ptr<DeviceBytes> ws, record, reserve;
  std::unique_ptr<DeviceLengths> lengths;  ///< this rank's samples' (a variable-length batch)
  Lengths len() const { return lengths ? lengths->arg : Lengths{}; }
  const T* xp() const { return count ? x->data() : nullptr; }
  const T* dyp() const { return count ? dy->data() : nullptr; }
};

// Copies every rank's record into one buffer in rank order (what an all-gather does).
template <class T>
void all_gather(const std::vector<Rank<T>>& ranks, DeviceBytes& out, std::size_t record) {
  std::vector<unsigned char> host(record);
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    ranks[r].record->download(host.data(), record);
    out.upload(host.data(), record, r * record);
  }
}

// A variable-length batch's lengths (the whole batch's N; each rank passes its samples' slice).
struct SplitLengths {
  std::vector<std::int64_t> lengths;
  bool wide = false;
  Padding padding = Padding::kZero;
};

// Runs the split forward and backward of `d` (dy: the whole batch's) over ranks of `sizes`
// samples each, with the epilogue `act` (and with `residual`, z = dy's values, and dz), or with
// the lengths of `lens` (y and dx then start as kUntouchedByte bytes).
template <class T>
SplitResult<T> run_split(const Data<T>& d, const std::vector<T>& dy, MemoryOrder order,
                         const std::vector<std::int64_t>& sizes, Activation act = Activation::kNone,
                         bool residual = false, std::vector<T>* dz_out = nullptr,
                         bool summed_backward = false, const SplitLengths* lens = nullptr) {
  using P = param_of<T>;
  const auto C = static_cast<std::size_t>(d.shape.c());
  const auto per_sample = static_cast<std::size_t>(d.shape.c() * d.shape.s());
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
  std::vector<Rank<T>> ranks(sizes.size());
  std::size_t at = 0;
  for (std::size_t r = 0; r < sizes.size(); ++r) {
    Rank<T>& k = ranks[r];
    Dims dims = d.shape.dims;
    dims[0] = sizes[r];
    k.desc = make_desc(dtype_of<T>(), order, dims);
    k.offset = at;
    k.count = static_cast<std::size_t>(sizes[r]) * per_sample;
    at += k.count;
    k.x = std::make_unique<DeviceBuffer<T>>(
        std::vector<T>(d.x.begin() + k.offset, d.x.begin() + k.offset + k.count));
    k.dy = std::make_unique<DeviceBuffer<T>>(
        std::vector<T>(dy.begin() + k.offset, dy.begin() + k.offset + k.count));
    k.y = std::make_unique<DeviceBuffer<T>>(k.count);
    k.dx = std::make_unique<DeviceBuffer<T>>(k.count);
    if (lens != nullptr) {
      const auto first = lens->lengths.begin() + static_cast<std::ptrdiff_t>(k.offset / per_sample);
      k.lengths = std::make_unique<DeviceLengths>(
          std::vector<std::int64_t>(first, first + sizes[r]), lens->wide, lens->padding);
      k.y->fill_bytes(kUntouchedByte);
      k.dx->fill_bytes(kUntouchedByte);
    }
    k.z = std::make_unique<DeviceBuffer<T>>(
        std::vector<T>(dy.begin() + k.offset, dy.begin() + k.offset + k.count));
    k.dz = std::make_unique<DeviceBuffer<T>>(k.count);
    k.reserve = std::make_unique<DeviceBytes>(activation_reserve_size(k.desc, act) + 16);
    k.rm = std::make_unique<DeviceBuffer<P>>(to_params<P>(d.running_mean));
    k.rv = std::make_unique<DeviceBuffer<P>>(to_params<P>(d.running_var));
    k.sm = std::make_unique<DeviceBuffer<P>>(C);
    k.si = std::make_unique<DeviceBuffer<P>>(C);
    k.ds = std::make_unique<DeviceBuffer<P>>(C);
    k.dof = std::make_unique<DeviceBuffer<P>>(C);
    // every rank's share is written, an empty rank's too (zero): no zero-filled buffers here
    k.ds->fill_bytes(0x7f);
    k.dof->fill_bytes(0x7f);
    k.ws = std::make_unique<DeviceBytes>(
        std::max(forward_training_workspace_size(k.desc), backward_workspace_size(k.desc)));
    k.record = std::make_unique<DeviceBytes>(
        std::max(local_stats_bytes(k.desc), local_grad_sums_bytes(k.desc)));
  }
  const std::size_t record = local_stats_bytes(ranks[0].desc);
  DeviceBytes gathered(record * ranks.size());
  const GatheredRecords all{gathered.data(), gathered.bytes(), static_cast<int>(ranks.size())};

  for (auto& k : ranks)
    forward_training_local(k.desc, k.xp(), k.len(), {k.record->data(), record},
                           {k.ws->data(), k.ws->bytes()}, nullptr);
  device_sync();
  all_gather(ranks, gathered, record);
  for (auto& k : ranks) {
    TrainingForwardArgs<P> a = split_forward_args<P>(scale.data(), offset.data(), k.rm->data(),
                                                     k.rv->data(), k.sm->data(), k.si->data());
    a.epilogue = {
        act, residual && k.count ? k.z->data() : nullptr, {k.reserve->data(), k.reserve->bytes()}};
    a.lengths = k.len();
    forward_training_apply(k.desc, k.xp(), k.count ? k.y->data() : nullptr, a, all,
                           {k.ws->data(), k.ws->bytes()}, nullptr);
  }
  device_sync();

  const std::size_t grad_record = local_grad_sums_bytes(ranks[0].desc);
  for (auto& k : ranks) {
    TrainingBackwardArgs<P> b;
    b.scale = scale.data();
    b.saved = {k.sm->data(), k.si->data()};
    b.grads = {k.ds->data(), k.dof->data()};
    b.epilogue = {
        act, residual && k.count ? k.z->data() : nullptr, {k.reserve->data(), k.reserve->bytes()}};
    b.lengths = k.len();
    backward_training_local(k.desc, k.xp(), k.dyp(), b, {k.record->data(), grad_record},
                            {k.ws->data(), k.ws->bytes()}, nullptr);
  }
  device_sync();
  all_gather(ranks, gathered, grad_record);
  int apply_ranks = static_cast<int>(ranks.size());
  if (summed_backward) {  // what a summing all-reduce leaves: one record, each field summed
    std::vector<unsigned char> all(gathered.bytes());
    gathered.download(all.data(), all.size());
    std::int64_t count = 0;
    std::vector<P> sums(2 * C, P(0));
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      const unsigned char* rec = all.data() + r * grad_record;
      std::int64_t n;
      std::memcpy(&n, rec, sizeof n);
      count += n;
      for (std::size_t i = 0; i < 2 * C; ++i) {
        P v;
        std::memcpy(&v, rec + 16 + i * sizeof(P), sizeof v);
        sums[i] += v;
      }
    }
    std::memcpy(all.data(), &count, sizeof count);
    std::memcpy(all.data() + 16, sums.data(), sums.size() * sizeof(P));
    gathered.upload(all.data(), grad_record);
    apply_ranks = 1;
  }
  for (auto& k : ranks) {
    TrainingBackwardArgs<P> b;
    b.scale = scale.data();
    b.saved = {k.sm->data(), k.si->data()};
    b.epilogue = {act,
                  residual && k.count ? k.z->data() : nullptr,
                  {k.reserve->data(), k.reserve->bytes()},
                  residual && k.count ? k.dz->data() : nullptr};
    b.lengths = k.len();
    backward_training_apply(k.desc, k.xp(), k.dyp(), k.count ? k.dx->data() : nullptr, b,
                            {gathered.data(), gathered.bytes(), apply_ranks},
                            {k.ws->data(), k.ws->bytes()}, nullptr);
  }
  device_sync();

  SplitResult<T> out;
  out.y.resize(d.x.size());
  out.dx.resize(d.x.size());
  for (const auto& k : ranks) {
    const auto y = k.y->download(), dx = k.dx->download();
    std::copy(y.begin(), y.end(), out.y.begin() + k.offset);
    std::copy(dx.begin(), dx.end(), out.dx.begin() + k.offset);
    if (dz_out != nullptr) {
      dz_out->resize(d.x.size());
      const auto dz = k.dz->download();
      std::copy(dz.begin(), dz.end(), dz_out->begin() + k.offset);
    }
    out.saved_mean.push_back(k.sm->download());
    out.saved_invstd.push_back(k.si->download());
    out.running_mean.push_back(k.rm->download());
    out.running_var.push_back(k.rv->download());
    out.dscale.push_back(k.ds->download());
    out.doffset.push_back(k.dof->download());
  }
  return out;
}

// The split run of one case against the whole batch's reference.
template <class T>
void check_split(const Dims& dims, MemoryOrder order, const std::vector<std::int64_t>& sizes,
                 unsigned seed, bool rerun = true) {
  std::string what =
      std::string(to_string(dtype_of<T>())) + " " + shape_string(dims, order) + " over ranks of";
  for (auto s : sizes) what += " " + std::to_string(s);
  SCOPED_TRACE(what);
  const Data<T> d = make_data<T>(dims, order, seed);
  const std::vector<T> dy = make_dy<T>(d.x.size(), seed + 1);
  const auto got = run_split(d, dy, order, sizes);
  expect_whole_batch_result(d, dy, got, what);

  // the same split again: the same bits
  if (!rerun) return;
  const auto again = run_split(d, dy, order, sizes);
  EXPECT_TRUE(same_bits(again.y, got.y)) << "y differs between runs";
  EXPECT_TRUE(same_bits(again.dx, got.dx)) << "dx differs between runs";
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    EXPECT_TRUE(same_bits(again.saved_mean[k], got.saved_mean[k])) << "rank " << k;
    EXPECT_TRUE(same_bits(again.running_var[k], got.running_var[k])) << "rank " << k;
    EXPECT_TRUE(same_bits(again.dscale[k], got.dscale[k])) << "rank " << k;
  }
}

const std::vector<Dims>& split_shapes() {
  static const std::vector<Dims> shapes = sanitizer_sized({
      {8, 3},         {12, 5, 7},      {9, 4, 5, 5}, {16, 16, 8, 8}, {6, 1, 33},
      {10, 40, 7, 7}, {7, 3, 2, 3, 4}, {8, 2, 1025}, {5, 70000},     {11, 24, 4, 4}});
  return shapes;
}

TYPED_TEST(Distributed, ShardsGiveTheWholeBatchResult) {
  // three of the rank counts 1, 2, 3, 5, 8 per shape, in turn; the rerun (determinism) with 8
  const int counts[] = {1, 2, 3, 5, 8};
  unsigned seed = 7000;
  int turn = 0;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (const Dims& dims : split_shapes()) {
      for (int i = 0; i < 3; ++i) {
        const int k = counts[(turn + i) % 5];
        ++seed;
        check_split<TypeParam>(dims, order, split_batch(dims[0], k, seed, k == 3), seed, k == 8);
      }
      turn += 2;
    }
}

TYPED_TEST(Distributed, OneSamplePerRankAndEmptyRanksAround) {
  // every rank one sample of one element per channel, and empty ranks first and last
  check_split<TypeParam>({4, 6}, MemoryOrder::kChannelsFirst, {0, 1, 1, 0, 1, 1, 0}, 11);
  check_split<TypeParam>({2, 3, 1, 1}, MemoryOrder::kChannelsLast, {1, 0, 1}, 12);
}

// The fused epilogue through the phases: ReLU's y is max(y, 0) of the same split without it, bit
// for bit (p is formed alike; rounding is monotonic), and its dz passes dy exactly where y > 0
// (the mask the apply phase wrote, read by both backward phases); SiLU's y is silu of the plain y
// within the rounding of both (|silu'| <= 1.1).
template <class T>
void check_split_epilogue(MemoryOrder order) {
  const Dims dims{9, 6, 5, 7};
  const std::vector<std::int64_t> sizes{3, 0, 4, 2};
  const Data<T> d = make_data<T>(dims, order, 90);
  const std::vector<T> dy = make_dy<T>(d.x.size(), 91);
  const auto plain = run_split(d, dy, order, sizes);
  const auto relu = run_split(d, dy, order, sizes, Activation::kRelu);
  const auto silu = run_split(d, dy, order, sizes, Activation::kSilu);
  std::vector<T> dz;
  const auto relu_res = run_split(d, dy, order, sizes, Activation::kRelu, true, &dz);
  const double u = rounding_of<T>().out;
  for (std::size_t i = 0; i < d.x.size(); ++i) {
    const double yp = to_double(plain.y[i]);
    ASSERT_EQ(to_double(relu.y[i]), std::max(yp, 0.0)) << "relu y[" << i << "]";
    const double s = yp / (1 + std::exp(-yp)), ys = to_double(silu.y[i]);
    ASSERT_NEAR(ys, s, 1.1 * u * std::fabs(yp) + 2 * u * std::fabs(s) + 1e-6)
        << "silu y[" << i << "]";
    const double want = to_double(relu_res.y[i]) > 0 ? to_double(dy[i]) : 0.0;
    ASSERT_EQ(to_double(dz[i]), want) << "relu dz[" << i << "]";
  }
  EXPECT_FALSE(same_bits(relu.dx, plain.dx)) << "the backward phases ignored the mask";
}

TEST(DistributedEpilogue, ReluAndSiluThroughThePhases) {
  if (!no_device_reason().empty()) GTEST_SKIP() << no_device_reason();
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    check_split_epilogue<float>(order);
    check_split_epilogue<__nv_bfloat16>(order);
  }
}

// The backward records are sums: one record summed field by field (as a summing all-reduce in
// rank order leaves it) gives the gathered records' dx bit for bit.
TYPED_TEST(Distributed, SummedBackwardRecordsStandForTheGatheredOnes) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Data<TypeParam> d = make_data<TypeParam>({10, 7, 3, 5}, order, 95);
    const std::vector<TypeParam> dy = make_dy<TypeParam>(d.x.size(), 96);
    const std::vector<std::int64_t> sizes{4, 0, 3, 3};
    const auto gathered = run_split(d, dy, order, sizes);
    const auto summed =
        run_split<TypeParam>(d, dy, order, sizes, Activation::kNone, false, nullptr, true);
    EXPECT_TRUE(same_bits(summed.dx, gathered.dx)) << to_string(order);
  }
}

// Variable-length batches across ranks (cubn::Lengths in every phase, each rank passing its own
// samples' lengths): the whole batch's valid positions, gathered into a compact case, against the
// whole batch's reference (expect_whole_batch_result, the single call's tolerances with M = the
// valid elements), and the padded positions of y and dx exactly as Lengths::padding says. Padded x
// and dy are NaN throughout, so a padded value that reached a record would show everywhere. With
// N >= 4 the ranks are {1, 0, 1, 1, N - 3} samples: rank 0 holds a sample of length L, rank 1
// none, rank 2 one sample of length 0 (a rank without a valid position), rank 3 one of length 1.
template <class T>
void check_split_lengths(const Dims& dims, MemoryOrder order, unsigned seed) {
  const std::int64_t n = dims[0];
  const std::vector<std::int64_t> sizes =
      n >= 4 ? std::vector<std::int64_t>{1, 0, 1, 1, n - 3} : std::vector<std::int64_t>{1, 0, n - 1};
  SplitLengths lens;
  lens.lengths = some_lengths(dims, seed);  // L, 0, 1, then random
  lens.wide = seed % 2 == 0;
  lens.padding = seed % 3 == 0 ? Padding::kUntouched : Padding::kZero;
  std::string what = std::string(to_string(dtype_of<T>())) + " " + shape_string(dims, order) +
                     lengths_string(lens.lengths) + " over ranks of";
  for (auto v : sizes) what += " " + std::to_string(v);
  SCOPED_TRACE(what);
  Data<T> d = make_data<T>(dims, order, seed);
  const Padded pad = padded(d.shape, lens.lengths);
  ASSERT_GE(pad.k, 2) << what;
  const Data<T> cd = compact(d, pad);
  std::vector<T> dy = make_dy<T>(d.x.size(), seed + 1);
  const std::vector<T> dyc = gather(dy, pad);
  poison(d.x, pad);
  poison(dy, pad);
  const SplitResult<T> got =
      run_split<T>(d, dy, order, sizes, Activation::kNone, false, nullptr, false, &lens);
  SplitResult<T> valid = got;
  valid.y = gather(got.y, pad);
  valid.dx = gather(got.dx, pad);
  expect_whole_batch_result(cd, dyc, valid, what);
  expect_padding(got.y, pad, lens.padding, what + ": y");
  expect_padding(got.dx, pad, lens.padding, what + ": dx");
}

TYPED_TEST(Distributed, LengthsOnEveryRankGiveTheWholeBatchValidPositionsResult) {
  static const std::vector<Dims> shapes = {{4, 3, 17},  {5, 16, 64},   {6, 3, 50},
                                           {4, 1, 50},  {7, 6, 3},     {3, 5, 4, 7},
                                           {2, 8, 6, 16}, {5, 3, 2, 3, 10}, {6, 2, 3000}};
  unsigned seed = 700;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (const Dims& dims : shapes) check_split_lengths<TypeParam>(dims, order, ++seed);
}

// Every length L is the call without lengths, bit for bit, through every phase.
TYPED_TEST(Distributed, EveryLengthLIsTheSplitWithoutLengthsBitForBit) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{7, 5, 3, 9};
    const Data<TypeParam> d = make_data<TypeParam>(dims, order, 720);
    const std::vector<TypeParam> dy = make_dy<TypeParam>(d.x.size(), 721);
    const std::vector<std::int64_t> sizes{3, 0, 4};
    SplitLengths lens;
    lens.lengths.assign(7, 9);
    const auto plain = run_split(d, dy, order, sizes);
    const auto masked =
        run_split<TypeParam>(d, dy, order, sizes, Activation::kNone, false, nullptr, false, &lens);
    EXPECT_TRUE(same_bits(masked.y, plain.y)) << to_string(order) << ": y";
    EXPECT_TRUE(same_bits(masked.dx, plain.dx)) << to_string(order) << ": dx";
    for (std::size_t r = 0; r < sizes.size(); ++r) {
      EXPECT_TRUE(same_bits(masked.saved_mean[r], plain.saved_mean[r])) << "rank " << r;
      EXPECT_TRUE(same_bits(masked.saved_invstd[r], plain.saved_invstd[r])) << "rank " << r;
      EXPECT_TRUE(same_bits(masked.running_var[r], plain.running_var[r])) << "rank " << r;
      EXPECT_TRUE(same_bits(masked.dscale[r], plain.dscale[r])) << "rank " << r;
      EXPECT_TRUE(same_bits(masked.doffset[r], plain.doffset[r])) << "rank " << r;
    }
  }
}

// The fused epilogue with lengths through the phases (padded x and dy NaN): ReLU's y is max(y, 0)
// of the same split with lengths and no epilogue, bit for bit at every position (0 at the padded
// ones in both); with a residual, dz is dy where y > 0 and 0 elsewhere, the padded positions
// included. Every length L gives the split without lengths bit for bit, ReLU with a residual and
// SiLU alike.
TYPED_TEST(Distributed, FusedEpilogueWithLengthsThroughThePhases) {
  using T = TypeParam;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{7, 5, 3, 9};
    const std::vector<std::int64_t> sizes{3, 0, 4};
    const std::string what = std::string(to_string(dtype_of<T>())) + " " + to_string(order);
    Data<T> d = make_data<T>(dims, order, 730);
    std::vector<T> dy = make_dy<T>(d.x.size(), 731);
    SplitLengths lens;
    lens.lengths = {9, 0, 1, 5, 9, 2, 7};
    const Padded pad = padded(d.shape, lens.lengths);
    poison(d.x, pad);
    poison(dy, pad);
    const auto plain =
        run_split<T>(d, dy, order, sizes, Activation::kNone, false, nullptr, false, &lens);
    const auto relu =
        run_split<T>(d, dy, order, sizes, Activation::kRelu, false, nullptr, false, &lens);
    std::vector<T> dz;
    const auto relu_res =
        run_split<T>(d, dy, order, sizes, Activation::kRelu, true, &dz, false, &lens);
    for (std::size_t i = 0; i < d.x.size(); ++i) {
      ASSERT_EQ(to_double(relu.y[i]), std::max(to_double(plain.y[i]), 0.0))
          << what << " relu y[" << i << "]";
      const double want = to_double(relu_res.y[i]) > 0 ? to_double(dy[i]) : 0.0;
      ASSERT_EQ(to_double(dz[i]), want) << what << " relu dz[" << i << "]";
    }
    EXPECT_FALSE(same_bits(relu.dx, plain.dx)) << what << ": the backward phases ignored the mask";

    const Data<T> whole = make_data<T>(dims, order, 732);
    const std::vector<T> wdy = make_dy<T>(whole.x.size(), 733);
    SplitLengths all;
    all.lengths.assign(7, 9);
    for (Activation act : {Activation::kRelu, Activation::kSilu}) {
      std::vector<T> dz_plain, dz_masked;
      const auto a = run_split<T>(whole, wdy, order, sizes, act, true, &dz_plain);
      const auto b = run_split<T>(whole, wdy, order, sizes, act, true, &dz_masked, false, &all);
      EXPECT_TRUE(same_bits(b.y, a.y)) << what << ": y";
      EXPECT_TRUE(same_bits(b.dx, a.dx)) << what << ": dx";
      EXPECT_TRUE(same_bits(dz_masked, dz_plain)) << what << ": dz";
      for (std::size_t r = 0; r < sizes.size(); ++r) {
        EXPECT_TRUE(same_bits(b.saved_invstd[r], a.saved_invstd[r])) << what << " rank " << r;
        EXPECT_TRUE(same_bits(b.dscale[r], a.dscale[r])) << what << " rank " << r;
        EXPECT_TRUE(same_bits(b.doffset[r], a.doffset[r])) << what << " rank " << r;
      }
    }
  }
}

// A global count under 2, which no rank can see: the defined result cubn/distributed.hpp states,
// the same on every rank. No valid position anywhere: mean 0, invstd 1 / sqrt(epsilon), running
// statistics as they were, y and dx 0, dscale and doffset 0. One valid position in all: its value
// as the mean, the running mean updated with it, the running variance as it was.
TEST(DistributedLengths, GlobalCountsUnderTwoGetTheDocumentedResult) {
  if (!no_device_reason().empty()) GTEST_SKIP() << no_device_reason();
  using T = float;
  const Dims dims{5, 4, 6};
  const std::vector<std::int64_t> sizes{2, 0, 3};
  for (int valid = 0; valid <= 1; ++valid) {
    Data<T> d = make_data<T>(dims, MemoryOrder::kChannelsFirst, 730 + valid);
    const std::vector<T> dy = make_dy<T>(d.x.size(), 740);
    SplitLengths lens;
    lens.lengths = {0, 0, 0, valid, 0};  // sample 3 (rank 2) holds the one valid position
    const auto got = run_split<T>(d, dy, MemoryOrder::kChannelsFirst, sizes, Activation::kNone,
                                  false, nullptr, false, &lens);
    const auto eps_invstd = static_cast<float>(1 / std::sqrt(static_cast<float>(kSplitEpsilon)));
    for (std::size_t r = 0; r < sizes.size(); ++r)
      for (std::size_t c = 0; c < 4; ++c) {
        const float x0 = d.x[static_cast<std::size_t>((3 * 4 + c) * 6)];  // sample 3, t = 0
        const float mean = valid ? x0 : 0.0f;
        SCOPED_TRACE("valid " + std::to_string(valid) + ", rank " + std::to_string(r) + ", c=" +
                     std::to_string(c));
        EXPECT_EQ(got.saved_mean[r][c], mean);
        EXPECT_NEAR(got.saved_invstd[r][c], eps_invstd, 1e-6 * eps_invstd);
        const auto rm = static_cast<float>(d.running_mean[c]);
        const auto mom = static_cast<float>(kSplitMomentum);
        EXPECT_NEAR(got.running_mean[r][c], valid ? (1 - mom) * rm + mom * mean : rm, 1e-6);
        EXPECT_EQ(got.running_var[r][c], static_cast<float>(d.running_var[c]));
        EXPECT_EQ(got.doffset[r][c], r == 2 && valid ? dy[(3 * 4 + c) * 6] : 0.0f);
        EXPECT_TRUE(std::isfinite(got.dscale[r][c]));
      }
    for (std::size_t i = 0; i < d.x.size(); ++i) {
      const bool is_valid = valid && i / 24 == 3 && i % 6 == 0;  // sample 3, t = 0
      if (!is_valid) {
        ASSERT_EQ(got.y[i], 0.0f) << "y[" << i << "]";
        ASSERT_EQ(got.dx[i], 0.0f) << "dx[" << i << "]";
      } else {
        ASSERT_TRUE(std::isfinite(got.y[i])) << "y[" << i << "]";
        ASSERT_TRUE(std::isfinite(got.dx[i])) << "dx[" << i << "]";
      }
    }
  }
}

class DistributedSizes : public DeviceTest {};

TEST_F(DistributedSizes, RecordsHoldACountAndTwoValuesPerChannel) {
  const TensorDesc f = TensorDesc::nchw(DataType::kBFloat16, 32, 64, 7, 7);
  EXPECT_EQ(local_stats_bytes(f), 16u + 64 * 2 * 4);
  EXPECT_EQ(local_grad_sums_bytes(f), 16u + 64 * 2 * 4);
  EXPECT_EQ(local_stats_bytes(TensorDesc::nchw(DataType::kFloat32, 0, 3, 7, 7)), 16u + 32);
  EXPECT_EQ(local_stats_bytes(TensorDesc::nchw(DataType::kFloat64, 2, 3, 7, 7)), 16u + 48);
  EXPECT_GT(forward_training_workspace_size(TensorDesc::nchw(DataType::kFloat32, 0, 3, 7, 7)), 0u);
}

// C past kMaxChannels (2^57 - 1) is refused by name, not sized modulo 2^64; below it, N = 0 with a
// C near 2^57 reaches the column plan, whose period (columns times the vector's lanes, up to 8)
// must be checked before it is multiplied (3 * (2^57 - 1) * 8 passes 2^63: UBSan caught it there).
TEST_F(DistributedSizes, HugeChannelCountsAreRefusedNotWrapped) {
  const std::int64_t max_c = (std::int64_t{1} << 57) - 1;
  for (const auto& query : {local_stats_bytes, local_grad_sums_bytes}) {
    expect_error_and_no_writes(
        [&] { query(TensorDesc::nchw(DataType::kFloat64, 0, max_c + 1, 1, 1)); },
        Status::kSizeOverflow, "x.dims[1] (C) is 144115188075855872", {});
    EXPECT_EQ(query(TensorDesc::nchw(DataType::kFloat64, 0, max_c, 1, 1)),
              16u + static_cast<std::size_t>(max_c) * 16);
  }
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const TensorDesc d(DataType::kFloat16, order, {0, max_c, 3});
    expect_error_and_no_writes([&] { forward_training_workspace_size(d); },
                               Status::kInvalidArgument, "columns per row", {});
    expect_error_and_no_writes([&] { backward_workspace_size(d); }, Status::kInvalidArgument,
                               "columns per row", {});
  }
}

class DistributedErrors : public DeviceTest {};
#if defined(CUBN_SIM)
// Records the local phase did not write: a count that is negative, or whose sum over the ranks
// passes 2^63 - 1, is a kernel fault on the executor (the fuzzer found the merge's int64 sum
// overflowing on such records), in both apply phases.
TEST_F(DistributedErrors, RecordCountsOutsideTheLocalPhasesAreKernelFaults) {
  const TensorDesc desc = TensorDesc::nchw(DataType::kFloat32, 2, 3, 4, 4);
  const std::size_t numel = 2 * 3 * 4 * 4, record = local_stats_bytes(desc);
  DeviceBuffer<float> x(std::vector<float>(numel, 1.5f)), y(numel), sm(3), si(3);
  DeviceBytes ws(std::max(forward_training_workspace_size(desc), backward_workspace_size(desc)));
  DeviceBytes gathered(2 * record);
  const std::int64_t big = std::numeric_limits<std::int64_t>::max() - 3;
  for (const auto& counts : {std::vector<std::int64_t>{-1, 32}, {big, 32}}) {
    for (const bool backward : {false, true}) {
      ws.fill(0);
      gathered.fill(0);
      for (std::size_t r = 0; r < 2; ++r) gathered.upload(&counts[r], 8, r * record);
      try {
        if (backward) {
          TrainingBackwardArgs<float> b;
          b.saved = {sm.data(), si.data()};
          backward_training_apply(desc, x.data(), x.data(), y.data(), b,
                                  {gathered.data(), gathered.bytes(), 2}, {ws.data(), ws.bytes()},
                                  nullptr);
        } else {
          forward_training_apply(desc, x.data(), y.data(), TrainingForwardArgs<float>{},
                                 {gathered.data(), gathered.bytes(), 2}, {ws.data(), ws.bytes()},
                                 nullptr);
        }
        ADD_FAILURE() << "count " << counts[0] << " went unnoticed";
      } catch (const Error& e) {
        EXPECT_EQ(e.status(), Status::kKernelFault) << e.what();
        EXPECT_NE(std::string(e.what()).find("not what the local phase wrote"), std::string::npos)
            << e.what();
      }
    }
  }
}
#endif

TEST_F(DistributedErrors, BadArgumentsAreNamedAndNothingIsWritten) {
  const TensorDesc desc = TensorDesc::nchw(DataType::kFloat32, 4, 3, 5, 5);
  const std::size_t numel = 4 * 3 * 5 * 5, record = local_stats_bytes(desc);
  DeviceBuffer<float> x(std::vector<float>(numel, 1.5f)), stats(3);
  DeviceBytes ws(std::max(forward_training_workspace_size(desc), backward_workspace_size(desc)));
  DeviceBytes rec(record), gathered(2 * record), y(numel * sizeof(float)), out(3 * sizeof(float));
  for (DeviceBytes* b : {&rec, &y, &out}) b->fill(kSentinel);
  const std::vector<const DeviceBytes*> outputs{&rec, &y, &out};
  const Workspace w{ws.data(), ws.bytes()};
  const auto fails = [&](Status s, const std::string& needle, const std::function<void()>& call) {
    expect_error_and_no_writes(call, s, needle, outputs);
  };
  fails(Status::kInvalidArgument, "local.bytes", [&] {
    forward_training_local(desc, x.data(), {rec.data(), record - 16}, w, nullptr);
  });
  fails(Status::kMisalignedOperand, "local.ptr", [&] {
    forward_training_local(desc, x.data(), {static_cast<char*>(rec.data()) + 8, record}, w,
                           nullptr);
  });
  fails(Status::kInvalidArgument, "local overlaps workspace", [&] {
    forward_training_local(desc, x.data(), {ws.data(), record}, w, nullptr);
  });
  fails(Status::kInvalidArgument, "x is null", [&] {
    forward_training_local(desc, nullptr, {rec.data(), record}, w, nullptr);
  });
  fails(Status::kWorkspaceTooSmall, "workspace.bytes", [&] {
    forward_training_local(desc, x.data(), {rec.data(), record}, {ws.data(), 64}, nullptr);
  });
  TrainingForwardArgs<float> a;
  a.running.mean = static_cast<float*>(out.data());
  fails(Status::kInvalidArgument, "gathered.ranks", [&] {
    forward_training_apply(desc, x.data(), y.data(), a, {gathered.data(), gathered.bytes(), 0}, w,
                           nullptr);
  });
  fails(Status::kInvalidArgument, "gathered.bytes", [&] {
    forward_training_apply(desc, x.data(), y.data(), a, {gathered.data(), gathered.bytes(), 3}, w,
                           nullptr);
  });
  fails(Status::kInvalidArgument, "gathered overlaps y", [&] {
    forward_training_apply(desc, x.data(), y.data(), a, {y.data(), y.bytes(), 2}, w, nullptr);
  });
  fails(Status::kInvalidArgument, "gathered overlaps args.running.mean", [&] {
    forward_training_apply(desc, x.data(), y.data(), a,
                           {static_cast<char*>(out.data()) - 16, 2 * record, 1}, w, nullptr);
  });
  fails(Status::kInvalidDataType, "<float>", [&] {
    TrainingForwardArgs<double> ad;
    forward_training_apply(desc, x.data(), y.data(), ad, {gathered.data(), gathered.bytes(), 2}, w,
                           nullptr);
  });
  TrainingBackwardArgs<float> b;
  b.saved = {stats.data(), stats.data()};
  b.grads.dscale = static_cast<float*>(out.data());
  fails(Status::kInvalidArgument, "args.grads", [&] {
    backward_training_apply(desc, x.data(), x.data(), y.data(), b,
                            {gathered.data(), gathered.bytes(), 2}, w, nullptr);
  });
  b.epilogue.residual = x.data();
  b.epilogue.dz = y.data();
  fails(Status::kInvalidArgument, "args.epilogue.dz", [&] {
    backward_training_local(desc, x.data(), x.data(), b, {rec.data(), record}, w, nullptr);
  });
  // the workspace apart from every argument, in each phase
  float* in_ws = static_cast<float*>(ws.data());
  fails(Status::kInvalidArgument, "workspace overlaps x", [&] {
    forward_training_local(desc, in_ws, {rec.data(), record}, w, nullptr);
  });
  TrainingForwardArgs<float> f;
  f.saved.invstd = in_ws;
  fails(Status::kInvalidArgument, "workspace overlaps args.saved.invstd", [&] {
    forward_training_apply(desc, x.data(), y.data(), f, {gathered.data(), gathered.bytes(), 2}, w,
                           nullptr);
  });
  TrainingBackwardArgs<float> g;
  g.saved = {stats.data(), stats.data()};
  g.grads.doffset = in_ws;
  fails(Status::kInvalidArgument, "workspace overlaps args.grads.doffset", [&] {
    backward_training_local(desc, x.data(), x.data(), g, {rec.data(), record}, w, nullptr);
  });
  g.grads.doffset = nullptr;
  fails(Status::kInvalidArgument, "workspace overlaps dx", [&] {
    backward_training_apply(desc, x.data(), x.data(), in_ws, g,
                            {gathered.data(), gathered.bytes(), 2}, w, nullptr);
  });
}

}  // namespace
