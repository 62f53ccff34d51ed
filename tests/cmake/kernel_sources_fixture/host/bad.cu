// host/ may not declare shared memory either (fixture of tests/cmake/kernel_sources_test.cmake).
__global__ void k() { __shared__ int plain; }
