// A LaneTile's products over bf16 pairs (cpu/micro_gemm_bf16.h), the steps
// of the CPU forward's AVX512-BF16 path that replace LaneTile::products and
// LaneTile::accumulate (cpu/lane_tile.h) for bf16 inputs:
//   pair_products    st[j][lanes] = scale sum_c K[j][pair c] QP[c][lanes]
//   pair_accumulate  O^T[d][lanes] += sum_c VP[c][d] PP[c][lanes], with PP
//                    packed from st's P^T (pairs of keys)
// Only the AVX-512 BF16 build instantiates them.
#pragma once

#include "cpu/lane_tile.h"
#include "cpu/micro_gemm_bf16.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

// Step 2a of the softcap path: S^T of the block's runs at n0 into st (keys,
// R), K rows of bf16 bits at rows + (j - n0) * rs, qp (pairs, R). Resets the
// block max and leaves it to the softmax (as LaneTile::products without
// fuse_max).
template <class Cfg>
SWA_OUTLINE void pair_products(LaneTile<Cfg, float>& tile, int64_t n0, const uint16_t* rows, int64_t rs,
                               int64_t pairs, const uint32_t* qp, float scale, float* st) {
  using Tile = LaneTile<Cfg, float>;
  using S = typename Tile::S;
  using vec = typename S::vec;
  constexpr int L = Tile::L, R = Tile::R;
  for (int v = 0; v < tile.nvec; ++v) {
    tile.block_max[v] = S::set1(-std::numeric_limits<float>::infinity());
    tile.max_begin[v] = std::numeric_limits<int64_t>::max();
    tile.max_end[v] = std::numeric_limits<int64_t>::min();
  }
  auto run_chunks = [&](auto nv, const LaneRun& run, int v) {
    constexpr int NV = decltype(nv)::value;
    auto chunk = [&](auto nj, int64_t j) {
      constexpr int NJ = decltype(nj)::value;
      vec acc[NJ][NV];  // (NJ keys, NV row vectors)
      dot_scores<NJ, NV>(rows + (j - n0) * rs, rs, pairs, qp + v * L, R, acc);
#pragma GCC unroll 8
      for (int i = 0; i < NJ; ++i)
#pragma GCC unroll 8
        for (int c = 0; c < NV; ++c) S::store(st + (j + i - n0) * R + (v + c) * L, acc[i][c] * S::set1(scale));
    };
    int64_t j = run.begin;
    for (; j + Cfg::kNJ <= run.end; j += Cfg::kNJ) chunk(std::integral_constant<int, Cfg::kNJ>(), j);
    for (; j < run.end; ++j) chunk(std::integral_constant<int, 1>(), j);
  };
  for (int ri = 0; ri < tile.nruns; ++ri) {
    const LaneRun& run = tile.runs[ri];
    for (int v = run.v_begin; v < run.v_end; v += Cfg::kNV) {
      switch (std::min(Cfg::kNV, run.v_end - v)) {
        case 1: run_chunks(std::integral_constant<int, 1>(), run, v); break;
        case 2: if constexpr (Cfg::kNV >= 2) run_chunks(std::integral_constant<int, 2>(), run, v); break;
        case 3: if constexpr (Cfg::kNV >= 3) run_chunks(std::integral_constant<int, 3>(), run, v); break;
        case 4: if constexpr (Cfg::kNV >= 4) run_chunks(std::integral_constant<int, 4>(), run, v); break;
      }
    }
  }
}

// Step 2c: ot (depth, R) += V^T P^T over pairs of keys of the block at n0;
// st (keys, R) holds P^T as bf16 values (float32; kRound: any float32,
// rounded to bf16 here), vp (pairs, depth) the V rows of key pairs, pp
// (pairs, R) is scratch. A vector's P^T holds the keys
// [p_begin, p_end) of the block (the runs it was computed in); pairs are cut
// at the rounded-out ends of those ranges, so a pair may reach one key past
// a vector's range, which then counts as P = 0.
template <class Cfg, bool kRound = false>
SWA_OUTLINE void pair_accumulate(const LaneTile<Cfg, float>& tile, int64_t n0, float* st, uint32_t* pp,
                                 const uint32_t* vp, int64_t depth, float* ot) {
  using Tile = LaneTile<Cfg, float>;
  using S = typename Tile::S;
  using vec = typename S::vec;
  constexpr int L = Tile::L, R = Tile::R, kVecs = Tile::kVecs;
  int64_t p_begin[kVecs], p_end[kVecs];
  for (int v = 0; v < tile.nvec; ++v) p_begin[v] = p_end[v] = n0;
  for (int ri = 0; ri < tile.nruns; ++ri) {
    const LaneRun& run = tile.runs[ri];
    for (int v = run.v_begin; v < run.v_end; ++v) {
      if (p_begin[v] == p_end[v]) {
        p_begin[v] = run.begin;
      } else if (p_end[v] < run.begin) {  // a gap in the vector's runs: P = 0 there
        for (int64_t j = p_end[v]; j < run.begin; ++j) S::store(st + (j - n0) * R + v * L, S::zero());
      }
      p_end[v] = run.end;
    }
  }
  // Pair runs: [c0, c1) of pairs with the row vectors [v0, v1) whose
  // rounded-out ranges meet them.
  int64_t pb[kVecs], pe[kVecs], cuts[2 * kVecs];
  int ncuts = 0;
  for (int v = 0; v < tile.nvec; ++v) {
    pb[v] = (p_begin[v] - n0) >> 1;
    pe[v] = (p_end[v] - n0 + 1) >> 1;
    if (pb[v] < pe[v]) cuts[ncuts++] = pb[v], cuts[ncuts++] = pe[v];
  }
  std::sort(cuts, cuts + ncuts);
  for (int ci = 0; ci + 1 < ncuts; ++ci) {
    const int64_t c0 = cuts[ci], c1 = cuts[ci + 1];
    if (c0 == c1) continue;
    int v0 = tile.nvec, v1 = 0;
    for (int v = 0; v < tile.nvec; ++v) {
      if (pb[v] <= c0 && c0 < pe[v]) v0 = std::min(v0, v), v1 = v + 1;
    }
    if (v0 >= v1) continue;
    for (int v = v0; v < v1; ++v) {  // PP of the pair run
      const float* sv = st + v * L;
      uint32_t* pv = pp + v * L;
      const int64_t kb = p_begin[v] - n0, ke = p_end[v] - n0;  // the vector's keys in the block
      // Pairs [ca, cb) have both keys in [kb, ke); the others are edges.
      const int64_t ca = std::clamp((kb + 1) / 2, c0, c1), cb = std::clamp(ke / 2, ca, c1);
      auto edge = [&](int64_t c) {
        const vec lo = kb <= 2 * c && 2 * c < ke ? S::load(sv + 2 * c * R) : S::zero();
        const vec hi = kb <= 2 * c + 1 && 2 * c + 1 < ke ? S::load(sv + (2 * c + 1) * R) : S::zero();
        store_bf16_pairs<kRound>(pv + c * R, lo, hi);
      };
      for (int64_t c = c0; c < ca; ++c) edge(c);
      for (int64_t c = ca; c < cb; ++c)
        store_bf16_pairs<kRound>(pv + c * R, S::load(sv + 2 * c * R), S::load(sv + (2 * c + 1) * R));
      for (int64_t c = cb; c < c1; ++c) edge(c);
    }
    for (int v = v0; v < v1; v += Cfg::kNV) {  // O^T += VP^T PP
      const int nv = std::min(Cfg::kNV, v1 - v);
      const uint32_t* pc = pp + c0 * R + v * L;
      const uint32_t* vc = vp + c0 * depth;
      int64_t d = 0;
      for (; d + Cfg::kND <= depth; d += Cfg::kND)
        value_block_bf16<Cfg::kND, Cfg::kNV>(nv, pc, R, vc + d, depth, c1 - c0, ot + d * R + v * L, R);
      for (; d < depth; ++d) value_block_bf16<1, Cfg::kNV>(nv, pc, R, vc + d, depth, c1 - c0, ot + d * R + v * L, R);
    }
  }
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS
