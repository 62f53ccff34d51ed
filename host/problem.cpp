#include "problem.hpp"

#include <charconv>
#include <cstdint>
#include <limits>

namespace cubn::detail {

std::string number(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

void fail(Status status, const char* call, const std::string& what) {
  throw Error(status, std::string(call) + ": " + what);
}

namespace {

// The memory order (and shape) the kernels use for p, which has samples: see Problem::order.
void canonical_order(Problem& p) {
  if (p.c == 1) {  // one contiguous channel: one plane, unless that plane would pass 2^31
    p.order = MemoryOrder::kChannelsFirst;
    if (p.n * p.s <= 2147483647) {
      p.s = p.n * p.s;
      p.n = 1;
    }
  } else if (p.s == 1) {  // [N][C] either way
    p.order = MemoryOrder::kChannelsLast;
  }
}

}  // namespace

Problem canonicalize(const char* call, const char* arg, const TensorDesc& d, bool empty_batch) {
  const std::string a = arg;
  if (element_size(d.dtype) == 0)
    fail(Status::kInvalidDataType, call, a + ".dtype is not a cubn::DataType value");
  if (d.order != MemoryOrder::kChannelsFirst && d.order != MemoryOrder::kChannelsLast)
    fail(Status::kInvalidLayout, call, a + ".order is not a cubn::MemoryOrder value");
  if (d.rank < 2 || d.rank > TensorDesc::kMaxRank)
    fail(Status::kInvalidLayout, call,
         a + " has rank " + std::to_string(d.rank) +
             "; batch norm takes (N, C) to (N, C, D, H, W), rank 2 to 5");
  static const char* names[] = {"N", "C", "dims[2]", "dims[3]", "dims[4]"};
  for (int i = 0; i < d.rank; ++i) {
    if (d.dims[i] < 1 && !(i == 0 && empty_batch && d.dims[0] == 0))
      fail(Status::kInvalidArgument, call,
           a + ".dims[" + std::to_string(i) + "] (" + names[i] + ") is " +
               std::to_string(d.dims[i]) + "; every dim must be at least 1" +
               (i == 1 ? " (a tensor needs channels)" : ""));
  }
  // Sizes computed per channel (parameters, records, coefficients, SiLU's reserve) stay in 64
  // bits below kMaxChannels. Nothing a device could hold is refused: 2^57 channels' parameters
  // alone would take 2^59 bytes.
  if (d.dims[1] > kMaxChannels)
    fail(Status::kSizeOverflow, call,
         a + ".dims[1] (C) is " + std::to_string(d.dims[1]) +
             "; its per-channel arrays would need more bytes than 64-bit offsets can address");
  const std::int64_t limit =
      std::numeric_limits<std::int64_t>::max() / static_cast<std::int64_t>(element_size(d.dtype));
  std::int64_t numel = 1;
  for (int i = d.dims[0] == 0 ? 1 : 0; i < d.rank; ++i) {
    if (numel > limit / d.dims[i])
      fail(Status::kSizeOverflow, call,
           a + " has more elements than 64-bit byte offsets can address");
    numel *= d.dims[i];
  }
  Problem p;
  p.dtype = d.dtype;
  if (d.dims[0] == 0) {  // no samples: only C and the spatial size matter
    p.c = d.dims[1];
    p.s = numel / p.c;
    p.order = d.order;
    return p;
  }
  p.n = d.dims[0];
  p.c = d.dims[1];
  p.s = numel / (p.n * p.c);
  p.numel = numel;
  p.order = d.order;
  canonical_order(p);
  return p;
}

Problem at_least_one_sample(const Problem& p) {
  if (p.n > 0) return p;
  Problem q = p;
  q.n = 1;
  q.numel = q.c * q.s;
  canonical_order(q);
  return q;
}

void check_pointer(const char* call, const char* arg, const void* p, std::size_t align,
                   bool optional) {
  if (p == nullptr) {
    if (optional) return;
    fail(Status::kInvalidArgument, call, std::string(arg) + " is null");
  }
  if (reinterpret_cast<std::uintptr_t>(p) % align != 0)
    fail(Status::kMisalignedOperand, call,
         std::string(arg) + " is not aligned to " + std::to_string(align) +
             " bytes (its element size)");
}

}  // namespace cubn::detail
