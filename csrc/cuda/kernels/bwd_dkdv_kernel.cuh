// The tensor-core dK/dV kernel of the backward (FlashAttention-2 style, sm_80+),
// fp16/bf16. Also dQ in the default (atomic) mode.
//
// One block = one (key tile of kBlockN keys, batch, kv head). Its K and V tiles
// stay in shared memory; dK and dV accumulate in registers (fp32) over every
// query head of the kv head's group and every query tile whose rows see the
// key tile (BwdQueryWalk: band skipping). Per query tile (Q, dO, lse, D
// streamed through shared memory, double-buffered when kStages == 2):
//   1. S^T  = K Q^T                       (keys x queries)
//   2. dP^T = V dO^T
//   3. P^T  = exp(s - lse), dX^T = P^T (dP^T - D) [* (1 - tanh^2)]; element
//      masks only when bwd_tile_needs_mask
//   4. dV += P^T dO,  dK += dX^T Q         (fp32 registers)
//   5. default mode: dQ_tile = dX K (dX through shared memory), added to the
//      fp32 workspace dq_accum with atomics; deterministic mode: skipped (the
//      dQ kernel recomputes it)
// At the end dK *= scale and dK, dV are written in k/v's dtype, rows < Sk.
//
// Attention sinks (params.h): the sink logits need nothing here (lse, the
// forward's, holds them). Sink tokens: a key tile holding sink keys is seen by
// every query tile from its keys' first row on (query_tile_range: row_range
// of band.h reaches the last row), and the element mask of a key is the
// contiguous rows that see it (key_query_rows: band or sink run), so the walk
// and the masks cover them as they are; only the zero-fill of unseen keys
// must keep the sink run (two runs of seen keys, key_tile_rows).
//
// Packed sequences (params.h: cu_seqlens_*): "batch" is a sequence, whose
// lengths and first rows come from sequence_rows; the grid covers the longest
// sequence and a key tile past its own sequence's end exits at once.
//
// The five MMAs (m16n8k16, A row major (M, K), B "col major" = stored [n][k]):
//   MMA   M        N        K        A from                         B from
//   S^T   keys     queries  dims     sK  [key][dim]  ldsm           sQ  [query][dim] ldsm      (stored [n][k])
//   dP^T  keys     queries  dims     sV  [key][dim]  ldsm           sdO [query][dim] ldsm      (stored [n][k])
//   dV    keys     dims     queries  P^T registers (or sP ldsm)     sdO [query][dim] ldsm.trans (stored [k][n])
//   dK    keys     dims     queries  dX^T registers (or sdS ldsm)   sQ  [query][dim] ldsm.trans (stored [k][n])
//   dQ    queries  dims     keys     sdS [key][query] ldsm.trans    sK  [key][dim]   ldsm.trans (stored [k][n])
// Accumulator layout (primitives.cuh): a warp's C tile j (8 columns) holds
//   acc[j][0..1]: row group,     columns 8 j + 2 tig + {0, 1}
//   acc[j][2..3]: row group + 8, columns 8 j + 2 tig + {0, 1}
// with lane = 4 group + tig; "row" is a key for S^T, dP^T, dK, dV and a query
// for dQ. A C tile pair (2 ks, 2 ks + 1) converted to 16 bit is exactly the A
// fragment of k-step ks of the next MMA (a0 = C[2ks][0,1], a1 = C[2ks][2,3],
// a2 = C[2ks+1][0,1], a3 = C[2ks+1][2,3]), which is how P^T and dX^T feed dV
// and dK without leaving registers when kSplit == 1.
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

// Step 3 on a warp's (16 keys, kQueries) tile: from acc_s (S^T, raw q.k) and
// acc_dp (dP^T), P^T and dX^T rounded to 16 bit, directly in the A-fragment
// layout of the dV / dK MMAs (k-step ks = queries 16 ks ..): C tile j, row
// half i (keys group + 8 i) -> register (j % 2) * 2 + i of fragment j / 2.
// lse / d: the tile's per-query lse and D in shared memory, at the warp's
// first query. Key row i is seen by the queries whose column c (relative to
// the warp's first query) satisfies row_lo[i] <= c < row_hi[i].
template <typename T, bool kSoftcap, int kQueries>
__device__ __forceinline__ void dkdv_score_grads(const float (&acc_s)[kQueries / 8][4],
                                                 const float (&acc_dp)[kQueries / 8][4],
                                                 uint32_t (&p16)[kQueries / 16][4], uint32_t (&dx16)[kQueries / 16][4],
                                                 const float* lse, const float* d, const BwdScoreScale& sc,
                                                 bool need_mask, const int (&row_lo)[2], const int (&row_hi)[2],
                                                 int tig) {
#pragma unroll
  for (int j = 0; j < kQueries / 8; ++j) {
    const int c0 = 8 * j + 2 * tig;  // columns c0, c0 + 1 of this lane
    const float2 lse_pair = *reinterpret_cast<const float2*>(lse + c0);
    const float2 d_pair = *reinterpret_cast<const float2*>(d + c0);
    const float lse2[2] = {lse_to_log2(lse_pair.x), lse_to_log2(lse_pair.y)};
    const float dv[2] = {d_pair.x, d_pair.y};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float p[2], dx[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        score_grad<kSoftcap>(acc_s[j][2 * i + e], acc_dp[j][2 * i + e], lse2[e], dv[e], sc, p[e], dx[e]);
        if (need_mask && (c0 + e < row_lo[i] || c0 + e >= row_hi[i])) p[e] = dx[e] = 0.f;
      }
      p16[j / 2][(j % 2) * 2 + i] = pack2<T>(p[0], p[1]);
      dx16[j / 2][(j % 2) * 2 + i] = pack2<T>(dx[0], dx[1]);
    }
  }
}

template <typename Kt>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocksPerSm)
    bwd_dkdv_kernel(const AttentionBackwardParams params, const BwdKvGrid grid, const BwdScoreScale sc) {
  using T = typename Kt::Element;
  using KvTile = typename Kt::KvTile;  // (kBlockN, kHeadDim)
  using QTile = typename Kt::QTile;    // (kBlockM, kHeadDim)
  using DsTile = typename Kt::DsTile;  // (kBlockN, kBlockM)
  constexpr int kD = Kt::kHeadDim;
  constexpr int kM = Kt::kBlockM;
  constexpr int kN = Kt::kBlockN;
  constexpr int kWQ = Kt::kWarpQueries;
  constexpr int kWD = Kt::kWarpDims;
  constexpr bool kSplitWarps = Kt::kSplit > 1;
  constexpr int kThreads = Kt::kThreads;

  extern __shared__ __align__(128) unsigned char bwd_smem[];
  T* const s_k = reinterpret_cast<T*>(bwd_smem + Kt::kOffK);
  T* const s_v = reinterpret_cast<T*>(bwd_smem + Kt::kOffV);
  T* const s_ds = reinterpret_cast<T*>(bwd_smem + Kt::kOffDs);
  T* const s_p = reinterpret_cast<T*>(bwd_smem + Kt::kOffP);
  float* const s_lse = reinterpret_cast<float*>(bwd_smem + Kt::kOffLse);
  float* const s_d = reinterpret_cast<float*>(bwd_smem + Kt::kOffD);

  const AttentionParams& fp = params.fwd;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int group = lane >> 2;  // accumulator rows group, group + 8
  const int tig = lane & 3;     // accumulator columns 2 tig, 2 tig + 1
  // (wn, wx); with kSplit == 1, wx is the constant 0 (blockDim.x = kThreads),
  // which keeps the fragment offsets below compile-time constants.
  const int wn = Kt::kSplit == 1 ? warp : warp % Kt::kKeyWarps;
  const int wx = Kt::kSplit == 1 ? 0 : warp / Kt::kKeyWarps;
  const int key0 = 16 * wn;    // the warp's keys [key0, key0 + 16) of the tile
  const int query0 = wx * kWQ;  // the warp's queries of S^T / dP^T in a query tile
  const int dim0 = wx * kWD;    // the warp's columns of dK / dV
  const bool accumulate_dq = !params.deterministic;

  const BwdKvBlock blk = bwd_kv_block(grid, blockIdx.x);
  // 32-bit copies of the block's indices (the grid is < 2^31 blocks), widened
  // where they meet 64-bit strides: fewer registers across the main loop.
  const int batch = static_cast<int>(blk.batch);
  const int head_kv = static_cast<int>(blk.head_kv);
  // The batch entry's rows (a packed sequence's: its own lengths and first
  // rows; a key tile past its end has nothing to write and exits at once).
  const SequenceRows seq = sequence_rows(fp, batch);
  const int n0 = static_cast<int>(blk.n_block) * kN;
  if (n0 >= seq.seqlen_k) return;
  const Band band{seq.seqlen_q, seq.seqlen_k, fp.window_left, fp.window_right, fp.sink_tokens};
  const int group_size = static_cast<int>(fp.heads_q / fp.heads_kv);
  const BwdQueryWalk walk = make_bwd_query_walk(band, blk.n_block, kN, kM, group_size);
  const int m_block_min = static_cast<int>(walk.m_block_min);
  const int m_blocks = static_cast<int>(walk.m_blocks);
  const int num_steps = static_cast<int>(walk.count());
  // Step -> (query head, query tile) of the walk (BwdQueryWalk's order).
  auto step_head = [&](int step) { return static_cast<int64_t>(head_kv) * group_size + step / m_blocks; };
  auto step_m_block = [&](int step) { return m_block_min + step % m_blocks; };
  const int seqlen_q = static_cast<int>(seq.seqlen_q);
  const int seqlen_k = static_cast<int>(seq.seqlen_k);
  // The sequence's first rows of q / dO and of k / v / dk / dv.
  const T* const q_seq = static_cast<const T*>(fp.q.ptr) + seq.stride_batch * fp.q.batch_stride +
                         seq.q0 * fp.q.row_stride;
  const T* const dout_seq = static_cast<const T*>(params.dout.ptr) + seq.stride_batch * params.dout.batch_stride +
                            seq.q0 * params.dout.row_stride;

  // Step `step` of the walk (query head, query tile) -> stage: Q, dO rows and
  // their lse, D.
  auto load_query_tile = [&](int step, int stage) {
    const int64_t head = step_head(step);
    const int m0 = step_m_block(step) * kM;
    const int valid = min(kM, seqlen_q - m0);
    const T* q = q_seq + head * fp.q.head_stride + static_cast<int64_t>(m0) * fp.q.row_stride;
    const T* dout = dout_seq + head * params.dout.head_stride + static_cast<int64_t>(m0) * params.dout.row_stride;
    const int64_t row_index = lse_offset(fp, seq, batch, head, m0);  // of lse, D
    T* s_q = reinterpret_cast<T*>(bwd_smem + Kt::kOffStages + stage * Kt::kStageBytes);
    copy_tile_async<QTile, kThreads>(s_q, q, fp.q.row_stride, valid, tid);
    copy_tile_async<QTile, kThreads>(s_q + QTile::kElems, dout, params.dout.row_stride, valid, tid);
    copy_row_values_async<kM, kThreads>(s_lse + stage * kM, fp.lse + row_index, valid, tid);
    copy_row_values_async<kM, kThreads>(s_d + stage * kM, params.softmax_d + row_index, valid, tid);
  };

  // Per-lane ldmatrix addresses (SmemTile::lane_address) of stage 0, moved to
  // the warp's own rows / columns (SmemTile::address folds, preconditions
  // asserted in BwdTraits); stage s adds s * kStageBytes (a multiple of 128:
  // lane parts unchanged).
  const uint32_t smem_base = smem_addr(bwd_smem);
  const int rf_row = pattern_rows_first_row(lane), rf_col = pattern_rows_first_col(lane);
  const int cf_row = pattern_cols_first_row(lane), cf_col = pattern_cols_first_col(lane);
  // K, V as A of S^T / dP^T (rows = keys = M, cols = dims = K): rows-first, at
  // the warp's keys. K .trans as B of dQ (rows = keys = K, cols = dims = N):
  // rows-first (k_lane, at the dQ pass's columns).
  const uint32_t k_lane = KvTile::lane_address(smem_base + Kt::kOffK, rf_row, rf_col);
  const uint32_t k_a_lane = KvTile::address(k_lane, key0, 0);
  const uint32_t v_a_lane = KvTile::address(KvTile::lane_address(smem_base + Kt::kOffV, rf_row, rf_col), key0, 0);
  // Q, dO as B of S^T / dP^T (rows = queries = N, cols = dims = K): cols-first,
  // at the warp's queries; .trans as B of dK / dV (rows = queries = K, cols =
  // dims = N): rows-first, at the warp's columns.
  const uint32_t q_b_lane =
      QTile::address(QTile::lane_address(smem_base + Kt::kOffStages, cf_row, cf_col), query0, 0);
  const uint32_t do_b_lane = q_b_lane + QTile::kBytes;
  const uint32_t q_bt_lane =
      QTile::address(QTile::lane_address(smem_base + Kt::kOffStages, rf_row, rf_col), 0, dim0);
  const uint32_t do_bt_lane = q_bt_lane + QTile::kBytes;
  // dS^T, P^T [key][query] as A of dK / dV (rows = keys = M, cols = queries =
  // K): rows-first, at the warp's keys; sdS .trans as A of dQ (rows = keys = K,
  // cols = queries = M): cols-first, at the warp's dQ rows.
  const uint32_t ds_a_lane = DsTile::address(DsTile::lane_address(smem_base + Kt::kOffDs, rf_row, rf_col), key0, 0);
  const uint32_t p_a_lane = ds_a_lane + (Kt::kOffP - Kt::kOffDs);
  const int dq_row0 = (warp % Kt::kDqWarpsM) * Kt::kDqWarpRows;  // the warp's dQ rows [dq_row0, + kDqWarpRows)
  const int dq_col0 = (warp / Kt::kDqWarpsM) * Kt::kDqWarpDims;  // and columns [dq_col0, + kDqWarpDims)
  const uint32_t ds_at_lane =
      DsTile::address(DsTile::lane_address(smem_base + Kt::kOffDs, cf_row, cf_col), 0, dq_row0);

  float acc_dk[kWD / 8][4];  // dK / scale: keys key0 + (group, group + 8), dims dim0 + 8 j + 2 tig ..
  float acc_dv[kWD / 8][4];  // dV, same layout
#pragma unroll
  for (int j = 0; j < kWD / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;

  // K, V tiles (resident) and the first query tile: one cp.async group.
  if (num_steps > 0) {
    // Keys that no query of the call sees are zero-filled: their dK, dV are 0
    // and, NaN or inf as they may be, they cannot reach dQ through dS K. The
    // seen keys are the sink run and the band run (each contiguous:
    // key_begin, key_end and sink_end are monotone in the row).
    const KeyTileRows seen = key_tile_rows<kN>(seen_keys(band, 0, seq.seqlen_q), n0);
    const T* k = static_cast<const T*>(fp.k.ptr) + seq.stride_batch * fp.k.batch_stride +
                 static_cast<int64_t>(head_kv) * fp.k.head_stride + (seq.k0 + n0) * fp.k.row_stride;
    const T* v = static_cast<const T*>(fp.v.ptr) + seq.stride_batch * fp.v.batch_stride +
                 static_cast<int64_t>(head_kv) * fp.v.head_stride + (seq.k0 + n0) * fp.v.row_stride;
    copy_tile_async<KvTile, kThreads>(s_k, k, fp.k.row_stride, seen.valid, tid, seen.first, seen.sink);
    copy_tile_async<KvTile, kThreads>(s_v, v, fp.v.row_stride, seen.valid, tid, seen.first, seen.sink);
    load_query_tile(0, 0);
    cp_async_commit();
  }

#pragma unroll 1
  for (int step = 0; step < num_steps; ++step) {
    const int stage = Kt::kStages == 2 ? (step & 1) : 0;
    const int m_block = step_m_block(step);
    const int m0 = m_block * kM;
    // The step's query head's band (the walk covers the union's tiles: with
    // per-head windows a step outside the head's band is masked whole).
    const Band step_band = fp.head_windows.of_head(band, step_head(step));
    const uint32_t stage_bytes = static_cast<uint32_t>(stage * Kt::kStageBytes);

    // The only group in flight is this step's tile. The barrier also ends the
    // previous step: its reads of the other stage, sP and sdS are done.
    cp_async_wait<0>();
    __syncthreads();
    if (Kt::kStages == 2 && step + 1 < num_steps) {
      load_query_tile(step + 1, stage ^ 1);
      cp_async_commit();
    }

    // 1. S^T = K Q^T: (16 keys, kWQ queries) per warp, fp32.
    float acc_s[kWQ / 8][4];
#pragma unroll
    for (int j = 0; j < kWQ / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_s[j][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, KvTile::address(k_a_lane, 0, 16 * kk));
#pragma unroll
      for (int jp = 0; jp < kWQ / 16; ++jp) {
        uint32_t b[4];
        ldmatrix_x4(b, QTile::address(q_b_lane + stage_bytes, 16 * jp, 16 * kk));
        const uint32_t b_lo[2] = {b[0], b[1]};
        const uint32_t b_hi[2] = {b[2], b[3]};
        mma_16816<T>(acc_s[2 * jp], a, b_lo);
        mma_16816<T>(acc_s[2 * jp + 1], a, b_hi);
      }
    }

    // 2. dP^T = V dO^T: same shapes.
    float acc_dp[kWQ / 8][4];
#pragma unroll
    for (int j = 0; j < kWQ / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_dp[j][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, KvTile::address(v_a_lane, 0, 16 * kk));
#pragma unroll
      for (int jp = 0; jp < kWQ / 16; ++jp) {
        uint32_t b[4];
        ldmatrix_x4(b, QTile::address(do_b_lane + stage_bytes, 16 * jp, 16 * kk));
        const uint32_t b_lo[2] = {b[0], b[1]};
        const uint32_t b_hi[2] = {b[2], b[3]};
        mma_16816<T>(acc_dp[2 * jp], a, b_lo);
        mma_16816<T>(acc_dp[2 * jp + 1], a, b_hi);
      }
    }

    // 3. P^T and dX^T, 16 bit, as A fragments (the fp32 tiles end here); masks
    // only where needed.
    uint32_t p16[kWQ / 16][4], dx16[kWQ / 16][4];
    {
      const bool need_mask = bwd_tile_needs_mask(step_band, m_block, kM, blk.n_block, kN);
      // Key row i (key n0 + key0 + group + 8 i) is seen by the query rows
      // key_query_rows(key) (empty for keys past Sk; for a sink key its band
      // rows and sink rows, one contiguous range); relative to the warp's
      // first query here. Recomputed per step (cheap) rather than kept in
      // registers across the loop.
      const int q_first = m0 + query0;
      int lo[2], hi[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const KeyRange rows = key_query_rows(step_band, n0 + key0 + group + 8 * i);
        lo[i] = static_cast<int>(rows.begin) - q_first;
        hi[i] = static_cast<int>(rows.end) - q_first;
      }
      const float* lse = s_lse + stage * kM + query0;
      const float* d = s_d + stage * kM + query0;
      if (sc.use_softcap) {
        dkdv_score_grads<T, true, kWQ>(acc_s, acc_dp, p16, dx16, lse, d, sc, need_mask, lo, hi, tig);
      } else {
        dkdv_score_grads<T, false, kWQ>(acc_s, acc_dp, p16, dx16, lse, d, sc, need_mask, lo, hi, tig);
      }
    }

    // 4a. dX^T -> sdS for dQ, and with split warps also P^T -> sP: fragment
    // register (j % 2) * 2 + i of k-step j / 2 holds (key key0 + group + 8 i,
    // queries query0 + 8 j + 2 tig + {0, 1}), one 4-byte store.
    if (kSplitWarps || accumulate_dq) {
      const int lane_off[2] = {DsTile::store_offset(DsTile::store_lane_offset(key0 + group, 2 * tig), query0),
                               DsTile::store_offset(DsTile::store_lane_offset(key0 + group + 8, 2 * tig), query0)};
#pragma unroll
      for (int j = 0; j < kWQ / 8; ++j)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int off = DsTile::store_offset(lane_off[i], 8 * j);
          *reinterpret_cast<uint32_t*>(s_ds + off) = dx16[j / 2][(j % 2) * 2 + i];
          if constexpr (kSplitWarps) *reinterpret_cast<uint32_t*>(s_p + off) = p16[j / 2][(j % 2) * 2 + i];
        }
    }

    // 4b. dV += P^T dO, dK += dX^T Q over the tile's kBlockM queries (K dim),
    // for the warp's keys and columns [dim0, dim0 + kWD).
#pragma unroll
    for (int ks = 0; ks < kM / 16; ++ks) {
      uint32_t a_p[4], a_ds[4];
      if constexpr (kSplitWarps) {
        if (ks == 0) __syncthreads();  // P^T, dX^T of the other warps of the key group
        ldmatrix_x4(a_p, DsTile::address(p_a_lane, 0, 16 * ks));
        ldmatrix_x4(a_ds, DsTile::address(ds_a_lane, 0, 16 * ks));
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          a_p[e] = p16[ks][e];
          a_ds[e] = dx16[ks][e];
        }
      }
#pragma unroll
      for (int dp = 0; dp < kWD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, QTile::address(do_bt_lane + stage_bytes, 16 * ks, 16 * dp));
        const uint32_t bv_lo[2] = {b[0], b[1]};
        const uint32_t bv_hi[2] = {b[2], b[3]};
        mma_16816<T>(acc_dv[2 * dp], a_p, bv_lo);
        mma_16816<T>(acc_dv[2 * dp + 1], a_p, bv_hi);
        ldmatrix_x4_trans(b, QTile::address(q_bt_lane + stage_bytes, 16 * ks, 16 * dp));
        const uint32_t bk_lo[2] = {b[0], b[1]};
        const uint32_t bk_hi[2] = {b[2], b[3]};
        mma_16816<T>(acc_dk[2 * dp], a_ds, bk_lo);
        mma_16816<T>(acc_dk[2 * dp + 1], a_ds, bk_hi);
      }
    }

    // 4c. The query tile's Q, dO, lse, D are no longer read: a single-buffered
    // stage reloads now (overlapping dQ); otherwise make sdS visible for dQ.
    if constexpr (Kt::kStages == 1) {
      __syncthreads();
      if (step + 1 < num_steps) {
        load_query_tile(step + 1, 0);
        cp_async_commit();
      }
    } else if constexpr (!kSplitWarps) {
      if (accumulate_dq) __syncthreads();  // (uniform: a kernel parameter)
    }

    // 5. dQ_tile = dX K: (kBlockM, kHeadDim), warp (wm, wd) rows
    // [dq_row0, + kDqWarpRows) x columns [dq_col0, + kDqWarpDims), added to
    // dq_accum (unscaled; the convert kernel applies the softmax scale), in
    // passes of at most 64 columns (32 accumulator registers per row tile).
    if (accumulate_dq) {
      constexpr int kRowTiles = Kt::kDqWarpRows / 16;
      constexpr int kPassDims = Kt::kDqPassDims;
      constexpr int kColTiles = kPassDims / 8;
      const int64_t head = step_head(step);
      float* dq_rows = params.dq_accum + lse_offset(fp, seq, batch, head, m0) * kD;
#pragma unroll 1
      for (int col0 = dq_col0; col0 < dq_col0 + Kt::kDqWarpDims; col0 += kPassDims) {
        // K .trans lane address at the pass's columns (folded when aligned).
        const uint32_t k_bt_lane = Kt::kDqFoldCols ? KvTile::address(k_lane, 0, col0) : k_lane;
        const int k_col = Kt::kDqFoldCols ? 0 : col0;
        float acc_dq[kRowTiles][kColTiles][4];
#pragma unroll
        for (int mi = 0; mi < kRowTiles; ++mi)
#pragma unroll
          for (int j = 0; j < kColTiles; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_dq[mi][j][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < kN / 16; ++ks) {
          uint32_t a[kRowTiles][4];
#pragma unroll
          for (int mi = 0; mi < kRowTiles; ++mi)
            ldmatrix_x4_trans(a[mi], DsTile::address(ds_at_lane, 16 * ks, 16 * mi));
#pragma unroll
          for (int dp = 0; dp < kColTiles / 2; ++dp) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, KvTile::address(k_bt_lane, 16 * ks, k_col + 16 * dp));
            const uint32_t b_lo[2] = {b[0], b[1]};
            const uint32_t b_hi[2] = {b[2], b[3]};
#pragma unroll
            for (int mi = 0; mi < kRowTiles; ++mi) {
              mma_16816<T>(acc_dq[mi][2 * dp], a[mi], b_lo);
              mma_16816<T>(acc_dq[mi][2 * dp + 1], a[mi], b_hi);
            }
          }
        }
#pragma unroll
        for (int mi = 0; mi < kRowTiles; ++mi)
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int r = dq_row0 + 16 * mi + group + 8 * i;
            if (m0 + r < seqlen_q) {
              float* dst = dq_rows + static_cast<int64_t>(r) * kD + col0 + 2 * tig;
#pragma unroll
              for (int j = 0; j < kColTiles; ++j) {
                atomicAdd(dst + 8 * j, acc_dq[mi][j][2 * i]);
                atomicAdd(dst + 8 * j + 1, acc_dq[mi][j][2 * i + 1]);
              }
            }
          }
      }
    }
  }

  // 6. dK = scale * (dX^T Q), dV: the warp's keys (rows < Sk) and columns.
  T* dk = static_cast<T*>(params.dk.ptr) + seq.stride_batch * params.dk.batch_stride +
          static_cast<int64_t>(head_kv) * params.dk.head_stride + seq.k0 * params.dk.row_stride;
  T* dv = static_cast<T*>(params.dv.ptr) + seq.stride_batch * params.dv.batch_stride +
          static_cast<int64_t>(head_kv) * params.dv.head_stride + seq.k0 * params.dv.row_stride;
  const int valid_keys = seqlen_k - n0;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int key_in_tile = key0 + group + 8 * i;
    if (key_in_tile >= valid_keys) continue;
    const int key = n0 + key_in_tile;
    T* dk_row = dk + static_cast<int64_t>(key) * params.dk.row_stride + dim0 + 2 * tig;
    T* dv_row = dv + static_cast<int64_t>(key) * params.dv.row_stride + dim0 + 2 * tig;
#pragma unroll
    for (int j = 0; j < kWD / 8; ++j) {
      *reinterpret_cast<uint32_t*>(dk_row + 8 * j) =
          pack2<T>(sc.scale * acc_dk[j][2 * i], sc.scale * acc_dk[j][2 * i + 1]);
      *reinterpret_cast<uint32_t*>(dv_row + 8 * j) = pack2<T>(acc_dv[j][2 * i], acc_dv[j][2 * i + 1]);
    }
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
