// The CPU forward kernel of swa::attention, FlashAttention-style: per task
// (batch, query head, tile of kTileLanes query rows) the keys the tile sees
// are walked in blocks of kForwardTileKeys with an online softmax, all in
// per-thread buffers:
//   1. Q^T = scale log2(e) q_tile^T                         (D, kTileLanes)
//   2. per key block: S^T = K Q^T                            (keys, kTileLanes)
//      row reference m, P^T = 2^(S^T - m), row sum l, O^T *= 2^(m_old - m)
//      O^T += V^T P^T                                       (D, kTileLanes)
//   3. out = (O^T / l)^T, lse = (m + log2 l) ln 2
// Without softcap, S^T -> P^T happens chunk by chunk in registers (probs()):
// m is then not the running max but an integer upper bound of it that only
// moves when a score exceeds it; with softcap the block's S^T is capped and
// its max taken in a separate pass (softmax()).
// Scores are kept in base 2 (log2(e) folded into the scale, as FlashAttention
// does), which makes the exponential's range reduction exact. The query rows
// are the lanes of a LaneTile (cpu/lane_tile.h): a row vector meets only the
// keys its rows see, and is masked per lane only where it sees part of a run.
// Work is O(Sq * W * D), memory O(tile) per thread; K and V rows are read in
// place for float32/float64 and converted block by block for 16-bit inputs.
// Included by the per-ISA translation units only (cpu/isa.h).
#pragma once

#include "cpu/forward_problem.h"
#include "cpu/lane_tile.h"
#include "cpu/lane_pairs.h"
#include "cpu/row_softmax.h"
#include "cpu/simd.h"

// Profiling hook of scratch builds (SWA_PROF(i): time from here on counts
// as phase i); nothing in the library.
#ifndef SWA_PROF
#define SWA_PROF(i)
#endif

namespace swa::cpu::SWA_CPU_ISA_NS {

constexpr double kLog2e = 1.4426950408889634;  // log2(e)
constexpr double kLn2 = 0.6931471805599453;    // ln(2)


// The forward kernel of one instruction set (Cfg) and accumulation type T;
// kDot: bf16 inputs through the bf16 pair products (cpu/micro_gemm_bf16.h;
// AVX512-BF16 build only, even head dims).
template <class Cfg, class T, bool kDot = false>
struct ForwardKernel {
  using Tile = LaneTile<Cfg, T>;
  using S = typename Tile::S;
  using vec = typename S::vec;
  static constexpr int L = Tile::L;
  static constexpr int R = Tile::R;
  static constexpr int kVecs = Tile::kVecs;
  static constexpr int64_t kKeys = kForwardTileKeys;
  static_assert(!kDot || (std::is_same_v<T, float> && Cfg::kBytes == 64));
  // What a K row is read as: T, or the bf16 bits of the input (kDot).
  using KRow = std::conditional_t<kDot, uint16_t, T>;

  const ForwardProblem& p;
  const int64_t D;
  const T scale;  // softmax scale * log2(e)
  // Per-thread buffers.
  AlignedBuffer<T> qt_buf, st_buf, ot_buf, kv_buf;
  T* qt;  // (D, R)      scaled Q^T
  T* st;  // (kKeys, R)  S^T, then P^T, of a key block
  T* ot;  // (D, R)      unnormalised O^T
  T* kb;  // (kKeys, D)  converted K rows (16-bit inputs)
  T* vb;  // (kKeys, D)  converted V rows (16-bit inputs)
  // kDot: bf16 pairs (cpu/micro_gemm_bf16.h) instead of qt, vb and P^T.
  AlignedBuffer<uint32_t> qp_buf, vp_buf, pp_buf;
  uint32_t* qp;  // (D / 2, R)     Q^T, unscaled: word c of each query row
  uint32_t* vp;  // (kKeys / 2, D) V rows of key pairs
  uint32_t* pp;  // (kKeys / 2, R) P^T of key pairs

  Tile tile;                  // lanes: the query rows of the task
  int64_t rows = 0;           // valid rows
  SWA_KERNEL_NS::Band band;   // the task's band (its sequence's when packed)
  int64_t q_row0 = 0, k_row0 = 0;  // the task's sequence's first query / key row
  vec m[kVecs], l[kVecs];     // running row max (or reference, see probs) and row sum
  // kDot: l adds the probabilities as rounded to bf16 (the weights of the
  // value product, so out's weights sum to 1), l_exact adds them unrounded
  // (for lse).
  vec l_exact[kVecs];
  vec m_off[kVecs];           // m where finite, else 0: the exponent offset of probs
  vec rel_begin[kVecs], rel_end[kVecs];  // the lanes' windows in the block (probs)
  // A reference raised by probs() lies this far above the scores' max.
  static constexpr T kHeadroom = T(8);
  // The exponential's polynomial (cpu/simd.h): kDot's probabilities are
  // rounded to bf16 for the value product, the lower degree is 700x finer.
  static constexpr int kExpDegree = kDot ? 4 : 6;
  // Lines fetched ahead while probs() computes (see prefetch_setup()).
  static constexpr int kStreams = 4;
  const char* pf_base[kStreams];
  int64_t pf_rs[kStreams], pf_nrows[kStreams];  // row stride in bytes, rows
  int64_t pf_row_lines = 0;                    // 64-byte lines per row
  int pf_stream = kStreams;                    // the current stream; kStreams: done
  int64_t pf_row = 0, pf_line = 0;             // next line of the stream

  SWA_INLINE explicit ForwardKernel(const ForwardProblem& prob)
      : p(prob),
        D(prob.head_dim),
        scale(T(prob.scale * kLog2e)),
        qt_buf(prob.head_dim * R),
        st_buf(kKeys * R),
        ot_buf(prob.head_dim * R),
        kv_buf(!kDot && (prob.dtype == c10::kHalf || prob.dtype == c10::kBFloat16) ? 2 * kKeys * prob.head_dim : 1),
        qp_buf(kDot ? prob.head_dim / 2 * R : 1),
        vp_buf(kDot ? kKeys / 2 * prob.head_dim : 1),
        pp_buf(kDot ? kKeys / 2 * R : 1) {
    qp = qp_buf.data;
    vp = vp_buf.data;
    pp = pp_buf.data;
    qt = qt_buf.data;
    st = st_buf.data;
    ot = ot_buf.data;
    kb = kv_buf.data;
    vb = kv_buf.data + kKeys * D;
  }

  // m, l and O^T of a new tile.
  SWA_INLINE void reset_accumulators() {
    for (int v = 0; v < kVecs; ++v) {
      m[v] = S::set1(-std::numeric_limits<T>::infinity());
      m_off[v] = S::zero();
      l[v] = S::zero();
      l_exact[v] = S::zero();
    }
    for (int64_t i = 0; i < D * R; ++i) ot[i] = T(0);
  }

  // One run of every row of [m0, m0 + rows) as the tile's lanes: the band
  // [key_begin, key_end), or the sink run [0, sink_end) (band.h). The two
  // are disjoint, so walking both adds each visible key once.
  SWA_INLINE void set_lanes(int64_t m0, bool sink_run) {
    for (int64_t r = 0; r < rows; ++r) {
      tile.lane_begin[r] = sink_run ? 0 : band.key_begin(m0 + r);
      tile.lane_end[r] = sink_run ? band.sink_end(m0 + r) : band.key_end(m0 + r);
    }
    tile.finish(rows);
  }

  // Steps 2a and 2b fused (no softcap): chunk by chunk, S^T = K Q^T stays in
  // registers, is masked where a lane does not see a key, and becomes
  // P^T = 2^(S^T - m) against a per-row reference m that is at least every
  // score so far (so P <= 1); l += row sums. The max of a block is not
  // waited for: the reference only moves when a score exceeds it (raise()),
  // and then by kHeadroom more than needed, so it settles after the first
  // chunks. (The result is the same softmax: m only shifts the exponent,
  // and lse = m + log2 l.)
  SWA_OUTLINE void probs(int64_t n0, const KRow* rows_k, int64_t rs) {
    for (int v = 0; v < tile.nvec; ++v) tile.window(v, n0, kKeys, rel_begin[v], rel_end[v]);
    for (int ri = 0; ri < tile.nruns; ++ri) {
      const LaneRun& run = tile.runs[ri];
      for (int v = run.v_begin; v < run.v_end; v += Cfg::kNV) {
        switch (std::min(Cfg::kNV, run.v_end - v)) {
          case 1: probs_run<1>(n0, rows_k, rs, run, v); break;
          case 2: if constexpr (Cfg::kNV >= 2) probs_run<2>(n0, rows_k, rs, run, v); break;
          case 3: if constexpr (Cfg::kNV >= 3) probs_run<3>(n0, rows_k, rs, run, v); break;
          case 4: if constexpr (Cfg::kNV >= 4) probs_run<4>(n0, rows_k, rs, run, v); break;
        }
      }
    }
  }

  template <int NV>
  SWA_INLINE void probs_run(int64_t n0, const KRow* rows_k, int64_t rs, const LaneRun& run, int v) {
    int64_t j = run.begin;
    for (; j + Cfg::kNJ <= run.end; j += Cfg::kNJ) probs_chunk<Cfg::kNJ, NV>(n0, rows_k, rs, j, v);
    if constexpr (Cfg::kNJ > 2) {
      for (; j + 2 <= run.end; j += 2) probs_chunk<2, NV>(n0, rows_k, rs, j, v);
    }
    for (; j < run.end; ++j) probs_chunk<1, NV>(n0, rows_k, rs, j, v);
  }

  // Keys [j, j + NJ) against vectors [v, v + NV).
  template <int NJ, int NV>
  SWA_INLINE void probs_chunk(int64_t n0, const KRow* rows_k, int64_t rs, int64_t j, int v) {
    vec acc[NJ][NV];
    // kDot: unscaled products; the scale joins the max and, fused, the
    // exponent (a multiply per chunk instead of one per score).
    scores<NJ, NV>(rows_k + (j - n0) * rs, rs, v, acc);
    const vec neg_inf = S::set1(-std::numeric_limits<T>::infinity());
    const vec sc = S::set1(scale);
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) {
      if (!tile.full(v + c, j, j + NJ)) {
#pragma GCC unroll 8
        for (int i = 0; i < NJ; ++i) {
          const vec key = S::set1(T(j + i - n0));
          acc[i][c] = S::select((rel_begin[v + c] <= key) & (key < rel_end[v + c]), acc[i][c], neg_inf);
        }
      }
      vec mx = acc[0][c];
#pragma GCC unroll 8
      for (int i = 1; i < NJ; ++i) mx = S::max(mx, acc[i][c]);
      if constexpr (kDot) mx = mx * sc;
      if (S::any(mx > m[v + c])) raise(n0, j, v + c, mx);
      if constexpr (NJ >= 4) prefetch_next(), prefetch_next();
      const vec off = m_off[v + c];
      vec sum = S::zero(), sum_exact = S::zero();
#pragma GCC unroll 8
      for (int i = 0; i < NJ; ++i) {
        vec pr;
        if constexpr (kDot) {
          const vec pe = S::template exp2_nonpositive<kExpDegree>(acc[i][c] * sc - off);  // one FMA
          sum_exact += pe;
          pr = round_to_bf16(pe);
        } else {
          pr = S::exp2_nonpositive(acc[i][c] - off);
        }
        S::store(st + (j + i - n0) * R + (v + c) * L, pr);
        sum += pr;
      }
      l[v + c] += sum;
      if constexpr (kDot) l_exact[v + c] += sum_exact;
    }
  }

  // acc[i][c] = scores (base 2) of keys k + i * rs against the row vectors
  // v + c: scaled, or with kDot not yet scaled (Q^T is packed unscaled).
  template <int NJ, int NV>
  SWA_INLINE void scores(const KRow* k, int64_t rs, int v, vec (&acc)[NJ][NV]) {
    if constexpr (kDot) {
      dot_scores<NJ, NV>(k, rs, D / 2, qp + v * L, R, acc);
    } else {
      score_acc<S, NJ, NV>(k, rs, D, qt + v * L, R, acc);
    }
  }

  // Lanes of vector v whose scores mx (of the keys from j on) exceed the
  // reference get ceil(mx) + kHeadroom; l, O^T and the P^T of the block's
  // keys before j are rescaled by 2^(m_old - m_new) (exact: both integers).
  SWA_OUTLINE void raise(int64_t n0, int64_t j, int v, vec mx) {
    const vec neg_inf = S::set1(-std::numeric_limits<T>::infinity());
    vec m_new = m[v];
    for (int i = 0; i < L; ++i)
      if (mx[i] > m[v][i]) m_new[i] = std::ceil(mx[i]) + kHeadroom;
    // A lane whose reference was -inf has l = 0, O^T = 0 and P^T = 0 so far:
    // nothing to rescale. (So the first keys of a tile, which raise the
    // reference lane group by lane group, cost no rescaling.)
    const bool rescale = S::any((m_new != m[v]) & (m[v] != neg_inf));
    const vec alpha = S::select(m[v] == neg_inf, S::zero(), S::exp2_nonpositive(m[v] - m_new));
    m[v] = m_new;
    m_off[v] = S::select(m_new == neg_inf, S::zero(), m_new);
    if (!rescale) return;
    l[v] *= alpha;
    l_exact[v] *= alpha;
    for (int64_t d = 0; d < D; ++d) S::store(ot + d * R + v * L, S::load(ot + d * R + v * L) * alpha);
    for (int64_t jj = std::max(n0, tile.vec_begin[v]); jj < j; ++jj)
      S::store(st + (jj - n0) * R + v * L, S::load(st + (jj - n0) * R + v * L) * alpha);
  }

  // Step 2b: softcap and band mask on S^T (and the rest of the block max),
  // the online softmax update of m and l, O^T rescaled, S^T turned into P^T.
  SWA_OUTLINE void softmax(int64_t n0) {
    const vec neg_inf = S::set1(-std::numeric_limits<T>::infinity());
    const T softcap = T(p.softcap);
    tile.for_unmaxed([&](const LaneRun& run, int v, int64_t j0, int64_t j1) {
      const bool full = tile.full(v, run.begin, run.end);
      vec rel_begin, rel_end;
      tile.window(v, n0, kKeys, rel_begin, rel_end);
      vec mx = tile.block_max[v];
      for (int64_t j = j0; j < j1; ++j) {
        T* sp = st + (j - n0) * R + v * L;
        vec s = S::load(sp);
        if (softcap > T(0)) {  // c tanh(x / c) on the natural-base score x
          for (int i = 0; i < L; ++i) s[i] = softcap * std::tanh(s[i] * T(kLn2) / softcap) * T(kLog2e);
        }
        if (!full) {
          const vec key = S::set1(T(j - n0));
          s = S::select((rel_begin <= key) & (key < rel_end), s, neg_inf);
        }
        S::store(sp, s);
        mx = S::max(mx, s);
      }
      tile.block_max[v] = mx;
    });
    bool touched[kVecs] = {};
    for (int ri = 0; ri < tile.nruns; ++ri)
      for (int v = tile.runs[ri].v_begin; v < tile.runs[ri].v_end; ++v) touched[v] = true;
    vec m_use[kVecs];
    for (int v = 0; v < tile.nvec; ++v) {
      if (!touched[v]) continue;
      const vec m_new = S::max(m[v], tile.block_max[v]);
      m_use[v] = S::select(m_new == neg_inf, S::zero(), m_new);  // rows with no key yet
      if (!S::any(m_new != m[v])) continue;  // no row max moved: nothing to rescale
      const vec alpha = S::exp2_nonpositive(m[v] - m_use[v]);
      m[v] = m_new;
      l[v] *= alpha;
      l_exact[v] *= alpha;
      for (int64_t d = 0; d < D; ++d) S::store(ot + d * R + v * L, S::load(ot + d * R + v * L) * alpha);
    }
    for (int ri = 0; ri < tile.nruns; ++ri) {
      const LaneRun& run = tile.runs[ri];
      for (int v = run.v_begin; v < run.v_end; ++v) {
        vec sum = S::zero(), sum_exact = S::zero();
        for (int64_t j = run.begin; j < run.end; ++j) {
          T* sp = st + (j - n0) * R + v * L;
          vec pr = S::template exp2_nonpositive<kExpDegree>(S::load(sp) - m_use[v]);
          if constexpr (kDot) {
            sum_exact += pr;
            pr = round_to_bf16(pr);  // the weight the value product uses
          }
          S::store(sp, pr);
          sum += pr;
        }
        l[v] += sum;
        if constexpr (kDot) l_exact[v] += sum_exact;
      }
    }
  }

  // Step 3: out rows = O^T columns / l, lse = m + log l, with the sink logit
  // when there is one (cpu/row_softmax.h). Rows that see no key (l = 0) get 0
  // and -inf (or the sink's logit). A NaN score (a NaN in the row's query or
  // a key it sees, inf - inf) makes l NaN: out and lse are NaN then, never
  // the -inf that means "sees no key" (the max skips NaN, so m cannot tell).
  template <class In>
  SWA_INLINE void store_out(In* out, int64_t out_rs, float* lse, int64_t lse_rs, const double* sink) {
    vec inv[kVecs];
    if constexpr (kDot) {  // lse from the unrounded sums, out's factors from the rounded ones
      finish_rows(l_exact, sink, inv, lse, lse_rs);
      finish_rows(l, sink, inv, nullptr, 0);
    } else {
      finish_rows(l, sink, inv, lse, lse_rs);
    }
    unpack_lanes<Cfg, T, In>(ot, inv, rows, D, out, out_rs);
  }

  // inv and lse (null: not stored) of the tile's rows from the row sums
  // (cpu/row_softmax.h). The sink's weight 2^(s2 - m) joins sum a vector at
  // a time (2^d for d > 0 as 1 / 2^-d); a row then ends as one without a
  // sink. Rows where that is not finite, or that saw no key, take
  // finish_row's sink path.
  SWA_INLINE void finish_rows(const vec* sum, const double* sink, vec* inv, float* lse, int64_t lse_rs) {
    for (int v = 0; v < tile.nvec; ++v) {
      inv[v] = S::zero();
      vec total = sum[v];
      if (sink != nullptr) {
        const vec d = S::set1(T(*sink * kLog2e)) - m[v];
        total += S::select(d <= S::zero(), S::exp2_nonpositive(d), S::set1(T(1)) / S::exp2_nonpositive(-d));
      }
      for (int i = 0; i < L && v * L + i < rows; ++i) {
        const bool joined = sink != nullptr && sum[v][i] > T(0) && std::isfinite(total[i]);
        float row_lse;
        finish_row(m[v][i], joined ? total[i] : sum[v][i], joined ? nullptr : sink, inv[v][i], row_lse);
        if (lse != nullptr) lse[(v * L + i) * lse_rs] = row_lse;
      }
    }
  }

  // Sets up prefetch_next() for the streams of rows (row strides in
  // elements of In): the last one is written, the others read.
  template <class In>
  SWA_INLINE void prefetch_setup(const In* const (&base)[kStreams], const int64_t (&rs)[kStreams],
                                 const int64_t (&nrows)[kStreams]) {
    pf_row_lines = (D * int64_t(sizeof(In)) + 63) / 64;
    for (int i = 0; i < kStreams; ++i) {
      pf_base[i] = reinterpret_cast<const char*>(base[i]);
      pf_rs[i] = rs[i] * int64_t(sizeof(In));
      pf_nrows[i] = nrows[i];
    }
    pf_stream = 0;
    while (pf_stream < kStreams && pf_nrows[pf_stream] <= 0) ++pf_stream;
    pf_row = pf_line = 0;
  }
  // One line of the list per call; probs() asks for two per chunk of keys,
  // so the misses overlap the arithmetic instead of queueing up at the
  // tile's start and end (one batch of prefetches per block stalled too).
  SWA_INLINE void prefetch_next() {
    if (pf_stream >= kStreams) return;
    const char* line = pf_base[pf_stream] + pf_row * pf_rs[pf_stream] + pf_line * 64;
    if (pf_stream < kStreams - 1) __builtin_prefetch(line, 0, 3);
    else __builtin_prefetch(line, 1, 3);
    if (++pf_line == pf_row_lines) {
      pf_line = 0;
      if (++pf_row == pf_nrows[pf_stream]) {
        pf_row = 0;
        do ++pf_stream; while (pf_stream < kStreams && pf_nrows[pf_stream] <= 0);
      }
    }
  }

  // One task: rows [m0, m0 + rows) of head h of batch b.
  template <class In>
  SWA_INLINE void run_tile(int64_t b, int64_t h, int64_t m0) {
    rows = std::min<int64_t>(R, band.seqlen_q - m0);
    In* out = static_cast<In*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + (q_row0 + m0) * p.out_stride[2];
    float* lse = p.lse + b * p.lse_stride[0] + h * p.lse_stride[1] + (q_row0 + m0) * p.lse_stride[2];
    const double* sink = p.sinks != nullptr ? p.sinks + h : nullptr;
    const auto seen = SWA_KERNEL_NS::seen_keys(band, m0, m0 + rows);
    const auto keys = seen.band;
    if (seen.empty()) {  // no row of the tile sees a key
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t d = 0; d < D; ++d) out[r * p.out_stride[2] + d] = In(0);
        lse[r * p.lse_stride[2]] = sink == nullptr ? -INFINITY : float(*sink);
      }
      return;
    }
    const int64_t hk = h / p.group;
    const In* q = static_cast<const In*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + (q_row0 + m0) * p.q_stride[2];
    const In* k = static_cast<const In*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1] + k_row0 * p.k_stride[2];
    const In* v = static_cast<const In*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1] + k_row0 * p.v_stride[2];
    SWA_PROF(1);
    if constexpr (kDot) {  // step 1; the scale is applied to the scores
      pack_pair_lanes<R>(reinterpret_cast<const uint16_t*>(q), p.q_stride[2], rows, D / 2, qp);
    } else {
      pack_lanes<Cfg, T, In>(q, p.q_stride[2], rows, D, scale, qt);  // step 1
    }
    reset_accumulators();
    const bool capped = p.softcap > 0;  // then the max is taken after the cap: separate steps
    {  // Prefetched while computing: what the next tile of the head (mostly
       // the next task) reads and this tile has not (its Q rows, the keys
       // after this tile's), then this tile's output rows.
      const int64_t q_next = std::clamp<int64_t>(band.seqlen_q - (m0 + R), 0, R);
      const auto keys_next = SWA_KERNEL_NS::key_range(band, m0 + R, m0 + R + q_next);
      const int64_t k0 = std::max(keys.end, keys_next.begin), k_new = q_next > 0 ? keys_next.end - k0 : 0;
      prefetch_setup<In>({q_next > 0 ? q + R * p.q_stride[2] : q, k_new > 0 ? k + k0 * p.k_stride[2] : k,
                          k_new > 0 ? v + k0 * p.v_stride[2] : v, out},
                         {p.q_stride[2], p.k_stride[2], p.v_stride[2], p.out_stride[2]},
                         {q_next, std::max<int64_t>(k_new, 0), std::max<int64_t>(k_new, 0), rows});
    }
    // The sink run first (empty without sink tokens), then the band.
    if (!seen.sink.empty()) {
      set_lanes(m0, true);
      walk_keys<In>(seen.sink, k, v, capped);
    }
    if (!keys.empty()) {
      set_lanes(m0, false);
      walk_keys<In>(keys, k, v, capped);
    }
    SWA_PROF(5);
    store_out(out, p.out_stride[2], lse, p.lse_stride[2], sink);
    SWA_PROF(0);
  }

  // Step 2 over the key blocks of [keys.begin, keys.end) with the lanes set.
  template <class In>
  SWA_INLINE void walk_keys(SWA_KERNEL_NS::KeyRange keys, const In* k, const In* v, bool capped) {
    for (int64_t n0 = keys.begin; n0 < keys.end; n0 += kKeys) {
      const int64_t n1 = std::min(n0 + kKeys, keys.end);
      SWA_PROF(6);
      tile.make_runs(n0, n1);
      if (tile.nruns == 0) continue;
      if constexpr (kDot) {
        block_dot(n0, n1, reinterpret_cast<const uint16_t*>(k), reinterpret_cast<const uint16_t*>(v), capped);
      } else {
        block<In>(n0, n1, k, v, capped);
      }
    }
  }

  // Steps 2a-2c on the key block [n0, n1) (float K and V rows read in place,
  // 16-bit ones converted to T first).
  template <class In>
  SWA_INLINE void block(int64_t n0, int64_t n1, const In* k, const In* v, bool capped) {
    const T* k_rows = nullptr;
    const T* v_rows = nullptr;
    int64_t k_rs = D, v_rs = D;
    if constexpr (std::is_same_v<In, T>) {
      k_rows = k + n0 * p.k_stride[2], k_rs = p.k_stride[2];
      v_rows = v + n0 * p.v_stride[2], v_rs = p.v_stride[2];
    } else {  // 16-bit rows converted to T
      convert_rows<Cfg, T>(k, p.k_stride[2], n0, n1, D, kb);
      convert_rows<Cfg, T>(v, p.v_stride[2], n0, n1, D, vb);
      k_rows = kb, v_rows = vb;
    }
    SWA_PROF(2);
    if (capped) {
      tile.products(n0, k_rows, k_rs, D, qt, st, false);  // step 2a: S^T = K Q^T
      SWA_PROF(3);
      softmax(n0);                                      // step 2b
    } else {
      probs(n0, k_rows, k_rs);  // steps 2a and 2b
    }
    SWA_PROF(4);
    tile.accumulate(n0, st, v_rows, v_rs, D, ot);         // step 2c: O^T += V^T P^T
  }

  // The same with kDot (bf16 bits): K rows read in place, V rows of the
  // block interleaved in key pairs.
  SWA_INLINE void block_dot(int64_t n0, int64_t n1, const uint16_t* k, const uint16_t* v, bool capped) {
    for (int64_t j = n0; j < n1; j += 2)
      interleave_rows_bf16(v + j * p.v_stride[2], j + 1 < n1 ? v + (j + 1) * p.v_stride[2] : nullptr, D,
                           vp + (j - n0) / 2 * D);
    const uint16_t* k_rows = k + n0 * p.k_stride[2];
    SWA_PROF(2);
    if (capped) {
      pair_products(tile, n0, k_rows, p.k_stride[2], D / 2, qp, float(scale), st);  // step 2a
      SWA_PROF(3);
      softmax(n0);  // step 2b
    } else {
      probs(n0, k_rows, p.k_stride[2]);  // steps 2a and 2b
    }
    SWA_PROF(4);
    pair_accumulate(tile, n0, st, pp, vp, D, ot);  // step 2c
  }

  // The tasks of the queue; consecutive tasks are consecutive tiles of a head.
  template <class In>
  SWA_INLINE void run(TaskQueue& queue) {
    int64_t task_begin, task_end;
    while (queue.next(task_begin, task_end)) {
      for (int64_t task = task_begin; task < task_end; ++task) {
        const TaskSpot t = task_spot(task, p.heads_q, p.m_blocks, p.seqs, p.task_begin, R, false);
        band = p.head_windows.of_head(sequence_band(p.band, p.seqs, t.seq), t.head);
        q_row0 = t.seq < 0 ? 0 : p.seqs.cu_q[t.seq];
        k_row0 = t.seq < 0 ? 0 : p.seqs.cu_k[t.seq];
        run_tile<In>(t.b, t.head, t.block * R);
      }
    }
  }
};

// One worker with the kernel of one instruction set.
template <class Cfg>
void run_tasks(const ForwardProblem& p, TaskQueue& queue) {
  switch (p.dtype) {
    case c10::kDouble: ForwardKernel<Cfg, double>(p).template run<double>(queue); break;
    case c10::kFloat: ForwardKernel<Cfg, float>(p).template run<float>(queue); break;
    case c10::kHalf: ForwardKernel<Cfg, float>(p).template run<c10::Half>(queue); break;
    case c10::kBFloat16: ForwardKernel<Cfg, float>(p).template run<c10::BFloat16>(queue); break;
    default: TORCH_CHECK(false, "swa::attention: unsupported dtype ", p.dtype);
  }
}

// One worker with the bf16 pair products (bf16 inputs, even head dims).
template <class Cfg>
void run_bf16_dot_tasks(const ForwardProblem& p, TaskQueue& queue) {
  TORCH_CHECK(p.dtype == c10::kBFloat16 && p.head_dim % 2 == 0,
              "swa::attention: the bf16 dot-product forward takes bf16 with an even head dim");
  ForwardKernel<Cfg, float, true>(p).template run<c10::BFloat16>(queue);
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS
