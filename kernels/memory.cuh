/// @file memory.cuh
/// @brief Global-memory access for kernels: V consecutive elements in one vector access. On the
/// GPU a plain aligned vector load or store; in the executor a checked copy that faults on a
/// misaligned address, as a GPU would, and is counted (bytes moved, sectors per warp access) for
/// the performance proxies. Tensor data goes through these helpers only.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "platform.cuh"
#include "types.cuh"

namespace cubn::kernels {

/// V elements of T, aligned as one vector access (16 bytes at most).
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

/// Element k of a pack in the accumulation type. bf16 elements are read in the 32-bit words pairs
/// of them share: element 2i is word i's low half moved up (one shift), element 2i + 1 its high
/// half in place (one and), where converting an element on its own moves it out first (a byte
/// permute more for every odd element: half an instruction per element in every bf16 loop).
template <class T, int V>
CUBN_DEVICE acc_t<T> acc_at(const Pack<T, V>& p, int k) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> && V % 2 == 0) {
    std::uint32_t w;
    std::memcpy(&w, &p.v[k & ~1], sizeof w);
    const std::uint32_t bits = (k & 1) != 0 ? (w & 0xffff0000u) : (w << 16);
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  } else {
    return to_acc(p.v[k]);
  }
}

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

/// load_pack(p) where `take`, else zeros, without reading. A 16-byte pack is loaded as four 32-bit
/// words into zeroed registers (one predicated load): the select of a pack of 16-bit elements
/// would otherwise merge element by element (a PRMT each, bench/sass_report.py).
template <int V, class T>
CUBN_DEVICE Pack<T, V> load_pack_if(const T* p, bool take) {
  Pack<T, V> r{};
#if defined(CUBN_SIM)
  if (take) r = load_pack<V>(p);
#else
  if constexpr (sizeof(Pack<T, V>) == 16) {
    uint4 w = make_uint4(0, 0, 0, 0);
    if (take) w = *reinterpret_cast<const uint4*>(p);
    std::memcpy(static_cast<void*>(&r), &w, sizeof r);
  } else {
    if (take) r = load_pack<V>(p);
  }
#endif
  return r;
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
