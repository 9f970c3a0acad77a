// Banded products with the rows of one operand in vector lanes. A LaneTile is
// kTileLanes "lanes" (query rows in the forward and dQ passes, keys in the
// dK/dV pass) against a stream of "items" (keys, resp. query rows): lane i
// sees the items [lane_begin[i], lane_end[i]), mostly non-decreasing in i. With
// the lanes in vectors there are no horizontal reductions, and a vector only
// meets the items its lanes see:
//   runs      the items of a block cut where the set of vectors seeing them
//             changes; a run is computed for the vectors that see some of it
//   full      the items every lane of a vector sees (no lane mask needed)
//   products  st[j][lanes]  = sum_d rows[j][d] packed[d][lanes]  (score_micro)
//   accumulate acc[d][lanes] += sum_j rows[j][d] pt[j][lanes]      (value_micro)
// Included by the per-ISA translation units only (cpu/isa.h); Cfg gives the
// register blocking (kBytes vector width, kNJ items per product micro-kernel,
// kND dims per accumulate micro-kernel, kNV vectors per micro-kernel).
#pragma once

#include "cpu/forward_problem.h"
#include "cpu/micro_gemm.h"
#include "cpu/simd.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

// A 64-byte aligned array of n T, released at scope exit.
template <class T>
struct AlignedBuffer {
  explicit AlignedBuffer(int64_t n) {
    size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
    data = static_cast<T*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data != nullptr, "swa::attention: out of memory for a ", bytes, "-byte CPU buffer");
  }
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data;
};

// Items [begin, end) of a block seen by the lane vectors [v_begin, v_end).
struct LaneRun {
  int64_t begin, end;
  int v_begin, v_end;
};

template <class Cfg, class T>
struct LaneTile {
  using S = Simd<T, Cfg::kBytes>;
  using vec = typename S::vec;
  static constexpr int L = S::kLanes;
  static constexpr int R = int(kTileLanes);
  static constexpr int kVecs = R / L;
  static_assert(R % L == 0);

  int64_t lanes = 0;  // valid lanes; the others see nothing
  int nvec = 0;       // vectors holding valid lanes
  int64_t lane_begin[R], lane_end[R];
  int64_t vec_begin[kVecs], vec_end[kVecs];    // items some lane of the vector sees
  int64_t full_begin[kVecs], full_end[kVecs];  // items every lane of the vector sees
  LaneRun runs[2 * kVecs + 2];
  int nruns = 0;
  // The max over a block, taken from the product accumulators for the items
  // a vector sees in full ([max_begin, max_end)); see products().
  vec block_max[kVecs];
  int64_t max_begin[kVecs], max_end[kVecs];

  // Vector ranges from lane_begin / lane_end of lanes [0, lanes).
  SWA_INLINE void finish(int64_t valid_lanes) {
    lanes = valid_lanes;
    nvec = int((lanes + L - 1) / L);
    for (int v = 0; v < nvec; ++v) {
      const int64_t i0 = v * L, i1 = std::min<int64_t>(i0 + L, lanes);
      int64_t begin = std::numeric_limits<int64_t>::max(), end = std::numeric_limits<int64_t>::min();
      for (int64_t i = i0; i < i1; ++i) {
        if (lane_end[i] <= lane_begin[i]) continue;  // the lane sees nothing
        begin = std::min(begin, lane_begin[i]);
        end = std::max(end, lane_end[i]);
      }
      vec_begin[v] = begin < end ? begin : 0;
      vec_end[v] = begin < end ? end : 0;
      // The items every lane sees: the latest begin to the earliest end (the
      // last lane's begin and the first lane's end when both grow with the
      // lane; the dK/dV pass's lanes at the end of the sink tokens do not).
      int64_t all_begin = std::numeric_limits<int64_t>::min(), all_end = std::numeric_limits<int64_t>::max();
      for (int64_t i = i0; i < i1; ++i) {
        all_begin = std::max(all_begin, lane_begin[i]);
        all_end = std::min(all_end, lane_end[i]);
      }
      const bool complete = i1 - i0 == L && all_begin < all_end;
      full_begin[v] = complete ? all_begin : 1;
      full_end[v] = complete ? all_end : 0;
    }
  }

  // The runs of items [n0, n1): breakpoints at every vector's first and last item.
  SWA_INLINE void make_runs(int64_t n0, int64_t n1) {
    int64_t cuts[2 * kVecs + 2];
    int ncuts = 0;
    cuts[ncuts++] = n0;
    cuts[ncuts++] = n1;
    for (int v = 0; v < nvec; ++v) {
      if (vec_begin[v] > n0 && vec_begin[v] < n1) cuts[ncuts++] = vec_begin[v];
      if (vec_end[v] > n0 && vec_end[v] < n1) cuts[ncuts++] = vec_end[v];
    }
    std::sort(cuts, cuts + ncuts);
    nruns = 0;
    for (int c = 0; c + 1 < ncuts; ++c) {
      const int64_t a = cuts[c], b = cuts[c + 1];
      if (a == b) continue;
      int v0 = nvec, v1 = 0;
      for (int v = 0; v < nvec; ++v) {
        if (vec_begin[v] <= a && a < vec_end[v]) {
          v0 = std::min(v0, v);
          v1 = v + 1;
        }
      }
      if (v0 < v1) runs[nruns++] = LaneRun{a, b, v0, v1};
    }
  }

  // Does every lane of vector v see the items [a, b)?
  SWA_INLINE bool full(int v, int64_t a, int64_t b) const { return full_begin[v] <= a && b <= full_end[v]; }

  // Lane i of vector v sees item j iff rel_begin[i] <= j - n0 < rel_end[i]
  // (clamped to [-1, span + 1], exact in T; invalid lanes see nothing).
  SWA_INLINE void window(int v, int64_t n0, int64_t span, vec& rel_begin, vec& rel_end) const {
    rel_begin = S::zero();
    rel_end = S::zero();
    for (int i = 0; i < L && v * L + i < lanes; ++i) {
      rel_begin[i] = T(std::clamp<int64_t>(lane_begin[v * L + i] - n0, -1, span + 1));
      rel_end[i] = T(std::clamp<int64_t>(lane_end[v * L + i] - n0, -1, span + 1));
    }
  }

  // Calls f(run, v, j0, j1) for the computed pairs of the block not in
  // block_max yet: items [j0, j1) of each run against each of its vectors v.
  template <class F>
  SWA_INLINE void for_unmaxed(F&& f) const {
    for (int ri = 0; ri < nruns; ++ri) {
      const LaneRun& run = runs[ri];
      for (int v = run.v_begin; v < run.v_end; ++v) {
        // [run.begin, run.end) minus [max_begin, max_end) = [a0, a1) + [b0, b1).
        const int64_t a0 = run.begin, a1 = std::clamp(max_begin[v], run.begin, run.end);
        const int64_t b0 = std::clamp(max_end[v], a1, run.end), b1 = run.end;
        if (a0 < a1) f(run, v, a0, a1);
        if (b0 < b1) f(run, v, b0, b1);
      }
    }
  }

  // ---- products -------------------------------------------------------

  // st[(j - n0) * R + lanes of v..v+nv] for items [j, j + NJ); with fuse_max the
  // max of the vectors that see all these items in full goes to block_max.
  template <int NJ>
  SWA_INLINE void product_chunk(int64_t n0, const T* rows, int64_t rs, int64_t depth, const T* packed,
                                T* st, int64_t j, int v, int nv, bool fuse_max) {
    vec chunk_max[Cfg::kNV];  // (nv)
    for (int c = 0; c < nv; ++c) chunk_max[c] = S::set1(-std::numeric_limits<T>::infinity());
    score_block<S, NJ, Cfg::kNV>(nv, rows + (j - n0) * rs, rs, depth, packed + v * L, R,
                                 st + (j - n0) * R + v * L, R, fuse_max ? chunk_max : nullptr);
    if (!fuse_max) return;
    for (int c = 0; c < nv; ++c) {
      if (full(v + c, j, j + NJ)) {
        block_max[v + c] = S::max(block_max[v + c], chunk_max[c]);
        // The chunks a vector sees in full are consecutive: one interval.
        max_begin[v + c] = std::min(max_begin[v + c], j);
        max_end[v + c] = std::max(max_end[v + c], j + NJ);
      }
    }
  }

  // st = rows packed over the runs of the block at n0 (row j at rows +
  // (j - n0) * rs; packed (depth, R), st (items, R)). Resets the block max;
  // with fuse_max fills it for the items vectors see in full.
  SWA_OUTLINE void products(int64_t n0, const T* rows, int64_t rs, int64_t depth, const T* packed, T* st,
                           bool fuse_max) {
    for (int v = 0; v < nvec; ++v) {
      block_max[v] = S::set1(-std::numeric_limits<T>::infinity());
      max_begin[v] = std::numeric_limits<int64_t>::max();
      max_end[v] = std::numeric_limits<int64_t>::min();
    }
    for (int ri = 0; ri < nruns; ++ri) {
      const LaneRun& run = runs[ri];
      for (int v = run.v_begin; v < run.v_end; v += Cfg::kNV) {
        const int nv = std::min(Cfg::kNV, run.v_end - v);
        int64_t j = run.begin;
        for (; j + Cfg::kNJ <= run.end; j += Cfg::kNJ)
          product_chunk<Cfg::kNJ>(n0, rows, rs, depth, packed, st, j, v, nv, fuse_max);
        if constexpr (Cfg::kNJ > 2) {
          for (; j + 2 <= run.end; j += 2) product_chunk<2>(n0, rows, rs, depth, packed, st, j, v, nv, fuse_max);
        }
        for (; j < run.end; ++j) product_chunk<1>(n0, rows, rs, depth, packed, st, j, v, nv, fuse_max);
      }
    }
  }

  // acc (depth, R) += rows^T pt over the runs of the block at n0 (row j at
  // rows + (j - n0) * rs; pt (items, R)).
  SWA_OUTLINE void accumulate(int64_t n0, const T* pt, const T* rows, int64_t rs, int64_t depth, T* acc) const {
    for (int ri = 0; ri < nruns; ++ri) {
      const LaneRun& run = runs[ri];
      const int64_t n = run.end - run.begin;
      const T* p = pt + (run.begin - n0) * R;
      const T* r = rows + (run.begin - n0) * rs;
      for (int v = run.v_begin; v < run.v_end; v += Cfg::kNV) {
        const int nv = std::min(Cfg::kNV, run.v_end - v);
        int64_t d = 0;
        for (; d + Cfg::kND <= depth; d += Cfg::kND)
          value_block<S, Cfg::kND, Cfg::kNV>(nv, p + v * L, R, r + d, rs, n, acc + d * R + v * L, R);
        if constexpr (Cfg::kND > 2) {
          for (; d + 2 <= depth; d += 2)
            value_block<S, 2, Cfg::kNV>(nv, p + v * L, R, r + d, rs, n, acc + d * R + v * L, R);
        }
        for (; d < depth; ++d) value_block<S, 1, Cfg::kNV>(nv, p + v * L, R, r + d, rs, n, acc + d * R + v * L, R);
      }
    }
  }
};

// ---- moving rows in and out of lane-major buffers ------------------------

// Whole vectors of In rows load into / store from vectors of S: In = T, and
// 16-bit rows into float vectors where the build has the conversions (bf16:
// shifts, in the AVX-512 and AVX2 builds; fp16: vcvtph2ps / vcvtps2ph, in the
// AVX-512 build). Elsewhere rows go element by element.
template <class S, class In>
constexpr bool kVectorRows =
    std::is_same_v<In, typename S::scalar> ||
#if defined(__x86_64__) || defined(__i386__)
    (std::is_same_v<typename S::scalar, float> &&
     ((std::is_same_v<In, c10::BFloat16> && (sizeof(typename S::vec) == 64 || sizeof(typename S::vec) == 32)) ||
      (std::is_same_v<In, c10::Half> && sizeof(typename S::vec) == 64))) ||
#endif
    false;

template <class S, class In>
SWA_INLINE typename S::vec load_row(const In* src) {
  using vec = typename S::vec;
  if constexpr (std::is_same_v<In, typename S::scalar>) {
    return S::load(src);
  } else {
#if defined(__x86_64__) || defined(__i386__)
    if constexpr (sizeof(vec) == 64 && std::is_same_v<In, c10::Half>) {
      return vec(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))));
    } else if constexpr (sizeof(vec) == 64) {  // bf16: the high half of a float
      const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
      return vec(_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    } else {
      const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
      return vec(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
#endif
  }
}

// Rounds to nearest even, as c10's conversions do (a NaN stays a NaN).
template <class S, class In>
SWA_INLINE void store_row(In* dst, typename S::vec x) {
  if constexpr (std::is_same_v<In, typename S::scalar>) {
    S::store(dst, x);
  } else {
#if defined(__x86_64__) || defined(__i386__)
    using vec = typename S::vec;
    if constexpr (sizeof(vec) == 64 && std::is_same_v<In, c10::Half>) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtps_ph(__m512(x), _MM_FROUND_TO_NEAREST_INT));
    } else if constexpr (sizeof(vec) == 64) {
      const __m512i bits = _mm512_castps_si512(__m512(x));
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(__m512(x), __m512(x), _CMP_UNORD_Q);
      r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(r));
    } else {
      const __m256i bits = _mm256_castps_si256(__m256(x));
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(__m256(x), __m256(x), _CMP_UNORD_Q));
      r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
      // 8 x 32-bit -> 8 x 16-bit (values < 2^16: packus is exact)
      const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), packed);
    }
#endif
  }
}

// dst[d * R + i] = scale * src[i * rs + d] for lanes i < n, 0 for n <= i < R.
// L x L blocks go through in-register transposes; 16-bit inputs and a
// head-dim tail element by element.
template <class Cfg, class T, class In>
SWA_INLINE void pack_lanes(const In* src, int64_t rs, int64_t n, int64_t depth, T scale, T* dst) {
  using S = Simd<T, Cfg::kBytes>;
  using vec = typename S::vec;
  constexpr int L = S::kLanes;
  constexpr int R = int(kTileLanes);
  int64_t d_vec = 0;
  if constexpr (kVectorRows<S, In>) {
    d_vec = depth / L * L;
    const vec sc = S::set1(scale);
    for (int64_t i0 = 0; i0 < R; i0 += L) {
      if (i0 >= n) {  // lanes past the rows: zeros, no transpose
        for (int64_t d = 0; d < d_vec; ++d) S::store(dst + d * R + i0, S::zero());
        continue;
      }
      const bool whole = i0 + L <= n;  // the common case: no per-row test in the loop
      for (int64_t d0 = 0; d0 < d_vec; d0 += L) {
        vec x[L];  // (L lanes, L dims), then (L dims, L lanes)
        if (whole) {
#pragma GCC unroll 64
          for (int i = 0; i < L; ++i) x[i] = load_row<S>(src + (i0 + i) * rs + d0) * sc;
        } else {
#pragma GCC unroll 64
          for (int i = 0; i < L; ++i) x[i] = i0 + i < n ? load_row<S>(src + (i0 + i) * rs + d0) * sc : S::zero();
        }
        S::transpose(x);
#pragma GCC unroll 64
        for (int c = 0; c < L; ++c) S::store(dst + (d0 + c) * R + i0, x[c]);
      }
    }
  }
  for (int64_t d = d_vec; d < depth; ++d) {
    for (int64_t i = 0; i < n; ++i) dst[d * R + i] = T(src[i * rs + d]) * scale;
    for (int64_t i = n; i < R; ++i) dst[d * R + i] = T(0);
  }
}

// dst[i * rs + d] = src[d * R + i] * lane_scale[i] for lanes i < n (lane_scale
// per vector: lane_scale[i / L][i % L]).
template <class Cfg, class T, class In>
SWA_INLINE void unpack_lanes(const T* src, const typename Simd<T, Cfg::kBytes>::vec* lane_scale, int64_t n,
                             int64_t depth, In* dst, int64_t rs) {
  using S = Simd<T, Cfg::kBytes>;
  using vec = typename S::vec;
  constexpr int L = S::kLanes;
  constexpr int R = int(kTileLanes);
  const int64_t d_vec = kVectorRows<S, In> ? depth / L * L : 0;
  for (int64_t i0 = 0, v = 0; i0 < n; i0 += L, ++v) {
    if constexpr (kVectorRows<S, In>) {
      for (int64_t d0 = 0; d0 < d_vec; d0 += L) {
        vec x[L];  // (L dims, L lanes), then (L lanes, L dims)
#pragma GCC unroll 64
        for (int c = 0; c < L; ++c) x[c] = S::load(src + (d0 + c) * R + i0) * lane_scale[v];
        S::transpose(x);
#pragma GCC unroll 64
        for (int i = 0; i < L; ++i)
          if (i0 + i < n) store_row<S>(dst + (i0 + i) * rs + d0, x[i]);
      }
    }
    for (int i = 0; i < L && i0 + i < n; ++i) {
      In* o = dst + (i0 + i) * rs;
      for (int64_t d = d_vec; d < depth; ++d) o[d] = In(src[d * R + i0 + i] * lane_scale[v][i]);
    }
  }
}

// Rows [n0, n1) of a [S, depth] matrix (row stride rs) as T, into dst (n,
// depth); whole vectors where the build converts In (kVectorRows).
template <class Cfg, class T, class In>
SWA_INLINE void convert_rows(const In* src, int64_t rs, int64_t n0, int64_t n1, int64_t depth, T* dst) {
  using S = Simd<T, Cfg::kBytes>;
  for (int64_t j = n0; j < n1; ++j) {
    int64_t d = 0;
    if constexpr (kVectorRows<S, In>) {
      for (; d + S::kLanes <= depth; d += S::kLanes) S::store(dst + (j - n0) * depth + d, load_row<S>(src + j * rs + d));
    }
    for (; d < depth; ++d) dst[(j - n0) * depth + d] = T(src[j * rs + d]);
  }
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS
