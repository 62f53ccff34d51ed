// GPU benchmark: cubn against cuDNN and a device-to-device copy, on the batch-norm shapes users
// run, in both memory orders and fp32, fp16, bf16.
//
//   build/<preset>/bench/cubn_bench [--quick] [--csv FILE] [--filter TEXT]
//                                   [--path auto|streaming|persistent]
//
// --path forces the training calls onto one path (host/plan.hpp); auto is the planner's choice.
// Protocol: per case and call, one warm-up, then `reps` timed repetitions, each after an L2 flush
// (a memset of twice the L2 size, not timed), each timed with its own pair of CUDA events; the
// median is reported with the 10th and 90th percentiles. Effective bandwidth counts the bytes the
// call must move at least: training forward 3 passes over the tensor (read x for statistics, read
// x and write y), inference 2, backward 5 (read dy and x for the sums, read dy and x and write
// dx); per-channel vectors are not counted. The copy column is a 16-byte vectorized copy kernel
// over the same bytes measured in the same run (read + write = 2 passes), the practical bandwidth
// ceiling. cuDNN runs its Ex entry points (SPATIAL_PERSISTENT for channels-last, SPATIAL else) and
// the legacy inference call; "agree" compares its y and dx with cubn's.
// With no usable GPU the program says so and exits 0: CI runs the CPU proxies instead.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"
#include "plan.hpp"
#include "check_cuda.hpp"

#if defined(CUBN_BENCH_HAVE_CUDNN)
#include <cudnn.h>
#endif

namespace {

struct Shape {
  const char* family;
  std::vector<std::int64_t> dims;  // (N, C, spatial...)
};

struct Timing {
  double median_us = NAN, p10_us = NAN, p90_us = NAN;
};

struct Device {
  void* flush = nullptr;
  std::size_t flush_bytes = 0;
};

// Times f() `reps` times after one warm-up, flushing L2 before each repetition.
template <class F>
Timing time_it(const Device& dev, int reps, F&& f) {
  f();
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaMemsetAsync(dev.flush, i & 0xff, dev.flush_bytes));
    CHECK_CUDA(cudaEventRecord(a));
    f();
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1e3);
  }
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  std::sort(us.begin(), us.end());
  auto at = [&](double q) { return us[static_cast<std::size_t>(q * (us.size() - 1) + 0.5)]; };
  return {at(0.5), at(0.1), at(0.9)};
}

__global__ void copy16(const uint4* __restrict__ in, uint4* __restrict__ out, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = in[i];
}

// max |a - b| / (1 + |b|) over n elements of T, as float bits (non-negative floats order as ints)
template <class T>
__global__ void max_rel_diff(const T* a, const T* b, std::size_t n, unsigned* out) {
  float m = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    const float d = fabsf(x - y) / (1.0f + fabsf(y));
    m = fmaxf(m, d != d ? 1e30f : d);
  }
  atomicMax(out, __float_as_uint(m));
}

template <class T>
float compare(const T* a, const T* b, std::size_t n, unsigned* scratch) {
  CHECK_CUDA(cudaMemset(scratch, 0, sizeof(unsigned)));
  max_rel_diff<<<1024, 256>>>(a, b, n, scratch);
  unsigned bits = 0;
  CHECK_CUDA(cudaMemcpy(&bits, scratch, sizeof bits, cudaMemcpyDeviceToHost));
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

__global__ void fill_pattern(unsigned char* p, std::size_t bytes, int element, int kind) {
  // a smooth pseudo-random pattern in [-2, 2] per element, for T = fp32 (kind 0), fp16 (1), bf16
  // (2)
  const std::size_t n = bytes / element;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float v = 4.0f * static_cast<float>((i * 2654435761u) % 1000u) / 1000.0f - 2.0f;
    if (kind == 0) reinterpret_cast<float*>(p)[i] = v;
    if (kind == 1) reinterpret_cast<__half*>(p)[i] = __float2half(v);
    if (kind == 2) reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
  }
}

const char* order_name(cubn::MemoryOrder o) {
  return o == cubn::MemoryOrder::kChannelsLast ? "NHWC" : "NCHW";
}

std::string dims_string(const std::vector<std::int64_t>& d) {
  std::string s;
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? "x" : "") + std::to_string(d[i]);
  return s;
}

struct Row {
  std::string family, shape, dtype, order, call;
  double bytes = 0;
  Timing cubn, cudnn, copy;
  std::string cudnn_note;
  float agree = NAN;
};

void print_row(const Row& r, std::FILE* csv) {
  auto gbs = [&](const Timing& t) { return r.bytes / (t.median_us * 1e-6) / 1e9; };
  std::printf("%-7s %-20s %-5s %-4s %-18s %9.1f %9.1f %8.1f %8.1f %8.1f %6.2f %6.2f  %s\n",
              r.family.c_str(), r.shape.c_str(), r.dtype.c_str(), r.order.c_str(), r.call.c_str(),
              r.cubn.median_us, r.cudnn.median_us, gbs(r.cubn), gbs(r.cudnn), gbs(r.copy),
              gbs(r.cubn) / gbs(r.copy), r.cudnn.median_us / r.cubn.median_us,
              r.cudnn_note.empty()
                  ? (std::isnan(r.agree) ? "" : ("agree " + std::to_string(r.agree)).c_str())
                  : r.cudnn_note.c_str());
  if (csv)
    std::fprintf(
        csv,
        "%s,%s,%s,%s,%s,%.0f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%g,%s\n",
        r.family.c_str(), r.shape.c_str(), r.dtype.c_str(), r.order.c_str(), r.call.c_str(),
        r.bytes, r.cubn.median_us, r.cubn.p10_us, r.cubn.p90_us, r.cudnn.median_us, r.cudnn.p10_us,
        r.cudnn.p90_us, r.copy.median_us, gbs(r.cubn), gbs(r.cudnn), gbs(r.copy),
        gbs(r.cubn) / gbs(r.copy), r.cudnn.median_us / r.cubn.median_us, r.agree,
        r.cudnn_note.c_str());
}

#if defined(CUBN_BENCH_HAVE_CUDNN)
struct Cudnn {
  cudnnHandle_t handle = nullptr;
  cudnnTensorDescriptor_t x = nullptr, bn = nullptr;
  cudnnBatchNormMode_t mode = CUDNN_BATCHNORM_SPATIAL;
  bool ok = false;
  std::string note;

  Cudnn(const cubn::TensorDesc& d, cudnnHandle_t h) : handle(h) {
    cudnnCreateTensorDescriptor(&x);
    cudnnCreateTensorDescriptor(&bn);
    const cudnnDataType_t t = d.dtype == cubn::DataType::kFloat16    ? CUDNN_DATA_HALF
                              : d.dtype == cubn::DataType::kBFloat16 ? CUDNN_DATA_BFLOAT16
                                                                     : CUDNN_DATA_FLOAT;
    const cudnnTensorFormat_t f =
        d.order == cubn::MemoryOrder::kChannelsLast ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    int dims[5] = {1, 1, 1, 1, 1};
    int nb = std::max(4, d.rank);
    for (int i = 0; i < d.rank; ++i) dims[i] = static_cast<int>(d.dims[i]);
    mode = d.order == cubn::MemoryOrder::kChannelsLast ? CUDNN_BATCHNORM_SPATIAL_PERSISTENT
                                                       : CUDNN_BATCHNORM_SPATIAL;
    cudnnStatus_t s = cudnnSetTensorNdDescriptorEx(x, f, t, nb, dims);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnDeriveBNTensorDescriptor(bn, x, mode);
    ok = s == CUDNN_STATUS_SUCCESS;
    if (!ok) note = std::string("cuDNN: ") + cudnnGetErrorString(s);
  }
  ~Cudnn() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(bn);
  }
  bool check(cudnnStatus_t s) {
    if (s != CUDNN_STATUS_SUCCESS) {
      ok = false;
      note = std::string("cuDNN: ") + cudnnGetErrorString(s);
    }
    return ok;
  }
};
#endif

void run_case(const Shape& shape, cubn::DataType dtype, cubn::MemoryOrder order, int reps,
              const Device& dev, std::FILE* csv, void* cudnn_handle) {
  (void)cudnn_handle;
  cubn::TensorDesc d;
  d.dtype = dtype;
  d.order = order;
  d.rank = static_cast<int>(shape.dims.size());
  std::int64_t numel = 1;
  for (int i = 0; i < d.rank; ++i) numel *= (d.dims[i] = shape.dims[i]);
  const std::int64_t C = d.dims[1];
  const std::size_t es = cubn::element_size(dtype), bytes = static_cast<std::size_t>(numel) * es;
  void *x, *y, *dy, *dx, *y2, *dx2, *ws;
  float *params, *stats;
  unsigned* scratch;
  const std::size_t ws_bytes =
      std::max(cubn::forward_training_workspace_size(d), cubn::backward_workspace_size(d));
  for (void** p : {&x, &y, &dy, &dx, &y2, &dx2}) CHECK_CUDA(cudaMalloc(p, bytes));
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
  CHECK_CUDA(cudaMemset(ws, 0, ws_bytes));  // once: cubn leaves its tickets at zero
  CHECK_CUDA(cudaMalloc(&params, 2 * C * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&stats, 8 * C * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&scratch, sizeof(unsigned)));
  const int kind = dtype == cubn::DataType::kFloat32   ? 0
                   : dtype == cubn::DataType::kFloat16 ? 1
                                                       : 2;
  fill_pattern<<<1024, 256>>>(static_cast<unsigned char*>(x), bytes, static_cast<int>(es), kind);
  fill_pattern<<<1024, 256>>>(static_cast<unsigned char*>(dy), bytes, static_cast<int>(es), kind);
  std::vector<float> host_params(2 * C, 1.0f), host_stats(8 * C, 0.0f);
  for (std::int64_t c = 0; c < C; ++c) {
    host_params[C + c] = 0.0f;
    host_stats[C + c] = 1.0f;  // running var
  }
  CHECK_CUDA(cudaMemcpy(params, host_params.data(), host_params.size() * sizeof(float),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(stats, host_stats.data(), host_stats.size() * sizeof(float),
                        cudaMemcpyHostToDevice));
  float *scale = params, *offset = params + C, *rmean = stats, *rvar = stats + C,
        *smean = stats + 2 * C, *sinv = stats + 3 * C, *dscale = stats + 4 * C,
        *doffset = stats + 5 * C, *cmean = stats + 6 * C, *cinv = stats + 7 * C;

  const std::size_t vec = bytes / 16;
  const Timing copy = time_it(dev, reps, [&] {
    copy16<<<4096, 256>>>(static_cast<const uint4*>(x), static_cast<uint4*>(y2), vec);
  });

  cubn::TrainingForwardArgs<float> ta;
  ta.affine = {scale, offset};
  ta.running = {rmean, rvar};
  ta.saved = {smean, sinv};
  cubn::InferenceForwardArgs<float> ia;
  ia.affine = {scale, offset};
  ia.running = {rmean, rvar};
  cubn::TrainingBackwardArgs<float> ba;
  ba.scale = scale;
  ba.saved = {smean, sinv};
  ba.grads = {dscale, doffset};
  const cubn::Workspace w{ws, ws_bytes};

  Row base;
  base.family = shape.family;
  base.shape = dims_string(shape.dims);
  base.dtype = cubn::to_string(dtype);
  base.order = order_name(order);
  base.copy = copy;

  Row fwd = base, inf = base, bwd = base;
  fwd.call = "forward_training";
  fwd.bytes = 3.0 * bytes;
  inf.call = "forward_inference";
  inf.bytes = 2.0 * bytes;
  bwd.call = "backward_training";
  bwd.bytes = 5.0 * bytes;
  // the copy moves 2 passes: scale its time to each call's byte count
  for (Row* r : {&fwd, &inf, &bwd}) {
    const double f = r->bytes / (2.0 * bytes);
    r->copy = {copy.median_us * f, copy.p10_us * f, copy.p90_us * f};
  }
  fwd.cubn = time_it(dev, reps, [&] { cubn::forward_training(d, x, y, ta, w, nullptr); });
  inf.cubn = time_it(dev, reps, [&] { cubn::forward_inference(d, x, y, ia, nullptr); });
  cubn::forward_training(d, x, y, ta, w, nullptr);
  bwd.cubn = time_it(dev, reps, [&] { cubn::backward_training(d, x, dy, dx, ba, w, nullptr); });

#if defined(CUBN_BENCH_HAVE_CUDNN)
  Cudnn cd(d, static_cast<cudnnHandle_t>(cudnn_handle));
  const float one = 1.0f, zero = 0.0f;
  std::size_t fws = 0, bws = 0, rs = 0;
  void *cws = nullptr, *reserve = nullptr;
  if (cd.ok)
    cd.check(cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
        cd.handle, cd.mode, CUDNN_BATCHNORM_OPS_BN, cd.x, nullptr, cd.x, cd.bn, nullptr, &fws));
  if (cd.ok)
    cd.check(cudnnGetBatchNormalizationBackwardExWorkspaceSize(
        cd.handle, cd.mode, CUDNN_BATCHNORM_OPS_BN, cd.x, cd.x, cd.x, nullptr, cd.x, cd.bn, nullptr,
        &bws));
  if (cd.ok)
    cd.check(cudnnGetBatchNormalizationTrainingExReserveSpaceSize(
        cd.handle, cd.mode, CUDNN_BATCHNORM_OPS_BN, nullptr, cd.x, &rs));
  if (cd.ok) {
    CHECK_CUDA(cudaMalloc(&cws, std::max<std::size_t>({fws, bws, 16})));
    CHECK_CUDA(cudaMalloc(&reserve, std::max<std::size_t>(rs, 16)));
  }
  auto cudnn_fwd = [&] {
    cd.check(cudnnBatchNormalizationForwardTrainingEx(
        cd.handle, cd.mode, CUDNN_BATCHNORM_OPS_BN, &one, &zero, cd.x, x, nullptr, nullptr, cd.x,
        y2, cd.bn, scale, offset, 0.1, rmean, rvar, 1e-5, cmean, cinv, nullptr, cws, fws, reserve,
        rs));
  };
  if (cd.ok) fwd.cudnn = time_it(dev, reps, cudnn_fwd);
  if (cd.ok)
    inf.cudnn = time_it(dev, reps, [&] {
      cd.check(cudnnBatchNormalizationForwardInference(
          cd.handle,
          cd.mode == CUDNN_BATCHNORM_SPATIAL_PERSISTENT ? CUDNN_BATCHNORM_SPATIAL : cd.mode, &one,
          &zero, cd.x, x, cd.x, y2, cd.bn, scale, offset, rmean, rvar, 1e-5));
    });
  if (cd.ok) {
    cudnn_fwd();
    bwd.cudnn = time_it(dev, reps, [&] {
      cd.check(cudnnBatchNormalizationBackwardEx(
          cd.handle, cd.mode, CUDNN_BATCHNORM_OPS_BN, &one, &zero, &one, &zero, cd.x, x, nullptr,
          nullptr, cd.x, dy, nullptr, nullptr, cd.x, dx2, cd.bn, scale, offset, dscale, doffset,
          1e-5, cmean, cinv, nullptr, cws, bws, reserve, rs));
    });
  }
  if (cd.ok) {
    // same inputs, same state: compare y (training) and dx
    cubn::forward_training(d, x, y, ta, w, nullptr);
    cudnn_fwd();
    cubn::backward_training(d, x, dy, dx, ba, w, nullptr);
    cd.check(cudnnBatchNormalizationBackwardEx(
        cd.handle, cd.mode, CUDNN_BATCHNORM_OPS_BN, &one, &zero, &one, &zero, cd.x, x, nullptr,
        nullptr, cd.x, dy, nullptr, nullptr, cd.x, dx2, cd.bn, scale, offset, dscale, doffset, 1e-5,
        cmean, cinv, nullptr, cws, bws, reserve, rs));
    CHECK_CUDA(cudaDeviceSynchronize());
    auto cmp = [&](const void* a, const void* b) {
      switch (dtype) {
        case cubn::DataType::kFloat16:
          return compare(static_cast<const __half*>(a), static_cast<const __half*>(b), numel,
                         scratch);
        case cubn::DataType::kBFloat16:
          return compare(static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(b),
                         numel, scratch);
        default:
          return compare(static_cast<const float*>(a), static_cast<const float*>(b), numel,
                         scratch);
      }
    };
    fwd.agree = cmp(y, y2);
    bwd.agree = cmp(dx, dx2);
  }
  for (Row* r : {&fwd, &inf, &bwd}) r->cudnn_note = cd.note;
  cudaFree(cws);
  cudaFree(reserve);
#else
  for (Row* r : {&fwd, &inf, &bwd}) r->cudnn_note = "cuDNN not built in";
#endif
  for (const Row* r : {&fwd, &inf, &bwd}) print_row(*r, csv);
  for (void* p : {x, y, dy, dx, y2, dx2, ws}) cudaFree(p);
  cudaFree(params);
  cudaFree(stats);
  cudaFree(scratch);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  const char* csv_path = "cubn_bench.csv";
  std::string filter, path = "auto";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (!std::strcmp(argv[i], "--csv") && i + 1 < argc)
      csv_path = argv[++i];
    else if (!std::strcmp(argv[i], "--filter") && i + 1 < argc)
      filter = argv[++i];
    else if (!std::strcmp(argv[i], "--path") && i + 1 < argc)
      path = argv[++i];
  }
  if (path == "streaming") cubn::detail::force_path(cubn::detail::Path::kStreaming);
  if (path == "persistent") cubn::detail::force_path(cubn::detail::Path::kPersistent);
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::printf(
        "cubn_bench: no usable CUDA device (%s); nothing to time. Without a GPU the CPU-side\n"
        "proxies are the measure: build/<preset>/bench/cubn_proxy_report and the kernel_resources "
        "test.\n",
        err != cudaSuccess ? cudaGetErrorString(err) : "none present");
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  int driver = 0, runtime = 0, l2 = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
  Device dev;
  dev.flush_bytes = 2 * static_cast<std::size_t>(l2);
  CHECK_CUDA(cudaMalloc(&dev.flush, dev.flush_bytes));
  const int reps = quick ? 5 : 20;
  std::printf(
      "device: %s, %d SMs, L2 %d MiB, driver %d, runtime %d; %d repetitions per call, median; "
      "training path: %s\n",
      prop.name, prop.multiProcessorCount, l2 >> 20, driver, runtime, reps, path.c_str());
  void* handle = nullptr;
#if defined(CUBN_BENCH_HAVE_CUDNN)
  cudnnHandle_t h;
  if (cudnnCreate(&h) == CUDNN_STATUS_SUCCESS) handle = h;
  std::printf("cuDNN %zu\n", cudnnGetVersion());
#endif
  std::FILE* csv = std::fopen(csv_path, "w");
  if (csv)
    std::fprintf(
        csv,
        "family,shape,dtype,order,call,bytes,cubn_us,cubn_p10_us,cubn_p90_us,cudnn_us,cudnn_p10_us,"
        "cudnn_p90_us,copy_us,cubn_gbs,cudnn_gbs,copy_gbs,cubn_over_copy,cudnn_over_cubn_time,"
        "agree,note\n");
  std::printf("%-7s %-20s %-5s %-4s %-18s %9s %9s %8s %8s %8s %6s %6s\n", "family", "shape",
              "dtype", "ord", "call", "cubn_us", "cudnn_us", "cubnGB/s", "cudnnGB/s", "copyGB/s",
              "/copy", "speedup");
  const std::vector<Shape> shapes = {
      {"resnet", {32, 64, 112, 112}},  {"resnet", {32, 256, 56, 56}},
      {"resnet", {32, 512, 28, 28}},   {"resnet", {32, 2048, 7, 7}},
      {"resnet", {256, 64, 112, 112}}, {"resnet", {256, 256, 56, 56}},
      {"resnet", {256, 512, 28, 28}},  {"resnet", {256, 2048, 7, 7}},
      {"bn1d", {65536, 1024}},         {"small", {1, 64, 8, 8}},
      {"small", {8, 32, 16, 16}},      {"3d", {16, 64, 64, 64, 64}}};
  for (const Shape& s : shapes)
    for (auto dtype :
         {cubn::DataType::kFloat32, cubn::DataType::kFloat16, cubn::DataType::kBFloat16})
      for (auto order : {cubn::MemoryOrder::kChannelsFirst, cubn::MemoryOrder::kChannelsLast}) {
        const std::string key = std::string(s.family) + " " + dims_string(s.dims) + " " +
                                cubn::to_string(dtype) + " " + order_name(order);
        if (!filter.empty() && key.find(filter) == std::string::npos) continue;
        if (quick && s.dims[0] == 256 && dtype != cubn::DataType::kFloat16) continue;
        run_case(s, dtype, order, reps, dev, csv, handle);
        std::fflush(stdout);
        if (csv) std::fflush(csv);  // a run stopped at its time limit keeps the rows it has
      }
  if (csv) std::fclose(csv);
  std::printf("wrote %s\n", csv_path);
  return 0;
}
