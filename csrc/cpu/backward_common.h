// What the CPU backward's two passes share (cpu/backward_kernel.h): the
// score transform, the row sources, the lane sums. Included by the per-ISA
// translation units only (cpu/isa.h).
#pragma once

#include "cpu/backward_problem.h"
#include "cpu/forward_kernel.h"
#include "cpu/lane_tile.h"
#include "cpu/simd.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

using SWA_KERNEL_NS::Band;

// What the two passes share: the score transform and the row sources.
template <class Cfg, class T>
struct BackwardCommon {
  using Tile = LaneTile<Cfg, T>;
  using S = typename Tile::S;
  using vec = typename S::vec;
  static constexpr int L = Tile::L;
  static constexpr int R = Tile::R;
  static constexpr int kVecs = Tile::kVecs;
  static constexpr int64_t kItems = kBackwardTileItems;

  const BackwardProblem& p;
  const int64_t D;
  const T scale2;   // softmax scale * log2(e): the scale of the base-2 scores
  const T softcap;  // 0: none

  SWA_KERNEL_NS::Band band;        // the task's band (its sequence's when packed)
  int64_t q_row0 = 0, k_row0 = 0;  // the task's sequence's first query / key row

  explicit BackwardCommon(const BackwardProblem& prob)
      : p(prob), D(prob.head_dim), scale2(T(prob.scale * kLog2e)), softcap(T(prob.softcap)), band(prob.band) {}

  // The spot of a task (dQ pass: by query tiles; dK/dV: by key tiles), with
  // the band and row offsets of its sequence set.
  SWA_INLINE TaskSpot enter(int64_t task, bool by_keys) {
    const TaskSpot t = by_keys ? task_spot(task, p.heads_kv, p.n_blocks, p.seqs, p.k_task_begin, R, true)
                               : task_spot(task, p.heads_q, p.m_blocks, p.seqs, p.q_task_begin, R, false);
    band = sequence_band(p.band, p.seqs, t.seq);
    // A dQ task is one query head's: its own window. A dK/dV task keeps the
    // union and narrows it per query head of the group (run_tile).
    if (!by_keys) band = p.head_windows.of_head(band, t.head);
    q_row0 = t.seq < 0 ? 0 : p.seqs.cu_q[t.seq];
    k_row0 = t.seq < 0 ? 0 : p.seqs.cu_k[t.seq];
    return t;
  }

  static constexpr bool is_16bit(c10::ScalarType t) { return t == c10::kHalf || t == c10::kBFloat16; }

  // Under softcap, the base-2 score s of the uncapped natural score x becomes
  // that of c tanh(x / c), and dcap receives the derivative 1 - tanh^2.
  SWA_INLINE vec cap(vec s, vec& dcap) const {
    for (int i = 0; i < L; ++i) {
      const T t = std::tanh(s[i] * T(kLn2) / softcap);
      s[i] = softcap * t * T(kLog2e);
      dcap[i] = T(1) - t * t;
    }
    return s;
  }

  // dS from the score s (base 2, uncapped), dP, the lane mask and the row
  // statistics: P = 2^(s' - lse2), dS = P (dP - delta) [* (1 - tanh^2)],
  // where s' is s capped and masked (-inf outside the band: P = 0, dS = 0).
  // Outside the band dS is set to 0, not computed as 0 * (dP - delta): a
  // lane's key that its row does not see may hold NaN or inf (dP NaN), and it
  // must not reach dK through 0 * NaN.
  template <bool kMasked, int kExpDegree = 6>
  SWA_INLINE vec score_gradient(vec s, vec dp, typename S::mask visible, vec lse2, vec delta, vec& pr) const {
    vec dcap;
    if (softcap > T(0)) s = cap(s, dcap);
    if constexpr (kMasked) s = S::select(visible, s, S::set1(-std::numeric_limits<T>::infinity()));
    pr = S::template exp2_nonpositive<kExpDegree>(s - lse2);
    vec ds = pr * (dp - delta);
    if (softcap > T(0)) ds *= dcap;
    if constexpr (kMasked) ds = S::select(visible, ds, S::zero());
    return ds;
  }

  // Rows [n0, n1) of a head (row stride rs) as T rows: in place for T
  // inputs, else converted into buf; returns the first row and sets out_rs.
  template <class In>
  SWA_INLINE const T* rows_of(const In* head, int64_t rs, int64_t n0, int64_t n1, T* buf, int64_t& out_rs) const {
    if constexpr (std::is_same_v<In, T>) {
      out_rs = rs;
      return head + n0 * rs;
    } else {
      convert_rows<Cfg, T>(head, rs, n0, n1, D, buf);
      out_rs = D;
      return buf;
    }
  }

  // acc[(j - acc_row0) * acc_rs + d] += sum over lanes r in [r0, r1) of coef[(j - n0) * R + r]
  // * rows[r * rs + d], items j in [j0, j1) of the block at n0: a product
  // that sums over the lanes, as rank-1 updates with the head dim in the
  // vectors, blocks of Cfg::kNJ items by Cfg::kNV vectors of dims in
  // registers (the tails smaller, the last D % L dims scalar).
  SWA_INLINE void lane_sum_update(const T* coef, int64_t n0, int64_t j0, int64_t j1, int64_t r0, int64_t r1,
                                  const T* rows, int64_t rs, T* acc, int64_t acc_rs, int64_t acc_row0 = 0) const {
    const int64_t d_vec = D / L * L;
    auto dims = [&](auto nj, int64_t j) {  // items [j, j + NJ), every dim
      constexpr int NJ = decltype(nj)::value;
      const T* c = coef + (j - n0) * R;
      T* a = acc + (j - acc_row0) * acc_rs;
      int64_t d = 0;
      for (; d + Cfg::kNV * L <= d_vec; d += Cfg::kNV * L) lane_sum_micro<NJ, Cfg::kNV>(c, r0, r1, rows, rs, a, acc_rs, d);
      switch ((d_vec - d) / L) {
        case 1: lane_sum_micro<NJ, 1>(c, r0, r1, rows, rs, a, acc_rs, d); break;
        case 2: if constexpr (Cfg::kNV > 2) lane_sum_micro<NJ, 2>(c, r0, r1, rows, rs, a, acc_rs, d); break;
        case 3: if constexpr (Cfg::kNV > 3) lane_sum_micro<NJ, 3>(c, r0, r1, rows, rs, a, acc_rs, d); break;
        default: break;
      }
      for (int i = 0; i < NJ; ++i) {
        for (d = d_vec; d < D; ++d) {
          T x = a[i * acc_rs + d];
          for (int64_t r = r0; r < r1; ++r) x += c[i * R + r] * rows[r * rs + d];
          a[i * acc_rs + d] = x;
        }
      }
    };
    int64_t j = j0;
    for (; j + Cfg::kNJ <= j1; j += Cfg::kNJ) dims(std::integral_constant<int, Cfg::kNJ>(), j);
    for (; j < j1; ++j) dims(std::integral_constant<int, 1>(), j);
  }

  // lane_sum_update's register block: items [0, NJ) (coef rows R apart, acc
  // rows acc_rs apart) by the NV vectors of dims from d.
  template <int NJ, int NV>
  SWA_INLINE static void lane_sum_micro(const T* coef, int64_t r0, int64_t r1, const T* rows, int64_t rs, T* acc,
                                        int64_t acc_rs, int64_t d) {
    vec x[NJ][NV];  // (NJ items, NV vectors of dims)
#pragma GCC unroll 8
    for (int i = 0; i < NJ; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) x[i][v] = S::load(acc + i * acc_rs + d + v * L);
    for (int64_t r = r0; r < r1; ++r) {
      vec row[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) row[v] = S::load(rows + r * rs + d + v * L);
#pragma GCC unroll 8
      for (int i = 0; i < NJ; ++i) {
        const vec w = S::set1(coef[i * R + r]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) x[i][v] += w * row[v];
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NJ; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) S::store(acc + i * acc_rs + d + v * L, x[i][v]);
  }

  // Row r of head h of batch b of the [B, Hq, Sq] statistics buffer.
  SWA_INLINE T* stats(void* buffer, int64_t b, int64_t h) const {
    return static_cast<T*>(buffer) + (b * p.heads_q + h) * p.seqlen_q + q_row0;
  }
};

}  // namespace swa::cpu::SWA_CPU_ISA_NS
