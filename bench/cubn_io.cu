// Runs cubn's four calls on tensors read from files and writes the results, so that a script in
// another framework (bench/torch_compare.py: PyTorch) can compare them with its own on the same
// inputs. GPU only (a test and benchmark tool, not an API).
//
//   cubn_io DIR
//
// DIR/case.txt: "dtype order eps momentum d0 d1 [d2 [d3 [d4]]]" (dtype fp16, bf16 or fp32; order
// NCHW or NHWC). Inputs, raw little-endian: x.bin and dy.bin (dtype), scale.bin, offset.bin,
// rmean.bin, rvar.bin (float32, C each). Outputs: y_train.bin, y_infer.bin, dx.bin, dx_frozen.bin
// (dtype), smean.bin, sinvstd.bin, rmean_out.bin, rvar_out.bin, dscale.bin, doffset.bin,
// dscale_frozen.bin, doffset_frozen.bin (float32).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cubn/cubn.hpp"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

std::vector<char> read_file(const std::string& path, std::size_t bytes) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> v((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (v.size() != bytes)
    throw std::runtime_error(path + ": " + std::to_string(v.size()) + " bytes, expected " +
                             std::to_string(bytes));
  return v;
}

struct Dev {
  void* p = nullptr;
  std::size_t n = 0;
  explicit Dev(std::size_t bytes) : n(bytes) {
    check(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cudaMalloc");
    check(cudaMemset(p, 0, bytes == 0 ? 1 : bytes), "cudaMemset");
  }
  Dev(const std::string& path, std::size_t bytes) : Dev(bytes) {
    const auto v = read_file(path, bytes);
    check(cudaMemcpy(p, v.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  ~Dev() { cudaFree(p); }
  void save(const std::string& path) const {
    std::vector<char> v(n);
    check(cudaMemcpy(v.data(), p, n, cudaMemcpyDeviceToHost), "cudaMemcpy");
    std::ofstream(path, std::ios::binary).write(v.data(), static_cast<std::streamsize>(n));
  }
  float* f() const { return static_cast<float*>(p); }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: cubn_io DIR\n");
    return 2;
  }
  try {
    const std::string dir = argv[1];
    std::ifstream spec(dir + "/case.txt");
    std::string dtype, order;
    double eps = 0, momentum = 0;
    spec >> dtype >> order >> eps >> momentum;
    cubn::TensorDesc d;
    d.dtype = dtype == "fp16"   ? cubn::DataType::kFloat16
              : dtype == "bf16" ? cubn::DataType::kBFloat16
                                : cubn::DataType::kFloat32;
    d.order =
        order == "NHWC" ? cubn::MemoryOrder::kChannelsLast : cubn::MemoryOrder::kChannelsFirst;
    d.rank = 0;
    std::int64_t numel = 1, v = 0;
    while (spec >> v && d.rank < cubn::TensorDesc::kMaxRank) numel *= (d.dims[d.rank++] = v);
    const std::size_t bytes = static_cast<std::size_t>(numel) * cubn::element_size(d.dtype);
    const std::size_t pbytes = static_cast<std::size_t>(d.dims[1]) * sizeof(float);

    Dev x(dir + "/x.bin", bytes), dy(dir + "/dy.bin", bytes), y_train(bytes), y_infer(bytes),
        dx(bytes), dx_frozen(bytes);
    Dev scale(dir + "/scale.bin", pbytes), offset(dir + "/offset.bin", pbytes),
        rmean(dir + "/rmean.bin", pbytes), rvar(dir + "/rvar.bin", pbytes), smean(pbytes),
        sinvstd(pbytes), dscale(pbytes), doffset(pbytes), dscale_f(pbytes), doffset_f(pbytes);
    Dev rmean0(dir + "/rmean.bin", pbytes), rvar0(dir + "/rvar.bin", pbytes);
    Dev ws(std::max(cubn::forward_training_workspace_size(d), cubn::backward_workspace_size(d)));

    cubn::InferenceForwardArgs<float> inf;  // with the running statistics as given
    inf.affine = {scale.f(), offset.f()};
    inf.running = {rmean0.f(), rvar0.f()};
    inf.epsilon = eps;
    cubn::forward_inference(d, x.p, y_infer.p, inf, nullptr);

    cubn::TrainingForwardArgs<float> tr;
    tr.affine = {scale.f(), offset.f()};
    tr.running = {rmean.f(), rvar.f()};
    tr.momentum = cubn::Momentum::pytorch(momentum);
    tr.epsilon = eps;
    tr.saved = {smean.f(), sinvstd.f()};
    cubn::forward_training(d, x.p, y_train.p, tr, {ws.p, ws.n}, nullptr);

    cubn::TrainingBackwardArgs<float> bw;
    bw.scale = scale.f();
    bw.saved = {smean.f(), sinvstd.f()};
    bw.grads = {dscale.f(), doffset.f()};
    cubn::backward_training(d, x.p, dy.p, dx.p, bw, {ws.p, ws.n}, nullptr);

    cubn::FrozenBackwardArgs<float> fz;
    fz.scale = scale.f();
    fz.running = {rmean0.f(), rvar0.f()};
    fz.epsilon = eps;
    fz.grads = {dscale_f.f(), doffset_f.f()};
    cubn::backward_frozen(d, x.p, dy.p, dx_frozen.p, fz, {ws.p, ws.n}, nullptr);
    check(cudaDeviceSynchronize(), "cubn calls");

    y_train.save(dir + "/y_train.bin");
    y_infer.save(dir + "/y_infer.bin");
    dx.save(dir + "/dx.bin");
    dx_frozen.save(dir + "/dx_frozen.bin");
    smean.save(dir + "/smean.bin");
    sinvstd.save(dir + "/sinvstd.bin");
    rmean.save(dir + "/rmean_out.bin");
    rvar.save(dir + "/rvar_out.bin");
    dscale.save(dir + "/dscale.bin");
    doffset.save(dir + "/doffset.bin");
    dscale_f.save(dir + "/dscale_frozen.bin");
    doffset_f.save(dir + "/doffset_frozen.bin");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cubn_io: %s\n", e.what());
    return 1;
  }
}
