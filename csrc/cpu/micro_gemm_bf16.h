// The products of the CPU forward for bf16 inputs on AVX512-BF16 (vdpbf16ps:
// per float32 lane, acc += a[2i] b[2i] + a[2i+1] b[2i+1] over bf16 pairs,
// twice the multiply-adds of an fp32 FMA). The query rows stay in lanes as
// in cpu/micro_gemm.h; what a lane holds becomes a pair of bf16 along the
// reduction:
//   score:  S^T[j][r]  = sum_e K[j][e] Q^T[e][r]   pairs e = (2c, 2c+1) of
//           head dims: K rows read in place (a pair is one 32-bit word of
//           the row, broadcast), Q^T as QP[c][r] = word c of query row r;
//   value:  O^T[d][r] += sum_j V[j][d] P^T[j][r]   pairs of keys j = (2c,
//           2c+1): VP[c][d] = (V[2c][d], V[2c+1][d]), PP[c][r] likewise.
// Products of two bf16 are exact in float32 and sums accumulate in float32;
// P is rounded to bf16 (nearest even) for the value product, as
// FlashAttention rounds it to the input dtype (and here the row sum adds
// the rounded P: see round_to_bf16). The one-pass backward runs the same
// two products with the roles of rows and lanes swapped (keys in the lanes:
// Q and dO rows broadcast, K^T and V^T as pairs; dV^T and dK^T over pairs of
// query rows) and its dQ += dS K over pairs of keys (pair_rows_bf16), with
// P and dS rounded to bf16 as FlashAttention rounds them. Only the AVX-512
// BF16 builds instantiate these (cpu/forward_avx512_bf16.cpp,
// cpu/backward_avx512_bf16.cpp); the others see the declarations only.
#pragma once

#include "cpu/simd.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

#if defined(__x86_64__) || defined(__i386__)

// acc[j][v] = (row j of K) . (vectors v of qp), depth pairs of head dims; k
// is bf16 bits with row stride k_stride elements, qp (pairs, ld_q) words.
template <int NJ, int NV>
SWA_INLINE void score_acc_bf16(const uint16_t* k, int64_t k_stride, int64_t pairs, const uint32_t* qp,
                               int64_t ld_q, __m512 (&acc)[NJ][NV]) {
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_setzero_ps();
  for (int64_t c = 0; c < pairs; ++c) {
    __m512bh q[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) q[v] = (__m512bh)_mm512_load_si512(qp + c * ld_q + v * 16);
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) {
      uint32_t word;
      std::memcpy(&word, k + j * k_stride + 2 * c, sizeof(word));
      const __m512bh kb = (__m512bh)_mm512_set1_epi32(int(word));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], kb, q[v]);
    }
  }
}

// score_acc_bf16 into vectors of the kernel's own float32 vector type Vec.
template <int NJ, int NV, class Vec>
SWA_INLINE void dot_scores(const uint16_t* k, int64_t k_stride, int64_t pairs, const uint32_t* qp, int64_t ld_q,
                           Vec (&acc)[NJ][NV]) {
  __m512 dot[NJ][NV];
  score_acc_bf16<NJ, NV>(k, k_stride, pairs, qp, ld_q, dot);
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[j][v] = Vec(dot[j][v]);
}

// ot[d * ld_o + v * 16] (d < ND, v < NV) += sum over key pairs c < n of
// vp[c * ld_v + d] . pp[c * ld_p + v * 16].
template <int ND, int NV>
SWA_INLINE void value_micro_bf16(const uint32_t* pp, int64_t ld_p, const uint32_t* vp, int64_t ld_v, int64_t n,
                                 float* ot, int64_t ld_o) {
  __m512 acc[ND][NV];  // (ND dims, NV row vectors)
#pragma GCC unroll 8
  for (int d = 0; d < ND; ++d)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[d][v] = _mm512_loadu_ps(ot + d * ld_o + v * 16);
  for (int64_t c = 0; c < n; ++c) {
    __m512bh p[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) p[v] = (__m512bh)_mm512_load_si512(pp + c * ld_p + v * 16);
#pragma GCC unroll 8
    for (int d = 0; d < ND; ++d) {
      const __m512bh vb = (__m512bh)_mm512_set1_epi32(int(vp[c * ld_v + d]));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[d][v] = _mm512_dpbf16_ps(acc[d][v], vb, p[v]);
    }
  }
#pragma GCC unroll 8
  for (int d = 0; d < ND; ++d)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(ot + d * ld_o + v * 16, acc[d][v]);
}

template <int ND, int kMaxNV>
SWA_INLINE void value_block_bf16(int nv, const uint32_t* pp, int64_t ld_p, const uint32_t* vp, int64_t ld_v,
                                 int64_t n, float* ot, int64_t ld_o) {
  static_assert(kMaxNV >= 1 && kMaxNV <= 4);
  switch (nv) {
    case 1: value_micro_bf16<ND, 1>(pp, ld_p, vp, ld_v, n, ot, ld_o); break;
    case 2: if constexpr (kMaxNV >= 2) value_micro_bf16<ND, 2>(pp, ld_p, vp, ld_v, n, ot, ld_o); break;
    case 3: if constexpr (kMaxNV >= 3) value_micro_bf16<ND, 3>(pp, ld_p, vp, ld_v, n, ot, ld_o); break;
    case 4: if constexpr (kMaxNV >= 4) value_micro_bf16<ND, 4>(pp, ld_p, vp, ld_v, n, ot, ld_o); break;
  }
}

// acc[j * ld_a + e] (j < NJ, e < 16 NV; the last vector's dims masked by
// last) += sum over key pairs c < n of w[j * ld_w + c] . kp[c * ld_k + e]:
// rows of bf16 pair weights (dS of two adjacent keys) against K rows
// interleaved in key pairs, the head dims in the vectors (the one-pass
// backward's dQ += dS K).
template <int NJ, int NV>
SWA_INLINE void pair_rows_micro_bf16(const uint32_t* w, int64_t ld_w, const uint32_t* kp, int64_t ld_k, int64_t n,
                                     float* acc_out, int64_t ld_a, __mmask16 last) {
  __m512 acc[NJ][NV];  // (NJ rows, NV vectors of head dims)
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      acc[j][v] = _mm512_maskz_loadu_ps(v + 1 < NV ? __mmask16(0xFFFF) : last, acc_out + j * ld_a + v * 16);
  for (int64_t c = 0; c < n; ++c) {
    __m512bh k[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      k[v] = (__m512bh)_mm512_maskz_loadu_epi32(v + 1 < NV ? __mmask16(0xFFFF) : last, kp + c * ld_k + v * 16);
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) {
      const __m512bh wb = (__m512bh)_mm512_set1_epi32(int(w[j * ld_w + c]));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], wb, k[v]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(acc_out + j * ld_a + v * 16, v + 1 < NV ? __mmask16(0xFFFF) : last, acc[j][v]);
}

// Rows [0, rows) of pair_rows_micro_bf16 over depth head dims: blocks of 4
// rows by 4 vectors, the tails smaller.
template <int = 0>
SWA_INLINE void pair_rows_bf16(const uint32_t* w, int64_t ld_w, const uint32_t* kp, int64_t ld_k, int64_t n,
                               int64_t rows, int64_t depth, float* acc_out, int64_t ld_a) {
  for (int64_t e = 0; e < depth; e += 64) {
    const int64_t dims = std::min<int64_t>(64, depth - e);
    const int nv = int((dims + 15) / 16);
    const __mmask16 last = __mmask16((1u << (dims - 16 * (nv - 1))) - 1u);  // 1 .. 16 dims
    auto block = [&](auto nj, int64_t j) {
      constexpr int NJ = decltype(nj)::value;
      const uint32_t* wj = w + j * ld_w;
      float* aj = acc_out + j * ld_a + e;
      switch (nv) {
        case 1: pair_rows_micro_bf16<NJ, 1>(wj, ld_w, kp + e, ld_k, n, aj, ld_a, last); break;
        case 2: pair_rows_micro_bf16<NJ, 2>(wj, ld_w, kp + e, ld_k, n, aj, ld_a, last); break;
        case 3: pair_rows_micro_bf16<NJ, 3>(wj, ld_w, kp + e, ld_k, n, aj, ld_a, last); break;
        default: pair_rows_micro_bf16<NJ, 4>(wj, ld_w, kp + e, ld_k, n, aj, ld_a, last); break;
      }
    };
    int64_t j = 0;
    for (; j + 4 <= rows; j += 4) block(std::integral_constant<int, 4>(), j);
    for (; j < rows; ++j) block(std::integral_constant<int, 1>(), j);
  }
}

// dst[i] = (x[2i], x[2i + 1]) rounded to bf16 (nearest even), i < 8: 16
// float32 values (of the kernel's vector type Vec) as 8 pairs of adjacent ones.
template <class Vec>
SWA_INLINE void store_adjacent_bf16_pairs(uint32_t* dst, Vec x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(__m512(x)));
}

// x rounded to the nearest bf16 (ties to even), as float32 (of the kernel's
// vector type Vec). The forward rounds P so, then sums it: the row sum is
// then the sum of exactly the weights the value product uses (a row that
// sees one key returns its value exactly).
template <class Vec>
SWA_INLINE Vec round_to_bf16(Vec x) {
  const __m256i bf = (__m256i)_mm512_cvtneps_pbh(__m512(x));
  return Vec(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf), 16)));
}

// dst[i] = (lo[i], hi[i]) for i < 16: two float32 vectors (of the kernel's
// vector type Vec) as bf16 pairs; they hold bf16 values (round_to_bf16)
// already, or with kRound any float32, rounded here (nearest even).
template <bool kRound = false, class Vec>
SWA_INLINE void store_bf16_pairs(uint32_t* dst, Vec lo, Vec hi) {
  if constexpr (kRound) {
    // Both rounded into one vector (lo's 16 bf16, then hi's), then
    // interleaved: element 2i from lo[i], 2i + 1 from hi[i].
    alignas(64) static constexpr uint16_t kInterleave[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                             21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                             11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(__m512(hi), __m512(lo));
    _mm512_store_si512(dst, _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both));
  } else {
    // The high half of lo's bits below the high half of hi's (0xCA: a ? b : c
    // with a the mask).
    const __m512i low = _mm512_srli_epi32(_mm512_castps_si512(__m512(lo)), 16);
    _mm512_store_si512(dst, _mm512_ternarylogic_epi32(_mm512_set1_epi32(int(0xFFFF0000u)),
                                                      _mm512_castps_si512(__m512(hi)), low, 0xCA));
  }
}

// dst[c * depth + d] = (a[d], b[d]) for d < depth: two bf16 rows interleaved
// (b null: zeros).
template <int = 0>
SWA_INLINE void interleave_rows_bf16(const uint16_t* a, const uint16_t* b, int64_t depth, uint32_t* dst) {
  int64_t d = 0;
  if (b != nullptr) {
    const __m512i lo_index = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i hi_index = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (; d + 32 <= depth; d += 32) {
      const __m512i x = _mm512_loadu_si512(a + d), y = _mm512_loadu_si512(b + d);
      // unpack interleaves within 128-bit lanes: lo holds dims 0-3, 8-11, ...
      // of each lane, hi dims 4-7, 12-15, ...; the 64-bit permutes restore
      // the order of d.
      const __m512i lo = _mm512_unpacklo_epi16(x, y), hi = _mm512_unpackhi_epi16(x, y);
      _mm512_storeu_si512(dst + d, _mm512_permutex2var_epi64(lo, lo_index, hi));
      _mm512_storeu_si512(dst + d + 16, _mm512_permutex2var_epi64(lo, hi_index, hi));
    }
  }
  for (; d < depth; ++d) dst[d] = uint32_t(a[d]) | (b != nullptr ? uint32_t(b[d]) << 16 : 0u);
}

// dst[c * R + i] = word c (head dims 2c, 2c + 1) of bf16 row i (src + i * rs)
// for lanes i < n, 0 for n <= i < R: 16 x 16 blocks of words go through
// in-register transposes (bit patterns only), the tail word by word.
template <int R>
SWA_INLINE void pack_pair_lanes(const uint16_t* src, int64_t rs, int64_t n, int64_t pairs, uint32_t* dst) {
  using S = Simd<float, 64>;
  using vec = typename S::vec;
  constexpr int L = S::kLanes;
  const int64_t c_vec = pairs / L * L;
  for (int64_t i0 = 0; i0 < R; i0 += L) {
    for (int64_t c0 = 0; c0 < c_vec; c0 += L) {
      vec x[L];  // (L rows, L words), then (L words, L rows)
#pragma GCC unroll 64
      for (int i = 0; i < L; ++i) {
        if (i0 + i < n) std::memcpy(&x[i], src + (i0 + i) * rs + 2 * c0, sizeof(vec));
        else x[i] = S::zero();
      }
      S::transpose(x);
#pragma GCC unroll 64
      for (int c = 0; c < L; ++c) std::memcpy(dst + (c0 + c) * R + i0, &x[c], sizeof(vec));
    }
  }
  for (int64_t c = c_vec; c < pairs; ++c) {
    for (int64_t i = 0; i < R; ++i) {
      uint32_t word = 0;
      if (i < n) std::memcpy(&word, src + i * rs + 2 * c, sizeof(word));
      dst[c * R + i] = word;
    }
  }
}

#else  // declarations only: the kernels' bf16 branches are never instantiated

template <int NJ, int NV, class Vec>
void dot_scores(const uint16_t*, int64_t, int64_t, const uint32_t*, int64_t, Vec (&)[NJ][NV]);
template <int ND, int kMaxNV>
void value_block_bf16(int, const uint32_t*, int64_t, const uint32_t*, int64_t, int64_t, float*, int64_t);
template <class Vec>
Vec round_to_bf16(Vec);
template <bool = false, class Vec>
void store_bf16_pairs(uint32_t*, Vec, Vec);
template <int = 0>
void interleave_rows_bf16(const uint16_t*, const uint16_t*, int64_t, uint32_t*);
template <int R>
void pack_pair_lanes(const uint16_t*, int64_t, int64_t, int64_t, uint32_t*);
template <int = 0>
void pair_rows_bf16(const uint32_t*, int64_t, const uint32_t*, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
template <class Vec>
void store_adjacent_bf16_pairs(uint32_t*, Vec);

#endif  // x86

}  // namespace swa::cpu::SWA_CPU_ISA_NS
