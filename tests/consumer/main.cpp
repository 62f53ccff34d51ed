// One training forward of a small NHWC fp32 tensor through the installed package.
#include <cubn/cubn.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const cubn::TensorDesc desc = cubn::TensorDesc::nhwc(cubn::DataType::kFloat32, 2, 3, 2, 2);
  const std::size_t n = 2 * 3 * 2 * 2;
  std::vector<float> x(n), y(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 5);
  std::vector<unsigned char> ws(cubn::forward_training_workspace_size(desc));
  try {
    cubn::forward_training(desc, x.data(), y.data(), cubn::TrainingForwardArgs<float>{},
                           {ws.data(), ws.size()}, nullptr);
  } catch (const cubn::Error& e) {
    std::printf("%s\n", e.what());  // no GPU, for the CUDA build
    return 2;
  }
  double sum = 0;
  for (float v : y) sum += v;
  std::printf("consumer: sum of y = %.6f\n", sum);
  return std::fabs(sum) < 1e-4 ? 0 : 1;  // each channel normalized to mean 0
}
