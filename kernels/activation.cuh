/// @file activation.cuh
/// @brief The fused epilogue's pieces: the activations and their derivatives, and the ReLU mask.
///
/// The fused forward writes y = act(p), p = x * a + b + z (z optional), in the pass that writes y.
/// What its backward needs to know of p, per activation:
///  - ReLU: whether p > 0, one bit per element that the forward writes into caller memory (the
///    reserve, as cuDNN's reserve space): the backward reads numel / 8 bytes instead of
///    recomputing p, which would read z again (a whole tensor, twice in training) and, for frozen
///    statistics, x too. At p == 0 the bit is 0 (the derivative PyTorch takes at the kink); a NaN p
///    gives a NaN y (as PyTorch's relu) and bit 0.
///  - SiLU: its derivative needs p itself, so the backward recomputes it from x (which it reads
///    anyway), z (read again when the forward added one) and the forward's own per-channel
///    coefficients (training: the forward leaves them in the reserve; frozen statistics: recomputed
///    from the running statistics by the same code), so the two passes' p agree bit for bit.
///  - none: the derivative is 1 (a residual alone: dz = dy).
#pragma once

#include <cmath>
#include <cstdint>
#include <cuda/atomic>

#include "geometry.hpp"
#include "memory.cuh"
#include "platform.cuh"
#include "types.cuh"

namespace cubn::kernels {

/// The activation of the fused epilogue (kernel side of cubn::Activation).
enum class Act : int { kNone = 0, kRelu = 1, kSilu = 2 };

/// e^v where a few ulp suffice (SiLU's sigmoid, with rcp_approx for its reciprocal: its output is
/// rounded to the tensor's type, and fp32 outputs are held to a few ulp of |p|): on the GPU
/// ex2.approx (2 ulp, plus the rounding of v log2(e): about 1.2 |v| ulp), one MUFU, instead of
/// expf's range reduction. fp64 takes exp.
CUBN_DEVICE float exp_fast(float v) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v * 1.4426950408889634f));
  return r;
#else
  return std::exp(v);
#endif
}
CUBN_DEVICE double exp_fast(double v) { return exp(v); }

/// act(p). ReLU: p <= 0 gives 0, NaN stays NaN. SiLU: p / (1 + exp(-p)), PyTorch's formula
/// (+Inf gives +Inf; -Inf gives NaN, as there).
template <Act A, class Acc>
CUBN_DEVICE Acc activate(Acc p) {
  if constexpr (A == Act::kRelu) {
    return p <= Acc(0) ? Acc(0) : p;
  } else if constexpr (A == Act::kSilu) {
    return p * rcp_approx(Acc(1) + exp_fast(-p));
  } else {
    return p;
  }
}

/// SiLU's derivative times dy: dy * s * (1 + p * (1 - s)), s = 1 / (1 + exp(-p)) (PyTorch's
/// silu_backward), formed with 1 - s = e * s (e = exp(-p)) as dy * s * (1 + p * e * s): one
/// instruction per element fewer. p = -Inf gives NaN, as PyTorch's.
template <class Acc>
CUBN_DEVICE Acc silu_grad(Acc dy, Acc p) {
  const Acc e = exp_fast(-p);
  const Acc s = rcp_approx(Acc(1) + e);
  return dy * s * (p * e * s + Acc(1));
}

/// Writes the V mask bits of the pack at element `at` (a multiple of V) in a kernel whose packs
/// hold KV elements. A pack of 8 elements owns its byte: one plain store. Narrower packs share
/// bytes with other threads' packs: a kernel of 8-element packs has one thread write its leftovers
/// (past the last whole pack, so in bytes of their own) with plain stores; any other kernel sets
/// its bits with two atomic operations on the word (and, then or: every write to such a mask is
/// atomic, so no plain store races with them).
template <int V, int KV>
CUBN_DEVICE void write_mask(unsigned* mask, std::int64_t at, unsigned bits) {
  auto* bytes = reinterpret_cast<unsigned char*>(mask);
  if constexpr (V == 8) {
    Pack<unsigned char, 1> b;
    b.v[0] = static_cast<unsigned char>(bits);
    store_pack<1>(bytes + at / 8, b);
  } else if constexpr (KV == 8) {
    unsigned char* p = bytes + at / 8;
    Pack<unsigned char, 1> b = load_pack<1>(p);
    const unsigned sh = static_cast<unsigned>(at % 8), m = ((1u << V) - 1u) << sh;
    b.v[0] = static_cast<unsigned char>((b.v[0] & ~m) | (bits << sh));
    store_pack<1>(p, b);
  } else {
    static_assert(V < 8 && 32 % V == 0, "a pack's bits lie in one word");
    const unsigned sh = static_cast<unsigned>(at % 32), m = ((1u << V) - 1u) << sh;
    unsigned* word = mask + at / 32;
#if defined(CUBN_SIM)
    sim::detail::record_global(word, 4, true);  // the proxies count each pair as one word written
#endif
    cuda::atomic_ref<unsigned, cuda::thread_scope_device> w(*word);
    w.fetch_and(~m | (bits << sh), cuda::memory_order_relaxed);
    w.fetch_or(bits << sh, cuda::memory_order_relaxed);
  }
}

/// The V mask bits of the pack at element `at` (a multiple of V), in bits [0, V): one byte load.
template <int V>
CUBN_DEVICE unsigned read_mask(const unsigned* mask, std::int64_t at) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(mask);
  const unsigned b = load_pack<1>(bytes + at / 8).v[0];
  if constexpr (V == 8) {
    return b;
  } else {
    return (b >> static_cast<unsigned>(at % 8)) & ((1u << V) - 1u);
  }
}

}  // namespace cubn::kernels
