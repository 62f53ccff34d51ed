/// @file geometry.hpp
/// @brief The launch geometry host/ computes and kernels/ reads: plain structs, no device code,
/// so host-only files can include it.
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
/// (sm_80, bench/ptxas_report.py).
constexpr int kMinBlocksPerSm = 4;

/// Channels-first geometry: memory [N][C][S]; a channel is N rows of S, a row is cut into
/// `chunks` chunks of bx * V elements.
struct ChannelsFirstGeometry {
  std::int64_t n = 0, c = 0, s = 0;
  std::int64_t chunks = 0;  ///< chunks per row: ceil(S / (bx * V))
  int bx = 1;               ///< threads along a row, a power of two from 1 to kBlockThreads
};

/// Channels-last geometry: memory [R][C], R = N * S rows.
struct ChannelsLastGeometry {
  std::int64_t rows = 0, c = 0;
  int bx = 1;  ///< threads across C, each owning V consecutive channels
};

}  // namespace cubn::kernels

namespace cubn::kernels {

/// Bytes of one WelfordState<Acc> (int64 count, Acc mean, Acc M2): lets host-only code size
/// workspaces; forward_launch.cuh checks it against the real type.
constexpr std::size_t welford_state_bytes(std::size_t acc_bytes) { return 8 + 2 * acc_bytes; }

/// Bytes of one GradSums<Acc> (sum of dy, sum of dy * (x - mean)); backward_launch.cuh checks it.
constexpr std::size_t grad_sums_bytes(std::size_t acc_bytes) { return 2 * acc_bytes; }

/// Per-channel coefficients of the training dx (TrainingDxOp: k_dy, k_x, mean, k_1).
constexpr int kDxCoeffs = 4;

}  // namespace cubn::kernels
