// The dK/dV pass of the CPU backward, and its one-pass form that also takes
// dQ (the algorithm: cpu/backward_kernel.h). Included by the per-ISA
// translation units only (cpu/isa.h).
#pragma once

#include "cpu/backward_common.h"
#include "cpu/lane_pairs.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

// The dK/dV pass of one instruction set (Cfg) and accumulation type T; kDot:
// bf16 inputs with the products on bf16 pairs (cpu/micro_gemm_bf16.h; the
// one pass only).
template <class Cfg, class T, bool kDot = false>
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
  static constexpr int kExpDegree = kDot ? 4 : 6;  // exp2's polynomial (simd.h)

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
  T* kb_tile;  // (R, D)   converted K rows of the tile (16-bit inputs, fused_dq)
  // kDot: words of two bf16 (pairs of head dims, keys or query rows).
  AlignedBuffer<T> chunk_grads;  // fused_dq: (chunk_keys / R) x [dK^T, dV^T] of (D, R)
  AlignedBuffer<uint32_t> pair_buf;
  uint32_t* kp;   // (D/2, R)       K^T in head-dim pairs
  uint32_t* vp;   // (D/2, R)       V^T in head-dim pairs
  uint32_t* kip;  // (R/2, D)       K rows in key pairs (keys no row sees: 0)
  uint32_t* qip;  // (kItems/2, D)  Q rows of the block in row pairs
  uint32_t* dop;  // (kItems/2, D)  dO rows of the block in row pairs
  uint32_t* pp;   // (kItems/2, R)  P or dS in row pairs (pair_accumulate's scratch)
  uint32_t* dsw;  // (kItems, R/2)  dS rows in key pairs

  T row_lse2[kItems];  // the block's rows' lse2 (0 for rows that see nothing)
  Tile tile;  // lanes: the keys of the task
  // fused_dq: the task's slice of dq_chunks (group x rows x D), its first row.
  T* chunk_dq = nullptr;
  int64_t chunk_row0 = 0, chunk_row_count = 0;

  explicit BackwardDkdvKernel(const BackwardProblem& prob)
      : Base(prob),
        lane_buf(4 * prob.head_dim * R),
        item_buf(2 * kItems * R),
        conv_buf((Base::is_16bit(prob.dtype) ? 3 : 1) * kItems * prob.head_dim +
                 (Base::is_16bit(prob.dtype) ? R * prob.head_dim : 0)),
        chunk_grads(prob.fused_dq ? 2 * prob.head_dim * prob.chunk_keys : 1),
        pair_buf(kDot ? (prob.head_dim / 2) * R * 2 + (R / 2) * prob.head_dim + kItems * prob.head_dim +
                            (kItems / 2) * R + kItems * (R / 2)
                      : 1) {
    kt = lane_buf.data;
    vt = kt + D * R;
    dkt = vt + D * R;
    dvt = dkt + D * R;
    sp = item_buf.data;
    dsp = sp + kItems * R;
    qs = conv_buf.data;
    qb = qs + kItems * D;
    dob = qb + kItems * D;
    kb_tile = dob + kItems * D;
    kp = pair_buf.data;
    vp = kp + (D / 2) * R;
    kip = vp + (D / 2) * R;
    qip = kip + (R / 2) * D;
    dop = qip + (kItems / 2) * D;
    pp = dop + (kItems / 2) * D;
    dsw = pp + (kItems / 2) * R;
  }

  // The block's S in sp and dP in dsp become P and dS (kDot: the pair
  // products round them to bf16 as they pack them, and exp2 takes the
  // degree-4 polynomial, 3e-6 relative, as the forward's bf16 path).
  SWA_INLINE void gradients_of_block(int64_t i0, int64_t i1, const T* lse2, const T* delta) {
    // A row that sees no key has lse2 = -inf and every lane masked.
    for (int64_t r = i0; r < i1; ++r)
      row_lse2[r - i0] = lse2[r] == -std::numeric_limits<T>::infinity() ? T(0) : lse2[r];
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
          const vec l2 = S::set1(row_lse2[r - i0]), dl = S::set1(delta[r]);
          const vec ds = full ? this->template score_gradient<false, kExpDegree>(s, dp, visible, l2, dl, pr)
                              : this->template score_gradient<true, kExpDegree>(s, dp, visible, l2, dl, pr);
          S::store(sp + at, pr);
          S::store(dsp + at, ds);
        }
      }
    }
  }

  // The lanes [r0, r1) of run ri whose keys some row of the run sees (a key
  // no row sees may hold NaN or inf and must not reach dQ through 0 * K).
  SWA_INLINE bool seen_lanes(int ri, int64_t& r0, int64_t& r1) const {
    const LaneRun& run = tile.runs[ri];
    r0 = std::min<int64_t>(run.v_end * L, tile.lanes), r1 = run.v_begin * L;
    for (int64_t r = run.v_begin * L; r < std::min<int64_t>(run.v_end * L, tile.lanes); ++r) {
      if (tile.lane_begin[r] < tile.lane_end[r] && tile.lane_begin[r] < run.end && run.begin < tile.lane_end[r])
        r0 = std::min(r0, r), r1 = r + 1;
    }
    return r0 < r1;
  }

  // row_block on bf16 pairs (kDot, fused_dq): the block's Q and dO rows as
  // bf16 bits (row i0 at q / dout) broadcast against kp / vp for S and dP;
  // P and dS rounded to bf16 for dV^T += dO^T P and dK^T += Q^T dS over pairs
  // of rows, and dq += dS K over pairs of keys (kip; keys no row sees are 0
  // there, and a pair's other lane outside [r0, r1) has dS = 0).
  SWA_OUTLINE void row_block_dot(int64_t i0, int64_t i1, const uint16_t* q, int64_t q_rs, const uint16_t* dout,
                                 int64_t do_rs, const T* lse2, const T* delta, T* dq, int64_t dq_row0) {
    pair_products(tile, i0, q, q_rs, D / 2, kp, this->scale2, sp);  // S = scale2 Q K^T
    pair_products(tile, i0, dout, do_rs, D / 2, vp, 1.0f, dsp);     // dP = dO V^T
    gradients_of_block(i0, i1, lse2, delta);
    for (int64_t c = 0; 2 * c < i1 - i0; ++c) {
      const bool both = 2 * c + 1 < i1 - i0;
      interleave_rows_bf16(q + 2 * c * q_rs, both ? q + (2 * c + 1) * q_rs : nullptr, D, qip + c * D);
      interleave_rows_bf16(dout + 2 * c * do_rs, both ? dout + (2 * c + 1) * do_rs : nullptr, D, dop + c * D);
    }
    pair_accumulate<Cfg, true>(tile, i0, sp, pp, dop, D, dvt);   // dV^T += dO^T P
    pair_accumulate<Cfg, true>(tile, i0, dsp, pp, qip, D, dkt);  // dK^T += Q^T dS
    constexpr int64_t W = R / 2;  // words of a dS row
    for (int ri = 0; ri < tile.nruns; ++ri) {  // dq += dS K
      const LaneRun& run = tile.runs[ri];
      int64_t r0, r1;
      if (!seen_lanes(ri, r0, r1)) continue;
      for (int64_t j = run.begin; j < run.end; ++j)
        for (int v = run.v_begin; v < run.v_end; ++v)
          store_adjacent_bf16_pairs(dsw + (j - i0) * W + v * (L / 2), S::load(dsp + (j - i0) * R + v * L));
      const int64_t c0 = r0 / 2, c1 = (r1 + 1) / 2;
      pair_rows_bf16(dsw + (run.begin - i0) * W + c0, W, kip + c0 * D, D, c1 - c0, run.end - run.begin, D,
                     dq + (run.begin - dq_row0) * D, D);
    }
  }

  // Rows [i0, i1) of query head h: P into sp, dS into dsp, then
  // dV^T += dO^T P and dK^T += Q^T dS. The scores are those of the dQ pass
  // bit for bit: the same scaled Q times the same K, summed in the same order.
  // With dq (fused_dq) also dq rows [i0, i1) += dS K (unscaled; row i at
  // dq + (i - dq_row0) * D; k_rows: the tile's K rows).
  SWA_OUTLINE void row_block(int64_t i0, int64_t i1, const T* q_rows, int64_t q_rs, const T* do_rows,
                            int64_t do_rs, const T* lse2, const T* delta, T* dq, int64_t dq_row0,
                            const T* k_rows, int64_t k_rs) {
    for (int64_t r = i0; r < i1; ++r)
      for (int64_t d = 0; d < D; ++d) qs[(r - i0) * D + d] = q_rows[(r - i0) * q_rs + d] * this->scale2;
    tile.products(i0, qs, D, D, kt, sp, false);             // S = scale2 Q K^T
    tile.products(i0, do_rows, do_rs, D, vt, dsp, false);  // dP = dO V^T
    gradients_of_block(i0, i1, lse2, delta);
    tile.accumulate(i0, sp, do_rows, do_rs, D, dvt);  // dV^T += dO^T P
    tile.accumulate(i0, dsp, q_rows, q_rs, D, dkt);   // dK^T += Q^T dS
    if (dq == nullptr) return;
    for (int ri = 0; ri < tile.nruns; ++ri) {  // dQ += dS K, summed over the lanes (keys)
      const LaneRun& run = tile.runs[ri];
      int64_t r0, r1;
      if (seen_lanes(ri, r0, r1)) this->lane_sum_update(dsp, i0, run.begin, run.end, r0, r1, k_rows, k_rs, dq, D, dq_row0);
    }
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

  // kDot: the tile's K^T and V^T in head-dim pairs (kp, vp) and its K rows
  // in key pairs (kip), keys that no row of the call sees as 0 there.
  SWA_INLINE void pack_pairs(const uint16_t* k, int64_t k_rs, const uint16_t* v, int64_t v_rs, int64_t n0,
                             int64_t keys) {
    pack_pair_lanes<R>(k, k_rs, keys, D / 2, kp);
    pack_pair_lanes<R>(v, v_rs, keys, D / 2, vp);
    const auto seen = [&](int64_t j) {
      return j < keys && !SWA_KERNEL_NS::row_range(this->band, n0 + j, n0 + j + 1).empty();
    };
    for (int64_t c = 0; c < R / 2; ++c) {
      const bool a = seen(2 * c), b = seen(2 * c + 1);
      uint32_t* dst = kip + c * D;
      if (a) interleave_rows_bf16(k + 2 * c * k_rs, b ? k + (2 * c + 1) * k_rs : nullptr, D, dst);
      else if (b) interleave_rows_bf16(k + (2 * c + 1) * k_rs, nullptr, D, dst);  // (K[2c + 1], 0): swap below
      else std::fill(dst, dst + D, 0u);
      if (!a && b)
        for (int64_t d = 0; d < D; ++d) dst[d] <<= 16;  // (0, K[2c + 1])
    }
  }

  // Keys [n0, n0 + keys) of kv head hk of batch b (sequence seq when
  // packed, else -1) with the query heads [g0, g1) of its group: dK^T / dV^T
  // (dkt, dvt) start at 0 with the group's first head and are written out
  // with its last.
  template <class In>
  SWA_INLINE void run_tile(int64_t seq, int64_t b, int64_t hk, int64_t n0, int64_t g0, int64_t g1) {
    const Band& band = this->band;
    const int64_t c0 = this->k_row0 + n0;  // the tile's first key row in the operands
    const int64_t keys = std::min<int64_t>(R, band.seqlen_k - n0);
    const In* k = static_cast<const In*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1] + c0 * p.k_stride[2];
    const In* vv = static_cast<const In*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1] + c0 * p.v_stride[2];
    In* dk = static_cast<In*>(p.dk) + b * p.dk_stride[0] + hk * p.dk_stride[1] + c0 * p.dk_stride[2];
    In* dv = static_cast<In*>(p.dv) + b * p.dv_stride[0] + hk * p.dv_stride[1] + c0 * p.dv_stride[2];
    if (g0 == 0)
      for (int64_t i = 0; i < D * R; ++i) dkt[i] = dvt[i] = T(0);
    // With sink_grads the dQ pass took the sink keys' pairs with the rows
    // that see them through their sink runs: here the rows whose bands see
    // the tile, and the dQ tasks' sums for its sink keys after them.
    const bool dq_took_sinks = p.sink_grads != nullptr;
    const auto rows_of_keys = [&](const Band& hb, int64_t j0, int64_t j1) {
      return dq_took_sinks ? SWA_KERNEL_NS::band_row_range(hb, j0, j1) : SWA_KERNEL_NS::row_range(hb, j0, j1);
    };
    bool packed_kv = false;  // K / V of the tile packed as lanes (once, when some head needs them)
    const T* k_tile = nullptr;  // fused_dq: the tile's K rows as T
    int64_t k_tile_rs = 0;
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t h = hk * p.group + g;
      const Band head_band = p.head_windows.of_head(band, h);  // the union's narrowing to head h
      const auto rows = rows_of_keys(head_band, n0, n0 + keys);  // rows that see the tile (here)
      if (rows.empty()) continue;
      // The lanes (keys) hold the rows that see them; the same for every head
      // without per-head windows, so set once then.
      if (g == g0 || p.head_windows.set()) {
        for (int64_t j = 0; j < keys; ++j) {
          const auto seen_by = rows_of_keys(head_band, n0 + j, n0 + j + 1);
          tile.lane_begin[j] = seen_by.empty() ? 0 : seen_by.begin;
          tile.lane_end[j] = seen_by.empty() ? 0 : seen_by.end;
        }
        tile.finish(keys);
      }
      if (!packed_kv) {
        if constexpr (kDot) pack_pairs(reinterpret_cast<const uint16_t*>(k), p.k_stride[2],
                                       reinterpret_cast<const uint16_t*>(vv), p.v_stride[2], n0, keys);
        else {
          pack_lanes<Cfg, T, In>(k, p.k_stride[2], keys, D, T(1), kt);
          pack_lanes<Cfg, T, In>(vv, p.v_stride[2], keys, D, T(1), vt);
        }
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
        if constexpr (kDot) {
          row_block_dot(i0, i1, reinterpret_cast<const uint16_t*>(q + i0 * p.q_stride[2]), p.q_stride[2],
                        reinterpret_cast<const uint16_t*>(dout + i0 * p.dout_stride[2]), p.dout_stride[2], lse2,
                        delta, chunk_dq + g * chunk_row_count * D, chunk_row0);
          continue;
        }
        int64_t q_rs, do_rs;
        const T* q_rows = this->rows_of(q, p.q_stride[2], i0, i1, qb, q_rs);
        const T* do_rows = this->rows_of(dout, p.dout_stride[2], i0, i1, dob, do_rs);
        T* dq_rows = nullptr;
        const T* k_rows = nullptr;
        int64_t k_rs = 0;
        if (p.fused_dq) {  // the tile's K rows (converted once per tile for 16-bit inputs)
          dq_rows = chunk_dq + g * chunk_row_count * D;
          if (k_tile == nullptr) k_tile = this->rows_of(k, p.k_stride[2], 0, keys, kb_tile, k_tile_rs);
          k_rows = k_tile, k_rs = k_tile_rs;
        }
        row_block(i0, i1, q_rows, q_rs, do_rows, do_rs, lse2, delta, dq_rows, chunk_row0, k_rows, k_rs);
      }
    }
    if (g1 < p.group) return;  // the group's other heads follow
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
    if (p.fused_dq) return run_fused<In>(queue);
    if constexpr (kDot) TORCH_CHECK(false, "swa::attention_backward: the bf16 dot-product dK/dV pass is one-pass only");
    int64_t task_begin, task_end;
    while (queue.next(task_begin, task_end)) {
      for (int64_t task = task_begin; task < task_end; ++task) {
        const TaskSpot t = this->enter(task, true);
        run_tile<In>(t.seq, t.b, t.head, t.block * R, 0, p.group);
      }
    }
  }

  // fused_dq: task (batch, kv head, chunk) zeroes its dq_chunks slice and
  // walks the chunk's key tiles in order, each adding dS K to the rows that
  // see it (the caller sums the slices); one query head of the group after
  // the other, so that the rows a tile reaches stay in cache for the next
  // tile (under GQA with long windows the whole group's rows would not),
  // the tiles' dK^T / dV^T kept in chunk_grads meanwhile: the same sums in
  // the same order as with the heads inside the tile loop.
  template <class In>
  SWA_INLINE void run_fused(TaskQueue& queue) {
    int64_t task_begin, task_end;
    while (queue.next(task_begin, task_end)) {
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t c = task % p.chunks, bh = task / p.chunks;
        const int64_t b = bh / p.heads_kv, hk = bh % p.heads_kv;
        this->band = p.band;
        this->q_row0 = this->k_row0 = 0;
        chunk_row0 = p.chunk_rows[2 * c];
        chunk_row_count = p.chunk_rows[2 * c + 1] - chunk_row0;
        chunk_dq = static_cast<T*>(p.dq_chunks) + bh * p.chunk_offset[p.chunks] + p.chunk_offset[c];
        if (!p.sink_rows_start_slices) {
          std::fill(chunk_dq, chunk_dq + p.group * chunk_row_count * D, T(0));
        } else {  // the dQ pass started the rows that no earlier chunk holds
          const int64_t zero_rows = p.chunk_first_row[c] - chunk_row0;
          for (int64_t g = 0; g < p.group; ++g)
            std::fill(chunk_dq + g * chunk_row_count * D, chunk_dq + (g * chunk_row_count + zero_rows) * D, T(0));
        }
        const int64_t k0 = c * p.chunk_keys, k1 = std::min(p.seqlen_k, (c + 1) * p.chunk_keys);
        for (int64_t g = 0; g < p.group; ++g) {
          for (int64_t n0 = k0; n0 < k1; n0 += R) {
            dkt = chunk_grads.data + (n0 - k0) / R * 2 * D * R;
            dvt = dkt + D * R;
            run_tile<In>(-1, b, hk, n0, g, g + 1);
          }
        }
      }
    }
  }
};

}  // namespace swa::cpu::SWA_CPU_ISA_NS
