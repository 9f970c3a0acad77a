// The dQ pass of the CPU backward (the algorithm: cpu/backward_kernel.h).
// Included by the per-ISA translation units only (cpu/isa.h).
#pragma once

#include "cpu/backward_common.h"
#include "cpu/lane_pairs.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

// The dQ pass of one instruction set (Cfg) and accumulation type T; kDot:
// bf16 inputs, sweep 1 only (stats_only) with S on bf16 pairs, the same
// scores bit for bit as the dK/dV pass's kDot products (the pair products
// are exact, summed in the same order, then scaled); with sink tokens also
// sweep 2 over the rows' sink runs, on T rows (the dK/dV pass leaves those
// pairs out, so no score needs to match its products).
template <class Cfg, class T, bool kDot = false>
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

  AlignedBuffer<T> lane_buf, item_buf, conv_buf, row_buf, start_buf;
  T* qt;   // (D, R)       scaled Q^T
  T* dot;  // (D, R)       dO^T
  T* dqt;  // (D, R)       dQ^T / scale
  T* st;   // (kItems, R)  S^T of a key block (P^T of the sink run's, with sink_grads)
  T* dpt;  // (kItems, R)  dP^T, then dS^T
  T* kb;   // (kItems, D)  converted K rows (16-bit inputs)
  T* vb;   // (kItems, D)  converted V rows (16-bit inputs)
  T* qrb;  // (R, D)       converted Q rows of the tile (16-bit inputs, sink_grads)
  T* dorb; // (R, D)       converted dO rows of the tile (16-bit inputs, sink_grads)
  AlignedBuffer<uint32_t> pair_buf;
  uint32_t* qp;  // (D/2, R)  kDot: Q^T in head-dim pairs (unscaled)

  Tile tile;  // lanes: the query rows of the task
  int64_t rows = 0;
  vec m[kVecs], l[kVecs];         // sweep 1: running row max and sum
  vec lse2[kVecs], delta[kVecs];  // row statistics (lse2 of rows that see nothing: 0)

  explicit BackwardDqKernel(const BackwardProblem& prob)
      : Base(prob),
        lane_buf(3 * prob.head_dim * R),
        item_buf(2 * kItems * R),
        conv_buf(Base::is_16bit(prob.dtype) ? 2 * kItems * prob.head_dim : 1),
        row_buf(Base::is_16bit(prob.dtype) && prob.sink_grads != nullptr ? 2 * R * prob.head_dim : 1),
        start_buf(prob.sink_rows_start_slices ? R * prob.head_dim : 1),
        pair_buf(kDot ? prob.head_dim / 2 * R : 1) {
    qp = pair_buf.data;
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

  // sum over d of a[d] b[d] (lanes of L dims, then their sum, then the tail).
  SWA_INLINE T row_dot(const T* a, const T* b) const {
    vec acc = S::zero();
    int64_t d = 0;
    for (; d + L <= D; d += L) acc += S::load(a + d) * S::load(b + d);
    T sum = T(0);
    for (int i = 0; i < L; ++i) sum += acc[i];
    for (; d < D; ++d) sum += a[d] * b[d];
    return sum;
  }

  // Sweep 1 over one key block: block max (fused where rows see keys in
  // full, cpu/lane_tile.h), then m and l. kDot: K rows of bf16 bits at
  // k_bits (row n0; k_rows unused).
  SWA_OUTLINE void stats_block(int64_t n0, const T* k_rows, int64_t k_rs, const uint16_t* k_bits) {
    const vec neg_inf = S::set1(-std::numeric_limits<T>::infinity());
    const bool capped = this->softcap > T(0);
    if constexpr (kDot) pair_products(tile, n0, k_bits, k_rs, D / 2, qp, this->scale2, st);
    else tile.products(n0, k_rows, k_rs, D, qt, st, !capped);
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

  // sink_rows_start_slices: rows [m0, m0 + rows) of head h of batch b
  // (rows x D at src, or zeros if null) start each row's first slice of
  // dq_chunks, that of the first chunk whose rows hold it.
  SWA_INLINE void start_slices(int64_t b, int64_t h, int64_t m0, const T* src) const {
    const int64_t hk = h / p.group, g = h % p.group;
    T* head_slices = static_cast<T*>(p.dq_chunks) + (b * p.heads_kv + hk) * p.chunk_offset[p.chunks];
    for (int64_t c = 0; c < p.chunks; ++c) {
      const int64_t begin = p.chunk_rows[2 * c], end = p.chunk_rows[2 * c + 1];
      const int64_t f0 = std::max(p.chunk_first_row[c], m0), f1 = std::min(end, m0 + rows);
      if (f0 >= f1) continue;
      T* dst = head_slices + p.chunk_offset[c] + (g * (end - begin) + (f0 - begin)) * D;
      if (src == nullptr) std::fill(dst, dst + (f1 - f0) * D, T(0));
      else std::copy(src + (f0 - m0) * D, src + (f1 - m0) * D, dst);
    }
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

    // delta = rowsum(dO * O) - dlse (rows as T; kb and vb are free until the
    // sweeps; with sink_grads dorb keeps the dO rows for them).
    for (int v = 0; v < kVecs; ++v) delta[v] = S::zero();
    int64_t dout_rs, o_rs;
    const T* dout_rows = this->rows_of(dout, p.dout_stride[2], 0, rows, p.sink_grads != nullptr ? dorb : kb, dout_rs);
    const T* o_rows = this->rows_of(out, p.out_stride[2], 0, rows, vb, o_rs);
    for (int64_t r = 0; r < rows; ++r) {
      T dot_row = row_dot(dout_rows + r * dout_rs, o_rows + r * o_rs);
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
    // With sink_grads and a sink run the Q rows as T (qrb), for qt and the sink keys' dK.
    int64_t q_rs = 0;
    const T* q_rows = p.sink_grads != nullptr && !seen.sink.empty() ? this->rows_of(q, p.q_stride[2], 0, rows, qrb, q_rs)
                                                                    : nullptr;
    const auto pack_qt = [&] {
      if (q_rows != nullptr) pack_lanes<Cfg, T, T>(q_rows, q_rs, rows, D, this->scale2, qt);
      else pack_lanes<Cfg, T, In>(q, p.q_stride[2], rows, D, this->scale2, qt);
    };
    if constexpr (kDot) {
      TORCH_CHECK(p.stats_only, "swa::attention_backward: the bf16 dot-product dQ pass is the one pass's stats pass");
      if (!p.lse2_given) pack_pair_lanes<R>(reinterpret_cast<const uint16_t*>(q), p.q_stride[2], rows, D / 2, qp);
    } else {
      pack_qt();
    }
    // Calls f(sink_run, k_rows, k_rs, v_rows, v_rs, n0) per key block of both
    // runs with the tile's lanes set to the run (V rows only when with_v).
    auto walk = [&](bool with_v, auto&& f, bool sink_run_only = false) {
      for (const bool sink_run : {true, false}) {
        const auto keys = sink_run ? seen.sink : seen.band;
        if (keys.empty() || (sink_run_only && !sink_run)) continue;
        for (int64_t r = 0; r < rows; ++r) {
          tile.lane_begin[r] = sink_run ? 0 : band.key_begin(m0 + r);
          tile.lane_end[r] = sink_run ? band.sink_end(m0 + r) : band.key_end(m0 + r);
        }
        tile.finish(rows);
        for (int64_t n0 = keys.begin; n0 < keys.end; n0 += kItems) {
          const int64_t n1 = std::min(n0 + kItems, keys.end);
          tile.make_runs(n0, n1);
          if (tile.nruns == 0) continue;
          int64_t k_rs = p.k_stride[2], v_rs = 0;
          // kDot: sweep 1 reads the bf16 bits in place; sweep 2 (sink runs) takes T rows.
          const T* k_rows = kDot && !with_v ? nullptr : this->rows_of(k, p.k_stride[2], n0, n1, kb, k_rs);
          const T* v_rows = with_v ? this->rows_of(vv, p.v_stride[2], n0, n1, vb, v_rs) : nullptr;
          f(sink_run, k_rows, k_rs, v_rows, v_rs, n0);
        }
      }
    };

    // Sweep 1: lse2 = m + log2(l), -inf for rows that see nothing. A finite
    // sink logit s2 is where the rows' softmax starts (m = s2, l = 1: the
    // sink's 2^s2 is in l 2^m from the start); an infinite or NaN one joins
    // at the end, log2(l 2^m + 2^s2). With lse2_given it is read instead.
    if (p.lse2_given) {
      for (int v = 0; v < kVecs; ++v) lse2[v] = S::zero();
      for (int64_t r = 0; r < rows; ++r) {
        const T value = lse2_out[r];
        lse2[r / L][r % L] = value == -std::numeric_limits<T>::infinity() ? T(0) : value;  // sees nothing: P = 0
      }
    } else {
      const bool sink_starts = p.sinks != nullptr && std::isfinite(sink2);
      for (int v = 0; v < kVecs; ++v) {
        m[v] = S::set1(sink_starts ? sink2 : -std::numeric_limits<T>::infinity());
        l[v] = S::set1(sink_starts ? T(1) : T(0));
      }
      walk(false, [&](bool, const T* k_rows, int64_t k_rs, const T*, int64_t, int64_t n0) {
        stats_block(n0, k_rows, k_rs, kDot ? reinterpret_cast<const uint16_t*>(k + n0 * p.k_stride[2]) : nullptr);
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
    }

    // fused_dq: the dK/dV pass takes dQ, here only the sink runs' part, which
    // starts the rows' slices (sink_rows_start_slices).
    const bool sink_runs_only = p.stats_only;
    if (sink_runs_only && !p.sink_rows_start_slices) return;
    if (sink_runs_only && seen.sink.empty()) return start_slices(b, h, m0, nullptr);
    if (p.sink_grads != nullptr) pack_lanes<Cfg, T, T>(dout_rows, dout_rs, rows, D, T(1), dot);
    else pack_lanes<Cfg, T, In>(dout, p.dout_stride[2], rows, D, T(1), dot);
    if constexpr (kDot) pack_qt();  // sweep 1 took pairs

    // Sweep 2: dQ^T; with sink_grads also the sink keys' dK / scale and dV
    // through the rows' sink runs, dK += dS^T Q and dV += P^T dO summed over
    // the lanes, into the task's [2][S][D] (zeroed by the caller).
    for (int64_t i = 0; i < D * R; ++i) dqt[i] = T(0);
    T* sink_dk = p.sink_grads != nullptr ? static_cast<T*>(p.sink_grads) + task * 2 * band.sink_tokens * D : nullptr;
    const T* do_rows = dout_rows;  // as T, with q_rows, for the sink keys' dK / dV (sink_grads)
    const int64_t do_rs = dout_rs;
    walk(true, [&](bool sink_run, const T* k_rows, int64_t k_rs, const T* v_rows, int64_t v_rs, int64_t n0) {
      const bool sink_pairs = sink_run && sink_dk != nullptr;
      gradient_block(n0, k_rows, k_rs, v_rows, v_rs, sink_pairs);
      if (!sink_pairs) return;
      T* sink_dv = sink_dk + band.sink_tokens * D;
      for (int ri = 0; ri < tile.nruns; ++ri) {
        const LaneRun& run = tile.runs[ri];
        const int64_t r0 = run.v_begin * L, r1 = std::min<int64_t>(run.v_end * L, rows);
        this->lane_sum_update(dpt, n0, run.begin, run.end, r0, r1, q_rows, q_rs, sink_dk, D);   // dK / scale += dS^T Q
        this->lane_sum_update(st, n0, run.begin, run.end, r0, r1, do_rows, do_rs, sink_dv, D);  // dV += P^T dO
      }
    }, sink_runs_only);
    vec lane_scale[kVecs];
    if (sink_runs_only) {  // dQ / scale of the sink runs: the start of the rows' slices
      for (int v = 0; v < kVecs; ++v) lane_scale[v] = S::set1(T(1));
      unpack_lanes<Cfg, T, T>(dqt, lane_scale, rows, D, start_buf.data, D);
      return start_slices(b, h, m0, start_buf.data);
    }
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

}  // namespace swa::cpu::SWA_CPU_ISA_NS
