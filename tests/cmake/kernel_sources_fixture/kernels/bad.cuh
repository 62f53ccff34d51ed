// Sources that break each rule of tests/cmake/kernel_sources_test.cmake once (four lines), and
// lines that look alike but keep them. Never compiled.
__global__ void k(unsigned* t) {
  __shared__ float plain[32];                                   // broken: plain shared memory
  cuda::atomic_ref<unsigned, cuda::thread_scope_device> a(*t);  // broken: unseen atomic
  __threadfence();                                              // broken: unseen fence
  CUBN_SHARED(float, checked, 32);                              // kept
  DeviceAtomicRef<unsigned> b(*t);                              // kept
  // __shared__ in a comment is kept
}
