/// @file block_reduce.cuh
/// @brief The project's block-wide reduction: cub::BlockReduce on the GPU, and in the CPU
/// executor a version that honours the same contract and checks it.
///
/// Contract (CUB's): every thread of the block calls reduce(); the result is valid in thread 0
/// only (read it with BlockResult::get() there); the temporary storage may be reused only after a
/// __syncthreads() that follows the call. The executor reports a get() outside thread 0 and a
/// reuse without that barrier as kernel faults. The block must be one-dimensional with exactly
/// BlockSize threads.
#pragma once

#include "platform.cuh"

#if !defined(CUBN_SIM)
#include <cub/block/block_reduce.cuh>
#endif

namespace cubn::kernels {

/// The result of a block collective: valid in thread 0 only.
template <class T>
class BlockResult {
 public:
  CUBN_DEVICE explicit BlockResult(const T& v) : value_(v) {}
  /// The reduced value. Call in thread 0 only.
  CUBN_DEVICE T get() const {
#if defined(CUBN_SIM)
    if (linear_thread_index() != 0)
      sim::detail::fault("BlockReduce result read outside thread 0; it is valid in thread 0 only");
#endif
    return value_;
  }

 private:
  T value_;
};

/// Block-wide reduction of one T per thread with an associative operator.
template <class T, int BlockSize>
class BlockReduce {
 public:
#if defined(CUBN_SIM)
  /// Checked shared memory (poisoned per block, races reported), however it is declared.
  struct TempStorage : sim::SharedStorage<T, BlockSize> {};
#else
  using TempStorage = typename cub::BlockReduce<T, BlockSize>::TempStorage;
#endif

  CUBN_DEVICE explicit BlockReduce(TempStorage& storage) : storage_(storage) {}

  /// Reduces `input` over the block with `op`. Valid in thread 0 only.
  template <class Op>
  CUBN_DEVICE BlockResult<T> reduce(const T& input, Op op) {
#if defined(CUBN_SIM)
    using namespace sim::detail;
    const unsigned tid = linear_thread_index();
    if (blockDim.x != static_cast<unsigned>(BlockSize) || blockDim.y != 1 || blockDim.z != 1)
      fault("BlockReduce<T, BlockSize> launched with a block that is not BlockSize x 1 x 1");
    collective_enter(&storage_);
    storage_[tid] = input;
    __syncthreads();
    collective_leave(&storage_);
    T acc = input;
    if (tid == 0) {
      acc = storage_[0];
      for (int i = 1; i < BlockSize; ++i) acc = op(acc, static_cast<T>(storage_[i]));  // in order
    }
    return BlockResult<T>(acc);
#else
    return BlockResult<T>(cub::BlockReduce<T, BlockSize>(storage_).Reduce(input, op));
#endif
  }

 private:
  TempStorage& storage_;
};

}  // namespace cubn::kernels
