// Register-blocked products of the CPU forward, with the query rows of a tile
// in vector lanes (a tile of R rows is R / kLanes vectors). The transposed
// layouts put one query row per lane, so the softmax needs no horizontal
// reductions and a vector that sees no key of a run is simply not computed:
//   score_micro: S^T[j][r]  = sum_d K[j][d] Q^T[d][r]   NJ keys x NV vectors
//   value_micro: O^T[d][r] += sum_j V[j][d] P^T[j][r]   ND dims x NV vectors
// K and V rows are read in place (any row stride, unit stride along d); each
// of their scalars is broadcast against NV vectors of Q^T / P^T.
#pragma once

#include "cpu/simd.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

// acc[j][v] (j < NJ, v < NV) = row j of K against vectors v of qt (depth x
// ld_q); once inlined, acc lives in registers.
template <class S, int NJ, int NV>
SWA_INLINE void score_acc(const typename S::scalar* k, int64_t k_stride, int64_t depth,
                          const typename S::scalar* qt, int64_t ld_q, typename S::vec (&acc)[NJ][NV]) {
  using vec = typename S::vec;
  constexpr int L = S::kLanes;
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[j][v] = S::zero();
  for (int64_t d = 0; d < depth; ++d) {
    vec q[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) q[v] = S::load(qt + d * ld_q + v * L);
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) {
      const vec kb = S::set1(k[j * k_stride + d]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[j][v] += kb * q[v];
    }
  }
}

// st[j * ld_s + v * kLanes] (j < NJ, v < NV) = row j of K against vectors
// v of qt (depth x ld_q); with vmax, also vmax[v] = max(vmax[v], max_j st[j][v]).
template <class S, int NJ, int NV>
SWA_INLINE void score_micro(const typename S::scalar* k, int64_t k_stride, int64_t depth,
                            const typename S::scalar* qt, int64_t ld_q, typename S::scalar* st,
                            int64_t ld_s, typename S::vec* vmax) {
  using vec = typename S::vec;
  constexpr int L = S::kLanes;
  vec acc[NJ][NV];  // (NJ keys, NV row vectors)
  score_acc<S, NJ, NV>(k, k_stride, depth, qt, ld_q, acc);
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) S::store(st + j * ld_s + v * L, acc[j][v]);
  if (vmax != nullptr) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      vec mx = vmax[v];
#pragma GCC unroll 8
      for (int j = 0; j < NJ; ++j) mx = S::max(mx, acc[j][v]);
      vmax[v] = mx;
    }
  }
}

// ot[dd * ld_o + v * kLanes] (dd < ND, v < NV) += sum over keys j < n of
// v_rows[j * v_stride + dd] * pt[j * ld_p + v * kLanes].
template <class S, int ND, int NV>
SWA_INLINE void value_micro(const typename S::scalar* pt, int64_t ld_p, const typename S::scalar* v_rows,
                            int64_t v_stride, int64_t n, typename S::scalar* ot, int64_t ld_o) {
  using vec = typename S::vec;
  constexpr int L = S::kLanes;
  vec acc[ND][NV];  // (ND dims, NV row vectors)
#pragma GCC unroll 8
  for (int d = 0; d < ND; ++d)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[d][v] = S::load(ot + d * ld_o + v * L);
  for (int64_t j = 0; j < n; ++j) {
    vec p[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) p[v] = S::load(pt + j * ld_p + v * L);
#pragma GCC unroll 8
    for (int d = 0; d < ND; ++d) {
      const vec vb = S::set1(v_rows[j * v_stride + d]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[d][v] += vb * p[v];
    }
  }
#pragma GCC unroll 8
  for (int d = 0; d < ND; ++d)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) S::store(ot + d * ld_o + v * L, acc[d][v]);
}

// The same products for a run-time number of vectors nv in [1, kMaxNV]
// (kMaxNV <= 4): one instantiation per count.
template <class S, int NJ, int kMaxNV>
SWA_INLINE void score_block(int nv, const typename S::scalar* k, int64_t k_stride, int64_t depth,
                            const typename S::scalar* qt, int64_t ld_q, typename S::scalar* st,
                            int64_t ld_s, typename S::vec* vmax) {
  static_assert(kMaxNV >= 1 && kMaxNV <= 4);
  switch (nv) {
    case 1: score_micro<S, NJ, 1>(k, k_stride, depth, qt, ld_q, st, ld_s, vmax); break;
    case 2: if constexpr (kMaxNV >= 2) score_micro<S, NJ, 2>(k, k_stride, depth, qt, ld_q, st, ld_s, vmax); break;
    case 3: if constexpr (kMaxNV >= 3) score_micro<S, NJ, 3>(k, k_stride, depth, qt, ld_q, st, ld_s, vmax); break;
    case 4: if constexpr (kMaxNV >= 4) score_micro<S, NJ, 4>(k, k_stride, depth, qt, ld_q, st, ld_s, vmax); break;
  }
}

template <class S, int ND, int kMaxNV>
SWA_INLINE void value_block(int nv, const typename S::scalar* pt, int64_t ld_p,
                            const typename S::scalar* v_rows, int64_t v_stride, int64_t n,
                            typename S::scalar* ot, int64_t ld_o) {
  static_assert(kMaxNV >= 1 && kMaxNV <= 4);
  switch (nv) {
    case 1: value_micro<S, ND, 1>(pt, ld_p, v_rows, v_stride, n, ot, ld_o); break;
    case 2: if constexpr (kMaxNV >= 2) value_micro<S, ND, 2>(pt, ld_p, v_rows, v_stride, n, ot, ld_o); break;
    case 3: if constexpr (kMaxNV >= 3) value_micro<S, ND, 3>(pt, ld_p, v_rows, v_stride, n, ot, ld_o); break;
    case 4: if constexpr (kMaxNV >= 4) value_micro<S, ND, 4>(pt, ld_p, v_rows, v_stride, n, ot, ld_o); break;
  }
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS
