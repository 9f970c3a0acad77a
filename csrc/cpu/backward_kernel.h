// The CPU backward kernels of swa::attention: FlashAttention-2's algorithm in
// two passes that need no atomics, so results are deterministic by
// construction. With scores in base 2 (S = scale log2(e) q k, cpu/forward_kernel.h)
// and P = 2^(S - lse2):
//   dQ pass, per (batch, query head, tile of kTileLanes query rows), the rows
//   in vector lanes (a LaneTile over the keys, cpu/lane_tile.h):
//     delta = rowsum(dO * O) - dlse                                  (rows)
//     sweep 1: row max and sum over the keys -> lse2, recomputed in the
//              accumulation type (float64 inputs get float64 gradients,
//              not ones limited by the float32 lse output)
//     sweep 2: S^T = K Q^T, dP^T = V dO^T                      (keys, rows)
//              dS^T = P^T (dP^T - delta) [(1 - tanh^2) under softcap]
//              dQ^T += K^T dS^T                                   (D, rows)
//     dQ = scale (dQ^T)^T
//   dK/dV pass, per (batch, kv head, tile of kTileLanes keys), the keys in
//   vector lanes (a LaneTile over the query rows that see them), over the
//   query heads of the group:
//     S = Q K^T, dP = dO V^T, dS = P (dP - delta) [...]        (rows, keys)
//     dV^T += dO^T P, dK^T += Q^T dS                              (D, keys)
//     dK = scale (dK^T)^T, dV = (dV^T)^T
// Included by the per-ISA translation units only (cpu/isa.h).
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
  template <bool kMasked>
  SWA_INLINE vec score_gradient(vec s, vec dp, typename S::mask visible, vec lse2, vec delta, vec& pr) const {
    vec dcap;
    if (softcap > T(0)) s = cap(s, dcap);
    if constexpr (kMasked) s = S::select(visible, s, S::set1(-std::numeric_limits<T>::infinity()));
    pr = S::exp2_nonpositive(s - lse2);
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

  // acc[j * D + d] += sum over lanes r in [r0, r1) of coef[(j - n0) * R + r]
  // * rows[r * rs + d], items j in [j0, j1) of the block at n0: a product
  // that sums over the lanes, as rank-1 updates with the head dim in the
  // vectors (four vectors of accumulators per pass over the rows).
  SWA_INLINE void lane_sum_update(const T* coef, int64_t n0, int64_t j0, int64_t j1, int64_t r0, int64_t r1,
                                  const T* rows, int64_t rs, T* acc) const {
    constexpr int kChunk = 4 * L;
    for (int64_t j = j0; j < j1; ++j) {
      const T* c = coef + (j - n0) * R;
      T* a = acc + j * D;
      int64_t d = 0;
      for (; d + kChunk <= D; d += kChunk) {
        vec x0 = S::load(a + d), x1 = S::load(a + d + L), x2 = S::load(a + d + 2 * L), x3 = S::load(a + d + 3 * L);
        for (int64_t r = r0; r < r1; ++r) {
          const vec w = S::set1(c[r]);
          const T* row = rows + r * rs + d;
          x0 += w * S::load(row);
          x1 += w * S::load(row + L);
          x2 += w * S::load(row + 2 * L);
          x3 += w * S::load(row + 3 * L);
        }
        S::store(a + d, x0), S::store(a + d + L, x1), S::store(a + d + 2 * L, x2), S::store(a + d + 3 * L, x3);
      }
      for (; d + L <= D; d += L) {
        vec x = S::load(a + d);
        for (int64_t r = r0; r < r1; ++r) x += S::set1(c[r]) * S::load(rows + r * rs + d);
        S::store(a + d, x);
      }
      for (; d < D; ++d) {
        T x = a[d];
        for (int64_t r = r0; r < r1; ++r) x += c[r] * rows[r * rs + d];
        a[d] = x;
      }
    }
  }

  // Row r of head h of batch b of the [B, Hq, Sq] statistics buffer.
  SWA_INLINE T* stats(void* buffer, int64_t b, int64_t h) const {
    return static_cast<T*>(buffer) + (b * p.heads_q + h) * p.seqlen_q + q_row0;
  }
};

// The dQ pass of one instruction set (Cfg) and accumulation type T.
template <class Cfg, class T>
struct BackwardDqKernel : BackwardCommon<Cfg, T> {
  using Base = BackwardCommon<Cfg, T>;
  using typename Base::S;
  using typename Base::Tile;
  using typename Base::vec;
  using Base::D;
  using Base::kItems;
  using Base::kVecs;
  using Base::L;
  using Base::p;
  using Base::R;

  AlignedBuffer<T> lane_buf, item_buf, conv_buf, row_buf;
  T* qt;   // (D, R)       scaled Q^T
  T* dot;  // (D, R)       dO^T
  T* dqt;  // (D, R)       dQ^T / scale
  T* st;   // (kItems, R)  S^T of a key block (P^T of the sink run's, with sink_grads)
  T* dpt;  // (kItems, R)  dP^T, then dS^T
  T* kb;   // (kItems, D)  converted K rows (16-bit inputs)
  T* vb;   // (kItems, D)  converted V rows (16-bit inputs)
  T* qrb;  // (R, D)       converted Q rows of the tile (16-bit inputs, sink_grads)
  T* dorb; // (R, D)       converted dO rows of the tile (16-bit inputs, sink_grads)

  Tile tile;  // lanes: the query rows of the task
  int64_t rows = 0;
  vec m[kVecs], l[kVecs];         // sweep 1: running row max and sum
  vec lse2[kVecs], delta[kVecs];  // row statistics (lse2 of rows that see nothing: 0)

  explicit BackwardDqKernel(const BackwardProblem& prob)
      : Base(prob),
        lane_buf(3 * prob.head_dim * R),
        item_buf(2 * kItems * R),
        conv_buf(Base::is_16bit(prob.dtype) ? 2 * kItems * prob.head_dim : 1),
        row_buf(Base::is_16bit(prob.dtype) && prob.sink_grads != nullptr ? 2 * R * prob.head_dim : 1) {
    qrb = row_buf.data;
    dorb = row_buf.data + R * prob.head_dim;
    qt = lane_buf.data;
    dot = qt + D * R;
    dqt = dot + D * R;
    st = item_buf.data;
    dpt = st + kItems * R;
    kb = conv_buf.data;
    vb = conv_buf.data + kItems * D;
  }

  // Sweep 1 over one key block: block max (fused where rows see keys in
  // full, cpu/lane_tile.h), then m and l.
  SWA_OUTLINE void stats_block(int64_t n0, const T* k_rows, int64_t k_rs) {
    const vec neg_inf = S::set1(-std::numeric_limits<T>::infinity());
    const bool capped = this->softcap > T(0);
    tile.products(n0, k_rows, k_rs, D, qt, st, !capped);
    tile.for_unmaxed([&](const LaneRun& run, int v, int64_t j0, int64_t j1) {
      const bool full = tile.full(v, run.begin, run.end);
      vec rel_begin, rel_end, dcap;
      tile.window(v, n0, kItems, rel_begin, rel_end);
      vec mx = tile.block_max[v];
      for (int64_t j = j0; j < j1; ++j) {
        T* sp = st + (j - n0) * R + v * L;
        vec s = S::load(sp);
        if (capped) s = this->cap(s, dcap);
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
      m_use[v] = S::select(m_new == neg_inf, S::zero(), m_new);
      l[v] *= S::exp2_nonpositive(m[v] - m_use[v]);
      m[v] = m_new;
    }
    for (int ri = 0; ri < tile.nruns; ++ri) {
      const LaneRun& run = tile.runs[ri];
      for (int v = run.v_begin; v < run.v_end; ++v) {
        vec sum = S::zero();
        for (int64_t j = run.begin; j < run.end; ++j)
          sum += S::exp2_nonpositive(S::load(st + (j - n0) * R + v * L) - m_use[v]);
        l[v] += sum;
      }
    }
  }

  // Sweep 2 over one key block: dS^T into dpt, then dQ^T += K^T dS^T; with
  // keep_p P^T into st.
  SWA_OUTLINE void gradient_block(int64_t n0, const T* k_rows, int64_t k_rs, const T* v_rows, int64_t v_rs,
                                  bool keep_p) {
    tile.products(n0, k_rows, k_rs, D, qt, st, false);   // S^T = K Q^T
    tile.products(n0, v_rows, v_rs, D, dot, dpt, false);  // dP^T = V dO^T
    for (int ri = 0; ri < tile.nruns; ++ri) {
      const LaneRun& run = tile.runs[ri];
      for (int v = run.v_begin; v < run.v_end; ++v) {
        const bool full = tile.full(v, run.begin, run.end);
        vec rel_begin, rel_end, pr;
        tile.window(v, n0, kItems, rel_begin, rel_end);
        for (int64_t j = run.begin; j < run.end; ++j) {
          const int64_t at = (j - n0) * R + v * L;
          const vec s = S::load(st + at), dp = S::load(dpt + at);
          const vec key = S::set1(T(j - n0));
          const auto visible = (rel_begin <= key) & (key < rel_end);
          const vec ds = full ? this->template score_gradient<false>(s, dp, visible, lse2[v], delta[v], pr)
                              : this->template score_gradient<true>(s, dp, visible, lse2[v], delta[v], pr);
          S::store(dpt + at, ds);
          if (keep_p) S::store(st + at, pr);
        }
      }
    }
    tile.accumulate(n0, dpt, k_rows, k_rs, D, dqt);  // dQ^T += K^T dS^T
  }

  // One task: rows [m0, m0 + rows) of head h of batch b.
  template <class In>
  SWA_INLINE void run_tile(int64_t task, int64_t b, int64_t h, int64_t m0) {
    const Band& band = this->band;
    const int64_t r0 = this->q_row0 + m0;  // the tile's first row in the operands
    rows = std::min<int64_t>(R, band.seqlen_q - m0);
    const In* dout = static_cast<const In*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1] + r0 * p.dout_stride[2];
    const In* out = static_cast<const In*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + r0 * p.out_stride[2];
    const In* q = static_cast<const In*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + r0 * p.q_stride[2];
    In* dq = static_cast<In*>(p.dq) + b * p.dq_stride[0] + h * p.dq_stride[1] + r0 * p.dq_stride[2];
    T* lse2_out = this->stats(p.lse2, b, h) + m0;
    T* delta_out = this->stats(p.delta, b, h) + m0;

    // delta = rowsum(dO * O) - dlse.
    for (int v = 0; v < kVecs; ++v) delta[v] = S::zero();
    for (int64_t r = 0; r < rows; ++r) {
      T dot_row = T(0);
      for (int64_t d = 0; d < D; ++d) dot_row += T(dout[r * p.dout_stride[2] + d]) * T(out[r * p.out_stride[2] + d]);
      if (p.grad_lse != nullptr)
        dot_row -= T(p.grad_lse[b * p.grad_lse_stride[0] + h * p.grad_lse_stride[1] + (r0 + r) * p.grad_lse_stride[2]]);
      delta_out[r] = dot_row;
      delta[r / L][r % L] = dot_row;
    }

    // A row's keys: the sink run, then the band (disjoint, band.h).
    const auto seen = SWA_KERNEL_NS::seen_keys(band, m0, m0 + rows);
    const T sink2 = p.sinks != nullptr ? T(p.sinks[h] * kLog2e) : -std::numeric_limits<T>::infinity();
    if (seen.empty()) {  // no row of the tile sees a key
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t d = 0; d < D; ++d) dq[r * p.dq_stride[2] + d] = In(0);
        lse2_out[r] = sink2;
      }
      return;
    }
    const int64_t hk = h / p.group;
    const In* k = static_cast<const In*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1] + this->k_row0 * p.k_stride[2];
    const In* vv = static_cast<const In*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1] + this->k_row0 * p.v_stride[2];
    pack_lanes<Cfg, T, In>(q, p.q_stride[2], rows, D, this->scale2, qt);
    pack_lanes<Cfg, T, In>(dout, p.dout_stride[2], rows, D, T(1), dot);
    // Calls f(sink_run, k_rows, k_rs, v_rows, v_rs, n0) per key block of both
    // runs with the tile's lanes set to the run (V rows only when with_v).
    auto walk = [&](bool with_v, auto&& f) {
      for (const bool sink_run : {true, false}) {
        const auto keys = sink_run ? seen.sink : seen.band;
        if (keys.empty()) continue;
        for (int64_t r = 0; r < rows; ++r) {
          tile.lane_begin[r] = sink_run ? 0 : band.key_begin(m0 + r);
          tile.lane_end[r] = sink_run ? band.sink_end(m0 + r) : band.key_end(m0 + r);
        }
        tile.finish(rows);
        for (int64_t n0 = keys.begin; n0 < keys.end; n0 += kItems) {
          const int64_t n1 = std::min(n0 + kItems, keys.end);
          tile.make_runs(n0, n1);
          if (tile.nruns == 0) continue;
          int64_t k_rs, v_rs = 0;
          const T* k_rows = this->rows_of(k, p.k_stride[2], n0, n1, kb, k_rs);
          const T* v_rows = with_v ? this->rows_of(vv, p.v_stride[2], n0, n1, vb, v_rs) : nullptr;
          f(sink_run, k_rows, k_rs, v_rows, v_rs, n0);
        }
      }
    };

    // Sweep 1: lse2 = m + log2(l), -inf for rows that see nothing. A finite
    // sink logit s2 is where the rows' softmax starts (m = s2, l = 1: the
    // sink's 2^s2 is in l 2^m from the start); an infinite or NaN one joins
    // at the end, log2(l 2^m + 2^s2).
    const bool sink_starts = p.sinks != nullptr && std::isfinite(sink2);
    for (int v = 0; v < kVecs; ++v) {
      m[v] = S::set1(sink_starts ? sink2 : -std::numeric_limits<T>::infinity());
      l[v] = S::set1(sink_starts ? T(1) : T(0));
    }
    walk(false, [&](bool, const T* k_rows, int64_t k_rs, const T*, int64_t, int64_t n0) {
      stats_block(n0, k_rows, k_rs);
    });
    for (int v = 0; v < tile.nvec; ++v) {
      for (int i = 0; i < L; ++i) {
        const T sum = l[v][i];
        T value = sum > T(0) ? m[v][i] + std::log2(sum) : -std::numeric_limits<T>::infinity();
        if (p.sinks != nullptr && !sink_starts) value = T(log2_add_exp2(double(value), double(sink2)));
        if (v * L + i < rows) lse2_out[v * L + i] = value;
        lse2[v][i] = sum > T(0) ? value : T(0);  // rows that see nothing: all masked, P = 0
      }
    }

    // Sweep 2: dQ^T; with sink_grads also the sink keys' dK / scale and dV
    // through the rows' sink runs, dK += dS^T Q and dV += P^T dO summed over
    // the lanes, into the task's [2][S][D] (zeroed by the caller).
    for (int64_t i = 0; i < D * R; ++i) dqt[i] = T(0);
    T* sink_dk = p.sink_grads != nullptr ? static_cast<T*>(p.sink_grads) + task * 2 * band.sink_tokens * D : nullptr;
    const T *q_rows = nullptr, *do_rows = nullptr;
    int64_t q_rs = 0, do_rs = 0;
    if (sink_dk != nullptr && !seen.sink.empty()) {
      q_rows = this->rows_of(q, p.q_stride[2], 0, rows, qrb, q_rs);
      do_rows = this->rows_of(dout, p.dout_stride[2], 0, rows, dorb, do_rs);
    }
    walk(true, [&](bool sink_run, const T* k_rows, int64_t k_rs, const T* v_rows, int64_t v_rs, int64_t n0) {
      const bool sink_pairs = sink_run && sink_dk != nullptr;
      gradient_block(n0, k_rows, k_rs, v_rows, v_rs, sink_pairs);
      if (!sink_pairs) return;
      T* sink_dv = sink_dk + band.sink_tokens * D;
      for (int ri = 0; ri < tile.nruns; ++ri) {
        const LaneRun& run = tile.runs[ri];
        const int64_t r0 = run.v_begin * L, r1 = std::min<int64_t>(run.v_end * L, rows);
        this->lane_sum_update(dpt, n0, run.begin, run.end, r0, r1, q_rows, q_rs, sink_dk);   // dK / scale += dS^T Q
        this->lane_sum_update(st, n0, run.begin, run.end, r0, r1, do_rows, do_rs, sink_dv);  // dV += P^T dO
      }
    });
    vec lane_scale[kVecs];
    for (int v = 0; v < kVecs; ++v) lane_scale[v] = S::set1(T(p.scale));
    unpack_lanes<Cfg, T, In>(dqt, lane_scale, rows, D, dq, p.dq_stride[2]);
  }

  template <class In>
  SWA_INLINE void run(TaskQueue& queue) {
    int64_t task_begin, task_end;
    while (queue.next(task_begin, task_end)) {
      for (int64_t task = task_begin; task < task_end; ++task) {
        const TaskSpot t = this->enter(task, false);
        run_tile<In>(task, t.b, t.head, t.block * R);
      }
    }
  }
};

// The dK/dV pass of one instruction set (Cfg) and accumulation type T.
template <class Cfg, class T>
struct BackwardDkdvKernel : BackwardCommon<Cfg, T> {
  using Base = BackwardCommon<Cfg, T>;
  using typename Base::S;
  using typename Base::Tile;
  using typename Base::vec;
  using Base::D;
  using Base::kItems;
  using Base::kVecs;
  using Base::L;
  using Base::p;
  using Base::R;

  AlignedBuffer<T> lane_buf, item_buf, conv_buf;
  T* kt;   // (D, R)       K^T
  T* vt;   // (D, R)       V^T
  T* dkt;  // (D, R)       dK^T / scale
  T* dvt;  // (D, R)       dV^T
  T* sp;   // (kItems, R)  S, then P, of a block of query rows
  T* dsp;  // (kItems, R)  dP, then dS
  T* qs;   // (kItems, D)  scaled Q rows
  T* qb;   // (kItems, D)  converted Q rows (16-bit inputs)
  T* dob;  // (kItems, D)  converted dO rows (16-bit inputs)

  Tile tile;  // lanes: the keys of the task

  explicit BackwardDkdvKernel(const BackwardProblem& prob)
      : Base(prob),
        lane_buf(4 * prob.head_dim * R),
        item_buf(2 * kItems * R),
        conv_buf((Base::is_16bit(prob.dtype) ? 3 : 1) * kItems * prob.head_dim) {
    kt = lane_buf.data;
    vt = kt + D * R;
    dkt = vt + D * R;
    dvt = dkt + D * R;
    sp = item_buf.data;
    dsp = sp + kItems * R;
    qs = conv_buf.data;
    qb = qs + kItems * D;
    dob = qb + kItems * D;
  }

  // Rows [i0, i1) of query head h: P into sp, dS into dsp, then
  // dV^T += dO^T P and dK^T += Q^T dS. The scores are those of the dQ pass
  // bit for bit: the same scaled Q times the same K, summed in the same order.
  SWA_OUTLINE void row_block(int64_t i0, int64_t i1, const T* q_rows, int64_t q_rs, const T* do_rows,
                            int64_t do_rs, const T* lse2, const T* delta) {
    for (int64_t r = i0; r < i1; ++r)
      for (int64_t d = 0; d < D; ++d) qs[(r - i0) * D + d] = q_rows[(r - i0) * q_rs + d] * this->scale2;
    tile.products(i0, qs, D, D, kt, sp, false);             // S = scale2 Q K^T
    tile.products(i0, do_rows, do_rs, D, vt, dsp, false);  // dP = dO V^T
    for (int ri = 0; ri < tile.nruns; ++ri) {
      const LaneRun& run = tile.runs[ri];
      for (int v = run.v_begin; v < run.v_end; ++v) {
        const bool full = tile.full(v, run.begin, run.end);
        vec rel_begin, rel_end, pr;
        tile.window(v, i0, kItems, rel_begin, rel_end);
        for (int64_t r = run.begin; r < run.end; ++r) {
          const int64_t at = (r - i0) * R + v * L;
          const vec s = S::load(sp + at), dp = S::load(dsp + at);
          const vec row = S::set1(T(r - i0));
          const auto visible = (rel_begin <= row) & (row < rel_end);
          // A row that sees no key has lse2 = -inf and every lane masked.
          const T row_lse2 = lse2[r] == -std::numeric_limits<T>::infinity() ? T(0) : lse2[r];
          const vec ds = full ? this->template score_gradient<false>(s, dp, visible, S::set1(row_lse2),
                                                                     S::set1(delta[r]), pr)
                              : this->template score_gradient<true>(s, dp, visible, S::set1(row_lse2),
                                                                    S::set1(delta[r]), pr);
          S::store(sp + at, pr);
          S::store(dsp + at, ds);
        }
      }
    }
    tile.accumulate(i0, sp, do_rows, do_rs, D, dvt);  // dV^T += dO^T P
    tile.accumulate(i0, dsp, q_rows, q_rs, D, dkt);   // dK^T += Q^T dS
  }

  // dK^T / dV^T of the sink keys [n0, n0 + sinks) += the dQ tasks' sums
  // (BackwardProblem::sink_grads) of the group's query heads, in task order.
  SWA_INLINE void add_dq_sink_grads(int64_t seq, int64_t b, int64_t hk, int64_t n0, int64_t sinks) {
    const int64_t S = this->band.sink_tokens;
    const int64_t blocks = seq < 0 ? p.m_blocks : tiles_of(this->band.seqlen_q, R);
    for (int64_t g = 0; g < p.group; ++g) {
      const int64_t h = hk * p.group + g;
      const int64_t task0 = seq < 0 ? (b * p.heads_q + h) * p.m_blocks : p.q_task_begin[seq] + h * blocks;
      for (int64_t t = task0; t < task0 + blocks; ++t) {
        const T* dk_part = static_cast<const T*>(p.sink_grads) + t * 2 * S * D;
        const T* dv_part = dk_part + S * D;
        for (int64_t j = n0; j < n0 + sinks; ++j) {
          for (int64_t d = 0; d < D; ++d) {
            dkt[d * R + (j - n0)] += dk_part[j * D + d];
            dvt[d * R + (j - n0)] += dv_part[j * D + d];
          }
        }
      }
    }
  }

  // One task: keys [n0, n0 + keys) of kv head hk of batch b (sequence seq
  // when packed, else -1).
  template <class In>
  SWA_INLINE void run_tile(int64_t seq, int64_t b, int64_t hk, int64_t n0) {
    const Band& band = this->band;
    const int64_t c0 = this->k_row0 + n0;  // the tile's first key row in the operands
    const int64_t keys = std::min<int64_t>(R, band.seqlen_k - n0);
    const In* k = static_cast<const In*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1] + c0 * p.k_stride[2];
    const In* vv = static_cast<const In*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1] + c0 * p.v_stride[2];
    In* dk = static_cast<In*>(p.dk) + b * p.dk_stride[0] + hk * p.dk_stride[1] + c0 * p.dk_stride[2];
    In* dv = static_cast<In*>(p.dv) + b * p.dv_stride[0] + hk * p.dv_stride[1] + c0 * p.dv_stride[2];
    for (int64_t i = 0; i < D * R; ++i) dkt[i] = dvt[i] = T(0);
    // With sink_grads the dQ pass took the sink keys' pairs with the rows
    // that see them through their sink runs: here the rows whose bands see
    // the tile, and the dQ tasks' sums for its sink keys after them.
    const bool dq_took_sinks = p.sink_grads != nullptr;
    const auto rows_of_keys = [&](const Band& hb, int64_t j0, int64_t j1) {
      return dq_took_sinks ? SWA_KERNEL_NS::band_row_range(hb, j0, j1) : SWA_KERNEL_NS::row_range(hb, j0, j1);
    };
    bool packed_kv = false;  // K / V of the tile packed as lanes (once, when some head needs them)
    for (int64_t g = 0; g < p.group; ++g) {
      const int64_t h = hk * p.group + g;
      const Band head_band = p.head_windows.of_head(band, h);  // the union's narrowing to head h
      const auto rows = rows_of_keys(head_band, n0, n0 + keys);  // rows that see the tile (here)
      if (rows.empty()) continue;
      // The lanes (keys) hold the rows that see them; the same for every head
      // without per-head windows, so set once then.
      if (g == 0 || p.head_windows.set()) {
        for (int64_t j = 0; j < keys; ++j) {
          const auto seen_by = rows_of_keys(head_band, n0 + j, n0 + j + 1);
          tile.lane_begin[j] = seen_by.empty() ? 0 : seen_by.begin;
          tile.lane_end[j] = seen_by.empty() ? 0 : seen_by.end;
        }
        tile.finish(keys);
      }
      if (!packed_kv) {
        pack_lanes<Cfg, T, In>(k, p.k_stride[2], keys, D, T(1), kt);
        pack_lanes<Cfg, T, In>(vv, p.v_stride[2], keys, D, T(1), vt);
        packed_kv = true;
      }
      const In* q = static_cast<const In*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + this->q_row0 * p.q_stride[2];
      const In* dout =
          static_cast<const In*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1] + this->q_row0 * p.dout_stride[2];
      const T* lse2 = this->stats(p.lse2, b, h);
      const T* delta = this->stats(p.delta, b, h);
      for (int64_t i0 = rows.begin; i0 < rows.end; i0 += kItems) {
        const int64_t i1 = std::min(i0 + kItems, rows.end);
        tile.make_runs(i0, i1);
        if (tile.nruns == 0) continue;
        int64_t q_rs, do_rs;
        const T* q_rows = this->rows_of(q, p.q_stride[2], i0, i1, qb, q_rs);
        const T* do_rows = this->rows_of(dout, p.dout_stride[2], i0, i1, dob, do_rs);
        row_block(i0, i1, q_rows, q_rs, do_rows, do_rs, lse2, delta);
      }
    }
    const int64_t sinks = std::clamp<int64_t>(band.sink_tokens - n0, 0, keys);  // the tile's sink keys
    if (dq_took_sinks && sinks > 0) add_dq_sink_grads(seq, b, hk, n0, sinks);
    vec dk_scale[kVecs], ones[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      dk_scale[v] = S::set1(T(p.scale));
      ones[v] = S::set1(T(1));
    }
    unpack_lanes<Cfg, T, In>(dkt, dk_scale, keys, D, dk, p.dk_stride[2]);
    unpack_lanes<Cfg, T, In>(dvt, ones, keys, D, dv, p.dv_stride[2]);
  }

  template <class In>
  SWA_INLINE void run(TaskQueue& queue) {
    int64_t task_begin, task_end;
    while (queue.next(task_begin, task_end)) {
      for (int64_t task = task_begin; task < task_end; ++task) {
        const TaskSpot t = this->enter(task, true);
        run_tile<In>(t.seq, t.b, t.head, t.block * R);
      }
    }
  }
};

// One worker of each pass with the kernels of one instruction set.
template <template <class, class> class Kernel, class Cfg>
void run_backward_tasks(const BackwardProblem& p, TaskQueue& queue) {
  switch (p.dtype) {
    case c10::kDouble: Kernel<Cfg, double>(p).template run<double>(queue); break;
    case c10::kFloat: Kernel<Cfg, float>(p).template run<float>(queue); break;
    case c10::kHalf: Kernel<Cfg, float>(p).template run<c10::Half>(queue); break;
    case c10::kBFloat16: Kernel<Cfg, float>(p).template run<c10::BFloat16>(queue); break;
    default: TORCH_CHECK(false, "swa::attention_backward: unsupported dtype ", p.dtype);
  }
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS
