/// @file memory.cuh
/// @brief Global-memory access for kernels: V consecutive elements in one vector access. On the
/// GPU a plain aligned vector load or store; in the executor a checked copy that faults on a
/// misaligned address, as a GPU would, and is counted (bytes moved, sectors per warp access) for
/// the performance proxies. Tensor data goes through these helpers only.
#pragma once

#include <cstdint>
#include <cstring>

#include "platform.cuh"

namespace cubn::kernels {

/// V elements of T, aligned as one vector access (16 bytes at most).
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

#if defined(CUBN_SIM)
namespace detail {
inline void check_aligned(const void* p, std::size_t bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % bytes != 0) sim::detail::fault(what);
}
}  // namespace detail
#endif

/// Loads V consecutive elements from p, which must be aligned to sizeof(T) * V.
template <int V, class T>
CUBN_DEVICE Pack<T, V> load_pack(const T* p) {
#if defined(CUBN_SIM)
  detail::check_aligned(p, sizeof(Pack<T, V>), "misaligned vector load from global memory");
  sim::detail::record_global(p, sizeof(Pack<T, V>), false);
  Pack<T, V> r;
  std::memcpy(static_cast<void*>(&r), p, sizeof r);
  return r;
#else
  return *reinterpret_cast<const Pack<T, V>*>(p);
#endif
}

/// Stores V consecutive elements to p, which must be aligned to sizeof(T) * V.
template <int V, class T>
CUBN_DEVICE void store_pack(T* p, const Pack<T, V>& v) {
#if defined(CUBN_SIM)
  detail::check_aligned(p, sizeof(Pack<T, V>), "misaligned vector store to global memory");
  sim::detail::record_global(p, sizeof(Pack<T, V>), true);
  std::memcpy(static_cast<void*>(p), &v, sizeof v);
#else
  *reinterpret_cast<Pack<T, V>*>(p) = v;
#endif
}

}  // namespace cubn::kernels
