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

#include "geometry.hpp"
#include "memory.cuh"
#include "platform.cuh"
#include "types.cuh"

namespace cubn::kernels {

/// The activation of the fused epilogue (kernel side of cubn::Activation).
enum class Act : int { kNone = 0, kRelu = 1, kSilu = 2 };

/// SiLU through the exponent of its sigmoid, q = -p log2(e): e = 2^q = exp(-p), s = 1 / (1 + e).
/// Both passes form q from x (and z) with coefficients of their own (sigmoid_exponent: the
/// affine's a and b times -log2(e)) by the same code, so the forward and the backward evaluate the sigmoid at the
/// same q bit for bit; the backward needs p itself only in p (1 - s) = q ln(2) (s - 1), which it
/// forms from q. That spares the backward's loops an affine and the scaling per element: they sit
/// within the instruction budget (bench/sass_report.py) where p, -p log2(e) and 1 - s each cost one.
template <class Acc>
constexpr Acc kNegLog2e = static_cast<Acc>(-1.4426950408889634074);
template <class Acc>
constexpr Acc kLn2 = static_cast<Acc>(0.69314718055994530942);

/// The coefficients SiLU's fused epilogue forms q with: the affine's a and b scaled by -log2(e) (q =
/// C::apply(x) with them, as p is with the affine's own; a shift, where C has one, is kept).
template <class C>
CUBN_DEVICE C sigmoid_exponent(const C& affine) {
  C q = affine;
  q.a *= kNegLog2e<typename C::Acc>;
  q.b *= kNegLog2e<typename C::Acc>;
  return q;
}

/// q with the residual z added to p: both passes add it with this, so their q agree bit for bit.
template <class Acc>
CUBN_DEVICE Acc exponent_plus_residual(Acc q, Acc z) {
  return z * kNegLog2e<Acc> + q;
}

/// The forward's coefficients for SiLU: p's and q's.
template <class C>
struct SiluCoeffs {
  using Acc = typename C::Acc;
  C p, q;
};

/// 2^q where a few ulp suffice (SiLU's sigmoid, with rcp_approx for its reciprocal: its output is
/// rounded to the tensor's type, and fp32 outputs are held to a few ulp of |p|): on the GPU
/// ex2.approx.ftz (2 ulp; q under -126 flushes 2^q to 0, where 1 + 2^q is 1 anyway), one MUFU.
/// fp64 takes exp2.
CUBN_DEVICE float exp2_fast(float q) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(q));
  return r;
#else
  return std::exp2(q);
#endif
}
CUBN_DEVICE double exp2_fast(double q) { return exp2(q); }

/// The sigmoid s = 1 / (1 + 2^q) both passes evaluate (2^q overflowing gives 0).
template <class Acc>
CUBN_DEVICE Acc sigmoid_of_exponent(Acc q) {
  return rcp_approx(Acc(1) + exp2_fast(q));
}

/// ReLU: p <= 0 gives 0, NaN stays NaN.
template <class Acc>
CUBN_DEVICE Acc relu(Acc p) {
  return p <= Acc(0) ? Acc(0) : p;
}

/// SiLU of p, q its sigmoid's exponent: p / (1 + exp(-p)), PyTorch's formula (+Inf gives +Inf;
/// -Inf gives NaN, as there; p below about -88 gives -0: 2^q is Inf, its reciprocal 0).
template <class Acc>
CUBN_DEVICE Acc silu(Acc p, Acc q) {
  return p * sigmoid_of_exponent(q);
}

/// SiLU's derivative times dy from q: dy * s * (1 + p (1 - s)) (PyTorch's silu_backward) with
/// p (1 - s) = q * (ln 2 * s - ln 2). Where 2^q overflows (p below about -88) s is 0 and so is the
/// gradient, as PyTorch's; p = +-Inf gives NaN, as there.
template <class Acc>
CUBN_DEVICE Acc silu_grad(Acc dy, Acc q) {
  const Acc s = sigmoid_of_exponent(q);
  const Acc ln2 = kLn2<Acc>;
  return dy * s * (q * (s * ln2 - ln2) + Acc(1));
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
    DeviceAtomicRef<unsigned> w(*word);
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
