// The tensor-core forward kernel (FlashAttention-2 style, sm_80+), fp16/bf16.
//
// One block = one (batch, grid head, key split, query tile of kBlockM packed
// rows). Algorithm, per block:
//   1. tiles = the key tiles the block's query rows see (band skipping; with
//      sink tokens the sink run's tiles first, BlockKeyTiles of fwd_tiles.h),
//      cut to this split's share; none -> write out = 0, lse = -inf (or the
//      sink logit) and stop.
//   2. Q tile -> shared (cp.async) -> registers (ldmatrix); K/V tile of the
//      first key tile -> shared stage 0.
//   3. for each key tile n (ascending): start loading tile n + 1 into the other
//      stage; wait for tile n; S = Q K^T (mma m16n8k16, fp32); scale (or
//      softcap); mask only if the tile needs it; online softmax in the log2
//      domain (exp2); P -> 16 bit in registers = the A operand of O += P V
//      (V via ldmatrix.trans).
//   4. O /= rowsum, lse = ln(sum) + max (with a sink logit: finish_row of
//      fwd_score.cuh): stored to out/lse, or (split-KV) to the fp32 partials
//      reduced by fwd_combine, which adds the sink logit once.
//
// Fragment layout (primitives.cuh), lane = 4 * group + tig:
//   S / O accumulators of a warp's 16 rows, per 8-column tile j:
//     acc[j][0..1]: row group,     columns 8 j + 2 tig + {0, 1}
//     acc[j][2..3]: row group + 8, columns 8 j + 2 tig + {0, 1}
//   so a thread owns rows (group, group + 8) of its warp's tile: index i = 0, 1
//   below, and the 4 lanes of a group (tig = 0..3) share those rows.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "fwd_kernel_traits.cuh"
#include "fwd_score.cuh"
#include "fwd_source.cuh"
#include "primitives.cuh"
#include "swa/kernels/fwd_tiles.h"
#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// ---- global -> shared tile copies (cp.async, 16 B per thread per step) -------
// Chunk L = tid + it * kThreads of a (rows, kHeadDim) tile is row L / kChunksPerRow,
// 16-byte chunk L % kChunksPerRow: consecutive threads read consecutive 16 B of
// a row (coalesced). Rows past the valid ones are zero-filled.

// Q tile (kBlockM, kHeadDim): packed rows m0 .. m0 + kBlockM - 1, valid below m_end.
template <typename Kt>
__device__ __forceinline__ void copy_q_tile(typename Kt::Element* s_q, const AttentionParams& p,
                                            const PackedRows& rows, int m0, int m_end,
                                            int tid) {
  using T = typename Kt::Element;
  const T* q = static_cast<const T*>(p.q.ptr);
#pragma unroll
  for (int it = 0; it < Kt::kQCopies; ++it) {
    const int chunk_id = tid + it * Kt::kThreads;
    const int r = chunk_id / Kt::kChunksPerRow;
    const int c = chunk_id % Kt::kChunksPerRow;
    const int m = m0 + r;
    const bool valid = m < m_end;
    const T* src = valid ? q + rows.offset(m, p.q.batch_stride, p.q.head_stride, p.q.row_stride) + c * 8 : q;
    cp_async_16(s_q + Swizzle<Kt::kHeadDim>::template offset<Kt::kBlockM>(r, c * 8), src, valid);
  }
}

// K and V tiles (kBlockN, kHeadDim) of key tile n_block into one stage; keys
// outside `seen` (the band run and sink run that some row of the block sees) are
// zero-filled: past seqlen_k nothing undefined reaches P V, and a key no row
// sees (a ring slot before the window, a masked position) cannot reach an
// output even if it holds NaN or inf (0 * NaN is NaN in P V). A tile may
// straddle the ring's wrap and the ring/new-keys boundary: each row finds its
// own source (KeySource::k_row).
template <typename Kt>
__device__ __forceinline__ void copy_kv_tile(typename Kt::Element* s_k, typename Kt::Element* s_v,
                                             const KeySource<typename Kt::Element>& keys,
                                             int n_block, SeenKeys seen, int tid) {
  using T = typename Kt::Element;
  const int64_t n0 = static_cast<int64_t>(n_block) * Kt::kBlockN;
#pragma unroll
  for (int it = 0; it < Kt::kKvCopies; ++it) {
    const int chunk_id = tid + it * Kt::kThreads;
    const int r = chunk_id / Kt::kChunksPerRow;
    const int c = chunk_id % Kt::kChunksPerRow;
    const int64_t j = n0 + r;
    const bool valid = seen.contains(j);
    const T* k_src = keys.k;
    const T* v_src = keys.v;
    if (valid) {
      k_src = keys.k_row(j) + c * 8;
      v_src = keys.v_row(j) + c * 8;
    }
    const int dst = Swizzle<Kt::kHeadDim>::template offset<Kt::kBlockN>(r, c * 8);
    cp_async_16(s_k + dst, k_src, valid);
    cp_async_16(s_v + dst, v_src, valid);
  }
}

// ---- results of the block's rows ----------------------------------------------

// Write out = 0, lse = -inf for every valid row (no key tile to visit); with
// sink logits the final lse of such a row is its head's sink logit (a split's
// partial stays -inf: fwd_combine adds the sink).
template <typename Kt>
__device__ __forceinline__ void store_empty_rows(const AttentionParams& p, const PackedRows& rows,
                                                 int m0, int valid_rows, int64_t split,
                                                 bool to_accum, int tid) {
  using T = typename Kt::Element;
  constexpr int kD = Kt::kHeadDim;
  for (int idx = tid; idx < valid_rows * kD; idx += Kt::kThreads) {
    const int m = m0 + idx / kD;
    const int d = idx % kD;
    if (to_accum) {
      p.out_accum[rows.accum_index(m, p, split) * kD + d] = 0.f;
    } else {
      T* out = static_cast<T*>(p.out) + rows.offset(m, p.out_batch_stride, p.out_head_stride, p.out_row_stride);
      out[d] = from_float<T>(0.f);
    }
  }
  for (int r = tid; r < valid_rows; r += Kt::kThreads) {
    const int m = m0 + r;
    if (to_accum) {
      p.lse_accum[rows.accum_index(m, p, split)] = -INFINITY;
    } else {
      p.lse[rows.lse_index(m, p)] = p.sinks != nullptr ? p.sinks[rows.head(m)] : -INFINITY;
    }
  }
}

// Per-block values that the prefetches and the epilogue need, kept in shared
// memory (after the tiles) rather than in registers across the key loop.
template <typename T>
struct FwdBlockState {
  KeySource<T> keys;
  PackedRows rows;
  SeenKeys keys_seen;  // the keys some row of the block sees
  int m0, m_end;  // the block's packed rows [m0, m_end)
  int64_t split;
};

// ---- the kernel ------------------------------------------------------------------

template <typename Kt>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocksPerSm)
    fwd_kernel(const AttentionParams params, const FwdGrid grid, const FwdScoreScale sc) {
  using T = typename Kt::Element;
  using Sw = Swizzle<Kt::kHeadDim>;
  constexpr int kD = Kt::kHeadDim;
  constexpr int kM = Kt::kBlockM;
  constexpr int kN = Kt::kBlockN;

  extern __shared__ __align__(128) unsigned char fwd_smem[];
  T* const smem = reinterpret_cast<T*>(fwd_smem);
  // Stage s: K tile at smem + s * kStageElems, V tile right after it.
  T* const s_q = smem + (Kt::kQInRegs ? Kt::kStageElems : 2 * Kt::kStageElems);
  static_assert(sizeof(FwdBlockState<T>) <= kFwdStateBytes, "block state must fit its reserve");
  FwdBlockState<T>& state = *reinterpret_cast<FwdBlockState<T>*>(fwd_smem + Kt::kTileBytes);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int group = lane / 4;  // fragment row (and row + 8)
  const int tig = lane % 4;    // fragment column pair 2 tig, 2 tig + 1
  const bool to_accum = grid.splits > 1;

  // ---- 1. the block's rows and key tiles
  // The block's key tiles (BlockKeyTiles): visit v is tile v below n_sink
  // (the sink run), tile band_first + v - n_sink after.
  int n_sink, band_first;
  int v_begin, v_end;                  // visits [v_begin, v_end) of this split
  int unmasked_begin, unmasked_end;    // the tiles among them that need no element mask
  int row_key_begin[2], row_key_end[2];  // visible keys of this thread's two rows: the band
  int row_sink_end[2];                   // and the sink run [0, row_sink_end)
  bool warp_active;
  {
    const FwdBlock blk = fwd_block(grid, blockIdx.x);
    const int64_t group_size = params.heads_q / params.heads_kv;  // query heads per kv head
    const SequenceRows seq = sequence_rows(params, blk.batch);
    // The batch entry's packed rows: grid.rows, or fewer for a packed
    // sequence shorter than the longest (its blocks past the end exit here).
    const int64_t seq_rows = seq.seqlen_q * grid.pack;
    const int m0 = static_cast<int>(blk.m_block) * kM;
    if (m0 >= seq_rows) return;
    const PackedRows rows{blk.batch, blk.head * grid.pack, static_cast<int>(grid.pack), seq};
    const int64_t hkv = rows.head0 / group_size;
    // One query head per block with per-head windows (pack 1, fwd_launch.cuh).
    const Band band = batch_band(params, seq, blk.batch, rows.head0);
    const int m_end = static_cast<int>(band_min64(m0 + kM, seq_rows));
    const int valid_rows = m_end - m0;  // 1 .. kM
    const KeyRange q_rows = packed_query_rows(blk.m_block, kM, grid.pack, seq_rows);
    const BlockKeyTiles tiles = rows_block_key_tiles(band, q_rows, kN);
    n_sink = static_cast<int>(tiles.n_sink);
    band_first = static_cast<int>(tiles.band.n_block_min);
    const KeyRange visits = split_visit_range(tiles, blk.split, grid.splits);
    if (visits.empty()) {
      store_empty_rows<Kt>(params, rows, m0, valid_rows, blk.split, to_accum, tid);
      return;
    }
    v_begin = static_cast<int>(visits.begin);
    v_end = static_cast<int>(visits.end);
    // Only band tiles can be unmasked (a sink tile holds keys past some row's
    // sink run, or past Sk): unmasked_begin >= the band's first tile.
    const int band_end = static_cast<int>(tiles.band.n_block_max);
    const TileRange unmasked = rows_unmasked_tile_range(band, q_rows, kN);
    unmasked_begin = static_cast<int>(band_min64(unmasked.n_block_min, band_end));
    unmasked_end = static_cast<int>(band_min64(unmasked.n_block_max, band_end));
    // Warps whose 16 rows are all past the last row skip the math (decoding:
    // Sq * pack is often far below kBlockM) but still copy and synchronise.
    warp_active = warp * 16 < valid_rows;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int m = m0 + warp * 16 + group + 8 * i;
      const bool valid = m < m_end;  // rows past the end see nothing
      row_key_begin[i] = valid ? static_cast<int>(band.key_begin(rows.query_row(m))) : 0;
      row_key_end[i] = valid ? static_cast<int>(band.key_end(rows.query_row(m))) : 0;
      row_sink_end[i] = valid ? static_cast<int>(band.sink_end(rows.query_row(m))) : 0;
    }

    // ---- 2. Q -> shared, first K/V tile -> stage 0, block state -> shared
    const KeySource<T> keys = make_key_source<T>(params, seq, blk.batch, hkv);
    copy_q_tile<Kt>(s_q, params, rows, m0, m_end, tid);
    cp_async_commit();  // group: Q
    const SeenKeys keys_seen = seen_keys(band, q_rows.begin, q_rows.end);
    copy_kv_tile<Kt>(smem, smem + Kt::kKvElems, keys, static_cast<int>(tiles.tile(v_begin)), keys_seen, tid);
    cp_async_commit();  // group: K/V of the first tile
    if (tid == 0) {
      state.keys = keys;
      state.rows = rows;
      state.keys_seen = keys_seen;
      state.m0 = m0;
      state.m_end = m_end;
      state.split = blk.split;
    }
  }

  // Q A-fragments of k-step kk (head dims 16 kk .. 16 kk + 15), one ldmatrix.x4:
  // lane l addresses row 16 warp + l % 16, column 16 kk + 8 (l / 16), i.e.
  // matrices (rows 0-7, cols 0-7) (rows 8-15, cols 0-7) (rows 0-7, cols 8-15)
  // (rows 8-15, cols 8-15) = a0, a1, a2, a3 of the m16n8k16 A layout.
  const uint32_t q_lane = Sw::lane_address(smem_addr(s_q), warp * 16 + lane % 16, (lane / 16) * 8);
  uint32_t q_frag[Kt::kQInRegs ? Kt::kKSteps : 1][4];
  if constexpr (Kt::kQInRegs) cp_async_wait<1>();  // Q landed (K/V may still be in flight)
  __syncthreads();  // publishes the block state (and Q)
  if constexpr (Kt::kQInRegs) {
    if (warp_active) {
#pragma unroll
      for (int kk = 0; kk < Kt::kKSteps; ++kk)
        ldmatrix_x4(q_frag[kk], Sw::template address<kM>(q_lane, 0, kk * 16));
    }
    __syncthreads();  // Q's shared memory is stage 1: free it before tile 2 lands there
  }

  // ---- 3. the key tiles
  float acc_o[Kt::kDTiles][4];  // O (16 rows of the warp, kHeadDim), fp32
#pragma unroll
  for (int j = 0; j < Kt::kDTiles; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_o[j][e] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};  // running max of s2 (log2 units), per row i
  float row_sum[2] = {0.f, 0.f};              // running sum of exp2(s2 - max), this thread's columns

  // K fragments (ldmatrix.x4, non-transposed) of key pair jp (keys 16 jp ..
  // 16 jp + 15) and k-step kk: lane l addresses key 16 jp + l % 8 + 8 (l / 16),
  // dim 16 kk + 8 ((l / 8) % 2): matrices (keys 0-7, dims 0-7) (keys 0-7, dims
  // 8-15) (keys 8-15, dims 0-7) (keys 8-15, dims 8-15) = b0, b1 of key tile
  // 2 jp, then b0, b1 of key tile 2 jp + 1 (B fragment: k = dims 2 tig, 2 tig + 1
  // (+8), n = key group).
  const uint32_t k_lane_offset = Sw::lane_address(0, lane % 8 + (lane / 16) * 8, ((lane / 8) % 2) * 8);
  // V fragments (ldmatrix.x4.trans) of key step ks (keys 16 ks ..) and dim pair
  // dp (dims 16 dp ..): lane l addresses key 16 ks + l % 16, dim 16 dp + 8 (l / 16):
  // matrices (keys 0-7, dims 0-7) (keys 8-15, dims 0-7) (keys 0-7, dims 8-15)
  // (keys 8-15, dims 8-15); transposed, a lane gets V[2 tig, 2 tig + 1 (+8)][group]
  // = b0, b1 of dim tile 2 dp, then of dim tile 2 dp + 1.
  const uint32_t v_lane_offset = Sw::lane_address(0, lane % 16, (lane / 16) * 8);

#pragma unroll 1
  for (int v = v_begin; v < v_end; ++v) {
    const int n_block = v < n_sink ? v : band_first + v - n_sink;
    const int stage = (v - v_begin) & 1;

    // 3a. prefetch the next tile into the other stage (its readers finished at
    // the __syncthreads ending the previous iteration), then wait for this one:
    // at most the group just committed may still be in flight.
    if (v + 1 < v_end) {
      T* const s_k_next = smem + (stage ^ 1) * Kt::kStageElems;
      const int next = v + 1 < n_sink ? v + 1 : band_first + v + 1 - n_sink;
      copy_kv_tile<Kt>(s_k_next, s_k_next + Kt::kKvElems, state.keys, next, state.keys_seen, tid);
    }
    cp_async_commit();  // possibly empty: keeps one group per iteration
    cp_async_wait<1>();
    __syncthreads();

    if (warp_active) {
      // Per-lane fragment addresses of this stage's K and V tiles (tiles are
      // 128-B aligned, so adding the lane part before the XOR is exact).
      const uint32_t k_lane = smem_addr(smem + stage * Kt::kStageElems) + k_lane_offset;
      const uint32_t v_lane = smem_addr(smem + stage * Kt::kStageElems + Kt::kKvElems) + v_lane_offset;

      // 3b. S = Q K^T: (16, kBlockN) per warp, fp32.
      float acc_s[Kt::kNTiles][4];
#pragma unroll
      for (int j = 0; j < Kt::kNTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < Kt::kKSteps; ++kk) {
        uint32_t a[4];
        if constexpr (Kt::kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[e] = q_frag[kk][e];
        } else {
          ldmatrix_x4(a, Sw::template address<kM>(q_lane, 0, kk * 16));
        }
#pragma unroll
        for (int jp = 0; jp < Kt::kNTiles / 2; ++jp) {
          uint32_t kb[4];
          ldmatrix_x4(kb, Sw::template address<kN>(k_lane, jp * 16, kk * 16));
          const uint32_t b_lo[2] = {kb[0], kb[1]};
          const uint32_t b_hi[2] = {kb[2], kb[3]};
          mma_16816<T>(acc_s[2 * jp], a, b_lo);
          mma_16816<T>(acc_s[2 * jp + 1], a, b_hi);
        }
      }

      // 3c. scores in log2 units: s2 = log2(e) * scale * qk, or with the softcap
      // s2 = log2(e) * softcap * tanh(scale * qk / softcap).
      if (sc.use_softcap) {
#pragma unroll
        for (int j = 0; j < Kt::kNTiles; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[j][e] = sc.softcap_log2 * tanhf(acc_s[j][e] * sc.scale_over_cap);
      } else {
#pragma unroll
        for (int j = 0; j < Kt::kNTiles; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[j][e] *= sc.scale_log2;
      }

      // 3d. element mask, only on tiles with an invisible (row, key) pair.
      if (n_block < unmasked_begin || n_block >= unmasked_end) {
        mask_invisible_keys<Kt::kNTiles>(row_sink_end, row_key_begin, row_key_end, n_block * kN, tig,
                                         [&](int j, int i, int e) -> float& { return acc_s[j][2 * i + e]; });
      }

      // 3e. online softmax per row i (values acc_s[j][2 i], acc_s[j][2 i + 1]; the
      // row's other columns are in the 3 other lanes of the group: quad_max).
      // A row that has seen no key yet keeps max = -inf; it subtracts 0 instead
      // so that exp2(-inf - -inf) never makes a NaN, and its P stays 0.
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float tile_max = row_max[i];
#pragma unroll
        for (int j = 0; j < Kt::kNTiles; ++j)
          tile_max = fmaxf(tile_max, fmaxf(acc_s[j][2 * i], acc_s[j][2 * i + 1]));
        tile_max = quad_max(tile_max);
        const float max_use = tile_max == -INFINITY ? 0.f : tile_max;
        const float rescale = exp2f(row_max[i] - max_use);  // 0 while the row was empty
        row_max[i] = tile_max;
        row_sum[i] *= rescale;
#pragma unroll
        for (int j = 0; j < Kt::kDTiles; ++j) {
          acc_o[j][2 * i] *= rescale;
          acc_o[j][2 * i + 1] *= rescale;
        }
        float tile_sum = 0.f;
#pragma unroll
        for (int j = 0; j < Kt::kNTiles; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float prob = exp2f(acc_s[j][2 * i + e] - max_use);
            acc_s[j][2 * i + e] = prob;
            tile_sum += prob;
          }
        row_sum[i] += tile_sum;
      }

      // 3f. O += P V. The A fragment of key step ks (keys 16 ks .. 16 ks + 15) is
      // the C fragment of S's tiles 2 ks and 2 ks + 1, converted to 16 bit:
      //   a0 = (row group,     keys 16 ks + 2 tig ..)     = acc_s[2 ks][0, 1]
      //   a1 = (row group + 8, keys 16 ks + 2 tig ..)     = acc_s[2 ks][2, 3]
      //   a2 = (row group,     keys 16 ks + 8 + 2 tig ..) = acc_s[2 ks + 1][0, 1]
      //   a3 = (row group + 8, keys 16 ks + 8 + 2 tig ..) = acc_s[2 ks + 1][2, 3]
#pragma unroll
      for (int ks = 0; ks < Kt::kPSteps; ++ks) {
        const uint32_t a[4] = {pack2<T>(acc_s[2 * ks][0], acc_s[2 * ks][1]),
                               pack2<T>(acc_s[2 * ks][2], acc_s[2 * ks][3]),
                               pack2<T>(acc_s[2 * ks + 1][0], acc_s[2 * ks + 1][1]),
                               pack2<T>(acc_s[2 * ks + 1][2], acc_s[2 * ks + 1][3])};
#pragma unroll
        for (int dp = 0; dp < Kt::kDTiles / 2; ++dp) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, Sw::template address<kN>(v_lane, ks * 16, dp * 16));
          const uint32_t b_lo[2] = {vb[0], vb[1]};
          const uint32_t b_hi[2] = {vb[2], vb[3]};
          mma_16816<T>(acc_o[2 * dp], a, b_lo);
          mma_16816<T>(acc_o[2 * dp + 1], a, b_hi);
        }
      }
    }
    __syncthreads();  // everyone is done with this stage before it is refilled
  }

  // ---- 4. normalise and store this thread's two rows
  if (!warp_active) return;
  const PackedRows rows = state.rows;
  const int m0 = state.m0;
  const int m_end = state.m_end;
  const int64_t split = state.split;
  // A split's partial leaves the sink logit out: fwd_combine adds it once.
  const bool has_sink = params.sinks != nullptr && !to_accum;  // uniform
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int m = m0 + warp * 16 + group + 8 * i;
    const float sum = quad_sum(row_sum[i]);  // all 4 lanes of the group take part
    if (m >= m_end) continue;
    const RowFinish fin = finish_row(row_max[i], sum, has_sink, has_sink ? params.sinks[rows.head(m)] : 0.f);
    const float inv = fin.out_scale;
    const float lse = fin.lse;
    if (to_accum) {
      const int64_t row_index = rows.accum_index(m, params, split);
      float* out = params.out_accum + row_index * kD;
#pragma unroll
      for (int j = 0; j < Kt::kDTiles; ++j)
        *reinterpret_cast<float2*>(out + 8 * j + 2 * tig) =
            make_float2(acc_o[j][2 * i] * inv, acc_o[j][2 * i + 1] * inv);
      if (tig == 0) params.lse_accum[row_index] = lse;
    } else {
      T* out = static_cast<T*>(params.out) +
               rows.offset(m, params.out_batch_stride, params.out_head_stride, params.out_row_stride);
#pragma unroll
      for (int j = 0; j < Kt::kDTiles; ++j)
        *reinterpret_cast<uint32_t*>(out + 8 * j + 2 * tig) =
            pack2<T>(acc_o[j][2 * i] * inv, acc_o[j][2 * i + 1] * inv);
      if (tig == 0) params.lse[rows.lse_index(m, params)] = lse;
    }
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
