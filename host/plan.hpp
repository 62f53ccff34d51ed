/// @file plan.hpp
/// @brief Every choice of kernel, vector width, launch shape and workspace layout, made in one
/// place from the problem and the device (host/ never touches tensor data).
#pragma once

#include <vector_types.h>

#include <cstddef>
#include <cstdint>

#include "device_info.hpp"
#include "geometry.hpp"
#include "problem.hpp"

namespace cubn::detail {

/// How an elementwise map (normalize, dx) runs.
struct MapPlan {
  int vec = 1;          ///< elements per access: 1, or 16 bytes' worth where alignment allows
  bool planes = false;  ///< channels-first with planes of at least 2 vectors: cfm, else cl
  kernels::ChannelsFirstMap cfm;
  kernels::ChannelsLastGeometry cl;
  dim3 grid;
  /// forward_inference's variable-length batch (lengths null: none); set by the call
  kernels::SeqGeometry seq;
};

/// How a per-channel reduction (statistics, gradient sums) runs, finishing its channels in its
/// last blocks.
struct ReducePlan {
  int vec = 1;
  bool planes = false;  ///< cfr, else cl
  kernels::ChannelsFirstReduce cfr;
  kernels::ChannelsLastGeometry cl;
  dim3 grid;                 ///< (C or column blocks, splits)
  std::int64_t splits = 1;   ///< blocks per channel or column block (grid y)
  std::size_t partials = 0;  ///< partial states: splits * (C or period)
  std::size_t totals = 0;    ///< slot totals when channels span column blocks, else 0
  int blocks_per_sm = kernels::kMinBlocksPerSm;  ///< resident blocks per SM the grid is a wave of
  bool fused() const { return planes ? cfr.fuse : cl.fuse; }
};

/// Consecutive 256-byte-aligned regions of a workspace.
struct WorkspaceLayout {
  std::size_t total = 0;
  /// Reserves `bytes` and returns their offset.
  std::size_t add(std::size_t bytes);
};

/// Where a call's regions lie in its workspace. The tickets (kernels::kTicketBytes) always come
/// first, at offset 0, for every shape and call (a call's tickets need no prior content:
/// kernels::Tickets); the rest is sized for both vector widths, so a workspace sized without
/// pointers fits every call.
struct Scratch {
  std::size_t partials_offset = 0, totals_offset = 0, coeffs_offset = 0, bytes = 0;
};

/// A fresh tag for a call's tickets (kernels::Tickets): the next of a process-wide sequence that
/// starts at a random number, so no two calls of a process among 2^48 - 2 share one, and never all
/// zeros or all ones; shifted past the count bits. Thread-safe, no synchronization beyond one
/// relaxed atomic increment.
unsigned long long next_ticket_tag() noexcept;

/// How the persistent (single-read) path runs: one cooperative launch of at most
/// kPersistentBlocksPerSm blocks per SM (the launcher clamps the grid to what the occupancy API
/// reports), each keeping pg.slots vectors per thread of what it loads in `smem` bytes of dynamic
/// shared memory (kernels/persistent.cuh).
struct PersistentPlan {
  int vec = 1;
  bool planes = false;  ///< cfr, else cl
  kernels::ChannelsFirstReduce cfr;
  kernels::ChannelsLastGeometry cl;
  kernels::PersistentGeometry pg;
  unsigned grid = 0;
  std::size_t smem = 0;
  std::size_t partials = 0;  ///< partial states: splits * (C or period)
  /// The fraction of the bytes the kernel loads (x; backward dy and x) that the grid keeps on
  /// chip, the rest read again: 1 when the tensor fits.
  double kept = 0;
};

/// Which path training calls take: the planner's choice (kAuto), or one forced for the calling
/// host thread (tests run the same cases through both). Tensors of more than
/// kernels::kNarrowElements elements always stream (the persistent kernels index in 32 bits).
enum class Path { kAuto, kStreaming, kPersistent };
void force_path(Path path) noexcept;
Path forced_path() noexcept;

/// How the training forward runs: persistent (one cooperative launch), or statistics (finishing
/// the channels, and with plan.stats.fused() normalizing too), then the normalization.
struct TrainingPlan {
  ReducePlan stats;
  MapPlan normalize;
  PersistentPlan persistent;
  bool use_persistent = false;
  Scratch scratch;
  kernels::SeqGeometry seq;  ///< the variable-length batch (lengths null: none); set by the call
  /// Kernel launches of this plan: 1 or 2.
  int launches() const { return use_persistent || stats.fused() ? 1 : 2; }
};

/// How the backward runs: persistent, or gradient sums (finishing dscale, doffset and dx's
/// coefficients), then dx.
struct BackwardPlan {
  ReducePlan sums;
  MapPlan dx;
  PersistentPlan persistent;
  bool use_persistent = false;  ///< for the training backward when it writes dx
  Scratch scratch;
  kernels::SeqGeometry seq;  ///< the variable-length batch (lengths null: none); set by the call
};

/// How a split-phase call (cubn/distributed.hpp) runs: the local phase's reduction (never fused,
/// never persistent: the normalization waits for the other ranks) and the apply phase's map, in
/// the single call's workspace layout. For a rank with N = 0 only the scratch (the coefficients
/// the merge writes) and the record size are planned.
struct SplitPlan {
  ReducePlan reduce;
  MapPlan map;
  Scratch scratch;
  std::size_t record_bytes = 0;  ///< one rank's record (kernels::rank_record_bytes)
  kernels::SeqGeometry seq;  ///< the variable-length batch (lengths null: none); set by the call
};

/// Elements per vector access for `p`: 16 bytes' worth when `aligned` (the pointers are 16-byte
/// aligned), else 1. Any plane or channel count takes vectors.
int vector_width(const Problem& p, bool aligned);

/// Throws (kInvalidLaunch, an internal error) unless `rp` was planned for the blocks per SM its
/// kernel is compiled for: the host's choice (kernels::reduce_blocks_per_sm of the call's epilogue)
/// and the kernel's (of its op's type) must agree, or the grid is not one wave.
void check_reduce_blocks(const ReducePlan& rp, int kernel_blocks_per_sm);

/// The elementwise map's plan.
MapPlan plan_map(const Problem& p, const DeviceInfo& dev, bool aligned);

/// A per-channel reduction's plan. `fusable`: the forward may normalize in the same launch.
/// `blocks_per_sm`: the resident blocks per SM its kernel is compiled for
/// (kernels::reduce_blocks_per_sm), one wave of which it launches; fewer never need more
/// workspace.
ReducePlan plan_reduce(const Problem& p, const DeviceInfo& dev, bool aligned, bool fusable,
                       int blocks_per_sm = kernels::kMinBlocksPerSm);

/// The training forward's plan (x_aligned: x is 16-byte aligned; xy_aligned: x and y are).
/// `reduce_blocks`: the statistics kernel's blocks per SM (plan_reduce).
TrainingPlan plan_training(const Problem& p, const DeviceInfo& dev, bool x_aligned, bool xy_aligned,
                           int reduce_blocks = kernels::kMinBlocksPerSm);

/// The backward's plan (inputs_aligned: x and dy are 16-byte aligned; all_aligned: dx too).
/// `reduce_blocks`: the gradient sums kernel's blocks per SM (plan_reduce).
BackwardPlan plan_backward(const Problem& p, const DeviceInfo& dev, bool inputs_aligned,
                           bool all_aligned, int reduce_blocks = kernels::kMinBlocksPerSm);

/// A split-phase call's plan (backward: the gradient sums and dx; else the statistics and the
/// normalization). inputs_aligned: the reduction's inputs are 16-byte aligned; all_aligned: the
/// map's tensors too. `reduce_blocks` as for plan_reduce. p.n may be 0.
SplitPlan plan_split(const Problem& p, const DeviceInfo& dev, bool backward, bool inputs_aligned,
                     bool all_aligned, int reduce_blocks = kernels::kMinBlocksPerSm);

/// The persistent path's plan for `inputs` tensors read (1: forward, 2: backward).
PersistentPlan plan_persistent(const Problem& p, const DeviceInfo& dev, bool aligned, int inputs);

/// The byte model of a reduction, which the proxy tests hold the kernels to: elements it loads from
/// each input tensor with vector width `vec`. The tensor once, plus, on channels-first planes that
/// do not start on a vector boundary, the edge packs each plane shares with a neighbouring plane
/// (loaded by both planes' blocks; DRAM serves the shared sectors once when L2 holds them).
std::int64_t reduce_loaded_elements(const Problem& p, int vec);

/// True when every pointer given is 16-byte aligned (null pointers count as aligned).
bool aligned16(const void* a, const void* b = nullptr, const void* c = nullptr,
               const void* d = nullptr, const void* e = nullptr, const void* f = nullptr);

}  // namespace cubn::detail
