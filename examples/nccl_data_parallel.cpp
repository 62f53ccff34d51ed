// Synchronized batch norm in a data-parallel training step: every visible GPU a rank, one host
// thread each, each holding its shard of a 64 x 256 x 28 x 28 bf16 batch (channels-last). The
// statistics are those of the whole batch (cubn/nccl.hpp); dscale and doffset are each rank's
// share, summed here with ncclAllReduce as a trainer's gradient all-reduce would.
//
//   ./build/default/examples/cubn_nccl_example
//
// Without a GPU it says so and exits 0 (CI compiles it; a machine with GPUs runs it).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "cubn/cubn.hpp"
#include "cubn/nccl.hpp"

namespace {

#define CHECK_CUDA(e) check_cuda((e), #e)
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw cubn::Error(cubn::Status::kCudaError, std::string(what) + ": " + cudaGetErrorString(e));
}

// One rank's training step on `samples` samples of the global batch.
void train_step(int device, ncclComm_t comm, std::int64_t samples, float* dscale_out) {
  CHECK_CUDA(cudaSetDevice(device));
  const std::int64_t C = 256, H = 28, W = 28;
  const cubn::TensorDesc desc = cubn::TensorDesc::nhwc(cubn::DataType::kBFloat16, samples, C, H, W);
  const std::size_t numel = static_cast<std::size_t>(samples * C * H * W);
  void *x, *y, *dy, *dx, *ws;
  float *params, *stats, *grads;
  const std::size_t ws_bytes = std::max(cubn::nccl::forward_training_workspace_size(desc, comm),
                                        cubn::nccl::backward_workspace_size(desc, comm));
  CHECK_CUDA(cudaMalloc(&x, numel * 2));
  CHECK_CUDA(cudaMalloc(&y, numel * 2));
  CHECK_CUDA(cudaMalloc(&dy, numel * 2));
  CHECK_CUDA(cudaMalloc(&dx, numel * 2));
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
  CHECK_CUDA(cudaMalloc(&params, 2 * C * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&stats, 4 * C * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&grads, 2 * C * sizeof(float)));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  CHECK_CUDA(cudaMemsetAsync(ws, 0, ws_bytes, stream));  // once, when the workspace is allocated
  // x and dy: 0x3F80 0x4000 ... (bf16 1 and 2), scale 1 and offset 0, running statistics 0 and 1
  std::vector<unsigned short> pattern(numel);
  for (std::size_t i = 0; i < numel; ++i) pattern[i] = i % 3 ? 0x3F80 : 0x4000;
  CHECK_CUDA(cudaMemcpy(x, pattern.data(), numel * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy, pattern.data(), numel * 2, cudaMemcpyHostToDevice));
  std::vector<float> init(2 * C, 1.f);
  for (std::int64_t c = 0; c < C; ++c) init[C + c] = 0.f;
  CHECK_CUDA(cudaMemcpy(params, init.data(), 2 * C * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(stats, init.data(), 2 * C * sizeof(float), cudaMemcpyHostToDevice));

  cubn::TrainingForwardArgs<float> fwd;
  fwd.affine = {params, params + C};
  fwd.running = {stats + C, stats};  // mean 0, var 1
  fwd.saved = {stats + 2 * C, stats + 3 * C};
  cubn::nccl::forward_training(desc, x, y, fwd, {ws, ws_bytes}, comm, stream);

  cubn::TrainingBackwardArgs<float> bwd;
  bwd.scale = params;
  bwd.saved = {stats + 2 * C, stats + 3 * C};
  bwd.grads = {grads, grads + C};  // this rank's share
  cubn::nccl::backward_training(desc, x, dy, dx, bwd, {ws, ws_bytes}, comm, stream);
  // the trainer's gradient all-reduce: the whole batch's dscale and doffset on every rank
  if (ncclAllReduce(grads, grads, 2 * C, ncclFloat, ncclSum, comm, stream) != ncclSuccess)
    throw cubn::Error(cubn::Status::kCommunicationError, "ncclAllReduce failed");
  CHECK_CUDA(cudaMemcpyAsync(dscale_out, grads, sizeof(float), cudaMemcpyDeviceToHost, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  for (void* p : {x, y, dy, dx, ws}) cudaFree(p);
  for (float* p : {params, stats, grads}) cudaFree(p);
  cudaStreamDestroy(stream);
}

}  // namespace

int main() {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    std::printf("no GPU: nothing to run (this example needs at least one)\n");
    return 0;
  }
  std::vector<int> devices(static_cast<std::size_t>(gpus));
  for (int i = 0; i < gpus; ++i) devices[static_cast<std::size_t>(i)] = i;
  std::vector<ncclComm_t> comms(devices.size());
  if (ncclCommInitAll(comms.data(), gpus, devices.data()) != ncclSuccess) {
    std::printf("ncclCommInitAll failed\n");
    return 1;
  }
  const std::int64_t global = 64;
  std::vector<float> dscale(devices.size());
  std::vector<std::thread> ranks;
  std::atomic<int> failed{0};
  for (int r = 0; r < gpus; ++r) {
    const std::int64_t samples = global / gpus + (r < global % gpus ? 1 : 0);
    ranks.emplace_back([&, r, samples] {
      try {
        const auto i = static_cast<std::size_t>(r);
        train_step(r, comms[i], samples, &dscale[i]);
      } catch (const std::exception& e) {
        std::printf("rank %d: %s\n", r, e.what());
        failed = 1;
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (ncclComm_t c : comms) ncclCommDestroy(c);
  if (failed) return 1;
  // x and dy are the same pattern, so dscale = sum(dy * xhat) over the whole batch, on every rank
  for (int r = 0; r < gpus; ++r)
    std::printf("rank %d: dscale[0] = %.6g\n", r, dscale[static_cast<std::size_t>(r)]);
  return 0;
}
