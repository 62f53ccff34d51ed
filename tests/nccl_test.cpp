// cubn::nccl (cubn/nccl.hpp) on GPUs: with a one-rank communicator the calls give the single-GPU
// call's result; with every visible GPU a rank (one host thread each), the shards' results equal
// the whole batch's (support/split_check.hpp: the reference of the whole batch with the single
// call's tolerances, the same statistics bit for bit on every rank). A call that throws has
// launched nothing; a graph captures a whole training step. Skipped without a GPU.
#include "cubn/nccl.hpp"

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cubn/cubn.hpp"
#include "support/backward_check.hpp"
#include "support/bn_harness.hpp"
#include "support/device.hpp"
#include "support/errors.hpp"
#include "support/split_check.hpp"

namespace {

using namespace cubn;
using namespace cubn::test;

void check(cudaError_t e, const char* what) {
  ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e);
}
void check(ncclResult_t r, const char* what) {
  ASSERT_EQ(r, ncclSuccess) << what << ": " << ncclGetErrorString(r);
}

// Runs forward and backward of `d` with rank r on devices[r] holding sizes[r] samples; fills
// rank r's part of `out`. graph: capture the rank's calls in a CUDA graph and replay it.
template <class T>
void run_rank(const Data<T>& d, const std::vector<T>& dy, MemoryOrder order, int device,
              const ncclUniqueId& id, int rank, const std::vector<std::int64_t>& sizes,
              std::size_t offset, SplitResult<T>& out, bool graph) {
  using P = param_of<T>;
  check(cudaSetDevice(device), "cudaSetDevice");
  ncclComm_t comm = nullptr;
  check(ncclCommInitRank(&comm, static_cast<int>(sizes.size()), id, rank), "ncclCommInitRank");
  const auto C = static_cast<std::size_t>(d.shape.c());
  const std::size_t count = static_cast<std::size_t>(sizes[rank] * d.shape.c() * d.shape.s());
  Dims dims = d.shape.dims;
  dims[0] = sizes[rank];
  const TensorDesc desc = make_desc(dtype_of<T>(), order, dims);
  {
    DeviceBuffer<T> x(std::vector<T>(d.x.begin() + offset, d.x.begin() + offset + count));
    DeviceBuffer<T> g(std::vector<T>(dy.begin() + offset, dy.begin() + offset + count));
    DeviceBuffer<T> y(count), dx(count);
    DeviceBuffer<P> scale(to_params<P>(d.scale)), shift(to_params<P>(d.offset));
    DeviceBuffer<P> rm(to_params<P>(d.running_mean)), rv(to_params<P>(d.running_var));
    DeviceBuffer<P> sm(C), si(C), ds(C), dof(C);
    DeviceBytes ws(std::max(nccl::forward_training_workspace_size(desc, comm),
                            nccl::backward_workspace_size(desc, comm)));
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    const TrainingForwardArgs<P> a = split_forward_args<P>(scale.data(), shift.data(), rm.data(),
                                                           rv.data(), sm.data(), si.data());
    TrainingBackwardArgs<P> b;
    b.scale = scale.data();
    b.saved = {sm.data(), si.data()};
    b.grads = {ds.data(), dof.data()};
    const auto step = [&] {
      nccl::forward_training(desc, count ? x.data() : nullptr, count ? y.data() : nullptr, a,
                             {ws.data(), ws.bytes()}, comm, stream);
      nccl::backward_training(desc, count ? x.data() : nullptr, count ? g.data() : nullptr,
                              count ? dx.data() : nullptr, b, {ws.data(), ws.bytes()}, comm,
                              stream);
    };
    if (graph) {
      cudaGraph_t captured = nullptr;
      cudaGraphExec_t exec = nullptr;
      check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "begin capture");
      step();
      check(cudaStreamEndCapture(stream, &captured), "end capture");
      check(cudaGraphInstantiate(&exec, captured, 0), "instantiate");
      check(cudaGraphLaunch(exec, stream), "graph launch");
      check(cudaStreamSynchronize(stream), "graph replay");
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(captured);
    } else {
      step();
    }
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    cudaStreamDestroy(stream);
    const auto yh = y.download(), dxh = dx.download();
    std::copy(yh.begin(), yh.end(), out.y.begin() + offset);
    std::copy(dxh.begin(), dxh.end(), out.dx.begin() + offset);
    out.saved_mean[rank] = sm.download();
    out.saved_invstd[rank] = si.download();
    out.running_mean[rank] = rm.download();
    out.running_var[rank] = rv.download();
    out.dscale[rank] = ds.download();
    out.doffset[rank] = dof.download();
  }
  ncclCommDestroy(comm);
}

// One batch over one rank per device (sizes[r] samples each), each rank a host thread.
template <class T>
void check_ranks(const Dims& dims, MemoryOrder order, const std::vector<int>& devices,
                 const std::vector<std::int64_t>& sizes, bool graph = false) {
  const Data<T> d = make_data<T>(dims, order, 31);
  const std::vector<T> dy = make_dy<T>(d.x.size(), 32);
  SplitResult<T> out;
  const std::size_t R = devices.size();
  out.y.resize(d.x.size());
  out.dx.resize(d.x.size());
  for (auto* v : {&out.saved_mean, &out.saved_invstd, &out.running_mean, &out.running_var,
                  &out.dscale, &out.doffset})
    v->resize(R);
  ncclUniqueId id;
  check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  std::vector<std::thread> threads;
  std::size_t offset = 0;
  for (std::size_t r = 0; r < R; ++r) {
    threads.emplace_back([&, r, offset] {
      try {
        run_rank(d, dy, order, devices[r], id, static_cast<int>(r), sizes, offset, out, graph);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
    offset += static_cast<std::size_t>(sizes[r] * d.shape.c() * d.shape.s());
  }
  for (auto& t : threads) t.join();
  expect_whole_batch_result(d, dy, out,
                            std::string(to_string(dtype_of<T>())) + " " +
                                shape_string(dims, order) + " over " + std::to_string(R) + " GPUs");
}

template <class T>
class Nccl : public DeviceTest {};
using DTypes = ::testing::Types<__half, __nv_bfloat16, float, double>;
TYPED_TEST_SUITE(Nccl, DTypes);

TYPED_TEST(Nccl, OneRankEqualsTheSingleGpuCall) {
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    for (const Dims& dims : {Dims{32, 64, 14, 14}, Dims{5, 3, 7, 7}, Dims{16, 1000}})
      check_ranks<TypeParam>(dims, order, {0}, {dims[0]});
}

TYPED_TEST(Nccl, EveryVisibleGpuARank) {
  int n = 0;
  check(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  if (n < 2) GTEST_SKIP() << "one GPU visible: the one-rank test covers it";
  std::vector<int> devices(static_cast<std::size_t>(std::min(n, 8)));
  for (std::size_t i = 0; i < devices.size(); ++i) devices[i] = static_cast<int>(i);
  std::vector<std::int64_t> sizes(devices.size(), 3);
  sizes[0] = 0;  // an empty rank
  sizes.back() = 5;
  std::int64_t total = 0;
  for (auto s : sizes) total += s;
  for (MemoryOrder order : {MemoryOrder::kChannelsFirst, MemoryOrder::kChannelsLast})
    check_ranks<TypeParam>({total, 32, 9, 9}, order, devices, sizes);
}

class NcclCalls : public DeviceTest {};

TEST_F(NcclCalls, ATrainingStepCapturesIntoACudaGraph) {
  check_ranks<float>({8, 16, 10, 10}, MemoryOrder::kChannelsLast, {0}, {8}, true);
}

TEST_F(NcclCalls, BadArgumentsLaunchNothing) {
  ncclComm_t comm = nullptr;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(ncclCommInitAll(&comm, 1, &device), "ncclCommInitAll");
  const TensorDesc desc = TensorDesc::nhwc(DataType::kFloat32, 4, 8, 5, 5);
  const std::size_t numel = 4 * 8 * 5 * 5;
  DeviceBuffer<float> x(std::vector<float>(numel, 1.f));
  DeviceBytes y(numel * 4), stats(8 * 4);
  DeviceBytes ws(nccl::forward_training_workspace_size(desc, comm));
  for (DeviceBytes* b : {&y, &stats}) b->fill(kSentinel);
  TrainingForwardArgs<float> a;
  a.running.mean = static_cast<float*>(stats.data());
  a.epsilon = -1;
  expect_error_and_no_writes(
      [&] {
        nccl::forward_training(desc, x.data(), y.data(), a, {ws.data(), ws.bytes()}, comm, nullptr);
      },
      Status::kInvalidArgument, "epsilon", {&y, &stats});
  a.epsilon = 1e-5;
  expect_error_and_no_writes(
      [&] {
        nccl::forward_training(desc, x.data(), y.data(), a, {ws.data(), 16}, comm, nullptr);
      },
      Status::kWorkspaceTooSmall, "cubn::nccl::forward_training_workspace_size", {&y, &stats});
  expect_error_and_no_writes(
      [&] {
        nccl::forward_training(desc, x.data(), y.data(), a, {ws.data(), ws.bytes()}, nullptr,
                               nullptr);
      },
      Status::kInvalidArgument, "comm is null", {&y, &stats});
  ncclCommDestroy(comm);
}

}  // namespace
