// The one file the rules leave alone (fixture of tests/cmake/kernel_sources_test.cmake).
#define CUBN_SHARED(T, name, N) __shared__ T name[N]
