// GPU check of a tensor past 2^31 elements: bf16, channels-first and channels-last, training
// forward then training backward, every element of y and dx checked against a double-precision
// reference at bf16's precision (bench/gpu_check.sh, step "large"). GPU only; about 18 GB of
// device memory (x, y, dy, dx of 4.4 GB each).
//
//   cubn_large [N C H W]      default 17 96 1024 1320: 2,205,941,760 elements (2^31 = 2,147,483,648)
//
// x and dy are made on the device from a hash of each element's logical (n, c, h, w) index, so
// the reference recomputes them instead of reading them: per channel its sums (of x, then of
// (x - mean)^2, dy and dy (x - mean)) run in double over the generated values, rounded to bf16
// as cubn sees them. y and dx are first filled with a NaN sentinel, so an element cubn never
// wrote fails. Tolerances, per element (u = 2^-8, bf16's unit roundoff; float's error in the
// statistics and arithmetic, about 2^-20 relative over these sizes, is bounded generously by
// 2^-12):
//   y:  |y - ref| <= u |ref| + 2^-12 (1 + |ref|)
//   dx: |dx - ref| <= u |ref| + 2^-12 |scale invstd| (|dy| + |mean dy| + |xhat mean(dy xhat)| + 1)
// and per channel: saved mean within 2^-16 mean|x|, invstd within 2^-14 relative, doffset and
// dscale within 2^-14 of the sums of the magnitudes of their terms. An indexing error past 2^31
// (a 32-bit offset) moves or drops elements, which these catch as O(1) errors; errors past 2^31
// are counted apart. Exits 1 on any error beyond tolerance, 0 when all agree or with no GPU.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "cubn/cubn.hpp"
#include "check_cuda.hpp"

namespace {

struct Geometry {
  std::int64_t n, c, s;  // batch, channels, spatial positions
  bool channels_last;
  __host__ __device__ std::int64_t total() const { return n * c * s; }
  // logical (n, c, s) of storage index i
  __device__ void decode(std::int64_t i, std::int64_t& nn, std::int64_t& cc,
                         std::int64_t& ss) const {
    if (channels_last) {
      cc = i % c;
      const std::int64_t ns = i / c;
      ss = ns % s;
      nn = ns / s;
    } else {
      ss = i % s;
      const std::int64_t nc = i / s;
      cc = nc % c;
      nn = nc / c;
    }
  }
};

__device__ std::uint64_t mix(std::uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// x and dy as bf16 values (returned as the float they round to), from the logical index
__device__ float gen_x(const Geometry& g, std::int64_t n, std::int64_t c, std::int64_t s) {
  const std::uint64_t h = mix(static_cast<std::uint64_t>((n * g.c + c) * g.s + s) * 2 + 1);
  const float u = static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;  // [-1, 1)
  const float v = static_cast<float>(c % 7) - 3.0f + (1.0f + 0.5f * (c % 5)) * u;
  return __bfloat162float(__float2bfloat16_rn(v));
}
__device__ float gen_dy(const Geometry& g, std::int64_t n, std::int64_t c, std::int64_t s) {
  const std::uint64_t h = mix(static_cast<std::uint64_t>((n * g.c + c) * g.s + s) * 2 + 2);
  const float u = static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
  return __bfloat162float(__float2bfloat16_rn(0.25f * (c % 3) + u));
}

__global__ void fill(Geometry g, __nv_bfloat16* x, __nv_bfloat16* dy, __nv_bfloat16* y,
                     __nv_bfloat16* dx) {
  const __nv_bfloat16 sentinel = __ushort_as_bfloat16(0x7fc1);  // a NaN
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < g.total();
       i += std::int64_t{gridDim.x} * blockDim.x) {
    std::int64_t n, c, s;
    g.decode(i, n, c, s);
    x[i] = __float2bfloat16_rn(gen_x(g, n, c, s));
    dy[i] = __float2bfloat16_rn(gen_dy(g, n, c, s));
    y[i] = sentinel;
    dx[i] = sentinel;
  }
}

// Per channel (blockIdx.y), over the channel's N*S positions split across gridDim.x blocks.
// pass 0: sums[c*8 + 0] += x, [1] += |x|; pass 1 (mean known): [2] += (x-mean)^2, [3] += dy,
// [4] += |dy|, [5] += dy (x-mean), [6] += |dy (x-mean)|.
__global__ void reference_sums(Geometry g, int pass, double* sums) {
  const std::int64_t c = blockIdx.y, m_total = g.n * g.s;
  const double mean = pass ? sums[c * 8] / static_cast<double>(m_total) : 0.0;
  double a[5] = {0, 0, 0, 0, 0};
  for (std::int64_t m = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; m < m_total;
       m += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t n = m / g.s, s = m % g.s;
    const double xv = gen_x(g, n, c, s);
    if (pass == 0) {
      a[0] += xv;
      a[1] += std::fabs(xv);
    } else {
      const double d = xv - mean, dyv = gen_dy(g, n, c, s);
      a[0] += d * d;
      a[1] += dyv;
      a[2] += std::fabs(dyv);
      a[3] += dyv * d;
      a[4] += std::fabs(dyv * d);
    }
  }
  const int count = pass ? 5 : 2, base = pass ? 2 : 0;
  for (int k = 0; k < count; ++k) atomicAdd(&sums[c * 8 + base + k], a[k]);
}

struct Stats {  // per channel, from the reference sums
  float mean, invstd, scale, offset, mean_dy, mean_dy_xhat;
};

// counts[0]: y errors, [1]: of them past 2^31, [2]: dx errors, [3]: of them past 2^31;
// worst[0], worst[1]: the largest error / tolerance of y and dx (float bits; non-negative floats
// order as their bits), first[0..1]: the first bad index of each
__global__ void check(Geometry g, const Stats* st, const __nv_bfloat16* y, const __nv_bfloat16* dx,
                      unsigned long long* counts, unsigned int* worst, unsigned long long* first) {
  constexpr float u = 1.0f / 256.0f, slack = 1.0f / 4096.0f;
  constexpr std::int64_t two31 = std::int64_t{1} << 31;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < g.total();
       i += std::int64_t{gridDim.x} * blockDim.x) {
    std::int64_t n, c, s;
    g.decode(i, n, c, s);
    const Stats k = st[c];
    const float xhat = (gen_x(g, n, c, s) - k.mean) * k.invstd;
    const float yref = xhat * k.scale + k.offset;
    const float yerr = std::fabs(__bfloat162float(y[i]) - yref);
    const float ytol = u * std::fabs(yref) + slack * (1.0f + std::fabs(yref));
    const float dyv = gen_dy(g, n, c, s), a = k.scale * k.invstd;
    const float dxref = a * (dyv - k.mean_dy - xhat * k.mean_dy_xhat);
    const float dxerr = std::fabs(__bfloat162float(dx[i]) - dxref);
    const float dxtol =
        u * std::fabs(dxref) +
        slack * std::fabs(a) *
            (std::fabs(dyv) + std::fabs(k.mean_dy) + std::fabs(xhat * k.mean_dy_xhat) + 1.0f);
    if (!(yerr <= ytol)) {
      atomicAdd(&counts[0], 1ull);
      if (i >= two31) atomicAdd(&counts[1], 1ull);
      atomicMin(&first[0], static_cast<unsigned long long>(i));
    }
    if (!(dxerr <= dxtol)) {
      atomicAdd(&counts[2], 1ull);
      if (i >= two31) atomicAdd(&counts[3], 1ull);
      atomicMin(&first[1], static_cast<unsigned long long>(i));
    }
    const float ry = yerr / ytol, rdx = dxerr / dxtol;
    if (ry == ry) atomicMax(&worst[0], __float_as_uint(ry));
    if (rdx == rdx) atomicMax(&worst[1], __float_as_uint(rdx));
  }
}

template <class T>
T* device_alloc(std::size_t count) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, count * sizeof(T)));
  return p;
}

// one layout: returns the number of failed checks
int run(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, bool channels_last) {
  const Geometry g{n, c, h * w, channels_last};
  const std::int64_t total = g.total(), m = n * h * w;
  const cubn::TensorDesc desc(cubn::DataType::kBFloat16,
                              channels_last ? cubn::MemoryOrder::kChannelsLast
                                            : cubn::MemoryOrder::kChannelsFirst,
                              {n, c, h, w});
  auto* x = device_alloc<__nv_bfloat16>(total);
  auto* y = device_alloc<__nv_bfloat16>(total);
  auto* dy = device_alloc<__nv_bfloat16>(total);
  auto* dx = device_alloc<__nv_bfloat16>(total);
  const std::size_t ws_bytes =
      std::max(cubn::forward_training_workspace_size(desc), cubn::backward_workspace_size(desc));
  auto* ws = device_alloc<unsigned char>(ws_bytes > 0 ? ws_bytes : 1);
  auto* params = device_alloc<float>(6 * c);  // scale, offset, saved mean, invstd, dscale, doffset
  auto* sums = device_alloc<double>(8 * c);
  auto* stats = device_alloc<Stats>(c);
  auto* counts = device_alloc<unsigned long long>(6);  // 4 counts, then first[2]
  auto* worst = device_alloc<unsigned int>(2);

  std::vector<float> scale(c), offset(c);
  for (std::int64_t k = 0; k < c; ++k) {
    scale[k] = 0.5f + 0.125f * static_cast<float>(k % 9);
    offset[k] = 0.25f * static_cast<float>(k % 4) - 0.375f;
  }
  CHECK_CUDA(cudaMemcpy(params, scale.data(), c * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(params + c, offset.data(), c * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(sums, 0, 8 * c * sizeof(double)));
  CHECK_CUDA(cudaMemset(counts, 0, 4 * sizeof(unsigned long long)));
  CHECK_CUDA(cudaMemset(counts + 4, 0xff, 2 * sizeof(unsigned long long)));
  CHECK_CUDA(cudaMemset(worst, 0, 2 * sizeof(unsigned int)));

  fill<<<132 * 16, 256>>>(g, x, dy, y, dx);
  CHECK_CUDA(cudaGetLastError());
  cudaEvent_t a, b, e;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  CHECK_CUDA(cudaEventCreate(&e));
  cubn::TrainingForwardArgs<float> fa;
  fa.affine = {params, params + c};
  fa.saved = {params + 2 * c, params + 3 * c};
  cubn::TrainingBackwardArgs<float> ba;
  ba.scale = params;
  ba.saved = {params + 2 * c, params + 3 * c};
  ba.grads = {params + 4 * c, params + 5 * c};
  CHECK_CUDA(cudaEventRecord(a));
  cubn::forward_training(desc, x, y, fa, {ws, ws_bytes}, nullptr);
  CHECK_CUDA(cudaEventRecord(b));
  cubn::backward_training(desc, x, dy, dx, ba, {ws, ws_bytes}, nullptr);
  CHECK_CUDA(cudaEventRecord(e));
  CHECK_CUDA(cudaGetLastError());

  const dim3 grid(64, static_cast<unsigned>(c));
  reference_sums<<<grid, 256>>>(g, 0, sums);
  reference_sums<<<grid, 256>>>(g, 1, sums);
  CHECK_CUDA(cudaDeviceSynchronize());
  float fwd_ms = 0, bwd_ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&fwd_ms, a, b));
  CHECK_CUDA(cudaEventElapsedTime(&bwd_ms, b, e));

  std::vector<double> s(8 * c);
  std::vector<float> got(6 * c);
  CHECK_CUDA(cudaMemcpy(s.data(), sums, s.size() * sizeof(double), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got.data(), params, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  std::vector<Stats> st(c);
  int failures = 0;
  const double md = static_cast<double>(m), eps = 1e-5;
  for (std::int64_t k = 0; k < c; ++k) {
    const double* q = &s[8 * k];
    const double mean = q[0] / md, invstd = 1.0 / std::sqrt(q[2] / md + eps);
    const double dbeta = q[3], dgamma = q[5] * invstd;
    st[k] = {static_cast<float>(mean), static_cast<float>(invstd), scale[k], offset[k],
             static_cast<float>(dbeta / md), static_cast<float>(dgamma / md)};
    const struct {
      const char* what;
      double got, ref, tol;
    } per_channel[] = {
        {"saved mean", got[2 * c + k], mean, std::ldexp(q[1] / md, -16)},
        {"saved invstd", got[3 * c + k], invstd, std::ldexp(invstd, -14)},
        {"dscale", got[4 * c + k], dgamma, std::ldexp(q[6] * invstd, -14)},
        {"doffset", got[5 * c + k], dbeta, std::ldexp(q[4], -14)},
    };
    for (const auto& v : per_channel)
      if (!(std::fabs(v.got - v.ref) <= v.tol)) {
        if (failures < 10)
          std::printf("  channel %lld %s: %.9g, reference %.9g (tolerance %.3g)\n",
                      static_cast<long long>(k), v.what, v.got, v.ref, v.tol);
        ++failures;
      }
  }
  CHECK_CUDA(cudaMemcpy(stats, st.data(), c * sizeof(Stats), cudaMemcpyHostToDevice));
  check<<<132 * 16, 256>>>(g, stats, y, dx, counts, worst, counts + 4);
  CHECK_CUDA(cudaDeviceSynchronize());
  unsigned long long cnt[6];
  unsigned int wr[2];
  CHECK_CUDA(cudaMemcpy(cnt, counts, sizeof cnt, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(wr, worst, sizeof wr, cudaMemcpyDeviceToHost));
  float worst_y, worst_dx;
  std::memcpy(&worst_y, &wr[0], 4);
  std::memcpy(&worst_dx, &wr[1], 4);
  const double gb = static_cast<double>(total) * 2 / 1e9;
  std::printf(
      "large: bf16 %s %lldx%lldx%lldx%lld (%lld elements, %.2f GB each tensor): "
      "forward %.2f ms (%.0f GB/s at 3 passes), backward %.2f ms (%.0f GB/s at 5 passes); "
      "per-element errors y %llu (%llu past 2^31, first at %lld, worst %.2f of tolerance), "
      "dx %llu (%llu past 2^31, first at %lld, worst %.2f of tolerance); per-channel errors %d\n",
      channels_last ? "NHWC" : "NCHW", static_cast<long long>(n), static_cast<long long>(c),
      static_cast<long long>(h), static_cast<long long>(w), static_cast<long long>(total), gb,
      fwd_ms, 3 * gb / (fwd_ms / 1e3), bwd_ms, 5 * gb / (bwd_ms / 1e3), cnt[0], cnt[1],
      cnt[0] ? static_cast<long long>(cnt[4]) : -1LL, worst_y, cnt[2], cnt[3],
      cnt[2] ? static_cast<long long>(cnt[5]) : -1LL, worst_dx, failures);
  for (void* p : {static_cast<void*>(x), static_cast<void*>(y), static_cast<void*>(dy),
                  static_cast<void*>(dx), static_cast<void*>(ws), static_cast<void*>(params),
                  static_cast<void*>(sums), static_cast<void*>(stats), static_cast<void*>(counts),
                  static_cast<void*>(worst)})
    CHECK_CUDA(cudaFree(p));
  for (cudaEvent_t ev : {a, b, e}) CHECK_CUDA(cudaEventDestroy(ev));
  return failures + static_cast<int>(cnt[0] > 0) + static_cast<int>(cnt[2] > 0);
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t dims[4] = {17, 96, 1024, 1320};
  if (argc == 5)
    for (int i = 0; i < 4; ++i) dims[i] = std::atoll(argv[i + 1]);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("cubn_large: no usable CUDA device; nothing to check\n");
    return 0;
  }
  int failures = 0;
  try {
    for (bool channels_last : {false, true})
      failures += run(dims[0], dims[1], dims[2], dims[3], channels_last);
  } catch (const std::exception& ex) {
    std::printf("cubn_large: %s\n", ex.what());
    return 1;
  }
  std::printf("large: %s\n", failures ? "FAILED" : "agree");
  return failures ? 1 : 0;
}
