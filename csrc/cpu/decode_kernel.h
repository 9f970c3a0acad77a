// The CPU decode kernel of cache_attention (few new tokens): per task (one
// kv head of one sequence, one split of its keys; cpu/decode_problem.h) the
// R = group * T query rows of that kv head meet every key row once, as it
// streams through in blocks of kDecodeBlockKeys:
//   1. S = Q K^T of the block (R x keys): head dims in vector lanes, the
//      kLanes partial sums of kLanes (row, key) pairs reduced in one shuffle
//      tree (reduce_lanes); scaled to base 2, softcapped, masked per row
//   2. online softmax per row: m = max, P = 2^(S - m), l += row sums, the
//      output rescaled when m moved
//   3. O += P V: rows x head-dim vectors in registers over the block's keys
// Key and value rows are read in place, where they are: the ring's slots (at
// most two contiguous runs, before and after the wrap) and then the new
// keys; 16-bit rows are widened to float32 in registers. Accumulation is in
// float32 (float64 for float64 inputs). A task ends with out and lse, or
// with its partial m, l, O when the window is split (merged by the host).
// Included by the per-ISA translation units only (cpu/isa.h).
#pragma once

#include "cpu/decode_problem.h"
#include "cpu/lane_tile.h"  // AlignedBuffer
#include "cpu/row_softmax.h"
#include "cpu/simd.h"
#include "swa/kernels/ring.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

namespace decode_detail {
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;
}  // namespace decode_detail

template <class Cfg, class T, class In>
struct DecodeKernel {
  using S = Simd<T, Cfg::kBytes>;
  using vec = typename S::vec;
  static constexpr int L = S::kLanes;
  static constexpr int64_t NB = kDecodeBlockKeys;
  static constexpr int64_t kPrefetchKeys = kDecodePrefetchKeys;  // rows fetched this far ahead
  static_assert(NB % L == 0);
  static constexpr int kScoreRows = L >= 4 ? 4 : L;                 // rows per score micro-kernel
  static constexpr int kValueRows = Cfg::kBytes == 64 ? 4 : 2;      // rows per value micro-kernel
  static constexpr int kValueVecs = 4;                              // head-dim vectors per value micro-kernel

  const DecodeProblem& p;
  const int64_t D, Dp;   // head dim, padded to whole vectors
  int64_t R;             // query rows of the current task (at most decode_rows)
  const int64_t full, tail;  // whole vectors of a row; lanes of the last partial one
  AlignedBuffer<T> q_buf, s_buf, o_buf;
  T* qs;  // (R, Dp)  query rows, zero padded
  T* st;  // (R, NB)  scores, then probabilities, of a block
  T* ot;  // (R, Dp)  unnormalised output rows
  T m[kDecodeMaxRows], l[kDecodeMaxRows];            // per row: base-2 max, sum
  int64_t key_begin[kDecodeMaxRows], key_end[kDecodeMaxRows];  // virtual keys the row sees
  vec iota;
  // The next block's key and value rows, fetched while scoring this block.
  const char* pf_k = nullptr;
  const char* pf_v = nullptr;
  int64_t pf_n = 0, pf_k_rs = 0, pf_v_rs = 0, row_lines = 0;

  SWA_INLINE explicit DecodeKernel(const DecodeProblem& prob)
      : p(prob),
        D(prob.head_dim),
        Dp((prob.head_dim + L - 1) / L * L),
        R(decode_rows(prob)),
        full(prob.head_dim / L),
        tail(prob.head_dim % L),
        q_buf(R * Dp),
        s_buf(R * NB),
        o_buf(R * Dp) {
    row_lines = (prob.head_dim * int64_t(sizeof(In)) + 63) / 64;
    qs = q_buf.data;
    st = s_buf.data;
    for (int64_t i = 0; i < R * NB; ++i) st[i] = T(0);
    ot = o_buf.data;
    for (int i = 0; i < L; ++i) iota[i] = T(i);
  }

  // A vector of L values from In (16-bit values widened to float).
  static SWA_INLINE vec load_in(const In* src) {
    if constexpr (std::is_same_v<In, T>) {
      return S::load(src);
    } else if constexpr (std::is_same_v<In, c10::BFloat16>) {  // bf16 = the high half of a float32
#if defined(__x86_64__) || defined(__i386__)
      if constexpr (Cfg::kBytes == 64) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        return (vec)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      } else if constexpr (Cfg::kBytes == 32) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        return (vec)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      } else if constexpr (Cfg::kBytes == 16) {
        const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
        return (vec)_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
      }
#endif
      vec v;
      for (int i = 0; i < L; ++i) v[i] = T(src[i]);
      return v;
    } else {
#if defined(__x86_64__) || defined(__i386__)
      if constexpr (Cfg::kBytes == 64) {  // only the AVX-512 build has 64-byte vectors
        return (vec)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
      }
#endif
      vec v;
      for (int i = 0; i < L; ++i) v[i] = T(src[i]);
      return v;
    }
  }
  // The first n < L values, zeros after.
  static SWA_INLINE vec load_part(const In* src, int64_t n) {
    In buf[L];
    std::memset(static_cast<void*>(buf), 0, sizeof(buf));  // zero bits are 0 in every dtype
    std::memcpy(static_cast<void*>(buf), src, size_t(n) * sizeof(In));
    return load_in(buf);
  }

  // x[0][i] = sum of the lanes of x[i] (a shuffle tree: stage s adds lanes
  // i and i ^ s of x[j] and x[j + s] into x[j], lanes with bit s set coming
  // from x[j + s]; after log2(L) stages lane i holds x[i]'s sum).
  template <int s = L / 2>
  static SWA_INLINE void reduce_lanes(vec (&x)[L]) {
    if constexpr (s >= 1) {
#pragma GCC unroll 16
      for (int i = 0; i < s; ++i) {
        const vec lo = S::template transpose_stage<s, false>(x[i], x[i + s], std::make_index_sequence<L>());
        const vec hi = S::template transpose_stage<s, true>(x[i], x[i + s], std::make_index_sequence<L>());
        x[i] = lo + hi;
      }
      reduce_lanes<s / 2>(x);
    }
  }

  // Step 1 for rows [r0, r0 + NR) and the L / NR keys rows[0 ..]: lane i of
  // the result is row r0 + i / (L / NR) against key i % (L / NR).
  template <int NR>
  SWA_INLINE vec scores_micro(int64_t r0, const In* const* rows) {
    constexpr int NK = L / NR;
    vec acc[L];
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) acc[i] = S::zero();
    const T* q = qs + r0 * Dp;
    for (int64_t c = 0; c < full; ++c) {
      vec qv[NR];
#pragma GCC unroll 4
      for (int rr = 0; rr < NR; ++rr) qv[rr] = S::load(q + rr * Dp + c * L);
#pragma GCC unroll 16
      for (int jj = 0; jj < NK; ++jj) {
        const vec kv = load_in(rows[jj] + c * L);
#pragma GCC unroll 4
        for (int rr = 0; rr < NR; ++rr) acc[rr * NK + jj] += qv[rr] * kv;
      }
    }
    if (tail > 0) {
      for (int jj = 0; jj < NK; ++jj) {
        const vec kv = load_part(rows[jj] + full * L, tail);
        for (int rr = 0; rr < NR; ++rr) acc[rr * NK + jj] += S::load(q + rr * Dp + full * L) * kv;
      }
    }
    reduce_lanes(acc);
    return acc[0];
  }

  // Step 1 over a block: st[r][j] = q_r . k_j for j < n (and a few columns
  // past n, from repeated rows, that step 2 masks).
  template <int NR>
  SWA_INLINE void scores_rows(int64_t r0, const In* k, int64_t rs, int64_t n) {
    constexpr int NK = L / NR;
    for (int64_t j = 0; j < n; j += NK) {
      const In* rows[NK];
#pragma GCC unroll 16
      for (int jj = 0; jj < NK; ++jj) rows[jj] = k + std::min<int64_t>(j + jj, n - 1) * rs;
      if (r0 == 0) prefetch_rows(j, j + NK);
      const vec sums = scores_micro<NR>(r0, rows);
      T lanes[L];
      S::store(lanes, sums);
#pragma GCC unroll 4
      for (int rr = 0; rr < NR; ++rr) std::memcpy(st + (r0 + rr) * NB + j, lanes + rr * NK, NK * sizeof(T));
    }
  }

  // Rows [j0, j1) of the next block (hardware prefetchers stop at page
  // boundaries and ramp up slowly on the two interleaved streams).
  SWA_INLINE void prefetch_rows(int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < std::min(j1, pf_n); ++j)
      for (int64_t i = 0; i < row_lines; ++i) __builtin_prefetch(pf_k + j * pf_k_rs + i * 64, 0, 3);
  }

  SWA_OUTLINE void scores(const In* k, int64_t rs, int64_t n) {
    int64_t r = 0;
    for (; r + kScoreRows <= R; r += kScoreRows) scores_rows<kScoreRows>(r, k, rs, n);
    if constexpr (kScoreRows > 2) {
      for (; r + 2 <= R; r += 2) scores_rows<2>(r, k, rs, n);
    }
    for (; r < R; ++r) scores_rows<1>(r, k, rs, n);
  }

  // Step 2 for the block's keys [j0, j0 + n) (virtual indices).
  SWA_OUTLINE void softmax(int64_t j0, int64_t n) {
    const vec neg_inf = S::set1(-std::numeric_limits<T>::infinity());
    const T scale2 = T(p.scale * decode_detail::kLog2e);
    // scale / softcap saturates at T's max: a tiny cap with a large scale must
    // not make it inf (a score of 0 would then become 0 * inf = NaN).
    const double cap_ratio_max = double(std::numeric_limits<T>::max());
    const T softcap = T(p.softcap), cap_out = T(p.softcap * decode_detail::kLog2e);
    const T cap_in = p.softcap > 0 ? T(std::clamp(p.scale / p.softcap, -cap_ratio_max, cap_ratio_max)) : T(0);
    const int64_t nv = (n + L - 1) / L;
    for (int64_t r = 0; r < R; ++r) {
      T* s = st + r * NB;
      const vec rel_begin = S::set1(T(key_begin[r] - j0)), rel_end = S::set1(T(std::min(key_end[r] - j0, n)));
      vec mx = neg_inf;
      for (int64_t c = 0; c < nv; ++c) {
        vec x = S::load(s + c * L);
        if (softcap > T(0)) {  // c tanh(x scale / c), in base 2
          for (int i = 0; i < L; ++i) x[i] = cap_out * std::tanh(x[i] * cap_in);
        } else {
          x *= S::set1(scale2);
        }
        const vec key = S::set1(T(c * L)) + iota;
        x = S::select((rel_begin <= key) & (key < rel_end), x, neg_inf);
        S::store(s + c * L, x);
        mx = S::max(mx, x);
      }
      T m_new = m[r];
      for (int i = 0; i < L; ++i) m_new = std::max(m_new, mx[i]);
      const T m_use = m_new == -std::numeric_limits<T>::infinity() ? T(0) : m_new;  // no key seen yet
      if (m_new != m[r] && l[r] > T(0)) {
        const T alpha = std::exp2(m[r] - m_use);
        l[r] *= alpha;
        const vec a = S::set1(alpha);
        for (int64_t c = 0; c < Dp; c += L) S::store(ot + r * Dp + c, S::load(ot + r * Dp + c) * a);
      }
      m[r] = m_new;
      vec sum = S::zero();
      const vec off = S::set1(m_use);
      for (int64_t c = 0; c < nv; ++c) {
        const vec pr = S::exp2_nonpositive(S::load(s + c * L) - off);
        S::store(s + c * L, pr);
        sum += pr;
      }
      T total = T(0);
      for (int i = 0; i < L; ++i) total += sum[i];
      l[r] += total;
    }
  }

  // Step 3 for rows [r0, r0 + NR) and head-dim vectors [c0, c0 + NV) (the
  // last one partial with kTail).
  template <int NR, int NV, bool kTail>
  SWA_INLINE void values_micro(int64_t r0, int64_t c0, const In* v, int64_t rs, int64_t n) {
    vec acc[NR][NV];
#pragma GCC unroll 4
    for (int rr = 0; rr < NR; ++rr)
#pragma GCC unroll 4
      for (int dd = 0; dd < NV; ++dd) acc[rr][dd] = S::zero();
    const T* pr = st + r0 * NB;
    // The lines of these vectors in the next block's value rows.
    constexpr int64_t kLines = (NV * L * int64_t(sizeof(In)) + 63) / 64;
    const char* pf = pf_v + c0 * L * int64_t(sizeof(In));
    for (int64_t j = 0; j < n; ++j) {
      if (r0 == 0 && j < pf_n) {
#pragma GCC unroll 4
        for (int64_t i = 0; i < kLines; ++i) __builtin_prefetch(pf + j * pf_v_rs + i * 64, 0, 3);
      }
      const In* row = v + j * rs + c0 * L;
      vec vv[NV];
#pragma GCC unroll 4
      for (int dd = 0; dd < NV; ++dd)
        vv[dd] = kTail && dd == NV - 1 ? load_part(row + dd * L, tail) : load_in(row + dd * L);
#pragma GCC unroll 4
      for (int rr = 0; rr < NR; ++rr) {
        const vec pb = S::set1(pr[rr * NB + j]);
#pragma GCC unroll 4
        for (int dd = 0; dd < NV; ++dd) acc[rr][dd] += pb * vv[dd];
      }
    }
#pragma GCC unroll 4
    for (int rr = 0; rr < NR; ++rr)
#pragma GCC unroll 4
      for (int dd = 0; dd < NV; ++dd) {
        T* o = ot + (r0 + rr) * Dp + (c0 + dd) * L;
        S::store(o, S::load(o) + acc[rr][dd]);
      }
  }

  template <int NR>
  SWA_INLINE void values_rows(int64_t r0, const In* v, int64_t rs, int64_t n) {
    int64_t c = 0;
    for (; c + kValueVecs <= full; c += kValueVecs) values_micro<NR, kValueVecs, false>(r0, c, v, rs, n);
    if constexpr (kValueVecs > 4) {
      if (c + 4 <= full) values_micro<NR, 4, false>(r0, c, v, rs, n), c += 4;
    }
    if (c + 2 <= full) values_micro<NR, 2, false>(r0, c, v, rs, n), c += 2;
    if (c < full) values_micro<NR, 1, false>(r0, c, v, rs, n);
    if (tail > 0) values_micro<NR, 1, true>(r0, full, v, rs, n);
  }

  SWA_OUTLINE void values(const In* v, int64_t rs, int64_t n) {
    int64_t r = 0;
    for (; r + kValueRows <= R; r += kValueRows) values_rows<kValueRows>(r, v, rs, n);
    if constexpr (kValueRows > 2) {
      for (; r + 2 <= R; r += 2) values_rows<2>(r, v, rs, n);
    }
    for (; r < R; ++r) values_rows<1>(r, v, rs, n);
  }

  // Keys [j0, j1) of the virtual sequence, stored from rows k, v on.
  SWA_INLINE void run_piece(int64_t j0, int64_t j1, const In* k, int64_t k_rs, const In* v, int64_t v_rs) {
    for (int64_t b0 = j0; b0 < j1; b0 += NB) {
      const int64_t n = std::min(NB, j1 - b0);
      pf_n = p.prefetch ? std::min(n, j1 - (b0 + kPrefetchKeys)) : 0;
      pf_k = reinterpret_cast<const char*>(k + (b0 + kPrefetchKeys - j0) * k_rs);
      pf_v = reinterpret_cast<const char*>(v + (b0 + kPrefetchKeys - j0) * v_rs);
      pf_k_rs = k_rs * int64_t(sizeof(In));
      pf_v_rs = v_rs * int64_t(sizeof(In));
      scores(k + (b0 - j0) * k_rs, k_rs, n);
      softmax(b0, n);
      values(v + (b0 - j0) * v_rs, v_rs, n);
    }
  }

  // One task: kv head hk of the problem's sequence i, keys of split `split`.
  SWA_INLINE void run_task(int64_t i, int64_t hk, int64_t split) {
    namespace kn = SWA_KERNEL_NS;
    const DecodeSequence seq = decode_sequence(p, i);
    const int64_t b = seq.b, row0 = seq.row0, T_new = seq.new_len, G = p.group;
    R = G * T_new;
    const kn::RingView view{p.pos[b], T_new, p.window, p.capacity, p.sink_tokens};
    const kn::Band band = view.band();
    const int64_t sink_len = view.sink_len(), ring_len = view.ring_len(), seqlen_k = view.seqlen_k();
    // Rows r = g * T + t: query head hk * G + g, new token t.
    for (int64_t g = 0; g < G; ++g) {
      const In* q = static_cast<const In*>(p.q) + b * p.q_stride[0] + (hk * G + g) * p.q_stride[1] +
                    row0 * p.q_stride[2];
      for (int64_t t = 0; t < T_new; ++t) {
        const int64_t r = g * T_new + t;
        for (int64_t d = 0; d < Dp; ++d) qs[r * Dp + d] = d < D ? T(q[t * p.q_stride[2] + d]) : T(0);
        m[r] = -std::numeric_limits<T>::infinity();
        l[r] = T(0);
      }
    }
    // Each row's keys in the current piece: the sink run [0, sink_end) for
    // the sink slots, the band for the rest (band.h).
    auto set_rows = [&](bool sink_run) {
      for (int64_t r = 0; r < R; ++r) {
        const int64_t t = r % T_new;
        key_begin[r] = sink_run ? 0 : band.key_begin(t);
        key_end[r] = sink_run ? band.sink_end(t) : band.key_end(t);
      }
    };
    for (int64_t i = 0; i < R * Dp; ++i) ot[i] = T(0);
    const int64_t s0 = std::min(seqlen_k, split * p.split_keys);
    const int64_t s1 = std::min(seqlen_k, s0 + p.split_keys);
    // The virtual keys in four runs of contiguous rows: the sink slots, ring
    // slots up to the wrap, ring slots from the ring's first slot, the new keys.
    const In* kc = static_cast<const In*>(p.k_cache) + b * p.k_cache_stride[0] + hk * p.k_cache_stride[1];
    const In* vc = static_cast<const In*>(p.v_cache) + b * p.v_cache_stride[0] + hk * p.v_cache_stride[1];
    const In* kn_ = static_cast<const In*>(p.k_new) + b * p.k_new_stride[0] + hk * p.k_new_stride[1] +
                    row0 * p.k_new_stride[2];
    const In* vn = static_cast<const In*>(p.v_new) + b * p.v_new_stride[0] + hk * p.v_new_stride[1] +
                   row0 * p.v_new_stride[2];
    const int64_t ring_end = sink_len + ring_len;  // virtual keys below: in the cache buffer
    const int64_t slot0 = ring_len > 0 ? view.slot(sink_len) : 0;
    const int64_t before_wrap = std::min(ring_len, p.sink_tokens + p.capacity - slot0);
    const int64_t krs = p.k_cache_stride[2], vrs = p.v_cache_stride[2];
    // The virtual keys [c0, c1) of this split, run by run. A row's keys are
    // two runs (band.h): the sink run [0, sink_end), whose keys lie in the
    // sink slots and, early in a stream, in the ring, and the band; each pass
    // walks one of them with the rows' ranges set to it.
    auto walk = [&](int64_t c0, int64_t c1) {
      c0 = std::max(c0, s0), c1 = std::min(c1, s1);
      auto piece = [&](int64_t a0, int64_t a1, const In* k, int64_t k_rs, const In* v, int64_t v_rs) {
        const int64_t j0 = std::max(a0, c0), j1 = std::min(a1, c1);
        if (j0 < j1) run_piece(j0, j1, k + (j0 - a0) * k_rs, k_rs, v + (j0 - a0) * v_rs, v_rs);
      };
      piece(0, sink_len, kc, krs, vc, vrs);
      piece(sink_len, sink_len + before_wrap, kc + slot0 * krs, krs, vc + slot0 * vrs, vrs);
      piece(sink_len + before_wrap, ring_end, kc + p.sink_tokens * krs, krs, vc + p.sink_tokens * vrs, vrs);
      piece(ring_end, seqlen_k, kn_, p.k_new_stride[2], vn, p.v_new_stride[2]);
    };
    const int64_t sink_run_end = band.sink_end(T_new - 1);  // the last row's is the longest
    if (sink_run_end > 0) {
      set_rows(true);
      walk(0, sink_run_end);
    }
    set_rows(false);
    walk(band.key_begin(0), seqlen_k);
    if (p.splits > 1) {
      T* part = static_cast<T*>(p.partial) + ((i * p.heads_kv + hk) * p.splits + split) * decode_partial_stride(p);
      for (int64_t r = 0; r < R; ++r) {
        T* row = part + r * (2 + D);
        row[0] = m[r];
        row[1] = l[r];
        std::memcpy(row + 2, ot + r * Dp, size_t(D) * sizeof(T));
      }
      return;
    }
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = hk * G + g;
      In* out = static_cast<In*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + row0 * p.out_stride[2];
      float* lse = p.lse + b * p.lse_stride[0] + h * p.lse_stride[1] + row0 * p.lse_stride[2];
      for (int64_t t = 0; t < T_new; ++t) {
        const int64_t r = g * T_new + t;
        // l = 0: no key seen (out 0, lse -inf or the sink's); NaN: a NaN score.
        T inv;
        finish_row(m[r], l[r], p.sinks != nullptr ? p.sinks + h : nullptr, inv, lse[t * p.lse_stride[2]]);
        for (int64_t d = 0; d < D; ++d) out[t * p.out_stride[2] + d] = In(ot[r * Dp + d] * inv);
      }
    }
  }

  SWA_INLINE void run(TaskQueue& queue) {
    int64_t task_begin, task_end;
    while (queue.next(task_begin, task_end)) {
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t split = task % p.splits;
        const int64_t hk = (task / p.splits) % p.heads_kv;
        run_task(task / (p.splits * p.heads_kv), hk, split);
      }
    }
  }
};

// One worker with the kernel of one instruction set.
template <class Cfg>
void run_decode_tasks(const DecodeProblem& p, TaskQueue& queue) {
  switch (p.dtype) {
    case c10::kDouble: DecodeKernel<Cfg, double, double>(p).run(queue); break;
    case c10::kFloat: DecodeKernel<Cfg, float, float>(p).run(queue); break;
    case c10::kHalf: DecodeKernel<Cfg, float, c10::Half>(p).run(queue); break;
    case c10::kBFloat16: DecodeKernel<Cfg, float, c10::BFloat16>(p).run(queue); break;
    default: TORCH_CHECK(false, "swa::cache_attention: unsupported dtype ", p.dtype);
  }
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS
