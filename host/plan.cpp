#include "plan.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>

namespace cubn::detail {

namespace {

using kernels::kBlockThreads;
using kernels::kUnroll;

constexpr std::int64_t kMaxGridY = 65535;
// Blocks a map launches (grid-stride): two waves. Untuned.
constexpr std::int64_t kMapBlocksPerSm = 2 * kernels::kMinBlocksPerSm;
// Values one thread folds at most: its count is a float, exact to 2^24.
constexpr std::int64_t kMaxPerThread = std::int64_t{1} << 22;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

int pow2_at_most(std::int64_t v) {
  int p = 1;
  while (2 * p <= v && 2 * p <= kBlockThreads) p *= 2;
  return p;
}

std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }

// Channels-first planes of at least two vectors take the plane kernels; smaller planes, and
// channels-last, the periodic column kernels.
bool use_planes(const Problem& p, int vec) {
  if (p.order != MemoryOrder::kChannelsFirst || (vec > 1 && p.s < 2 * vec)) return false;
  if (p.s > 2147483647)
    throw Error(
        Status::kInvalidArgument,
        "cubn: channels-first planes of " + std::to_string(p.s) +
            " elements (the product of the spatial dims) exceed the 2^31 - 1 cubn supports");
  return true;
}

kernels::ChannelsLastGeometry columns(const Problem& p, int vec) {
  kernels::ChannelsLastGeometry g;
  g.d = p.order == MemoryOrder::kChannelsFirst ? p.s : 1;
  g.cols = p.c * g.d;
  g.c = p.c;
  g.numel = p.numel;
  g.lr = vec / std::gcd(g.cols, static_cast<std::int64_t>(vec));
  // Checked before the product: cols may be near 2^63 (a huge C with one row), where cols * lr
  // would overflow.
  if (g.cols > 2147483647 / g.lr)
    throw Error(Status::kInvalidArgument,
                "cubn: " + std::to_string(g.cols) +
                    " columns per row (channels x spatial for "
                    "planes under 32 bytes) exceed what cubn supports (lcm with the vector width "
                    "below 2^31)");
  g.period = g.cols * g.lr;
  g.period_packs = g.period / vec;
  g.periods = ceil_div(p.numel, g.period);
  g.full_periods = p.numel / g.period;
  g.tail_col = p.numel / vec * vec % g.cols;
  g.bx = std::min(pow2_at_most(g.period_packs),
                  pow2_at_most(std::max<std::int64_t>(1, kernels::kMaxColumnSlots / vec)));
  return g;
}

// Whole packs every plane of S elements holds, whatever its alignment.
std::int64_t whole_packs(const Problem& p, int vec) {
  return p.s % vec == 0 ? p.s / vec : std::max<std::int64_t>(0, (p.s - vec + 1) / vec);
}

// Where the first leftover element (past the last whole vector) lies: its position in its plane
// and its channel.
void plane_tail(const Problem& p, int vec, std::int64_t& pos, int& ch) {
  const std::int64_t e = p.numel / vec * vec;
  pos = e % p.s;
  ch = static_cast<int>(e / p.s % p.c);
}

// Channels (planes) or column blocks map to grid x, which holds at most 2^31 - 1 blocks.
void check_grid_x(std::int64_t blocks) {
  if (blocks > 2147483647)
    throw Error(Status::kInvalidArgument, "cubn: " + std::to_string(blocks) +
                                              " channel blocks exceed the 2^31 - 1 cubn supports");
}

// Splits per channel group: enough blocks to fill the device, at least two groups of kUnroll
// values per thread, few enough values per thread for its float count, and none past kTickets
// groups (one ticket each).
std::int64_t choose_splits(std::int64_t groups, std::int64_t per_split_unit, std::int64_t units,
                           std::int64_t target) {
  const std::int64_t most = std::max<std::int64_t>(1, units / (per_split_unit * 2 * kUnroll));
  std::int64_t splits = std::clamp<std::int64_t>(ceil_div(target, groups), 1, most);
  if (groups > kernels::kTickets) splits = 1;  // a ticket per group, kTickets of them
  splits = std::max(splits, ceil_div(units, per_split_unit * kMaxPerThread));
  if (splits > kMaxGridY)
    throw Error(Status::kInvalidArgument,
                "cubn: " + std::to_string(units) + " values per channel exceed what cubn supports");
  return splits;
}

// The plane walk of `splits` blocks per channel (ChannelsFirstReduce).
kernels::ChannelsFirstReduce planes(const Problem& p, int vec, std::int64_t splits) {
  kernels::ChannelsFirstReduce g;
  g.n = p.n;
  g.c = p.c;
  g.s = p.s;
  g.numel = p.numel;
  g.wf = whole_packs(p, vec);
  g.tiles = p.n * g.wf;
  g.step = splits * kBlockThreads;
  g.step_j = g.wf > 0 ? g.step % g.wf : 0;
  g.step_base = g.wf > 0 ? g.step / g.wf * p.c * p.s : 0;
  g.plane = p.c * p.s;
  g.tiles_q = g.tiles / g.step;
  g.tiles_r = g.tiles % g.step;
  plane_tail(p, vec, g.tail_pos, g.tail_ch);
  return g;
}

thread_local Path g_forced = Path::kAuto;

}  // namespace

void force_path(Path path) noexcept { g_forced = path; }

unsigned long long next_ticket_tag() noexcept {
  static std::atomic<unsigned long long> next{[] {
    try {
      std::random_device rd;
      return (static_cast<unsigned long long>(rd()) << 32) ^ rd();
    } catch (...) {  // no source of randomness: the clock
      return static_cast<unsigned long long>(
          std::chrono::steady_clock::now().time_since_epoch().count());
    }
  }()};
  // tags 1 to 2^48 - 2: a word of zeros or of ones (a fresh or a 0xFF-filled workspace) is never
  // one of the call's
  constexpr unsigned long long kTags = (1ull << (64 - kernels::kTicketCountBits)) - 2;
  return (next.fetch_add(1, std::memory_order_relaxed) % kTags + 1) << kernels::kTicketCountBits;
}

Path forced_path() noexcept { return g_forced; }

bool aligned16(const void* a, const void* b, const void* c, const void* d, const void* e,
               const void* f) {
  for (const void* ptr : {a, b, c, d, e, f})
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) return false;
  return true;
}

int vector_width(const Problem& p, bool aligned) {
  return aligned ? static_cast<int>(16 / element_size(p.dtype)) : 1;
}

MapPlan plan_map(const Problem& p, const DeviceInfo& dev, bool aligned) {
  MapPlan mp;
  mp.vec = vector_width(p, aligned);
  mp.planes = use_planes(p, mp.vec);
  const std::int64_t target = kMapBlocksPerSm * dev.sm_count;
  if (mp.planes) {
    auto& g = mp.cfm;
    g.c = p.c;
    g.s = p.s;
    g.numel = p.numel;
    g.packs = p.numel / mp.vec;
    const std::int64_t blocks =
        std::clamp<std::int64_t>(ceil_div(g.packs, kBlockThreads * kUnroll), 1, target);
    check_grid_x(blocks);
    g.step = blocks * kBlockThreads;
    g.step_pos = g.step * mp.vec % p.s;
    g.step_ch = g.step * mp.vec / p.s % p.c;
    g.packs_q = g.packs / g.step;
    g.packs_r = g.packs % g.step;
    if (g.packs_q >= (std::int64_t{1} << 32))  // a thread counts its packs in 32 bits
      throw Error(Status::kInvalidArgument,
                  "cubn: " + std::to_string(p.numel) + " elements exceed what cubn supports");
    check_grid_x(p.c);  // channels index in 32 bits
    plane_tail(p, mp.vec, g.tail_pos, g.tail_ch);
    mp.grid = dim3(static_cast<unsigned>(blocks));
  } else {
    mp.cl = columns(p, mp.vec);
    const std::int64_t gx = ceil_div(mp.cl.period_packs, mp.cl.bx);
    check_grid_x(gx);
    const std::int64_t by = kBlockThreads / mp.cl.bx;
    const std::int64_t gy = std::clamp<std::int64_t>(
        ceil_div(mp.cl.periods, by * kUnroll), 1, std::max<std::int64_t>(1, ceil_div(target, gx)));
    mp.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::min(gy, kMaxGridY)));
  }
  return mp;
}

void check_reduce_blocks(const ReducePlan& rp, int kernel_blocks_per_sm) {
  if (rp.blocks_per_sm != kernel_blocks_per_sm)
    throw Error(Status::kInvalidLaunch, "cubn internal error: a reduction planned for " +
                                            std::to_string(rp.blocks_per_sm) +
                                            " blocks per SM launches a kernel compiled for " +
                                            std::to_string(kernel_blocks_per_sm));
}

ReducePlan plan_reduce(const Problem& p, const DeviceInfo& dev, bool aligned, bool fusable,
                       int blocks_per_sm) {
  ReducePlan rp;
  rp.vec = vector_width(p, aligned);
  rp.planes = use_planes(p, rp.vec);
  // Blocks a reduction launches: one wave at the resident blocks per SM its kernel is compiled for
  // (kernels::reduce_blocks_per_sm: kMinBlocksPerSm, or 3 or 2 for the fused epilogue's and fp64),
  // each thread with 4 x 16 bytes in flight (kUnroll): 64 KB per SM at 4, over three times what
  // Little's law asks of an H100. Fewer, larger blocks also keep the partials the last block
  // merges few. Untuned beyond that arithmetic.
  rp.blocks_per_sm = blocks_per_sm;
  const std::int64_t target = std::int64_t{blocks_per_sm} * dev.sm_count;
  if (rp.planes) {
    check_grid_x(p.c);
    rp.splits = choose_splits(p.c, kBlockThreads,
                              std::max<std::int64_t>(p.n * whole_packs(p, rp.vec), p.n), target);
    auto& g = rp.cfr;
    g = planes(p, rp.vec, rp.splits);
    // One launch for the whole training forward when a block holds all of its channel (one
    // split): no block waits for another, the channel's x was just read by the same block (an L1
    // or L2 hit when re-read to normalize), and a launch gap is saved, which is what dominates
    // small problems. Planes of whole vectors only: the block writes whole vectors of its own
    // channel, never a vector shared with a neighbour.
    g.fuse = fusable && rp.splits == 1 && p.s % rp.vec == 0;
    rp.grid = dim3(static_cast<unsigned>(p.c), static_cast<unsigned>(rp.splits));
    rp.partials = static_cast<std::size_t>(rp.splits * p.c);
  } else {
    auto& g = rp.cl;
    g = columns(p, rp.vec);
    const std::int64_t gx = ceil_div(g.period_packs, g.bx);
    check_grid_x(gx);
    rp.splits = choose_splits(gx, kBlockThreads / g.bx, g.periods, target);
    // one launch likewise when one split holds column blocks of whole channels
    g.fuse = fusable && rp.splits == 1 && g.lr == 1 && g.d == 1;
    rp.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(rp.splits));
    rp.partials = static_cast<std::size_t>(rp.splits * g.period);
    rp.totals = g.lr == 1 && g.d == 1 ? 0 : static_cast<std::size_t>(g.period);
  }
  return rp;
}

namespace {

// Static shared memory of the persistent kernels, at most (kernels/persistent.cuh: a state per
// thread, the reduction's temporary storage, a column block's channel constants or coefficients);
// bench/resource_report.py prints the real figure per kernel (7.5 KB at most on sm_90).
constexpr std::size_t kPersistentStaticShared = 12 * 1024;

// Virtual blocks per channel group of the persistent path: as many as fit in the grid without a
// second round (a block with two virtual blocks would hold twice the slice of the others), at
// least one group of kUnroll values per thread (the grid syncs, not the per-block merge, are what
// more blocks cost here), and few enough values per thread for its float count.
std::int64_t persistent_splits(std::int64_t groups, std::int64_t per_split_unit, std::int64_t units,
                               std::int64_t target) {
  const std::int64_t most = std::max<std::int64_t>(1, units / (per_split_unit * kUnroll));
  const std::int64_t splits = std::clamp<std::int64_t>(target / groups, 1, most);
  return std::max(splits, ceil_div(units, per_split_unit * kMaxPerThread));
}

}  // namespace

PersistentPlan plan_persistent(const Problem& p, const DeviceInfo& dev, bool aligned, int inputs) {
  PersistentPlan pp;
  pp.vec = vector_width(p, aligned);
  pp.planes = use_planes(p, pp.vec);
  const std::int64_t target = std::int64_t{kernels::kPersistentBlocksPerSm} * dev.sm_count;
  if (pp.planes) {
    check_grid_x(p.c);
    pp.pg.vblocks_x = p.c;
    pp.pg.splits = persistent_splits(
        p.c, kBlockThreads, std::max<std::int64_t>(p.n * whole_packs(p, pp.vec), p.n), target);
    pp.cfr = planes(p, pp.vec, pp.pg.splits);
    pp.partials = static_cast<std::size_t>(pp.pg.splits * p.c);
  } else {
    pp.cl = columns(p, pp.vec);
    pp.pg.vblocks_x = ceil_div(pp.cl.period_packs, pp.cl.bx);
    check_grid_x(pp.pg.vblocks_x);
    pp.pg.splits =
        persistent_splits(pp.pg.vblocks_x, kBlockThreads / pp.cl.bx, pp.cl.periods, target);
    pp.partials = static_cast<std::size_t>(pp.pg.splits * pp.cl.period);
  }
  const std::int64_t vblocks = pp.pg.vblocks_x * pp.pg.splits;
  pp.grid = static_cast<unsigned>(std::min(target, vblocks));
  // Half an SM's shared memory per block (kPersistentBlocksPerSm), less what the system and the
  // kernel's static arrays take, in whole rows of one slot per thread.
  const std::size_t slot_row = std::size_t{kBlockThreads} * pp.vec * element_size(p.dtype);
  const std::size_t share = dev.shared_per_sm / kernels::kPersistentBlocksPerSm;
  const std::size_t overhead = dev.reserved_shared_per_block + kPersistentStaticShared;
  std::size_t avail = share > overhead ? share - overhead : 0;
  if (dev.shared_per_block_optin > kPersistentStaticShared)
    avail = std::min(avail, dev.shared_per_block_optin - kPersistentStaticShared);
  pp.pg.slots = static_cast<int>(std::min<std::size_t>(avail / slot_row, 1u << 20));
  pp.smem = static_cast<std::size_t>(pp.pg.slots) * slot_row;
  // What the busiest thread keeps: its packs per virtual block (main tiles, and up to three edge
  // packs per plane when planes do not hold whole vectors; rows of periods) times the virtual
  // blocks of its block, against its slots less the last visit's that may not fit whole.
  const std::int64_t step = pp.pg.splits * kBlockThreads;
  std::int64_t packs = 0;
  if (pp.planes) {
    packs = ceil_div(pp.cfr.tiles, step) + (p.s % pp.vec != 0 ? 3 * ceil_div(p.n, step) : 0);
  } else {
    packs = ceil_div(pp.cl.periods, pp.pg.splits * (kBlockThreads / pp.cl.bx));
  }
  const std::int64_t needed = ceil_div(vblocks, pp.grid) * packs * inputs;
  const std::int64_t visit = std::int64_t{kernels::kUnroll};  // slots a visit takes: U * inputs
  const std::int64_t usable = std::max<std::int64_t>(0, pp.pg.slots - (visit - 1));
  pp.kept = needed == 0 ? 1.0 : std::min(1.0, static_cast<double>(usable) / needed);
  return pp;
}

namespace {

// The persistent path when forced, or when the device runs cooperative kernels, the streaming
// plan is not one launch on a tensor under 1 MB (a fused plan's blocks each hold a whole channel
// and re-read it from cache with no grid sync: where launch and sync latency, not bytes, set the
// time, it stays), and what it keeps on chip saves at least a twelfth of the streaming path's
// traffic: kept * inputs passes of 2 * inputs + 1. Untuned: the figures keep the saved bytes' time
// above the cost of the two grid syncs (estimated at 2 us each, to be measured) on ResNet-50's
// batch-32 shapes, whose largest backward keeps 22% (saving 9%), while a 100 MB forward at batch
// 256 (saving 7.5%) streams.
bool choose_persistent(const Problem& p, const PersistentPlan& pp, const DeviceInfo& dev,
                       const ReducePlan& streaming, int inputs) {
  // the persistent kernels index elements in 32 bits (channel_ops.cuh), even when forced: larger
  // tensors never fit on chip anyway
  if (p.numel > kernels::kNarrowElements) return false;
  switch (forced_path()) {
    case Path::kPersistent: return true;
    case Path::kStreaming: return false;
    case Path::kAuto: break;
  }
  const double saved = pp.kept * inputs / (2.0 * inputs + 1.0);
  const bool small_fused = streaming.fused() && p.bytes() < (std::size_t{1} << 20);
  return dev.cooperative && !small_fused && saved >= 1.0 / 12.0;
}

}  // namespace

std::size_t WorkspaceLayout::add(std::size_t bytes) {
  const std::size_t offset = total;
  total += align256(bytes);
  return offset;
}

namespace {

// The workspace regions of a reduction with `state_bytes` per partial and `coeffs` per-channel
// coefficient arrays, sized for both paths and both vector widths.
Scratch scratch_for(const Problem& p, const DeviceInfo& dev, std::size_t state_bytes, int coeffs) {
  const ReducePlan wide = plan_reduce(p, dev, true, false),
                   narrow = plan_reduce(p, dev, false, false);
  const std::size_t persistent = std::max(plan_persistent(p, dev, true, 1).partials,
                                          plan_persistent(p, dev, false, 1).partials);
  WorkspaceLayout ws;
  ws.add(kernels::kTicketBytes);
  Scratch s;
  s.partials_offset = ws.add(std::max({wide.partials, narrow.partials, persistent}) * state_bytes);
  s.totals_offset = ws.add(std::max(wide.totals, narrow.totals) * state_bytes);
  s.coeffs_offset =
      ws.add(static_cast<std::size_t>(coeffs) * static_cast<std::size_t>(p.c) * p.param_bytes());
  s.bytes = ws.total;
  return s;
}

// The training forward's regions (Welford partials, the normalization's coefficients) and the
// backward's (gradient sums, dx's coefficients).
Scratch forward_scratch(const Problem& p, const DeviceInfo& dev) {
  return scratch_for(p, dev, kernels::welford_state_bytes(p.param_bytes()), kernels::kAffineCoeffs);
}
Scratch backward_scratch(const Problem& p, const DeviceInfo& dev) {
  return scratch_for(p, dev, kernels::grad_sums_bytes(p.param_bytes()), kernels::kDxCoeffs);
}

}  // namespace

std::int64_t reduce_loaded_elements(const Problem& p, int vec) {
  if (!use_planes(p, vec) || p.s % vec == 0) return p.numel;
  const std::int64_t whole_end = p.numel / vec * vec;
  std::int64_t loaded = p.numel - whole_end;  // the leftovers, one by one
  for (std::int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const std::int64_t b0 = plane * p.s, b1 = b0 + p.s;
    const std::int64_t first = b0 / vec * vec,
                       end = std::min((b1 + vec - 1) / vec * vec, whole_end);
    loaded += std::max<std::int64_t>(0, end - first);
  }
  return loaded;
}

TrainingPlan plan_training(const Problem& p, const DeviceInfo& dev, bool x_aligned, bool xy_aligned,
                           int reduce_blocks) {
  TrainingPlan tp;
  tp.stats = plan_reduce(p, dev, x_aligned, x_aligned == xy_aligned, reduce_blocks);
  tp.normalize = plan_map(p, dev, xy_aligned);
  tp.persistent = plan_persistent(p, dev, xy_aligned, 1);
  tp.use_persistent = choose_persistent(p, tp.persistent, dev, tp.stats, 1);
  tp.scratch = forward_scratch(p, dev);
  return tp;
}

BackwardPlan plan_backward(const Problem& p, const DeviceInfo& dev, bool inputs_aligned,
                           bool all_aligned, int reduce_blocks) {
  BackwardPlan bp;
  bp.sums = plan_reduce(p, dev, inputs_aligned, false, reduce_blocks);
  bp.dx = plan_map(p, dev, all_aligned);
  bp.persistent = plan_persistent(p, dev, all_aligned, 2);
  bp.use_persistent = choose_persistent(p, bp.persistent, dev, bp.sums, 2);
  bp.scratch = backward_scratch(p, dev);
  return bp;
}

SplitPlan plan_split(const Problem& p, const DeviceInfo& dev, bool backward, bool inputs_aligned,
                     bool all_aligned, int reduce_blocks) {
  SplitPlan sp;
  sp.record_bytes = kernels::rank_record_bytes(p.c, p.param_bytes());
  // a rank without samples runs no reduction or map; its merge writes the coefficients of one
  // sample's problem
  const Problem q = at_least_one_sample(p);
  sp.scratch = backward ? backward_scratch(q, dev) : forward_scratch(q, dev);
  if (p.numel == 0) return sp;
  sp.reduce = plan_reduce(p, dev, inputs_aligned, false, reduce_blocks);
  sp.map = plan_map(p, dev, all_aligned);
  return sp;
}

}  // namespace cubn::detail
