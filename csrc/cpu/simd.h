// Portable SIMD for the CPU kernels: GCC vector extensions of a chosen width.
// Include it only in a translation unit compiled for one instruction set (see
// cpu/isa.h), inside that set's namespace macro SWA_CPU_ISA_NS; then 64-byte
// vectors are zmm registers, 32-byte ones ymm, 16-byte ones xmm (or NEON).
//
// exp2_nonpositive is a float32-accurate 2^x (within 2 ulp) for the arguments
// a softmax produces (x <= 0, -inf, NaN); float64 lanes use std::exp2. On x86
// a few steps use intrinsics of the one build that has the vector width
// (<immintrin.h> comes from the including kernel's problem header).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#ifndef SWA_CPU_ISA_NS
#error "cpu/simd.h: define SWA_CPU_ISA_NS (see cpu/isa.h)"
#endif

// The vector types are passed between inline helpers of one translation
// unit only; GCC's notes about their calling convention do not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define SWA_INLINE __attribute__((always_inline)) inline
// For the per-block steps, which do not depend on the input dtype: emitted
// once per accumulation type instead of once per dtype (compile time).
#define SWA_OUTLINE __attribute__((noinline))

namespace swa::cpu::SWA_CPU_ISA_NS {

// kBytes-wide vectors of T (float or double).
template <class T, int kBytes>
struct Simd {
  using scalar = T;
  typedef T vec __attribute__((vector_size(kBytes)));
  static constexpr int kLanes = kBytes / int(sizeof(T));

  static SWA_INLINE vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof(vec));
    return v;
  }
  static SWA_INLINE void store(T* p, vec v) { std::memcpy(p, &v, sizeof(vec)); }
  // s - 0 is s for every s (s + 0 is not, for -0.0): a plain broadcast.
  static SWA_INLINE vec set1(T s) { return s - vec{}; }
  static SWA_INLINE vec zero() { return vec{}; }
  // Bit masks as produced by comparisons of two vecs (all ones where true).
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> mask_scalar;
  typedef mask_scalar mask __attribute__((vector_size(kBytes)));
  // Lanes where m is set keep a, the others get b.
  static SWA_INLINE vec select(mask m, vec a, vec b) {
#if defined(__clang__)
    return (vec)(((mask)a & m) | ((mask)b & ~m));
#else
    return m ? a : b;  // one blend (or a zero-masked op) instead of three logic ops
#endif
  }
  static SWA_INLINE vec max(vec a, vec b) { return select(a > b, a, b); }
  static SWA_INLINE bool any(mask m) {
#if defined(__x86_64__) || defined(__i386__)
    // One test instruction per build (each width exists in one build only).
    if constexpr (kBytes == 64) {
      if constexpr (sizeof(T) == 4) return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
      else return _mm512_test_epi64_mask((__m512i)m, (__m512i)m) != 0;
    } else if constexpr (kBytes == 32) {
      return _mm256_movemask_epi8((__m256i)m) != 0;
    } else if constexpr (kBytes == 16) {
      return _mm_movemask_epi8((__m128i)m) != 0;
    }
#endif
    mask_scalar bits = 0;
#pragma GCC unroll 64
    for (int i = 0; i < kLanes; ++i) bits |= m[i];
    return bits != 0;
  }
  static SWA_INLINE T lane(vec v, int i) { return v[i]; }

  // One stage of an in-register transpose: rows a = x[i], b = x[i + s] with
  // (i & s) == 0 swap their off-diagonal s x s blocks (kHigh: the new b).
  template <int s, bool kHigh, std::size_t... k>
  static SWA_INLINE vec transpose_stage(vec a, vec b, std::index_sequence<k...>) {
    constexpr auto index = [](std::size_t lane) -> mask_scalar {
      if constexpr (kHigh) return mask_scalar((lane & s) == 0 ? lane + s : kLanes + lane);
      else return mask_scalar((lane & s) == 0 ? lane : kLanes + lane - s);
    };
#if defined(__clang__)
    return __builtin_shufflevector(a, b, index(k)...);
#else
    return __builtin_shuffle(a, b, mask{index(k)...});
#endif
  }

  // x[i][k] <- x[k][i] for the kLanes x kLanes block x (log2(kLanes) stages
  // of two-input shuffles).
  template <int s = kLanes / 2>
  static SWA_INLINE void transpose(vec (&x)[kLanes]) {
    if constexpr (s >= 1) {
#pragma GCC unroll 64
      for (int i = 0; i < kLanes; ++i) {
        if ((i & s) != 0) continue;
        const vec a = x[i], b = x[i + s];
        x[i] = transpose_stage<s, false>(a, b, std::make_index_sequence<kLanes>());
        x[i + s] = transpose_stage<s, true>(a, b, std::make_index_sequence<kLanes>());
      }
      transpose<s / 2>(x);
    }
  }

  // 2^r for float r in [-1/2, 1/2]: 1 + r P(r), P fitted there: relative
  // error 2e-8 with kDegree 6; 3e-6 with kDegree 4 (for probabilities that
  // are rounded to bf16 next, whose half ulp is 2e-3).
  template <int kDegree = 6>
  static SWA_INLINE vec exp2_reduced(vec r) {
    static_assert(kDegree == 6 || kDegree == 4);
    if constexpr (kDegree == 4) {
      vec p = set1(9.58300848e-3f);
      p = p * r + set1(5.59065044e-2f);
      p = p * r + set1(2.40240946e-1f);
      p = p * r + set1(6.93124175e-1f);
      return p * r + set1(1.0f);
    }
    vec p = set1(1.54122681e-4f);
    p = p * r + set1(1.34179520e-3f);
    p = p * r + set1(9.61826183e-3f);
    p = p * r + set1(5.55026084e-2f);
    p = p * r + set1(2.40226492e-1f);
    p = p * r + set1(6.93147242e-1f);
    return p * r + set1(1.0f);
  }

  // 2^x for x <= 0 (also -inf -> 0 and NaN -> NaN): float to within 2 ulp,
  // double through std::exp2. (The kernels work in base 2: log2(e) is folded
  // into the score scale, so the range reduction x = n + r is exact.)
  template <int kDegree = 6>
  static SWA_INLINE vec exp2_nonpositive(vec x) {
#if defined(__x86_64__) || defined(__i386__)
    if constexpr (sizeof(T) == 4 && kBytes == 64) {  // only the AVX-512 build has 64-byte vectors
      // The rounding and the 2^n scaling are single
      // instructions (vrndscaleps, vscalefps), the latter zeroing the lanes
      // with x < -126 (and -inf, whose r is NaN) as below; NaN stays NaN.
      const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
      const __m512 n = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const vec two_r = exp2_reduced<kDegree>(x - (vec)n);  // r in [-1/2, 1/2], exact
      return (vec)_mm512_maskz_scalef_ps(keep, (__m512)two_r, n);  // 2^r 2^n
    }
#endif
    if constexpr (sizeof(T) == 4) {
      const vec round_magic = set1(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
      const vec t = x + round_magic;
      const vec n = t - round_magic;  // round(x)
      const vec two_r = exp2_reduced<kDegree>(x - n);  // r in [-1/2, 1/2], exact
      // 2^n from the low bits of t (n + 127 stays in [1, 127] for x >= -126).
      mask bits;
      std::memcpy(&bits, &t, sizeof(t));
      bits = (bits + 127) << 23;
      vec two_n;
      std::memcpy(&two_n, &bits, sizeof(t));
      return select(x < set1(-126.0f), zero(), two_r * two_n);
    } else {
      vec y;
      for (int i = 0; i < kLanes; ++i) y[i] = std::exp2(x[i]);
      return y;
    }
  }
};

}  // namespace swa::cpu::SWA_CPU_ISA_NS
