#include "plan.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

namespace cubn::detail {

namespace {

using kernels::kBlockThreads;

constexpr std::int64_t kMaxGridY = 65535;
// Blocks that fill a GPU: 8 resident 256-thread blocks per SM on sm_80/sm_90 (2048 threads).
// Untuned beyond that arithmetic.
constexpr std::int64_t kBlocksPerSm = 8;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

int next_pow2(std::int64_t v) {
  int p = 1;
  while (p < v && p < kBlockThreads) p *= 2;
  return p;
}

std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }

// Threads along a channels-first row: enough for the row's packs when they fit in a block,
// else the width among 64, 128, 256 that wastes least of the last chunk (ties to the widest).
kernels::ChannelsFirstGeometry cf_geometry(const Problem& p, int vec) {
  kernels::ChannelsFirstGeometry g;
  g.n = p.n;
  g.c = p.c;
  g.s = p.s;
  const std::int64_t packs = ceil_div(p.s, vec);
  if (packs <= kBlockThreads) {
    g.bx = next_pow2(packs);
  } else {
    double best = -1;
    for (int bx : {256, 128, 64}) {
      const std::int64_t chunk = static_cast<std::int64_t>(bx) * vec;
      const double used =
          static_cast<double>(p.s) / static_cast<double>(ceil_div(p.s, chunk) * chunk);
      if (used > best + 1e-9) {
        best = used;
        g.bx = bx;
      }
    }
  }
  g.chunks = ceil_div(p.s, static_cast<std::int64_t>(g.bx) * vec);
  return g;
}

kernels::ChannelsLastGeometry cl_geometry(const Problem& p, int vec) {
  kernels::ChannelsLastGeometry g;
  g.rows = p.n * p.s;
  g.c = p.c;
  g.bx = next_pow2(ceil_div(p.c, vec));
  return g;
}

// Channels map to grid x (one block per channel channels-first, one per bx * V channels
// channels-last), which holds at most 2^31 - 1 blocks.
void check_grid_limits(const Problem& p) {
  if (p.c > 2147483647)
    throw Error(Status::kInvalidArgument, "cubn: C = " + std::to_string(p.c) +
                                              " channels exceeds the 2^31 - 1 cubn supports");
}

std::int64_t target_blocks(const DeviceInfo& dev) { return kBlocksPerSm * dev.sm_count; }

}  // namespace

bool aligned16(const void* a, const void* b, const void* c) {
  for (const void* ptr : {a, b, c})
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) return false;
  return true;
}

int vector_width(const Problem& p, bool aligned) {
  const int v = static_cast<int>(16 / element_size(p.dtype));
  if (!aligned) return 1;
  const std::int64_t extent = p.order == MemoryOrder::kChannelsFirst ? p.s : p.c;
  return extent % v == 0 ? v : 1;
}

NormalizePlan plan_normalize(const Problem& p, const DeviceInfo& dev, bool aligned) {
  check_grid_limits(p);
  NormalizePlan np;
  np.vec = vector_width(p, aligned);
  const std::int64_t target = target_blocks(dev) * 4;  // grid-stride: a few waves suffice
  if (p.order == MemoryOrder::kChannelsFirst) {
    np.cf = cf_geometry(p, np.vec);
    const std::int64_t by = kBlockThreads / np.cf.bx;
    const std::int64_t tiles = p.n * p.c * np.cf.chunks;
    np.grid = dim3(
        static_cast<unsigned>(std::max<std::int64_t>(1, std::min(ceil_div(tiles, by), target))));
  } else {
    np.cl = cl_geometry(p, np.vec);
    const std::int64_t by = kBlockThreads / np.cl.bx;
    const std::int64_t gx = ceil_div(ceil_div(p.c, np.vec), np.cl.bx);
    const std::int64_t gy = std::min(
        {ceil_div(np.cl.rows, by), std::max<std::int64_t>(1, ceil_div(target, gx)), kMaxGridY});
    np.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  }
  return np;
}

ReducePlan plan_reduce(const Problem& p, const DeviceInfo& dev, bool aligned) {
  check_grid_limits(p);
  ReducePlan rp;
  // Splits per channel come from the widest-vector geometry, so they (and the workspace) do not
  // depend on the pointers.
  const int widest = vector_width(p, true);
  const std::int64_t target = target_blocks(dev);
  std::int64_t channel_blocks = 0, max_splits = 0;
  if (p.order == MemoryOrder::kChannelsFirst) {
    const auto g = cf_geometry(p, widest);
    channel_blocks = p.c;
    // at least two tiles per thread row and split
    max_splits = std::max<std::int64_t>(1, p.n * g.chunks / (2 * (kBlockThreads / g.bx)));
  } else {
    const auto g = cl_geometry(p, widest);
    channel_blocks = ceil_div(ceil_div(p.c, widest), g.bx);
    // at least four rows per thread row and split
    max_splits = std::max<std::int64_t>(1, g.rows / (4 * (kBlockThreads / g.bx)));
  }
  rp.splits = std::clamp<std::int64_t>(ceil_div(target, channel_blocks), 1,
                                       std::min(max_splits, kMaxGridY));

  rp.vec = vector_width(p, aligned);
  if (p.order == MemoryOrder::kChannelsFirst) {
    rp.cf = cf_geometry(p, rp.vec);
    rp.grid = dim3(static_cast<unsigned>(p.c), static_cast<unsigned>(rp.splits));
  } else {
    rp.cl = cl_geometry(p, rp.vec);
    rp.grid = dim3(static_cast<unsigned>(ceil_div(ceil_div(p.c, rp.vec), rp.cl.bx)),
                   static_cast<unsigned>(rp.splits));
  }
  return rp;
}

dim3 plan_per_channel(const Problem& p) {
  return dim3(static_cast<unsigned>(ceil_div(p.c, kBlockThreads)));
}

std::size_t WorkspaceLayout::add(std::size_t bytes) {
  const std::size_t offset = total;
  total += align256(bytes);
  return offset;
}

TrainingPlan plan_training(const Problem& p, const DeviceInfo& dev, bool x_aligned,
                           bool xy_aligned) {
  TrainingPlan tp;
  tp.stats = plan_reduce(p, dev, x_aligned);
  tp.finalize_grid = plan_per_channel(p);
  tp.normalize = plan_normalize(p, dev, xy_aligned);
  const std::size_t acc = p.param_bytes();
  const auto c = static_cast<std::size_t>(p.c);
  WorkspaceLayout ws;
  tp.partials_offset =
      ws.add(static_cast<std::size_t>(tp.stats.splits) * c * kernels::welford_state_bytes(acc));
  tp.a_offset = ws.add(c * acc);
  tp.b_offset = ws.add(c * acc);
  tp.workspace_bytes = ws.total;
  return tp;
}

BackwardPlan plan_backward(const Problem& p, const DeviceInfo& dev, bool inputs_aligned,
                           bool all_aligned) {
  BackwardPlan bp;
  bp.sums = plan_reduce(p, dev, inputs_aligned);
  bp.finalize_grid = plan_per_channel(p);
  bp.dx = plan_normalize(p, dev, all_aligned);
  const std::size_t acc = p.param_bytes();
  const auto c = static_cast<std::size_t>(p.c);
  WorkspaceLayout ws;
  bp.partials_offset =
      ws.add(static_cast<std::size_t>(bp.sums.splits) * c * kernels::grad_sums_bytes(acc));
  bp.coeffs_offset = ws.add(kernels::kDxCoeffs * c * acc);
  bp.workspace_bytes = ws.total;
  return bp;
}

}  // namespace cubn::detail
