/// @file geometry.hpp
/// @brief The launch geometry host/ computes and kernels/ reads: plain structs, no device code,
/// so host-only files can include it.
///
/// Every streaming loop moves whole packs of V elements (16 bytes, or one element on the scalar
/// path for misaligned pointers), aligned to V elements from the tensor's start, whatever the
/// plane or channel count; the fewer than V elements past the last whole pack ("leftovers") are
/// taken one by one by the code that finishes each channel.
///  - Channels-first, planes of S >= 2V elements: a channel is N planes of S elements at stride
///    C * S. The reduction takes, in each plane, the `wf` whole packs that every plane holds
///    whatever its alignment (main loop, no masks), then the up to three packs the plane shares
///    with its neighbours (edge loop, masked by element). The elementwise map walks the tensor's
///    packs flat; a pack that crosses a plane boundary takes two channels' coefficients.
///  - Channels-last, and channels-first with planes under 2V elements (seen as [N][C * S]): rows
///    of `cols` columns, `d` columns per channel. The pattern of columns under the packs repeats
///    every lcm(cols, V) elements (a "period" of `lr` rows, `period_packs` packs), so a thread that
///    owns pack j of every period always sees the same V columns ("slots" j * V + k of the period).
#pragma once

#include <cstddef>
#include <cstdint>

namespace cubn::kernels {

/// Threads per block of the batch-norm kernels. Untuned: 256 is a common choice for
/// memory-bound kernels; it awaits a GPU measurement (bench/).
constexpr int kBlockThreads = 256;

/// Resident blocks per SM the kernels are compiled for (__launch_bounds__'s second argument):
/// 4 x 256 threads = 50% occupancy on sm_80/sm_90, the least a memory-bound kernel should have.
/// It caps registers at 64 per thread; without it ptxas capped some kernels at 40 and spilled
/// (sm_80, bench/resource_report.py).
constexpr int kMinBlocksPerSm = 4;

/// Resident blocks per SM the fused epilogue's map kernels (normalize with an activation or a
/// residual; dx with dz and an activation's derivative) are compiled for: 3 x 256 threads, up to
/// 85 registers each. Their loops hold a second output (dz) or a third input (z) and an
/// activation's constants beside the packs in flight, and at kMinBlocksPerSm's 64 registers ptxas
/// spilled up to 380 bytes (sm_90, bench/resource_report.py). 37.5% occupancy still keeps 48 KB in
/// flight per SM (768 threads x 64 bytes), over the ~18 KB an H100 needs by Little's law (see
/// kUnroll): chosen from the spill counts, not measured on a GPU.
constexpr int kFusedMapBlocksPerSm = 3;
/// The same for SiLU's maps, which also hold its exponential and reciprocal per element: at 3
/// blocks (80 registers) its fp16/bf16 dx kernels still spilled up to 104 bytes (sm_90). 2 x 256
/// threads x 64 bytes = 32 KB in flight per SM, still over the ~18 KB an H100 needs. Chosen from
/// the spill counts, not measured on a GPU.
constexpr int kSiluMapBlocksPerSm = 2;

/// Resident blocks per SM a reduction kernel (statistics, which also carry the fused normalization
/// when one block holds its channels; gradient sums) is compiled for (__launch_bounds__) and
/// host/plan.cpp sizes its single wave by. kMinBlocksPerSm, but 3 (kFusedMapBlocksPerSm, up to 80
/// registers) for fp64 tensors, for the statistics kernels whose normalization applies the fused
/// epilogue (an activation or a residual: `act` is cubn::Activation's value) and for SiLU's
/// gradient sums: at 64 registers those spilled up to 240 bytes (sm_80 to sm_100,
/// bench/resource_report.py), and on sm_100 SiLU's loops used their first loads before issuing the
/// others (2 of 4 in flight, bench/sass_report.py). Chosen from those counts, not measured on a
/// GPU; a wave of 3 x 256 threads still keeps 48 KB in flight per SM (see kFusedMapBlocksPerSm).
constexpr int reduce_blocks_per_sm(std::size_t elem_bytes, bool backward, int act, bool residual) {
  if (act == 2) return kSiluMapBlocksPerSm;
  if (elem_bytes == 8) return kFusedMapBlocksPerSm;
  if (backward) return kMinBlocksPerSm;
  return act != 0 || residual ? kFusedMapBlocksPerSm : kMinBlocksPerSm;
}

/// Packs a thread loads before it uses any, in loops over one tensor (loops over two load this
/// many halves of each): 4 x 16 bytes in flight per thread. Chosen from Little's law, not measured:
/// an H100 needs about 18 KB in flight per SM (3.35 TB/s x ~700 ns / 132 SMs), and 4 blocks of 256
/// threads with 64 bytes each have 64 KB, enough for a B200's ~2x as well
/// (bench/sass_report.py checks the loops issue them).
constexpr int kUnroll = 4;

/// The persistent kernels walk their tensors with 32-bit element offsets (channel_ops.cuh): a
/// pack's address is one multiply-add from its tensor's base instead of a 64-bit shift and adds.
/// host/plan.cpp takes them only for tensors of at most this many elements (larger ones could not
/// be kept on chip anyway).
constexpr std::int64_t kNarrowElements = 0xffffffff;

/// Period slots one column block holds at most (threads across x V): the last block of a set of
/// column blocks merges slots x splits partials with kBlockThreads threads, so this keeps that
/// merge to a few steps per thread, and the map kernels keep the block's coefficients in shared
/// memory; 16 threads x 8 bf16 still read 256 contiguous bytes of a row. Untuned.
constexpr int kMaxColumnSlots = 128;

/// Tickets at the start of every workspace (group_arrive in channel_ops.cuh): one per channel or
/// column block, and one for the second level; a fixed number whatever the shape, so that calls of
/// different shapes can share one workspace. Grids of more groups than this are not split (one
/// block per group needs no ticket): at 4 blocks per SM that takes over 500 SMs to matter.
constexpr int kTickets = 1024;
/// Bytes of the ticket region (kTickets + 1 64-bit words, rounded up to 256).
constexpr std::size_t kTicketBytes = 8448;
/// Bits of a ticket word that count arrivals (the rest hold the call's tag): more than the most
/// blocks that share a ticket (65535 splits, host/plan.cpp kMaxGridY; kTickets column blocks).
constexpr int kTicketCountBits = 16;

/// A call's tickets: its words in the workspace and its tag, a nonzero 48-bit number in bits 16 to
/// 63 (host/launch_ops.cuh draws a fresh one per call). A word holds a tag and a count; a word
/// whose tag is not the call's counts as zero, whatever it holds, so a workspace needs no
/// zero-filling: only a word whose top 48 bits equal the call's tag by chance (odds 2^-48 for
/// bytes that are not a cubn ticket of this process) is taken for an arrival count.
struct Tickets {
  unsigned long long* words = nullptr;
  unsigned long long tag = 0;
};

/// Channels-first reduction: block (channel, split) of a grid (C, splits). Planes hold fewer than
/// 2^31 elements and channels number fewer than 2^31 (host/plan.cpp), so positions within a
/// plane and channel indices run in 32 bits.
struct ChannelsFirstReduce {
  std::int64_t n = 0, c = 0, s = 0, numel = 0;
  std::int64_t wf = 0;         ///< whole packs every plane holds: the main loop's tiles per plane
  std::int64_t tiles = 0;      ///< n * wf
  std::int64_t step = 0;       ///< tiles a thread advances: splits * kBlockThreads
  std::int64_t step_j = 0;     ///< step % wf
  std::int64_t step_base = 0;  ///< (step / wf) * C * S elements
  std::int64_t plane = 0;      ///< C * S: elements from a plane of a channel to its next
  /// tiles / step and tiles % step: a thread starting at tile `first` (< step) takes
  /// tiles_q + (first < tiles_r) tiles, fewer than 2^32 (host/plan.cpp)
  std::int64_t tiles_q = 0, tiles_r = 0;
  std::int64_t tail_pos = 0;  ///< the first leftover element's position in its plane
  int tail_ch = 0;            ///< and its channel
  bool fuse = false;  ///< forward: the block also normalizes its channel (one split, S % V == 0)
};

/// Channels-first elementwise map over the tensor's whole packs, flat, grid-stride.
struct ChannelsFirstMap {
  std::int64_t c = 0, s = 0, numel = 0;
  std::int64_t packs = 0;     ///< numel / V
  std::int64_t step = 0;      ///< packs a thread advances: the grid's threads
  std::int64_t step_pos = 0;  ///< (step * V) % S
  std::int64_t step_ch = 0;   ///< (step * V / S) % C
  /// packs / step and packs % step: a thread starting at pack `first` (< step) takes
  /// packs_q + (first < packs_r) packs
  std::int64_t packs_q = 0, packs_r = 0;
  std::int64_t tail_pos = 0;  ///< the first leftover element's position in its plane
  int tail_ch = 0;            ///< and its channel
};

/// Rows of columns with a repeating period (channels-last; channels-first with small planes).
/// host/plan.cpp keeps the period below 2^31 elements, so slots and columns index in 32 bits.
/// Reductions run on a grid (column blocks, splits), maps on (column blocks, row blocks).
struct ChannelsLastGeometry {
  std::int64_t cols = 0;  ///< columns per row: C, or C * S for small channels-first planes
  std::int64_t d = 1;     ///< columns per channel: 1, or S
  std::int64_t c = 0, numel = 0;
  std::int64_t period_packs = 0;  ///< packs per period: lcm(cols, V) / V
  std::int64_t period = 0;        ///< elements per period: lcm(cols, V)
  std::int64_t periods = 0;       ///< periods holding at least one element: ceil(numel / period)
  std::int64_t full_periods = 0;  ///< numel / period
  std::int64_t lr = 1;            ///< rows per period
  std::int64_t tail_col = 0;      ///< the first leftover element's column
  int bx = 1;                     ///< threads across a period's packs (power of two)
  /// forward: one split, and every column block holds whole channels (lr == d == 1): the block
  /// also normalizes its columns
  bool fuse = false;
};

/// Resident blocks per SM of the persistent (single-read) kernels: each keeps its share of the
/// tensor in up to half an SM's shared memory, and 2 x 256 threads with 4 x 16-byte loads each keep
/// 32 KB per SM in flight while they load it (Little's law asks about 18 KB of an H100).
/// __launch_bounds__ then allows 128 registers per thread. Untuned: awaits a GPU measurement.
constexpr int kPersistentBlocksPerSm = 2;

/// Bytes of one slot of the persistent kernels' on-chip slices: one 16-byte vector.
constexpr std::size_t kSlotBytes = 16;

/// The persistent path: a cooperative grid walks the streaming reduction's blocks ("virtual
/// blocks": (channel, split) of ChannelsFirstReduce, (column block, split) of ChannelsLastGeometry)
/// vb = blockIdx.x, + gridDim.x, ... twice: first folding each pack into the statistics and keeping
/// it in shared memory while the thread has slots left, then, after the grid has agreed on the
/// statistics, writing the output from the kept packs (re-reading only those that found no slot).
struct PersistentGeometry {
  std::int64_t vblocks_x = 0;  ///< virtual blocks across: C (planes) or column blocks
  std::int64_t splits = 1;     ///< virtual blocks per channel or column block
  int slots = 0;               ///< kept vectors per thread (one per input tensor per pack)
};

/// Division of an index n in [0, 2^63) by a divisor d >= 1 fixed for a launch, without a division
/// (a 64-bit division is a subroutine of about 70 instructions on the GPU): q = hi64(2n * m) >> l
/// with l = ceil(log2 d) and m = ceil(2^(63+l) / d), which fits 64 bits (Granlund and Montgomery's
/// round-up method: 0 <= m d - 2^(63+l) < d <= 2^l, so q = floor(n / d) exactly for every
/// n < 2^63). lengths.cuh quotient() divides; tests/plan_test.cpp checks it against `/`.
struct FastDivisor {
  __extension__ typedef unsigned __int128 Wide;  // GCC's, clang's and nvcc's 128-bit integer

  std::uint64_t m = std::uint64_t{1} << 63;
  int l = 0;

  static constexpr FastDivisor of(std::uint64_t divisor) {
    FastDivisor f;
    f.l = 0;
    while (f.l < 64 && (std::uint64_t{1} << f.l) < divisor) ++f.l;
    const Wide two = static_cast<Wide>(1) << (63 + f.l);
    f.m = static_cast<std::uint64_t>((two + divisor - 1) / divisor);
    return f;
  }
  /// floor(n / d) for n in [0, 2^63): the executor's quotient (lengths.cuh; the GPU's takes the
  /// high half with __umul64hi).
  constexpr std::uint64_t divide(std::uint64_t n) const {
    return static_cast<std::uint64_t>((static_cast<Wide>(n << 1) * m) >> 64) >> l;
  }
};

/// FastDivisor's method in 32 bits, for n in [0, 2^31): q = hi32(2n * m) >> l with l = ceil(log2 d)
/// and m = ceil(2^(31+l) / d) < 2^32 (d > 2^(l-1)); exact because n d < 2^(31+l). Three
/// instructions where FastDivisor takes about eleven (a 64-bit high product): the masked loops'
/// time step within a sample's row (lengths.cuh).
struct FastDivisor32 {
  std::uint32_t m = std::uint32_t{1} << 31;
  int l = 0;

  static constexpr FastDivisor32 of(std::uint32_t divisor) {
    FastDivisor32 f;
    f.l = 0;
    while (f.l < 32 && (std::uint64_t{1} << f.l) < divisor) ++f.l;
    const std::uint64_t two = std::uint64_t{1} << (31 + f.l);
    f.m = static_cast<std::uint32_t>((two + divisor - 1) / divisor);
    return f;
  }
  /// floor(n / d) for n in [0, 2^31) (the GPU's quotient takes the high half with __umulhi).
  constexpr std::uint32_t divide(std::uint32_t n) const {
    return static_cast<std::uint32_t>((static_cast<std::uint64_t>(n << 1) * m) >> 32) >> l;
  }
};

/// Samples and positions per sample a variable-length batch may have: the masked loops count
/// samples, time steps and a sample's positions in 32 bits (host/call_checks.cpp refuses more).
constexpr std::int64_t kMaxSeqIndex = 0x7fffffff;

/// A variable-length batch (cubn::Lengths) as the kernels see it (lengths.cuh SeqMask): element e
/// is of time step row = e / inner, at time t = row % l of row-of-l rl = row / l, of sample
/// rl / rows; valid below the sample's length.
struct SeqGeometry {
  const void* lengths = nullptr;  ///< N lengths, int32 or int64; null: no mask
  bool wide = false;              ///< int64 lengths
  bool zero = true;               ///< padded outputs get 0 (else they are not written)
  std::int64_t sample = 1;        ///< C * S: elements per sample
  std::int64_t inner = 1;         ///< 1 channels-first, C channels-last
  std::int64_t l = 1;             ///< the time axis' extent
  std::int64_t n = 0;             ///< samples
  std::int64_t per_step = 1;      ///< S / L: a channel's elements per time step of a sample
  std::int64_t rows = 1;          ///< rows of l time steps per sample: sample / (inner * l)
  std::int64_t s = 1;             ///< a channel's positions per sample: S = per_step * l
  FastDivisor by_inner;           ///< inner
  FastDivisor by_l;               ///< l
  FastDivisor by_rows;            ///< rows
  FastDivisor32 by_l32;           ///< l, for time steps within a sample (< 2^31)
  FastDivisor32 by_step32;        ///< per_step, for a channels-first plane's samples (C = 1)

  /// The mask of N samples of C channels, S positions each (of which the last axis, l, is time),
  /// channels-first or -last.
  static constexpr SeqGeometry of(const void* lengths, bool wide, bool zero, std::int64_t n,
                                  std::int64_t c, std::int64_t s, std::int64_t l,
                                  bool channels_last) {
    SeqGeometry g;
    g.lengths = lengths;
    g.wide = wide;
    g.zero = zero;
    g.n = n;
    g.l = l;
    g.sample = c * s;
    g.inner = channels_last ? c : 1;
    g.per_step = s / l;
    g.rows = g.sample / (g.inner * l);
    g.s = s;
    g.by_l32 = FastDivisor32::of(static_cast<std::uint32_t>(l));
    g.by_step32 = FastDivisor32::of(static_cast<std::uint32_t>(g.per_step));
    g.by_inner = FastDivisor::of(static_cast<std::uint64_t>(g.inner));
    g.by_l = FastDivisor::of(static_cast<std::uint64_t>(l));
    g.by_rows = FastDivisor::of(static_cast<std::uint64_t>(g.rows));
    return g;
  }
  /// Whether every V-element pack meets at most two rows (channels-first rows of l, channels-last
  /// time steps of C values, at least V long): lengths.cuh SeqMask::bits' common case.
  constexpr bool packs_of(int v) const { return (inner == 1 ? l : inner) >= v; }
};

/// Bytes of one WelfordState<Acc> (int64 count, Acc mean, Acc M2): lets host-only code size
/// workspaces; forward_launch.cuh checks it against the real type.
constexpr std::size_t welford_state_bytes(std::size_t acc_bytes) { return 8 + 2 * acc_bytes; }

/// Bytes of one GradSums<Acc> (sum of dy, sum of dy * (x - mean)); backward_launch.cuh checks it.
constexpr std::size_t grad_sums_bytes(std::size_t acc_bytes) { return 2 * acc_bytes; }

/// Per-channel coefficients of y = (x - shift) * a + b the statistics store (TrainedAffine).
constexpr int kAffineCoeffs = 3;

/// Bytes of the ReLU mask of `numel` elements (activation.cuh): one bit each, in 32-bit words (bit
/// e % 32 of word e / 32, so also bit e % 8 of byte e / 8), rounded up to 16 bytes.
constexpr std::int64_t relu_mask_bytes(std::int64_t numel) { return (numel + 127) / 128 * 16; }

/// Per-channel coefficients of the training dx (TrainingDxOp: k_dy, k_x, mean, k_1).
constexpr int kDxCoeffs = 4;

/// Bytes of a rank record's header (distributed.cuh's RankHeader: the count, then zero).
constexpr std::size_t kRankHeaderBytes = 16;

/// Bytes of one rank's record of the split-phase calls (cubn/distributed.hpp): the header, then C
/// pairs of Acc (forward: mean and M2; backward: the two gradient sums), padded to 16 bytes.
constexpr std::size_t rank_record_bytes(std::int64_t c, std::size_t acc_bytes) {
  return kRankHeaderBytes + (2 * static_cast<std::size_t>(c) * acc_bytes + 15) / 16 * 16;
}

}  // namespace cubn::kernels
