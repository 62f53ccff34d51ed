// The fused epilogue y = act(bn(x) + z) and its backward (dx, dz, dscale, doffset through act)
// against the double-precision reference (reference_test.cpp checks its epilogue gradient against
// finite differences): every dtype, both memory orders, the edge shapes, training and inference,
// both backward modes, in place, NaN and Inf, bad arguments, and a ResNet basic block composed of
// cubn calls. Runs on the executor and, in the GPU binary, on a device.
//
// Tolerances, on top of support/tolerance.hpp's bound tol_bn of the normalization:
//   p = bn + z rounds once more in the accumulation type: tol_p = tol_bn + u_acc (|bn| + |z|);
//   ReLU and the identity are 1-Lipschitz and exact: tol_y = tol_p + u_out |y| (+ out_abs);
//   SiLU's slope is at most 1.1, and exp and the division round a few times in Acc:
//   tol_y = 1.1 tol_p + 8 u_acc (|p| + |y|) + u_out |y| (+ out_abs).
// Backward: ReLU's g = dy * bit is exact given the forward's mask (the test takes the kernel's
// mask as where the ReLU passed, and checks the mask itself in the forward tests: set wherever y >
// 0, clear wherever y is NaN or p is below -tol_p). SiLU's g = dy silu'(p) moves by at most
// |dy| (0.5 tol_p + 16 u_acc (1 + |p|)) (|silu''| <= 0.5, and the derivative's own roundings):
// that error bound enters support/backward_check.hpp as dy_err; dz = g rounds to T.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <limits>
#include <string>
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

ref::Act ref_act(Activation a) {
  switch (a) {
    case Activation::kRelu: return ref::Act::kRelu;
    case Activation::kSilu: return ref::Act::kSilu;
    case Activation::kNone: break;
  }
  return ref::Act::kNone;
}

const char* act_name(Activation a) {
  switch (a) {
    case Activation::kRelu: return "relu";
    case Activation::kSilu: return "silu";
    case Activation::kNone: break;
  }
  return "none";
}

// One fused variant: the activation and whether a residual is added.
struct Variant {
  Activation act;
  bool residual;
};

// The five fused variants (the sixth, neither, is the plain call).
const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {{Activation::kRelu, true},
                                         {Activation::kSilu, true},
                                         {Activation::kRelu, false},
                                         {Activation::kSilu, false},
                                         {Activation::kNone, true}};
  return v;
}

// Every edge shape for ReLU with a residual (ResNet's block); for the other variants the edge
// shapes but the largest (64 x 24 x 16 x 16, which only adds splits the others already take), or,
// without a residual, a subset that still has C = 1, S = 1, huge C, odd planes and both paths.
std::vector<Dims> shapes_for(const Variant& v) {
  const bool relu_z = v.residual && v.act == Activation::kRelu;
  if (!sanitizer_shapes()) {
    if (relu_z) return edge_shapes();
    if (v.residual && v.act == Activation::kSilu) {
      std::vector<Dims> s = edge_shapes();
      s.erase(std::remove(s.begin(), s.end(), Dims{64, 24, 16, 16}), s.end());
      return s;
    }
  }
  std::vector<Dims> s = {{2, 3}, {7, 1}, {1, 2, 1025}, {5, 17, 13, 1}, {3, 40, 7, 7}, {2, 70000},
                         {16, 8, 1, 96}};
  // Under the sanitizers (sanitizer_shapes) every variant takes this subset, and only ReLU with a
  // residual, the variant that touches the most buffers (z read, mask written, dz), takes C past
  // 2^16 as well: that shape differs from the others in how the grid covers the channels (index
  // arithmetic every variant shares), not in what a variant reads or writes per element, and it
  // cost 95% of each fused test under ASan (4 to 6 s a call: 70,000 channels of executor blocks).
  if (sanitizer_shapes() && !relu_z)
    s.erase(std::remove(s.begin(), s.end(), Dims{2, 70000}), s.end());
  return s;
}

std::string case_name(const char* dtype, const Variant& v, const Dims& dims, MemoryOrder o) {
  return std::string(dtype) + " " + act_name(v.act) + (v.residual ? "+z " : " ") +
         shape_string(dims, o);
}

// The ReLU mask's bit of element i.
bool mask_bit(const std::vector<unsigned char>& mask, std::size_t i) {
  return ((mask[i / 8] >> (i % 8)) & 1u) != 0;
}

// How the forward's output relates to the reference; tol_p per element.
struct EpilogueRef {
  std::vector<double> y, pre, tol_p, tol_y;
};

// The reference epilogue over the reference normalization `bn`, with bn's tolerance from the
// statistics `mean`/`invstd`/`st` (support/tolerance.hpp) and the file comment's bounds.
template <class T>
EpilogueRef reference_epilogue(const Data<T>& d, Activation act, const std::vector<double>& bn,
                               const std::vector<double>& zd, const std::vector<double>& mean,
                               const std::vector<double>& invstd, const std::vector<double>& scale,
                               const std::vector<double>& offset,
                               const std::vector<StatTolerance>& st) {
  const Rounding u = rounding_of<T>();
  EpilogueRef e;
  e.y = ref::epilogue(ref_act(act), bn, zd, &e.pre);
  e.tol_p.resize(bn.size());
  e.tol_y.resize(bn.size());
  for (std::int64_t n = 0; n < d.shape.n(); ++n)
    for (std::int64_t c = 0; c < d.shape.c(); ++c)
      for (std::int64_t s = 0; s < d.shape.s(); ++s) {
        const auto i = static_cast<std::size_t>(d.shape.index(n, c, s));
        const double a = (scale.empty() ? 1.0 : scale[c]) * invstd[c];
        const double z = zd.empty() ? 0.0 : zd[i];
        const double tol_bn = y_tolerance(u, st[c], d.xd[i], mean[c], a,
                                          offset.empty() ? 0.0 : offset[c], bn[i]);
        e.tol_p[i] = tol_bn + u.acc * (std::fabs(bn[i]) + std::fabs(z));
        const double y = std::fabs(e.y[i]), p = std::fabs(e.pre[i]);
        e.tol_y[i] = (act == Activation::kSilu ? 1.1 * e.tol_p[i] + 8 * u.acc * (p + y)
                                               : e.tol_p[i]) +
                     u.out * y + u.out_abs + 1e-300;
      }
  return e;
}

// y against the reference, and (ReLU) the mask against y and p.
void expect_epilogue_near(const EpilogueRef& r, const std::vector<double>& y,
                          const std::vector<unsigned char>* mask, const std::string& what) {
  int bad = 0, bad_bits = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (!(std::fabs(y[i] - r.y[i]) <= r.tol_y[i]) && bad++ < 5)
      ADD_FAILURE() << what << ": y[" << i << "] = " << y[i] << ", reference " << r.y[i]
                    << " (p " << r.pre[i] << "), tolerance " << r.tol_y[i];
    if (mask == nullptr) continue;
    const bool bit = mask_bit(*mask, i);
    const bool want_set = y[i] > 0, want_clear = std::isnan(y[i]) || r.pre[i] < -r.tol_p[i];
    if (((want_set && !bit) || (want_clear && bit)) && bad_bits++ < 5)
      ADD_FAILURE() << what << ": mask bit " << i << " is " << bit << " for y " << y[i] << ", p "
                    << r.pre[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << y.size() << " outputs out of tolerance";
  EXPECT_EQ(bad_bits, 0) << what << ": " << bad_bits << " mask bits wrong";
}

template <class T>
class ForwardFused : public DeviceTest {};
template <class T>
class BackwardFused : public DeviceTest {};
using DTypes = ::testing::Types<__half, __nv_bfloat16, float, double>;
TYPED_TEST_SUITE(ForwardFused, DTypes);
TYPED_TEST_SUITE(BackwardFused, DTypes);

// Where the forward's output goes.
enum class Out { kSeparate, kIntoX, kIntoZ };

// A variable-length batch (cubn::Lengths) for the checks below; none where `lengths` is empty.
struct Seq {
  std::vector<std::int64_t> lengths;
  Padding padding = Padding::kZero;
  bool wide = false;
  bool on() const { return !lengths.empty(); }
};

// What a check's calls read (d, z, dy: with a Seq, padded, and NaN at the padded positions, so a
// padded value that reached any output would show) and what its reference reads (rd, zd, dyd: the
// same data, or with a Seq each channel's valid elements gathered into a compact (1, C, K) case:
// support/padded.hpp).
template <class T>
struct Case {
  Data<T> d, rd;
  std::vector<T> z, dy;
  std::vector<double> zd, dyd;  // zd empty without a residual
  Padded pad;
  bool seq = false;

  Case(const Dims& dims, MemoryOrder order, unsigned seed, bool residual, const Seq& sq)
      : d(make_data<T>(dims, order, seed)),
        rd(d),
        z(make_dy<T>(d.x.size(), seed + 7)),
        dy(make_dy<T>(d.x.size(), seed + 1)),
        seq(sq.on()) {
    std::vector<T> zr = z, dyr = dy;
    if (seq) {
      pad = padded(d.shape, sq.lengths);
      rd = compact(d, pad);
      zr = gather(z, pad);
      dyr = gather(dy, pad);
      poison(d.x, pad);
      poison(z, pad);
      poison(dy, pad);
    }
    zd = residual ? to_doubles(zr) : std::vector<double>{};
    dyd = to_doubles(dyr);
  }
  // A call's output at the reference's elements.
  std::vector<double> valid(const std::vector<T>& out) const {
    return to_doubles(seq ? gather(out, pad) : out);
  }
  // A ReLU mask at the reference's elements; its padded bits must be clear.
  std::vector<unsigned char> valid_mask(const std::vector<unsigned char>& mask,
                                        const std::string& what) const {
    if (!seq) return mask;
    std::vector<unsigned char> r((pad.valid.size() + 7) / 8, 0);
    for (std::size_t j = 0; j < pad.valid.size(); ++j)
      if (mask_bit(mask, pad.valid[j])) r[j / 8] |= static_cast<unsigned char>(1u << (j % 8));
    int set = 0;
    for (std::size_t i = 0; i < pad.is_valid.size(); ++i)
      if (!pad.is_valid[i] && mask_bit(mask, i)) ++set;
    EXPECT_EQ(set, 0) << what << ": mask bits set at padded positions";
    return r;
  }
  // The padded elements of a call's output, against the Seq's padding.
  void expect_padding(const std::vector<T>& out, const Seq& sq, const std::string& what) const {
    if (seq) cubn::test::expect_padding(out, pad, sq.padding, what);
  }
};

std::string seq_name(const Seq& seq) {
  if (!seq.on()) return "";
  return lengths_string(seq.lengths) + (seq.padding == Padding::kZero ? " (zero)" : " (untouched)");
}

// Training forward with the epilogue of `v` against the reference (with `seq`: on its valid
// positions).
template <class T>
void check_training(const Dims& dims, MemoryOrder order, unsigned seed, const Variant& v,
                    Out out = Out::kSeparate, const Seq& seq = {}) {
  using P = param_of<T>;
  const std::string what =
      "training " + case_name(to_string(dtype_of<T>()), v, dims, order) + seq_name(seq);
  const Case<T> k(dims, order, seed, v.residual, seq);
  const Data<T>& d = k.d;
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size();

  DeviceBuffer<T> x(d.x), zb(k.z), y(d.x.size());
  y.fill_bytes(kUntouchedByte);
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset)), sm(C), si(C);
  DeviceBytes ws(forward_training_workspace_size(desc));
  const std::size_t rbytes = activation_reserve_size(desc, v.act);
  DeviceBytes reserve(rbytes);
  reserve.fill(0xA5);  // the forward must clear bits as well as set them
  DeviceLengths len(seq.lengths, seq.wide, seq.padding);
  T* yp = out == Out::kIntoX ? x.data() : out == Out::kIntoZ ? zb.data() : y.data();
  TrainingForwardArgs<P> args;
  args.affine = {scale.data(), offset.data()};
  args.epsilon = 1e-3;
  args.saved = {sm.data(), si.data()};
  args.epilogue.activation = v.act;
  args.epilogue.residual = v.residual ? zb.data() : nullptr;
  args.epilogue.reserve = {rbytes ? reserve.data() : nullptr, rbytes};
  if (seq.on()) args.lengths = len.arg;
  forward_training(desc, x.data(), yp, args, {ws.data(), ws.bytes()}, nullptr);
  device_sync();

  const Data<T>& rd = k.rd;
  ref::Params p;
  p.scale = to_doubles(to_params<P>(d.scale));
  p.offset = to_doubles(to_params<P>(d.offset));
  p.eps = 1e-3;
  const auto r = ref::forward_training(rd.shape, rd.xd, p, 0, 0, {}, {});
  const Rounding u = rounding_of<T>();
  std::vector<StatTolerance> st(C);
  for (std::size_t c = 0; c < C; ++c)
    st[c] = stat_tolerance(u, static_cast<double>(rd.shape.m()), r.stats.mean[c],
                           std::sqrt(r.stats.var[c]));
  const auto e = reference_epilogue(rd, v.act, r.y, k.zd, r.stats.mean, r.stats.invstd, p.scale,
                                    p.offset, st);
  DeviceBuffer<T>& yb = out == Out::kIntoX ? x : out == Out::kIntoZ ? zb : y;
  std::vector<unsigned char> mask(rbytes);
  if (v.act == Activation::kRelu) reserve.download(mask.data(), rbytes);
  const std::vector<T> got = yb.download();
  const bool relu = v.act == Activation::kRelu;
  const std::vector<unsigned char> vmask = relu ? k.valid_mask(mask, what) : mask;
  expect_epilogue_near(e, k.valid(got), relu ? &vmask : nullptr, what);
  if (out == Out::kSeparate) k.expect_padding(got, seq, what);
  const auto got_mean = to_doubles(sm.download());
  for (std::size_t c = 0; c < C; ++c)
    EXPECT_NEAR(got_mean[c], r.stats.mean[c], st[c].mean) << what << " saved mean, c=" << c;
}

// Inference forward with the epilogue of `v` (ReLU writing its mask) against the reference.
template <class T>
void check_inference(const Dims& dims, MemoryOrder order, unsigned seed, const Variant& v,
                     const Seq& seq = {}) {
  using P = param_of<T>;
  const std::string what =
      "inference " + case_name(to_string(dtype_of<T>()), v, dims, order) + seq_name(seq);
  const Case<T> k(dims, order, seed, v.residual, seq);
  const Data<T>& d = k.d;
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  DeviceBuffer<T> x(d.x), zb(k.z), y(d.x.size());
  y.fill_bytes(kUntouchedByte);
  DeviceBuffer<P> scale(to_params<P>(d.scale)), offset(to_params<P>(d.offset));
  DeviceBuffer<P> rmean(to_params<P>(d.running_mean)), rvar(to_params<P>(d.running_var));
  const bool relu = v.act == Activation::kRelu;
  const std::size_t rbytes = activation_reserve_size(desc, v.act);
  DeviceBytes reserve(rbytes);
  reserve.fill(0xA5);  // the forward must clear bits as well as set them
  DeviceLengths len(seq.lengths, seq.wide, seq.padding);
  InferenceForwardArgs<P> args;
  args.affine = {scale.data(), offset.data()};
  args.running = {rmean.data(), rvar.data()};
  args.epsilon = 1e-3;
  args.epilogue.activation = v.act;
  args.epilogue.residual = v.residual ? zb.data() : nullptr;
  if (relu) args.epilogue.reserve = {reserve.data(), rbytes};
  if (seq.on()) args.lengths = len.arg;
  forward_inference(desc, x.data(), y.data(), args, nullptr);
  device_sync();

  const InferenceReference r = inference_reference(k.rd);
  const auto e =
      reference_epilogue(k.rd, v.act, r.y, k.zd, r.mean, r.invstd, r.p.scale, r.p.offset, r.st);
  std::vector<unsigned char> mask(rbytes);
  if (relu) reserve.download(mask.data(), rbytes);
  const std::vector<T> got = y.download();
  const std::vector<unsigned char> vmask = relu ? k.valid_mask(mask, what) : mask;
  expect_epilogue_near(e, k.valid(got), relu ? &vmask : nullptr, what);
  k.expect_padding(got, seq, what);
}

TYPED_TEST(ForwardFused, TrainingMatchesTheReference) {
  unsigned seed = 6000;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : shapes_for(v)) check_training<TypeParam>(dims, order, ++seed, v);
}

TYPED_TEST(ForwardFused, InferenceMatchesTheReference) {
  unsigned seed = 6500;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : shapes_for(v)) check_inference<TypeParam>(dims, order, ++seed, v);
  // one element per channel is fine in inference
  check_inference<TypeParam>({1, 9}, MemoryOrder::kChannelsFirst, 6900,
                             {Activation::kRelu, true});
}

TYPED_TEST(ForwardFused, InPlace) {
  for (const Variant& v : {Variant{Activation::kRelu, true}, Variant{Activation::kSilu, true}})
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (Out out : {Out::kIntoX, Out::kIntoZ})
        check_training<TypeParam>({3, 5, 7, 3}, order, 6950, v, out);
}

// Forward training with the epilogue, then backward through it, against the reference with the
// statistics the forward saved (training) or the running ones (frozen).
struct BackwardOutputs {
  bool dx = true, dz = true, grads = true;
};

template <class T>
void check_backward(const Dims& dims, MemoryOrder order, unsigned seed, const Variant& v,
                    bool training, BackwardOutputs want = {}, const Seq& seq = {}) {
  using P = param_of<T>;
  const std::string what = std::string(training ? "backward " : "frozen backward ") +
                           case_name(to_string(dtype_of<T>()), v, dims, order) + seq_name(seq);
  const Case<T> k(dims, order, seed, v.residual, seq);
  const Data<T>& d = k.d;
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size();
  const std::vector<double>& zd = k.zd;
  const std::vector<double>& dyd = k.dyd;
  const auto scale = to_params<P>(d.scale), offset = to_params<P>(d.offset),
             rm = to_params<P>(d.running_mean), rv = to_params<P>(d.running_var);

  DeviceBuffer<T> x(d.x), zb(k.z), y(d.x.size()), dyb(k.dy), dx(d.x.size()), dz(d.x.size());
  dx.fill_bytes(kUntouchedByte);
  dz.fill_bytes(kUntouchedByte);
  DeviceLengths len(seq.lengths, seq.wide, seq.padding);
  const Lengths lengths = seq.on() ? len.arg : Lengths{};
  DeviceBuffer<P> sc(scale), of(offset), m(rm), var(rv), sm(C), si(C), ds(C), dof(C);
  DeviceBytes fws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
  const std::size_t rbytes = activation_reserve_size(desc, v.act);
  DeviceBytes reserve(rbytes);
  reserve.fill(0xA5);  // the forward must clear bits as well as set them
  const Epilogue fe{v.act, v.residual ? zb.data() : nullptr,
                    {rbytes ? reserve.data() : nullptr, rbytes}};
  const EpilogueGrad be{v.act, v.residual ? zb.data() : nullptr,
                        {rbytes ? reserve.data() : nullptr, rbytes},
                        want.dz && v.residual ? dz.data() : nullptr};
  const ParamGradients<P> grads{want.grads ? ds.data() : nullptr,
                                want.grads ? dof.data() : nullptr};
  T* dxp = want.dx ? dx.data() : nullptr;
  if (training) {
    TrainingForwardArgs<P> fa;
    fa.affine = {sc.data(), of.data()};
    fa.epsilon = 1e-3;
    fa.saved = {sm.data(), si.data()};
    fa.epilogue = fe;
    fa.lengths = lengths;
    forward_training(desc, x.data(), y.data(), fa, {fws.data(), fws.bytes()}, nullptr);
    TrainingBackwardArgs<P> ba;
    ba.scale = sc.data();
    ba.saved = {sm.data(), si.data()};
    ba.grads = grads;
    ba.epilogue = be;
    ba.lengths = lengths;
    backward_training(desc, x.data(), dyb.data(), dxp, ba, {bws.data(), bws.bytes()}, nullptr);
  } else {
    InferenceForwardArgs<P> fa;
    fa.affine = {sc.data(), of.data()};
    fa.running = {m.data(), var.data()};
    fa.epsilon = 1e-3;
    fa.epilogue = fe;
    fa.lengths = lengths;
    forward_inference(desc, x.data(), y.data(), fa, nullptr);
    FrozenBackwardArgs<P> ba;
    ba.scale = sc.data();
    ba.offset = of.data();
    ba.running = {m.data(), var.data()};
    ba.epsilon = 1e-3;
    ba.grads = grads;
    ba.epilogue = be;
    ba.lengths = lengths;
    backward_frozen(desc, x.data(), dyb.data(), dxp, ba, {bws.data(), bws.bytes()}, nullptr);
  }
  device_sync();

  // the statistics the backward used, and the pre-activation they give
  const Data<T>& rd = k.rd;
  const Rounding u = rounding_of<T>();
  std::vector<double> mean(C), invstd(C);
  std::vector<StatTolerance> st(C);
  if (training) {
    mean = to_doubles(sm.download());
    invstd = to_doubles(si.download());
    const auto r = ref::batch_stats(rd.shape, rd.xd, 1e-3);
    for (std::size_t c = 0; c < C; ++c)
      st[c] = stat_tolerance(u, static_cast<double>(rd.shape.m()), r.mean[c], std::sqrt(r.var[c]));
  } else {
    mean = to_doubles(rm);
    for (std::size_t c = 0; c < C; ++c) {
      invstd[c] = 1 / std::sqrt(double(rv[c]) + 1e-3);
      st[c] = StatTolerance{0, 8 * u.acc};
    }
  }
  ref::Params p;
  p.scale = to_doubles(scale);
  p.offset = to_doubles(offset);
  p.eps = 1e-3;
  std::vector<double> bn(rd.x.size());
  for (std::int64_t n = 0; n < rd.shape.n(); ++n)
    for (std::int64_t c = 0; c < rd.shape.c(); ++c)
      for (std::int64_t s = 0; s < rd.shape.s(); ++s) {
        const auto i = static_cast<std::size_t>(rd.shape.index(n, c, s));
        bn[i] = (rd.xd[i] - mean[c]) * invstd[c] * p.scale[c] + p.offset[c];
      }
  const auto e = reference_epilogue(rd, v.act, bn, zd, mean, invstd, p.scale, p.offset, st);
  std::vector<double> g = ref::epilogue_grad(ref_act(v.act), e.pre, dyd), g_err;
  if (v.act == Activation::kRelu) {
    std::vector<unsigned char> mask(rbytes);
    reserve.download(mask.data(), rbytes);
    mask = k.valid_mask(mask, what);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = mask_bit(mask, i) ? dyd[i] : 0.0;
  } else if (v.act == Activation::kSilu) {
    g_err.resize(g.size());
    for (std::size_t i = 0; i < g.size(); ++i)
      g_err[i] = std::fabs(dyd[i]) * (0.5 * e.tol_p[i] + 16 * u.acc * (1 + std::fabs(e.pre[i])));
  }
  const auto r = ref::backward_with_stats(rd.shape, rd.xd, g, p, mean, invstd, training);
  const auto tol = backward_tolerance<T>(rd.shape, rd.xd, g, p.scale, mean, invstd, r, g_err);
  const std::vector<T> dx_all = dx.download(), dz_all = dz.download();
  if (want.dx) k.expect_padding(dx_all, seq, what + " dx");
  if (be.dz != nullptr) k.expect_padding(dz_all, seq, what + " dz");
  const auto got_dx = want.dx ? k.valid(dx_all) : r.dx;
  const auto got_ds = want.grads ? to_doubles(ds.download()) : r.dscale;
  const auto got_do = want.grads ? to_doubles(dof.download()) : r.doffset;
  if (std::any_of(g.begin(), g.end(), [](double v) { return v != 0; })) {
    expect_gradients_near<T>(rd.shape, rd.xd, g, r, got_dx, got_ds, got_do, tol, training, what);
  } else {  // the ReLU passed nothing (a small channel wholly below 0): every gradient is 0
    for (double v : got_dx) ASSERT_EQ(v, 0.0) << what;
    for (std::size_t c = 0; c < C; ++c) ASSERT_EQ(got_ds[c] + got_do[c], 0.0) << what;
  }
  if (be.dz != nullptr) {
    const auto got_dz = k.valid(dz_all);
    int bad = 0;
    for (std::size_t i = 0; i < g.size(); ++i) {
      const double t =
          (g_err.empty() ? 0.0 : g_err[i]) + u.out * std::fabs(g[i]) + u.out_abs + 1e-300;
      if (!(std::fabs(got_dz[i] - g[i]) <= t) && bad++ < 5)
        ADD_FAILURE() << what << ": dz[" << i << "] = " << got_dz[i] << ", reference " << g[i];
    }
    EXPECT_EQ(bad, 0) << what << ": dz out of tolerance";
  }
}

TYPED_TEST(BackwardFused, TrainingMatchesTheReference) {
  unsigned seed = 7000;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : shapes_for(v)) check_backward<TypeParam>(dims, order, ++seed, v, true);
}

TYPED_TEST(BackwardFused, FrozenMatchesTheReference) {
  unsigned seed = 7500;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : shapes_for(v))
        check_backward<TypeParam>(dims, order, ++seed, v, false);
}

// ---- variable-length batches (cubn::Lengths) with the fused epilogue ---------------------------

// The shapes (time last) of the checks with lengths: C = 1, C = 3 and 40 (channels-last vectors
// meet two time steps, or take scalar accesses), L under a vector (3), rows over several blocks,
// ranks 4 and 5; under the sanitizers the first three.
std::vector<Dims> seq_shapes() {
  std::vector<Dims> s = {{4, 3, 17},  {7, 6, 3},     {3, 40, 33},     {4, 1, 50},
                         {5, 16, 64}, {2, 8, 6, 16}, {2, 3, 2, 3, 10}};
  if (sanitizer_shapes()) s.resize(3);
  return s;
}

// Lengths for `dims` (0, 1, L and random: some_lengths), int64 on even seeds, padded outputs left
// untouched on every third.
Seq seq_for(const Dims& dims, unsigned seed) {
  return {some_lengths(dims, seed), seed % 3 == 0 ? Padding::kUntouched : Padding::kZero,
          seed % 2 == 0};
}

TYPED_TEST(ForwardFused, LengthsTrainingMatchesTheReferenceOnTheValidPositions) {
  unsigned seed = 9000;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : seq_shapes()) {
        ++seed;
        check_training<TypeParam>(dims, order, seed, v, Out::kSeparate, seq_for(dims, seed));
      }
  // in place: y over x, and over z (padded positions then hold 0 with kZero)
  for (Out out : {Out::kIntoX, Out::kIntoZ})
    check_training<TypeParam>({5, 7, 9}, MemoryOrder::kChannelsFirst, 9400,
                              {Activation::kRelu, true}, out, seq_for({5, 7, 9}, 9401));
}

TYPED_TEST(ForwardFused, LengthsInferenceMatchesTheReferenceOnTheValidPositions) {
  unsigned seed = 9500;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : seq_shapes()) {
        ++seed;
        check_inference<TypeParam>(dims, order, seed, v, seq_for(dims, seed));
      }
}

TYPED_TEST(BackwardFused, LengthsTrainingMatchesTheReferenceOnTheValidPositions) {
  unsigned seed = 10000;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : seq_shapes()) {
        ++seed;
        check_backward<TypeParam>(dims, order, seed, v, true, {}, seq_for(dims, seed));
      }
}

TYPED_TEST(BackwardFused, LengthsFrozenMatchesTheReferenceOnTheValidPositions) {
  unsigned seed = 10500;
  for (const Variant& v : variants())
    for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
      for (const Dims& dims : seq_shapes()) {
        ++seed;
        check_backward<TypeParam>(dims, order, seed, v, false, {}, seq_for(dims, seed));
      }
}

// Every output of a fused training forward and backward (y, the reserve, the saved statistics,
// dx, dz, dscale, doffset), as raw bytes, with `lengths` or without (null).
template <class T>
std::vector<std::vector<unsigned char>> fused_outputs(const Dims& dims, MemoryOrder order,
                                                      const Variant& v, const Lengths* lengths,
                                                      detail::Path path) {
  using P = param_of<T>;
  const Data<T> d = make_data<T>(dims, order, 11000);
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  const std::size_t C = d.scale.size(), n = d.x.size();
  const ForcePath forced(path);
  DeviceBuffer<T> x(d.x), zb(make_dy<T>(n, 11001)), dyb(make_dy<T>(n, 11002)), y(n), dx(n), dz(n);
  DeviceBuffer<P> sc(to_params<P>(d.scale)), of(to_params<P>(d.offset)), sm(C), si(C), ds(C),
      dof(C);
  DeviceBytes fws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
  const std::size_t rbytes = activation_reserve_size(desc, v.act);
  DeviceBytes reserve(rbytes);
  const Epilogue fe{
      v.act, v.residual ? zb.data() : nullptr, {rbytes ? reserve.data() : nullptr, rbytes}};
  TrainingForwardArgs<P> fa;
  fa.affine = {sc.data(), of.data()};
  fa.saved = {sm.data(), si.data()};
  fa.epilogue = fe;
  if (lengths != nullptr) fa.lengths = *lengths;
  forward_training(desc, x.data(), y.data(), fa, {fws.data(), fws.bytes()}, nullptr);
  TrainingBackwardArgs<P> ba;
  ba.scale = sc.data();
  ba.saved = {sm.data(), si.data()};
  ba.grads = {ds.data(), dof.data()};
  ba.epilogue = EpilogueGrad{v.act,
                             v.residual ? zb.data() : nullptr,
                             {rbytes ? reserve.data() : nullptr, rbytes},
                             v.residual ? dz.data() : nullptr};
  if (lengths != nullptr) ba.lengths = *lengths;
  backward_training(desc, x.data(), dyb.data(), dx.data(), ba, {bws.data(), bws.bytes()}, nullptr);
  device_sync();
  std::vector<std::vector<unsigned char>> r;
  const DeviceBytes* outs[] = {&y.bytes(),  &reserve,    &sm.bytes(), &si.bytes(),
                               &dx.bytes(), &dz.bytes(), &ds.bytes(), &dof.bytes()};
  for (const DeviceBytes* b : outs) {
    r.emplace_back(b->bytes());
    b->download(r.back().data(), b->bytes());
  }
  return r;
}

// Every length L: the fused calls without lengths, bit for bit (the masked loops fold and store
// whole vectors as the unmasked ones do), on the streaming kernels and on the persistent ones,
// each against the unmasked call on that path.
TYPED_TEST(BackwardFused, LengthsAllLIsTheUnmaskedFusedCallBitForBit) {
  using T = TypeParam;
  for (const detail::Path path : {detail::Path::kStreaming, detail::Path::kPersistent})
    for (const Variant& v : variants())
      for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
        for (const Dims& dims : {Dims{6, 16, 40}, Dims{3, 5, 4, 7}}) {
          const DeviceLengths all(
              std::vector<std::int64_t>(static_cast<std::size_t>(dims[0]), dims.back()), false,
              Padding::kZero);
          const auto with = fused_outputs<T>(dims, order, v, &all.arg, path);
          const auto without = fused_outputs<T>(dims, order, v, nullptr, path);
          const char* names[] = {"y",  "reserve", "saved mean", "saved invstd",
                                 "dx", "dz",      "dscale",     "doffset"};
          for (std::size_t i = 0; i < with.size(); ++i)
            EXPECT_TRUE(with[i] == without[i])
                << case_name(to_string(dtype_of<T>()), v, dims, order) << ": " << names[i]
                << " differs from the call without lengths"
                << (path == detail::Path::kPersistent ? " (persistent)" : " (streaming)");
        }
}

TYPED_TEST(BackwardFused, OptionalOutputs) {
  for (bool training : {true, false})
    for (const Variant& v : variants()) {
      check_backward<TypeParam>({4, 6, 5, 5}, MemoryOrder::kChannelsFirst, 7900, v, training,
                                {false, true, false});  // dz alone
      check_backward<TypeParam>({4, 6, 5, 5}, MemoryOrder::kChannelsLast, 7901, v, training,
                                {true, false, false});  // dx alone
      check_backward<TypeParam>({4, 6, 5, 5}, MemoryOrder::kChannelsFirst, 7902, v, training,
                                {false, false, true});  // the parameter gradients alone
    }
}

// NaN and Inf in the residual: ReLU gives NaN for NaN (as PyTorch's relu), Inf for +Inf, 0 for
// -Inf, with mask bits 0, 1, 0; SiLU gives NaN, +Inf, NaN (p / (1 + exp(-p)) at -Inf). The other
// elements stay finite and right. Backward through ReLU: a NaN upstream gradient where the mask is
// clear gives dz = 0 there and leaves dx finite (the ReLU's derivative selects, as PyTorch's
// threshold_backward).
TYPED_TEST(ForwardFused, NanAndInfInTheResidual) {
  using T = TypeParam;
  using P = param_of<T>;
  const Dims dims{4, 3, 5};
  const TensorDesc desc = make_desc(dtype_of<T>(), MemoryOrder::kChannelsFirst, dims);
  const Data<T> d = make_data<T>(dims, MemoryOrder::kChannelsFirst, 8100);
  auto z = make_dy<T>(d.x.size(), 8101);
  const double inf = std::numeric_limits<double>::infinity();
  z[7] = from_double<T>(std::nan(""));
  z[8] = from_double<T>(inf);
  z[9] = from_double<T>(-inf);
  for (Activation act : {Activation::kRelu, Activation::kSilu}) {
    DeviceBuffer<T> x(d.x), zb(z), y(d.x.size()), dy(make_dy<T>(d.x.size(), 8102)),
        dx(d.x.size()), dz(d.x.size());
    DeviceBuffer<P> sm(3), si(3);
    DeviceBytes ws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
    const std::size_t rbytes = activation_reserve_size(desc, act);
    DeviceBytes reserve(rbytes);
    reserve.fill(0xA5);
  reserve.fill(0xA5);  // the forward must clear bits as well as set them
    TrainingForwardArgs<P> fa;
    fa.saved = {sm.data(), si.data()};
    fa.epilogue = {act, zb.data(), {reserve.data(), rbytes}};
    forward_training(desc, x.data(), y.data(), fa, {ws.data(), ws.bytes()}, nullptr);
    device_sync();
    const auto got = to_doubles(y.download());
    EXPECT_TRUE(std::isnan(got[7])) << act_name(act);
    EXPECT_EQ(got[8], inf) << act_name(act);
    if (act == Activation::kRelu) {
      EXPECT_EQ(got[9], 0.0);
      std::vector<unsigned char> mask(rbytes);
      reserve.download(mask.data(), rbytes);
      EXPECT_FALSE(mask_bit(mask, 7));
      EXPECT_TRUE(mask_bit(mask, 8));
      EXPECT_FALSE(mask_bit(mask, 9));
      // backward: NaN upstream where the ReLU did not pass
      auto dyv = make_dy<T>(d.x.size(), 8103);
      dyv[9] = from_double<T>(std::nan(""));
      dy.upload(dyv);
      TrainingBackwardArgs<P> ba;
      ba.saved = {sm.data(), si.data()};
      ba.epilogue = {act, zb.data(), {reserve.data(), rbytes}, dz.data()};
      backward_training(desc, x.data(), dy.data(), dx.data(), ba, {bws.data(), bws.bytes()},
                        nullptr);
      device_sync();
      EXPECT_EQ(to_doubles(dz.download())[9], 0.0);
      for (double v : to_doubles(dx.download())) {
        ASSERT_TRUE(std::isfinite(v)) << "a NaN upstream gradient the ReLU stopped leaked into dx";
      }
    } else {
      EXPECT_TRUE(std::isnan(got[9]));
    }
    for (std::size_t i = 0; i < got.size(); ++i)
      if (i < 7 || i > 9) {
        EXPECT_TRUE(std::isfinite(got[i])) << act_name(act) << " y[" << i << "]";
      }
  }
}

// SiLU far below zero: where exp(-p) overflows (p under about -88 in float, -709 in double) the
// sigmoid is 0, y is -0 and the gradient 0, as PyTorch's, not NaN (an
// earlier formula formed 1 - s as exp(-p) * s: Inf * 0). Training forward and backward with dz; the
// other elements finite.
TYPED_TEST(ForwardFused, SiluFarBelowZeroHasNoGradient) {
  using T = TypeParam;
  using P = param_of<T>;
  const Dims dims{4, 3, 5};
  const TensorDesc desc = make_desc(dtype_of<T>(), MemoryOrder::kChannelsLast, dims);
  const Data<T> d = make_data<T>(dims, MemoryOrder::kChannelsLast, 8200);
  auto z = make_dy<T>(d.x.size(), 8201);
  const std::vector<std::size_t> far = {3, 17, 40};
  // below -709 exp(-p) overflows fp64 too
  const double far_z[] = {-1000.0, -800.0, -720.0};
  for (std::size_t k = 0; k < far.size(); ++k) z[far[k]] = from_double<T>(far_z[k]);
  DeviceBuffer<T> x(d.x), zb(z), y(d.x.size()), dy(make_dy<T>(d.x.size(), 8202)),
      dx(d.x.size()), dz(d.x.size());
  DeviceBuffer<P> sm(3), si(3), ds(3), dof(3);
  DeviceBytes ws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
  const std::size_t rbytes = activation_reserve_size(desc, Activation::kSilu);
  DeviceBytes reserve(rbytes);
  TrainingForwardArgs<P> fa;
  fa.saved = {sm.data(), si.data()};
  fa.epilogue = {Activation::kSilu, zb.data(), {reserve.data(), rbytes}};
  forward_training(desc, x.data(), y.data(), fa, {ws.data(), ws.bytes()}, nullptr);
  TrainingBackwardArgs<P> ba;
  ba.saved = {sm.data(), si.data()};
  ba.grads = {ds.data(), dof.data()};
  ba.epilogue = {Activation::kSilu, zb.data(), {reserve.data(), rbytes}, dz.data()};
  backward_training(desc, x.data(), dy.data(), dx.data(), ba, {bws.data(), bws.bytes()}, nullptr);
  device_sync();
  const auto yv = to_doubles(y.download()), dzv = to_doubles(dz.download()),
             dxv = to_doubles(dx.download());
  for (std::size_t i : far) {
    EXPECT_EQ(yv[i], 0.0) << i;
    EXPECT_EQ(dzv[i], 0.0) << i;
  }
  for (std::size_t i = 0; i < yv.size(); ++i) {
    ASSERT_TRUE(std::isfinite(yv[i]) && std::isfinite(dzv[i]) && std::isfinite(dxv[i])) << i;
  }
  for (double v : to_doubles(ds.download())) EXPECT_TRUE(std::isfinite(v));
  for (double v : to_doubles(dof.download())) EXPECT_TRUE(std::isfinite(v));
}

// Bad combinations: each a clear error naming the argument, nothing written.
class FusedErrors : public DeviceTest {
 protected:
  static constexpr std::int64_t kN = 4, kC = 6, kS = 9, kNumel = kN * kC * kS;
  const TensorDesc desc_ =
      TensorDesc(DataType::kFloat32, MemoryOrder::kChannelsFirst, {kN, kC, 3, 3});
  struct Buffers {
    DeviceBuffer<float> x{std::vector<float>(kNumel, 1.5f)};
    DeviceBuffer<float> z{std::vector<float>(kNumel, 0.5f)};
    DeviceBuffer<float> y{kNumel + 8}, dx{kNumel}, dz{kNumel + 8};
    DeviceBuffer<float> smean{kC}, sinvstd{kC}, rmean{kC}, rvar{kC};
    DeviceBytes reserve{4096}, ws{1 << 16};
  };
  std::unique_ptr<Buffers> b_;
  void SetUp() override {
    DeviceTest::SetUp();
    if (IsSkipped()) return;
    b_ = std::make_unique<Buffers>();
    for (auto* o : outputs()) const_cast<DeviceBytes*>(o)->fill(kSentinel);
    b_->ws.fill(0);
    b_->smean.upload(std::vector<float>(kC, 1.5f));
    b_->sinvstd.upload(std::vector<float>(kC, 1.0f));
    b_->rvar.upload(std::vector<float>(kC, 1.0f));
  }
  std::vector<const DeviceBytes*> outputs() {
    return {&b_->y.bytes(), &b_->dx.bytes(), &b_->dz.bytes(), &b_->reserve};
  }
  void expect_error(const std::function<void()>& call, const std::string& needle,
                    Status status = Status::kInvalidArgument) {
    expect_error_and_no_writes(call, status, needle, outputs());
  }
  void training(const Epilogue& e, float* y = nullptr) {
    TrainingForwardArgs<float> a;
    a.epilogue = e;
    forward_training(desc_, b_->x.data(), y != nullptr ? y : b_->y.data(), a,
                     {b_->ws.data(), b_->ws.bytes()}, nullptr);
  }
  void inference(const Epilogue& e) {
    InferenceForwardArgs<float> a;
    a.running = {b_->rmean.data(), b_->rvar.data()};
    a.epilogue = e;
    forward_inference(desc_, b_->x.data(), b_->y.data(), a, nullptr);
  }
  void backward(const EpilogueGrad& e, const float* x = nullptr) {
    TrainingBackwardArgs<float> a;
    a.saved = {b_->smean.data(), b_->sinvstd.data()};
    a.epilogue = e;
    backward_training(desc_, x != nullptr ? x : b_->x.data(), b_->x.data(), b_->dx.data(), a,
                      {b_->ws.data(), b_->ws.bytes()}, nullptr);
  }
  void frozen(const EpilogueGrad& e, const float* x) {
    FrozenBackwardArgs<float> a;
    a.running = {b_->rmean.data(), b_->rvar.data()};
    a.epilogue = e;
    backward_frozen(desc_, x, b_->x.data(), b_->dx.data(), a, {b_->ws.data(), b_->ws.bytes()},
                    nullptr);
  }
  void* reserve() { return b_->reserve.data(); }
  std::size_t mask_bytes() { return activation_reserve_size(desc_, Activation::kRelu); }
};

TEST_F(FusedErrors, ReserveSizes) {
  EXPECT_EQ(activation_reserve_size(desc_, Activation::kNone), 0u);
  EXPECT_EQ(mask_bytes(), 32u);  // 216 bits -> 27 bytes -> 32
  EXPECT_EQ(activation_reserve_size(desc_, Activation::kSilu), 80u);  // 3 x 6 floats -> 80
  const TensorDesc bf16(DataType::kBFloat16, MemoryOrder::kChannelsLast, {32, 64, 56, 56});
  EXPECT_EQ(activation_reserve_size(bf16, Activation::kRelu) * 16,
            std::size_t{32} * 64 * 56 * 56 * 2);  // 1/16 of a bf16 tensor
  // past 2^31 elements (shape arithmetic only)
  const TensorDesc big(DataType::kFloat16, MemoryOrder::kChannelsFirst, {1 << 16, 1 << 8, 181});
  EXPECT_EQ(activation_reserve_size(big, Activation::kRelu),
            (std::size_t{1} << 24) * 181 / 8 + 0);
  EXPECT_THROW(activation_reserve_size(desc_, static_cast<Activation>(7)), Error);
}

TEST_F(FusedErrors, Forward) {
  const std::size_t mb = mask_bytes();
  expect_error([&] { training({Activation::kRelu, nullptr, {}}); }, "args.epilogue.reserve.ptr",
               Status::kInvalidArgument);
  expect_error([&] { training({Activation::kRelu, nullptr, {reserve(), mb - 1}}); },
               "args.epilogue.reserve.bytes");
  expect_error([&] { training({Activation::kSilu, nullptr, {reserve(), 16}}); },
               "args.epilogue.reserve.bytes");
  expect_error(
      [&] {
        training({Activation::kRelu, nullptr, {static_cast<char*>(reserve()) + 4, mb}});
      },
      "args.epilogue.reserve.ptr", Status::kMisalignedOperand);
  expect_error([&] { training({static_cast<Activation>(3), nullptr, {}}); },
               "args.epilogue.activation");
  // z overlapping y other than in place
  expect_error([&] { training({Activation::kNone, b_->y.data() + 4, {}}); },
               "overlaps args.epilogue.residual");
  expect_error(
      [&] {
        training({Activation::kRelu, b_->z.data(), {b_->y.data() + kNumel - 4, mb}});
      },
      "args.epilogue.reserve overlaps y");
  expect_error([&] { inference({Activation::kRelu, nullptr, {reserve(), mb - 16}}); },
               "args.epilogue.reserve.bytes");
  expect_error(
      [&] {
        training({Activation::kNone,
                  reinterpret_cast<const float*>(reinterpret_cast<const char*>(b_->z.data()) + 2),
                  {}});
      },
      "args.epilogue.residual", Status::kMisalignedOperand);
}

TEST_F(FusedErrors, Backward) {
  const std::size_t mb = mask_bytes();
  // dz without the residual it is the gradient of
  expect_error([&] { backward({Activation::kNone, nullptr, {}, b_->dz.data()}); },
               "args.epilogue.dz is given but args.epilogue.residual is null");
  expect_error([&] { backward({Activation::kRelu, nullptr, {}, nullptr}); },
               "args.epilogue.reserve.ptr", Status::kInvalidArgument);
  expect_error([&] { backward({Activation::kRelu, nullptr, {reserve(), mb - 1}, nullptr}); },
               "args.epilogue.reserve.bytes");
  expect_error([&] { backward({Activation::kSilu, nullptr, {}, nullptr}); },
               "args.epilogue.reserve.ptr", Status::kInvalidArgument);
  // dz into dx
  expect_error(
      [&] { backward({Activation::kNone, b_->z.data(), {}, b_->dx.data()}); },
      "args.epilogue.dz overlaps dx");
  expect_error(
      [&] { backward({Activation::kNone, b_->z.data(), {}, b_->dx.data() + 3}); },
      "args.epilogue.dz overlaps dx");
  // the reserve inside dz
  expect_error(
      [&] {
        backward({Activation::kRelu, b_->z.data(), {b_->dz.data(), mb}, b_->dz.data()});
      },
      "args.epilogue.reserve overlaps args.epilogue.dz");
  // frozen SiLU recomputes p from x: x is required
  expect_error([&] { frozen({Activation::kSilu, nullptr, {}, nullptr}, nullptr); }, "x",
               Status::kInvalidArgument);
  expect_error([&] { frozen({static_cast<Activation>(-1), nullptr, {}, nullptr}, b_->x.data()); },
               "args.epilogue.activation");
}

// A ResNet basic block without its convolutions, composed of cubn calls and checked against the
// reference: h = relu(bn1(x)); out = relu(bn2(h) + x) (identity shortcut); backward from dout:
// bn2's backward through its ReLU gives dh and dz (the shortcut's share), bn1's through its ReLU
// gives dx1, and dx = dx1 + dz. The reference's gradient passes where the kernels' masks say the
// ReLUs passed (an element within rounding of a kink may go either way; the masks must agree with
// the reference's signs everywhere else).
TYPED_TEST(BackwardFused, ResNetBasicBlockMatchesTheReference) {
  using T = TypeParam;
  using P = param_of<T>;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast}) {
    const Dims dims{8, 16, 7, 7};
    const std::string what = std::string(to_string(dtype_of<T>())) + " resnet block " +
                             shape_string(dims, order);
    const Data<T> d = make_data<T>(dims, order, 8200);
    const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
    const std::size_t C = d.scale.size(), n = d.x.size();
    const auto dout = make_dy<T>(n, 8201);
    const auto s1 = to_params<P>(d.scale), o1 = to_params<P>(d.offset);
    std::vector<P> s2(s1.rbegin(), s1.rend()), o2(o1.rbegin(), o1.rend());
    DeviceBuffer<T> x(d.x), h(n), out(n), doutb(dout), dh(n), dz(n), dx1(n);
    DeviceBuffer<P> sc1(s1), of1(o1), sc2(s2), of2(o2), m1(C), i1(C), m2(C), i2(C), g(C), b(C);
    DeviceBytes fws(forward_training_workspace_size(desc)), bws(backward_workspace_size(desc));
    const std::size_t rb = activation_reserve_size(desc, Activation::kRelu);
    DeviceBytes mask1(rb), mask2(rb);
    mask1.fill(0xA5);
    mask2.fill(0x5A);
    const Workspace fw{fws.data(), fws.bytes()}, bw{bws.data(), bws.bytes()};

    TrainingForwardArgs<P> f1;
    f1.affine = {sc1.data(), of1.data()};
    f1.saved = {m1.data(), i1.data()};
    f1.epilogue = {Activation::kRelu, nullptr, {mask1.data(), rb}};
    forward_training(desc, x.data(), h.data(), f1, fw, nullptr);
    TrainingForwardArgs<P> f2;
    f2.affine = {sc2.data(), of2.data()};
    f2.saved = {m2.data(), i2.data()};
    f2.epilogue = {Activation::kRelu, x.data(), {mask2.data(), rb}};
    forward_training(desc, h.data(), out.data(), f2, fw, nullptr);
    TrainingBackwardArgs<P> b2;
    b2.scale = sc2.data();
    b2.saved = {m2.data(), i2.data()};
    b2.grads = {g.data(), b.data()};
    b2.epilogue = {Activation::kRelu, x.data(), {mask2.data(), rb}, dz.data()};
    backward_training(desc, h.data(), doutb.data(), dh.data(), b2, bw, nullptr);
    TrainingBackwardArgs<P> b1;
    b1.scale = sc1.data();
    b1.saved = {m1.data(), i1.data()};
    b1.epilogue = {Activation::kRelu, nullptr, {mask1.data(), rb}};
    backward_training(desc, x.data(), dh.data(), dx1.data(), b1, bw, nullptr);
    device_sync();

    // the reference block in double, from the same rounded x
    ref::Params p1, p2;
    p1.scale = to_doubles(s1);
    p1.offset = to_doubles(o1);
    p2.scale = to_doubles(s2);
    p2.offset = to_doubles(o2);
    const auto bn1 = ref::forward_training(d.shape, d.xd, p1, 0, 0, {}, {});
    std::vector<double> pre1, pre2;
    const auto hr = ref::epilogue(ref::Act::kRelu, bn1.y, {}, &pre1);
    const auto bn2 = ref::forward_training(d.shape, hr, p2, 0, 0, {}, {});
    const auto outr = ref::epilogue(ref::Act::kRelu, bn2.y, d.xd, &pre2);
    // the kernels' masks, checked against the reference's signs away from the kinks
    std::vector<unsigned char> mk1(rb), mk2(rb);
    mask1.download(mk1.data(), rb);
    mask2.download(mk2.data(), rb);
    const Rounding u = rounding_of<T>();
    const double m = static_cast<double>(d.shape.m());
    // Tolerances, relative to each quantity's largest magnitude: the output type's rounding of
    // x, h and out (a few u_out each, compounded over two layers) and the sums' growth
    const double rel = 16 * u.out + 64 * std::sqrt(m) * u.acc;
    double out_scale = 0;
    for (std::size_t i = 0; i < n; ++i) out_scale = std::max(out_scale, std::fabs(outr[i]));
    std::vector<double> bit1(n), bit2(n);
    int wrong_bits = 0;
    for (std::size_t i = 0; i < n; ++i) {
      bit1[i] = mask_bit(mk1, i) ? 1.0 : 0.0;
      bit2[i] = mask_bit(mk2, i) ? 1.0 : 0.0;
      if ((std::fabs(pre1[i]) > rel * out_scale && bit1[i] != (pre1[i] > 0 ? 1.0 : 0.0)) ||
          (std::fabs(pre2[i]) > rel * out_scale && bit2[i] != (pre2[i] > 0 ? 1.0 : 0.0)))
        ++wrong_bits;
    }
    EXPECT_EQ(wrong_bits, 0) << what << ": mask bits disagree with the reference's signs";
    const auto dd = to_doubles(dout);
    std::vector<double> dpre2(n), dpre1(n);
    for (std::size_t i = 0; i < n; ++i) dpre2[i] = dd[i] * bit2[i];
    const auto gb2 = ref::backward_training(d.shape, hr, dpre2, p2);
    for (std::size_t i = 0; i < n; ++i) dpre1[i] = gb2.dx[i] * bit1[i];
    const auto gb1 = ref::backward_training(d.shape, d.xd, dpre1, p1);

    const auto got_out = to_doubles(out.download()), got_dx1 = to_doubles(dx1.download()),
               got_dz = to_doubles(dz.download());
    double dx_scale = 0;
    for (std::size_t i = 0; i < n; ++i)
      dx_scale = std::max(dx_scale, std::fabs(gb1.dx[i] + dpre2[i]));
    int bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!(std::fabs(got_out[i] - outr[i]) <= rel * out_scale) && bad++ < 5)
        ADD_FAILURE() << what << ": out[" << i << "] = " << got_out[i] << ", reference "
                      << outr[i];
      const double dx = got_dx1[i] + got_dz[i], dx_ref = gb1.dx[i] + dpre2[i];
      if (!(std::fabs(dx - dx_ref) <= 4 * rel * dx_scale) && bad++ < 5)
        ADD_FAILURE() << what << ": dx[" << i << "] = " << dx << ", reference " << dx_ref;
    }
    EXPECT_EQ(bad, 0) << what;
    const auto got_g = to_doubles(g.download());
    for (std::size_t c = 0; c < C; ++c)
      EXPECT_NEAR(got_g[c], gb2.dscale[c], 4 * rel * m * dx_scale) << what << " dscale2 c=" << c;
  }
}

}  // namespace
