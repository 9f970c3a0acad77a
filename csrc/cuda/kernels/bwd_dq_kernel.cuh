// The tensor-core dQ kernel of the deterministic backward, fp16/bf16: no
// atomics, so every dQ element is summed by one thread in a fixed order and
// results are bit-identical run to run.
//
// One block = one (query tile of kBlockM rows, batch, query head); warp w owns
// rows [16 w, 16 w + 16). Q and dO stay in shared memory; the key tiles stream
// through two K/V stages in ascending order: with sink tokens first the sink
// tiles [0, n_sink) (sink_tile_range of band.h, all below the band's), then
// the band's tiles (key_tile_range). Per key tile:
//   1. S  = Q K^T, dP = dO V^T      (16 rows x kBlockN keys per warp, fp32)
//   2. P = exp(s - lse), dX = P (dP - D) [* (1 - tanh^2)]; masks only when
//      bwd_tile_needs_mask or on a sink tile (whose keys past a row's sink run
//      are not the row's); a mask keeps each row's sink run and band
//   3. dQ += dX K                   (dX straight from registers as the A operand)
// and at the end dq = scale * dQ in q's dtype. P and dP are recomputed here
// (the dK/dV kernel computed them too): the price of determinism.
// The sink logits need nothing here: lse (the forward's) already holds them.
// Packed sequences: "batch" is a sequence (sequence_rows: its lengths and
// first rows); a query tile past its sequence's end exits at once.
//
// MMAs (m16n8k16): S (M = rows, N = keys, K = dims): A = sQ [row][dim] ldsm,
// B = sK [key][dim] = [n][k] ldsm; dP: sdO, sV alike; dQ (M = rows, N = dims,
// K = keys): A = dX registers (C tiles 2 ks, 2 ks + 1 -> a0..a3), B = sK
// [key][dim] = [k][n] ldsm.trans. Accumulator rows: group, group + 8 of the
// warp's 16; columns 8 j + 2 tig + {0, 1} (primitives.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "bwd_common.cuh"
#include "bwd_kernel_traits.cuh"
#include "primitives.cuh"
#include "sequence_rows.cuh"
#include "swa/kernels/band.h"
#include "swa/kernels/bwd_tiles.h"
#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Step 2 on a warp's (16 rows, kKeys) tile: acc_s (raw q.k) becomes P, acc_dp
// becomes dX. Row i (accumulator rows group + 8 i) has lse2[i] (log2 units),
// d[i], and sees the keys whose column c (relative to the tile's first key)
// satisfies key_lo[i] <= c < key_hi[i] (band) or c < sink_hi[i] (sink run).
template <bool kSoftcap, int kKeys>
__device__ __forceinline__ void dq_score_grads(float (&acc_s)[kKeys / 8][4], float (&acc_dp)[kKeys / 8][4],
                                               const float (&lse2)[2], const float (&d)[2],
                                               const BwdScoreScale& sc, bool need_mask, const int (&sink_hi)[2],
                                               const int (&key_lo)[2], const int (&key_hi)[2], int tig) {
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * tig + e;
        float p, dx;
        score_grad<kSoftcap>(acc_s[j][2 * i + e], acc_dp[j][2 * i + e], lse2[i], d[i], sc, p, dx);
        if (need_mask && !column_visible(c, sink_hi[i], key_lo[i], key_hi[i])) p = dx = 0.f;
        acc_s[j][2 * i + e] = p;
        acc_dp[j][2 * i + e] = dx;
      }
}

template <typename Kt>
__global__ void __launch_bounds__(Kt::kThreads, 1)
    bwd_dq_kernel(const AttentionBackwardParams params, const BwdQGrid grid, const BwdScoreScale sc) {
  using T = typename Kt::Element;
  using QTile = typename Kt::QTile;    // (kBlockM, kHeadDim)
  using KvTile = typename Kt::KvTile;  // (kBlockN, kHeadDim)
  constexpr int kD = Kt::kHeadDim;
  constexpr int kM = Kt::kBlockM;
  constexpr int kN = Kt::kBlockN;
  constexpr int kThreads = Kt::kThreads;

  extern __shared__ __align__(128) unsigned char bwd_smem[];
  T* const s_q = reinterpret_cast<T*>(bwd_smem + Kt::kOffQ);
  T* const s_do = reinterpret_cast<T*>(bwd_smem + Kt::kOffDo);

  const AttentionParams& fp = params.fwd;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int group = lane >> 2;  // accumulator rows group, group + 8
  const int tig = lane & 3;     // accumulator columns 2 tig, 2 tig + 1

  const BwdQBlock blk = bwd_q_block(grid, blockIdx.x);
  const int64_t batch = blk.batch;
  const int64_t head = blk.head;
  const int64_t head_kv = head / (fp.heads_q / fp.heads_kv);
  // The batch entry's rows (a packed sequence's; a query tile past its end
  // has nothing to write and exits at once).
  const SequenceRows seq = sequence_rows(fp, batch);
  const int m0 = static_cast<int>(blk.m_block) * kM;
  if (m0 >= seq.seqlen_q) return;
  const Band band =
      fp.head_windows.of_head(Band{seq.seqlen_q, seq.seqlen_k, fp.window_left, fp.window_right, fp.sink_tokens}, head);
  const int seqlen_q = static_cast<int>(seq.seqlen_q);
  const TileRange tiles = key_tile_range(band, blk.m_block, kM, kN);
  const int n_begin = static_cast<int>(tiles.n_block_min);
  const int n_band = static_cast<int>(tiles.size());
  // Sink tiles [0, n_sink), all below n_begin (0 without sink tokens).
  const int n_sink = static_cast<int>(sink_tile_range(band, m0, m0 + kM, tiles, kN).size());
  const int n_tiles = n_sink + n_band;
  // Visit it (0 .. n_tiles - 1) -> key tile: the sink tiles, then the band's.
  auto tile_of_visit = [&](int it) { return it < n_sink ? it : n_begin + (it - n_sink); };

  // This thread's rows m0 + 16 warp + group + 8 i: visible keys, lse, D. Rows
  // past Sq see no key and get lse = +inf (P = 0).
  int row_sink_end[2], row_key_begin[2], row_key_end[2];
  float lse2[2], d[2];
  const int64_t row_index0 = lse_offset(fp, seq, batch, head, 0);  // of lse, D
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = m0 + 16 * warp + group + 8 * i;
    const bool valid = row < seqlen_q;
    row_sink_end[i] = valid ? static_cast<int>(band.sink_end(row)) : 0;
    row_key_begin[i] = valid ? static_cast<int>(band.key_begin(row)) : 0;
    row_key_end[i] = valid ? static_cast<int>(band.key_end(row)) : 0;
    lse2[i] = valid ? lse_to_log2(fp.lse[row_index0 + row]) : INFINITY;
    d[i] = valid ? params.softmax_d[row_index0 + row] : 0.f;
  }

  // Keys outside what the block's rows see (sink run, band) are zero-filled: a
  // key no row sees (NaN or inf included) must not reach dQ through 0 * NaN
  // in dS K.
  const SeenKeys seen = seen_keys(band, m0, m0 + kM);
  const T* k_head = static_cast<const T*>(fp.k.ptr) + seq.stride_batch * fp.k.batch_stride +
                    head_kv * fp.k.head_stride + seq.k0 * fp.k.row_stride;
  const T* v_head = static_cast<const T*>(fp.v.ptr) + seq.stride_batch * fp.v.batch_stride +
                    head_kv * fp.v.head_stride + seq.k0 * fp.v.row_stride;
  auto load_kv_tile = [&](int n_block, int stage) {
    const int n0 = n_block * kN;
    const KeyTileRows r = key_tile_rows<kN>(seen, n0);
    T* s_k = reinterpret_cast<T*>(bwd_smem + Kt::kOffStages + stage * Kt::kStageBytes);
    copy_tile_async<KvTile, kThreads>(s_k, k_head + static_cast<int64_t>(n0) * fp.k.row_stride,
                                      fp.k.row_stride, r.valid, tid, r.first, r.sink);
    copy_tile_async<KvTile, kThreads>(s_k + KvTile::kElems, v_head + static_cast<int64_t>(n0) * fp.v.row_stride,
                                      fp.v.row_stride, r.valid, tid, r.first, r.sink);
  };

  // Per-lane ldmatrix addresses. Q, dO: A of S / dP (rows = M, cols = dims = K):
  // rows-first. K, V of stage 0: B of S / dP (rows = keys = N, cols = dims = K):
  // cols-first; K .trans, B of dQ (rows = keys = K, cols = dims = N): rows-first.
  const uint32_t smem_base = smem_addr(bwd_smem);
  const int rf_row = pattern_rows_first_row(lane), rf_col = pattern_rows_first_col(lane);
  const int cf_row = pattern_cols_first_row(lane), cf_col = pattern_cols_first_col(lane);
  const uint32_t q_lane = QTile::lane_address(smem_base + Kt::kOffQ, rf_row, rf_col);
  const uint32_t do_lane = QTile::lane_address(smem_base + Kt::kOffDo, rf_row, rf_col);
  const uint32_t k_b_lane = KvTile::lane_address(smem_base + Kt::kOffStages, cf_row, cf_col);
  const uint32_t v_b_lane = k_b_lane + KvTile::kBytes;
  const uint32_t k_bt_lane = KvTile::lane_address(smem_base + Kt::kOffStages, rf_row, rf_col);

  float acc_dq[kD / 8][4];  // dQ / scale: rows (group, group + 8), columns 8 j + 2 tig ..
#pragma unroll
  for (int j = 0; j < kD / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dq[j][e] = 0.f;

  // Q, dO (resident) and the first K/V tile: one cp.async group.
  if (n_tiles > 0) {
    const int valid = min(kM, seqlen_q - m0);
    const T* q = static_cast<const T*>(fp.q.ptr) + seq.stride_batch * fp.q.batch_stride + head * fp.q.head_stride +
                 (seq.q0 + m0) * fp.q.row_stride;
    const T* dout = static_cast<const T*>(params.dout.ptr) + seq.stride_batch * params.dout.batch_stride +
                    head * params.dout.head_stride + (seq.q0 + m0) * params.dout.row_stride;
    copy_tile_async<QTile, kThreads>(s_q, q, fp.q.row_stride, valid, tid);
    copy_tile_async<QTile, kThreads>(s_do, dout, params.dout.row_stride, valid, tid);
    load_kv_tile(tile_of_visit(0), 0);
    cp_async_commit();
  }

#pragma unroll 1
  for (int it = 0; it < n_tiles; ++it) {
    const int n_block = tile_of_visit(it);
    const int stage = it & 1;
    const uint32_t stage_bytes = static_cast<uint32_t>(stage * Kt::kStageBytes);

    // This tile's group is the only one in flight; the barrier also ends the
    // previous iteration's reads of the other stage.
    cp_async_wait<0>();
    __syncthreads();
    if (it + 1 < n_tiles) {
      load_kv_tile(tile_of_visit(it + 1), stage ^ 1);
      cp_async_commit();
    }

    // 1. S = Q K^T, dP = dO V^T: (16 rows, kBlockN keys) per warp.
    float acc_s[kN / 8][4], acc_dp[kN / 8][4];
#pragma unroll
    for (int j = 0; j < kN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_s[j][e] = acc_dp[j][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a_q[4], a_do[4];
      ldmatrix_x4(a_q, QTile::address(q_lane, 16 * warp, 16 * kk));
      ldmatrix_x4(a_do, QTile::address(do_lane, 16 * warp, 16 * kk));
#pragma unroll
      for (int jp = 0; jp < kN / 16; ++jp) {
        uint32_t b[4];
        ldmatrix_x4(b, KvTile::address(k_b_lane + stage_bytes, 16 * jp, 16 * kk));
        const uint32_t bk_lo[2] = {b[0], b[1]};
        const uint32_t bk_hi[2] = {b[2], b[3]};
        mma_16816<T>(acc_s[2 * jp], a_q, bk_lo);
        mma_16816<T>(acc_s[2 * jp + 1], a_q, bk_hi);
        ldmatrix_x4(b, KvTile::address(v_b_lane + stage_bytes, 16 * jp, 16 * kk));
        const uint32_t bv_lo[2] = {b[0], b[1]};
        const uint32_t bv_hi[2] = {b[2], b[3]};
        mma_16816<T>(acc_dp[2 * jp], a_do, bv_lo);
        mma_16816<T>(acc_dp[2 * jp + 1], a_do, bv_hi);
      }
    }

    // 2. P and dX in place of S and dP.
    {
      const int n0 = n_block * kN;
      // (A sink tile lies below every row's band: bwd_tile_needs_mask is true
      // for it anyway; it < n_sink says so without relying on that.)
      const bool need_mask = it < n_sink || bwd_tile_needs_mask(band, blk.m_block, kM, n_block, kN);
      const int sink_hi[2] = {row_sink_end[0] - n0, row_sink_end[1] - n0};
      const int lo[2] = {row_key_begin[0] - n0, row_key_begin[1] - n0};
      const int hi[2] = {row_key_end[0] - n0, row_key_end[1] - n0};
      if (sc.use_softcap) {
        dq_score_grads<true, kN>(acc_s, acc_dp, lse2, d, sc, need_mask, sink_hi, lo, hi, tig);
      } else {
        dq_score_grads<false, kN>(acc_s, acc_dp, lse2, d, sc, need_mask, sink_hi, lo, hi, tig);
      }
    }

    // 3. dQ += dX K over the tile's keys (K dim).
#pragma unroll
    for (int ks = 0; ks < kN / 16; ++ks) {
      const uint32_t a[4] = {pack2<T>(acc_dp[2 * ks][0], acc_dp[2 * ks][1]),
                             pack2<T>(acc_dp[2 * ks][2], acc_dp[2 * ks][3]),
                             pack2<T>(acc_dp[2 * ks + 1][0], acc_dp[2 * ks + 1][1]),
                             pack2<T>(acc_dp[2 * ks + 1][2], acc_dp[2 * ks + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, KvTile::address(k_bt_lane + stage_bytes, 16 * ks, 16 * dp));
        const uint32_t b_lo[2] = {b[0], b[1]};
        const uint32_t b_hi[2] = {b[2], b[3]};
        mma_16816<T>(acc_dq[2 * dp], a, b_lo);
        mma_16816<T>(acc_dq[2 * dp + 1], a, b_hi);
      }
    }
  }

  // 4. dq = scale * dQ for rows < Sq (zeros for a tile that sees no key).
  T* dq = static_cast<T*>(params.dq.ptr) + seq.stride_batch * params.dq.batch_stride +
          head * params.dq.head_stride + seq.q0 * params.dq.row_stride;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = m0 + 16 * warp + group + 8 * i;
    if (row >= seqlen_q) continue;
    T* dq_row = dq + static_cast<int64_t>(row) * params.dq.row_stride + 2 * tig;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j)
      *reinterpret_cast<uint32_t*>(dq_row + 8 * j) =
          pack2<T>(sc.scale * acc_dq[j][2 * i], sc.scale * acc_dq[j][2 * i + 1]);
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
