// The Hopper forward kernel (sm_90a): TMA + wgmma + mbarrier pipeline,
// fp16/bf16, head dims 64 and 128. Same contract as the portable kernel
// (fwd_kernel.cuh): out = softmax(scale * q k^T (softcap), band mask) v,
// lse = ln(sum exp) (natural log), rows that see no key: out = 0, lse = -inf.
// Attention sinks (params.h), both kinds: sink tokens (keys 0 .. S-1 beside
// the band, Band::sink_tokens) are extra key tiles after the band's
// (sink_tile_range of band.h); sink logits (params.sinks[h]) enter in the
// epilogue only: lse = ln(sum exp + exp(sink)), out = O 2^(m - lse2); a row
// that sees no key gets out 0, lse = sinks[h].
//
// Work: query tiles of kBlockM = 128 rows of one (batch, query head), indexed
// as the 1-D grid of fwd_tiles.h (pack = 1, splits = 1: m_block fastest, from
// the last tile down, so the longest rows start first). Persistent: the
// launcher starts one block per SM and block x takes tiles x, x + gridDim.x,
// ... (SWA_SM90_PERSISTENT=0: one block per tile). Query head h reads kv head
// h / (Hq / Hkv).
//
// Warp roles (384 threads = 3 warpgroups, __launch_bounds__(384, 1)):
//   warpgroup 0   producer: setmaxnreg.dec to 24; one thread issues every TMA
//                 copy (Q once, then K and V of each key tile into a ring of
//                 kStages stages); the other 127 threads exit.
//   warpgroups 1-2 consumers: setmaxnreg.inc to 240; consumer c owns query
//                 rows 64 c .. 64 c + 63 of the tile; both read the same K/V
//                 stage.
//
// Pipeline (mbarriers in shared memory; K/V stages and phases run on across
// the block's tiles: the i-th key tile the block loads uses stage i % kStages,
// parity (i / kStages) & 1; Q's barriers flip once per tile):
//   q_full           1 arrival (producer's expect_tx) + Q's bytes
//   q_empty          256 arrivals (every consumer thread, once its last
//                    S = Q K^T of the tile completed): Q may be reloaded
//   k_full[s]        1 arrival + K tile bytes       (producer -> consumers)
//   v_full[s]        1 arrival + V tile bytes       (separate: S = Q K^T may
//                                                    start before V lands)
//   empty[s]         256 arrivals (every consumer thread, after the P V wgmma
//                    that read stage s completed)  (consumers -> producer)
//   v_ready[s]       1 arrival (the V guard, packed sequences only: stage s's
//                    V tile is masked)              (V guard -> consumers)
//
// Per consumer warpgroup, key tiles i = 0 .. n - 1 in descending key order
// (Sm90Tile::n_block: the band's tiles, then the sink tiles), the softmax of tile i overlapping the P V wgmma
// of tile i - 1 (in-warpgroup two-stage pipelining, as in FlashAttention-3):
//   tile 0:   S = Q K0^T; wait; softmax(S) -> P (16-bit registers)
//   tile i:   issue S = Q Ki^T; issue O += P V(i-1); wait_group 1 (S is done,
//             P V may still run); mask, max, exp2, row sums of S; wait_group 0;
//             release stage i - 1; O *= rescale; P = S (16-bit)
//   end:      O += P V(n-1); wait; release; O / rowsum -> out, lse
// Ping-pong between the two consumer warpgroups (kPingPong, FlashAttention-3's
// warp-scheduler barriers): each "GEMM slot" (tile 0's S; tile i's S + tile
// i - 1's P V) of consumer c is bracketed by bar.sync(1 + c) before issuing
// and bar.arrive(1 + (c ^ 1)) after, so the two take turns on the tensor cores
// and one's softmax runs under the other's GEMMs. Consumer 1 pre-arrives once
// on consumer 0's barrier and consumer 0 syncs once more after its last tile,
// so both barriers end every block with no pending arrivals.
//
// Band phases: descending key order visits first the right-edge tiles that
// need element masks (the diagonal for causal / window_right), then the
// unmasked interior, then the left-edge masked tiles (the window's start),
// decided per tile by the shared band math (rows_unmasked_tile_range of
// fwd_tiles.h): a warp-uniform branch, masks only on the edge tiles. Tiles
// outside [n_begin, n_end) (rows_key_tile_range) are never loaded. With sink
// tokens the sink tiles [0, n_sink) below n_begin follow, always masked
// (their keys past a row's sink run are not its keys); the mask of a band
// tile keeps a row's sink run too (a tile holding both runs is the band's).
//
// Shared memory (every operand tile 1024-byte aligned, 128-byte swizzle, head
// dim split into 64-wide column blocks of rows x 128 bytes each):
//   d = 64:  Q 16 KB + 3 stages x (K 16 KB + V 16 KB) = 112 KB (+ barriers, 1 KB alignment slack)
//   d = 128: Q 32 KB + 2 stages x (K 32 KB + V 32 KB) = 160 KB
// Registers per consumer thread: O d/2 fp32, S 64 fp32, P 32 b32.
//
// Partial tiles: TMA zero-fills rows past Sq / Sk (the bounds are per (batch,
// head) since the tensor maps are 4-D [B, H, S, D]); keys >= Sk are masked by
// the band (key_end <= Sk, and tiles crossing Sk always take the masked path);
// rows >= Sq are computed but never stored.
//
// Packed sequences (params.cu_seqlens_q/k, read on the device): the maps are
// [1, H, T, D] (sm90_operands of sm90_tma.h) and a tile's boxes start at its
// sequence's first row, so a box crossing the sequence's end reads the next
// sequence's rows. Their queries are computed and not stored, their keys are
// past the band (masked); their values meet P = 0, which a NaN or inf there
// would still turn into NaN: the V guard (warp 1 of the producer warpgroup)
// zeroes, in each landed V tile, the rows no query row of the tile sees, and
// the consumers wait for it (v_ready) instead of for the TMA (v_full).
//
// Softmax: exp2 by ex2.approx.ftz; without a softcap the scale is folded into
// one FFMA per score (max on the raw scores).
//
// Status: compiles for sm_90a (ptxas: 168 registers at launch, setmaxnreg
// 24 / 240; the packed-only V guard spills 32 bytes under the producer's
// 24-register cap, off the consumers' path; SASS has HGMMA, UTMALDG, SYNCS,
// USETMAXREG) and passes
// the CPU emulation of tests/cuda_emu/run_sm90.sh (real source, emulated
// TMA / mbarrier / wgmma / named barriers). Not yet run on a GPU: the GPU
// tests are tests/test_sm90.py, the sanitizers and timings bench/run_gpu.sh.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "fwd_score.cuh"
#include "primitives.cuh"
#include "sequence_rows.cuh"
#include "sm90_primitives.cuh"
#include "swa/kernels/band.h"
#include "swa/kernels/fwd_tiles.h"
#include "swa/kernels/params.h"
#include "swa/kernels/sm90_tma.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

template <typename T, int kHeadDim_>
struct Sm90FwdTraits {
  using Element = T;
  static constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "sm90 forward: head dim 64 or 128");
  static constexpr int kConsumers = 2;             // consumer warpgroups
  static constexpr int kBlockM = 64 * kConsumers;  // query rows per block
  static constexpr int kBlockN = 128;              // keys per tile
  static constexpr int kStages = kHeadDim == 64 ? 3 : 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Ping-pong: the consumer warpgroups take turns issuing their wgmmas (named
  // barriers kSchedBarrier + c), so one's softmax overlaps the other's GEMMs.
  static constexpr bool kPingPong = true;
  static constexpr int kSchedBarrier = 1;  // ids 1, 2 (0 is __syncthreads)
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536, "register file");

  static constexpr int kColBlocks = kHeadDim / 64;  // 64-element (128-B) column blocks
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKvBytes = kBlockN * kHeadDim * 2;  // one K or one V tile
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvBytes;
  static constexpr int kBarOffset = kVOffset + kStages * kKvBytes;
  static constexpr int kBarCount = 2 + 4 * kStages;  // q_full, q_empty, k_full, v_full, empty, v_ready
  // + 1024: the dynamic shared memory base is rounded up to 1024 bytes.
  static constexpr int kSmemBytes = kBarOffset + 8 * kBarCount + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "sm_90 shared memory per block");

  static constexpr int kNTiles = kBlockN / 8;  // 8-column tiles of S
  static constexpr int kDTiles = kHeadDim / 8;  // 8-column tiles of O
  static constexpr int kKSteps = kHeadDim / 16;  // k steps of Q K^T
  static constexpr int kPSteps = kBlockN / 16;  // k steps of P V
};

namespace sm90 {

// S = Q K^T for the 64 rows of one consumer warpgroup (N = 128 keys).
template <bool kBf16>
__device__ __forceinline__ void wgmma_s(float (&d)[64], uint64_t a, uint64_t b, int scale_d) {
  wgmma_ss_m64n128k16<kBf16, 0>(d, a, b, scale_d);
}
// O += P V (N = head dim, B MN-major).
template <bool kBf16>
__device__ __forceinline__ void wgmma_o(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  wgmma_rs_m64n64k16<kBf16, 1>(d, a, b, 1);
}
template <bool kBf16>
__device__ __forceinline__ void wgmma_o(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  wgmma_rs_m64n128k16<kBf16, 1>(d, a, b, 1);
}

}  // namespace sm90

// The work of query tile `index` (fwd_block order: m_block fastest, from the
// last one down): its rows and the key tiles it visits, n_tiles in all
// (0: no key visible, out = 0 and lse = -inf or the sink logit): the band's
// n_end - 1 down to n_end - n_band, then the sink tiles n_sink - 1 down to 0
// (all below the band's, sink_tile_range of band.h).
struct Sm90Tile {
  int64_t b, h, hkv;
  SequenceRows seq;                  // batch entry b's rows (packed: sequence b's)
  Band band;                         // on seq's lengths
  int64_t tma_batch;                 // the batch coordinate of the TMA boxes (packed: 0)
  int m0, m_end;                     // query rows [m0, m_end) of seq
  int n_end, n_band, n_sink, n_tiles;
  int unmasked_begin, unmasked_end;  // key tiles that need no element mask
  // The key tile of visit i (0 <= i < n_tiles).
  __device__ __forceinline__ int n_block(int i) const { return i < n_band ? n_end - 1 - i : n_tiles - 1 - i; }
};

// Packed sequences: grid.rows is the longest sequence; a tile past its own
// sequence's end has no rows and no key tiles.
template <typename Kt>
__device__ __forceinline__ Sm90Tile sm90_tile(const AttentionParams& p, const FwdGrid& grid, int64_t index) {
  const FwdBlock blk = fwd_block(grid, index);
  Sm90Tile t;
  t.b = blk.batch;
  t.h = blk.head;  // query head (pack = 1)
  t.hkv = t.h / (p.heads_q / p.heads_kv);
  t.seq = sequence_rows(p, t.b);
  t.band = Band{t.seq.seqlen_q, t.seq.seqlen_k, p.window_left, p.window_right, p.sink_tokens};
  const Band& band = t.band;
  t.tma_batch = t.seq.stride_batch;
  t.m0 = static_cast<int>(blk.m_block) * Kt::kBlockM;
  t.m_end = static_cast<int>(band_min64(t.m0 + Kt::kBlockM, t.seq.seqlen_q));
  const KeyRange q_rows = packed_query_rows(blk.m_block, Kt::kBlockM, 1, t.seq.seqlen_q);
  const TileRange tiles = rows_key_tile_range(band, q_rows, Kt::kBlockN);
  t.n_end = static_cast<int>(tiles.n_block_max);
  t.n_band = static_cast<int>(tiles.size());
  t.n_sink = static_cast<int>(sink_tile_range(band, q_rows.begin, q_rows.end, tiles, Kt::kBlockN).size());
  t.n_tiles = t.n_band + t.n_sink;
  const TileRange unmasked = rows_unmasked_tile_range(band, q_rows, Kt::kBlockN);
  t.unmasked_begin = static_cast<int>(band_min64(unmasked.n_block_min, tiles.n_block_max));
  t.unmasked_end = static_cast<int>(band_min64(unmasked.n_block_max, tiles.n_block_max));
  return t;
}

// Writes out = 0, lse = -inf (with sink logits: lse = sinks[h]) for the rows
// of a tile that sees no key (threads `thread` of `nthreads`).
template <typename Kt>
__device__ __forceinline__ void sm90_store_empty(const AttentionParams& p, const Sm90Tile& t, int thread,
                                                 int nthreads) {
  using T = typename Kt::Element;
  constexpr int kD = Kt::kHeadDim;
  T* const out = static_cast<T*>(p.out) + t.seq.stride_batch * p.out_batch_stride + t.h * p.out_head_stride +
                 t.seq.q0 * p.out_row_stride;
  for (int idx = thread; idx < (t.m_end - t.m0) * kD; idx += nthreads) {
    const int m = t.m0 + idx / kD;
    out[static_cast<int64_t>(m) * p.out_row_stride + idx % kD] = from_float<T>(0.f);
  }
  const float lse = p.sinks != nullptr ? p.sinks[t.h] : -INFINITY;
  for (int m = t.m0 + thread; m < t.m_end; m += nthreads) p.lse[lse_offset(p, t.seq, t.b, t.h, m)] = lse;
}

// Persistent: block x takes query tiles x, x + gridDim.x, ... (the launcher
// sizes the grid to the SM count, or to one block per tile). The pipeline
// runs on across tiles: K/V stages and phases continue (kv_iter counts the
// key tiles this block has loaded), Q is reloaded once both consumers are
// past their last S = Q K^T of a tile (q_empty), so the next tile's loads
// overlap this tile's last P V and epilogue.
template <typename Kt>
__global__ void __launch_bounds__(Kt::kThreads, 1)
    fwd_sm90_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                    const __grid_constant__ CUtensorMap tm_v, const AttentionParams params,
                    const FwdGrid grid, const FwdScoreScale sc) {
  using T = typename Kt::Element;
  constexpr bool kBf16 = Kt::kBf16;
  constexpr int kM = Kt::kBlockM;
  constexpr int kN = Kt::kBlockN;
  constexpr int kD = Kt::kHeadDim;
  constexpr int kStages = Kt::kStages;
  using namespace sm90;

  extern __shared__ unsigned char sm90_smem[];
  const uint32_t smem_base = (smem_addr(sm90_smem) + 1023u) & ~1023u;
  const uint32_t s_q = smem_base + Kt::kQOffset;
  const uint32_t s_k = smem_base + Kt::kKOffset;  // stage s at + s * kKvBytes
  const uint32_t s_v = smem_base + Kt::kVOffset;
  const uint32_t bars = smem_base + Kt::kBarOffset;
  const uint32_t q_full = bars;
  const uint32_t q_empty = bars + 8u;
  auto k_full = [&](int s) { return bars + 8u * (2 + s); };
  auto v_full = [&](int s) { return bars + 8u * (2 + kStages + s); };
  auto empty = [&](int s) { return bars + 8u * (2 + 2 * kStages + s); };
  auto v_ready = [&](int s) { return bars + 8u * (2 + 3 * kStages + s); };
  // Packed sequences: the V tiles pass through the V guard (below) before the
  // consumers read them.
  const bool guard_v = params.cu_seqlens_q != nullptr;  // uniform

  const int tid = threadIdx.x;
  const int64_t num_tiles = grid.blocks();

  if (tid == 0) {
    tma_prefetch_desc(&tm_q);
    tma_prefetch_desc(&tm_k);
    tma_prefetch_desc(&tm_v);
    mbar_init(q_full, 1);
    mbar_init(q_empty, 128 * Kt::kConsumers);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(empty(s), 128 * Kt::kConsumers);
      mbar_init(v_ready(s), 1);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int warpgroup = __shfl_sync(0xffffffffu, tid / 128, 0);  // warp-uniform
  if (warpgroup == 0) {
    // ================= producer =================
    setmaxnreg_dec<Kt::kProducerRegs>();
    if (tid == 0) {
      int q_iter = 0, kv_iter = 0;
#pragma unroll 1
      for (int64_t index = blockIdx.x; index < num_tiles; index += gridDim.x) {
        const Sm90Tile t = sm90_tile<Kt>(params, grid, index);
        if (t.n_tiles == 0) continue;  // the consumers write its empty rows
        const int hq = static_cast<int>(t.h), hk = static_cast<int>(t.hkv), bb = static_cast<int>(t.tma_batch);
        const int q_row0 = static_cast<int>(t.seq.q0), k_row0 = static_cast<int>(t.seq.k0);
        mbar_wait(q_empty, (q_iter & 1) ^ 1);  // both consumers are past the previous tile's S
        mbar_arrive_expect_tx(q_full, Kt::kQBytes);
#pragma unroll
        for (int cb = 0; cb < Kt::kColBlocks; ++cb)
          tma_load_4d(s_q + cb * kM * 128, &tm_q, q_full, cb * 64, q_row0 + t.m0, hq, bb);
#pragma unroll 1
        for (int i = 0; i < t.n_tiles; ++i, ++kv_iter) {
          const int n_block = t.n_block(i);
          const int stage = kv_iter % kStages;
          const uint32_t phase = (kv_iter / kStages) & 1;
          mbar_wait(empty(stage), phase ^ 1);  // the consumers released this stage's previous tile
          mbar_arrive_expect_tx(k_full(stage), Kt::kKvBytes);
#pragma unroll
          for (int cb = 0; cb < Kt::kColBlocks; ++cb)
            tma_load_4d(s_k + stage * Kt::kKvBytes + cb * kN * 128, &tm_k, k_full(stage), cb * 64,
                        k_row0 + n_block * kN, hk, bb);
          mbar_arrive_expect_tx(v_full(stage), Kt::kKvBytes);
#pragma unroll
          for (int cb = 0; cb < Kt::kColBlocks; ++cb)
            tma_load_4d(s_v + stage * Kt::kKvBytes + cb * kN * 128, &tm_v, v_full(stage), cb * 64,
                        k_row0 + n_block * kN, hk, bb);
        }
        ++q_iter;
      }
    } else if (guard_v && tid / 32 == 1) {
      // ---- V guard (packed sequences; warp 1 of the producer warpgroup).
      // A V box starting inside a sequence runs on into the next one's rows,
      // and P V multiplies them by P = 0: finite rows add nothing, but a NaN
      // or inf there (another sequence's data) would give 0 * inf = NaN. So
      // each landed V tile has the rows that no query row of the tile sees
      // (past the sequence's end, or outside every row's band and sink run)
      // zeroed before the consumers read it (v_ready instead of v_full).
      // Stages and phases follow the producer's (kv_iter).
      const int lane = tid % 32;
      int kv_iter = 0;
#pragma unroll 1
      for (int64_t index = blockIdx.x; index < num_tiles; index += gridDim.x) {
        const Sm90Tile t = sm90_tile<Kt>(params, grid, index);
        if (t.n_tiles == 0) continue;
        // The keys the tile's rows see: [0, sink_end) and [band_begin, band_end)
        // (32-bit: the TMA row coordinates are; 24 registers here).
        const SeenKeys seen = seen_keys(t.band, t.m0, t.m_end);
        const int sink_end = seen.sink.empty() ? 0 : static_cast<int>(seen.sink.end);
        const int band_begin = static_cast<int>(seen.band.begin), band_end = static_cast<int>(seen.band.end);
#pragma unroll 1
        for (int i = 0; i < t.n_tiles; ++i, ++kv_iter) {
          const int stage = kv_iter % kStages;
          mbar_wait(v_full(stage), (kv_iter / kStages) & 1);
          const int key0 = t.n_block(i) * kN;
          const bool whole = (key0 >= band_begin && key0 + kN <= band_end) || key0 + kN <= sink_end;  // uniform
          if (!whole) {
            // Row r of column block cb: the 128 bytes at cb * kN * 128 + r * 128
            // (the 128-byte swizzle permutes 16-byte chunks within a row).
            const uint32_t tile = s_v + stage * Kt::kKvBytes;
#pragma unroll 1
            for (int idx = lane; idx < Kt::kColBlocks * kN * 8; idx += 32) {
              const int key = key0 + (idx / 8) % kN;
              if (key >= sink_end && (key < band_begin || key >= band_end))
                st_shared_zero16(tile + (idx / 8) * 128 + (idx % 8) * 16);
            }
            fence_proxy_async_smem();  // these generic-proxy stores before wgmma's async-proxy reads
          }
          __syncwarp();
          if (lane == 0) mbar_arrive(v_ready(stage));
        }
      }
    }
    return;
  }

  // ================= consumers =================
  setmaxnreg_inc<Kt::kConsumerRegs>();
  const int consumer = warpgroup - 1;  // rows 64 consumer .. of each tile
  const int ctid = tid - 128 * warpgroup;
  const int warp = ctid / 32;
  const int lane = ctid % 32;
  const int group = lane / 4;
  const int tig = lane % 4;

  // Descriptors. Q (A, K-major): column block kk / 4, this warpgroup's 64 rows,
  // 32 (kk % 4) bytes into the 128-B row. K (B, K-major) likewise over kN
  // rows. V (B, MN-major): key step ks starts at key row 16 ks (2 atoms of
  // 8 rows = 2048 B); LBO = kN * 128 B between the 64-wide dim blocks.
  auto q_desc = [&](int kk) {
    return make_desc_sw128(sm90_kmajor_start(s_q, kM, consumer * 64, kk), 16, kSm90Sbo);
  };
  auto k_desc = [&](int stage, int kk) {
    return make_desc_sw128(sm90_kmajor_start(s_k + stage * Kt::kKvBytes, kN, 0, kk), 16, kSm90Sbo);
  };
  auto v_desc = [&](int stage, int ks) {
    return make_desc_sw128(sm90_mnmajor_start(s_v + stage * Kt::kKvBytes, ks), sm90_mnmajor_lbo(kN), kSm90Sbo);
  };

  float acc_o[kD / 2];
  float acc_s[kN / 2];
  uint32_t p_frag[Kt::kPSteps][4];
  float row_max[2], row_sum[2];        // running max of s2 (log2 units); sums of this thread's columns
  int row_key_begin[2], row_key_end[2];  // visible keys of this thread's two rows: the band
  int row_sink_end[2];                   // and the sink run [0, row_sink_end)

  auto issue_s = [&](int stage) {
#pragma unroll
    for (int e = 0; e < kN / 2; ++e) fence_operand(acc_s[e]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Kt::kKSteps; ++kk) wgmma_s<kBf16>(acc_s, q_desc(kk), k_desc(stage, kk), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int e = 0; e < kN / 2; ++e) fence_operand(acc_s[e]);
  };
  auto issue_pv = [&](int stage) {
#pragma unroll
    for (int ks = 0; ks < Kt::kPSteps; ++ks)
#pragma unroll
      for (int r = 0; r < 4; ++r) fence_operand(p_frag[ks][r]);
#pragma unroll
    for (int e = 0; e < kD / 2; ++e) fence_operand(acc_o[e]);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < Kt::kPSteps; ++ks) wgmma_o<kBf16>(acc_o, p_frag[ks], v_desc(stage, ks));
    wgmma_commit();
#pragma unroll
    for (int e = 0; e < kD / 2; ++e) fence_operand(acc_o[e]);
  };
  // After wait_group 0: the P V operands may be touched again.
  auto fence_pv_done = [&]() {
#pragma unroll
    for (int e = 0; e < kD / 2; ++e) fence_operand(acc_o[e]);
#pragma unroll
    for (int ks = 0; ks < Kt::kPSteps; ++ks)
#pragma unroll
      for (int r = 0; r < 4; ++r) fence_operand(p_frag[ks][r]);
  };

  // Scores of key tile n_block in acc_s -> probabilities (fp32, in place),
  // running max and sums updated, the O rescale factors to rescale[i]. Log2
  // units: s2 = log2(e) * scale * qk, or with the softcap s2 = log2(e) *
  // softcap * tanh(scale * qk / softcap). Without a softcap (and scale > 0)
  // the scores stay raw and the scale is folded into one FFMA per element:
  // p = 2^(qk * scale_log2 - max2), max2 = scale_log2 * max(qk). exp2 is
  // ex2.approx.ftz (2^-inf = 0; results below 2^-126 flush to 0, far below
  // what a 16-bit P keeps). A row that has seen no key keeps max = -inf and
  // subtracts 0 instead (no NaN), its P stays 0.
  const bool prescale = sc.use_softcap || !(sc.scale_log2 > 0.f);  // warp-uniform
  const float fold = prescale ? 1.f : sc.scale_log2;
  auto softmax_tile = [&](const Sm90Tile& t, int n_block, float (&rescale)[2]) {
    if (sc.use_softcap) {
#pragma unroll
      for (int e = 0; e < kN / 2; ++e) acc_s[e] = sc.softcap_log2 * tanhf(acc_s[e] * sc.scale_over_cap);
    } else if (prescale) {
#pragma unroll
      for (int e = 0; e < kN / 2; ++e) acc_s[e] *= sc.scale_log2;
    }
    if (n_block < t.unmasked_begin || n_block >= t.unmasked_end) {
      mask_invisible_keys<Kt::kNTiles>(row_sink_end, row_key_begin, row_key_end, n_block * kN, tig,
                                       [&](int j, int i, int e) -> float& { return acc_s[4 * j + 2 * i + e]; });
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float tile_max = -INFINITY;  // in the units of acc_s
#pragma unroll
      for (int j = 0; j < Kt::kNTiles; ++j)
        tile_max = fmaxf(tile_max, fmaxf(acc_s[4 * j + 2 * i], acc_s[4 * j + 2 * i + 1]));
      const float new_max = fmaxf(row_max[i], quad_max(tile_max) * fold);  // log2 units (fold > 0)
      const float max_use = new_max == -INFINITY ? 0.f : new_max;
      rescale[i] = ex2_approx(row_max[i] - max_use);  // 0 while the row was empty
      row_max[i] = new_max;
      float tile_sum = 0.f;
#pragma unroll
      for (int j = 0; j < Kt::kNTiles; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float prob = ex2_approx(fmaf(acc_s[4 * j + 2 * i + e], fold, -max_use));
          acc_s[4 * j + 2 * i + e] = prob;
          tile_sum += prob;
        }
      row_sum[i] = row_sum[i] * rescale[i] + tile_sum;
    }
  };
  // P = probabilities as 16-bit A fragments: key step ks covers S tiles 2 ks
  // (a0: row g, a1: row g + 8) and 2 ks + 1 (a2, a3).
  auto convert_p = [&]() {
#pragma unroll
    for (int ks = 0; ks < Kt::kPSteps; ++ks) {
      p_frag[ks][0] = pack2<T>(acc_s[8 * ks + 0], acc_s[8 * ks + 1]);
      p_frag[ks][1] = pack2<T>(acc_s[8 * ks + 2], acc_s[8 * ks + 3]);
      p_frag[ks][2] = pack2<T>(acc_s[8 * ks + 4], acc_s[8 * ks + 5]);
      p_frag[ks][3] = pack2<T>(acc_s[8 * ks + 6], acc_s[8 * ks + 7]);
    }
  };
  auto rescale_o = [&](const float (&rescale)[2]) {
#pragma unroll
    for (int j = 0; j < Kt::kDTiles; ++j) {
      acc_o[4 * j + 0] *= rescale[0];
      acc_o[4 * j + 1] *= rescale[0];
      acc_o[4 * j + 2] *= rescale[1];
      acc_o[4 * j + 3] *= rescale[1];
    }
  };

  // Ping-pong turns (see the top of the file): each GEMM slot of consumer c
  // waits for the other consumer's previous slot. Consumer 1 pre-arrives on
  // consumer 0's barrier; consumer 0 absorbs consumer 1's last arrival after
  // the tile loop, so both barriers end the block with no pending arrivals.
  auto turn_begin = [&]() {
    if constexpr (Kt::kPingPong) named_bar_sync(Kt::kSchedBarrier + consumer, 256);
  };
  auto turn_end = [&]() {
    if constexpr (Kt::kPingPong) named_bar_arrive(Kt::kSchedBarrier + (consumer ^ 1), 256);
  };
  if constexpr (Kt::kPingPong) {
    if (consumer == 1) named_bar_arrive(Kt::kSchedBarrier, 256);
  }

  int q_iter = 0, kv_iter = 0;
#pragma unroll 1
  for (int64_t index = blockIdx.x; index < num_tiles; index += gridDim.x) {
    const Sm90Tile t = sm90_tile<Kt>(params, grid, index);
    const Band& band = t.band;
    if (t.n_tiles == 0) {
      sm90_store_empty<Kt>(params, t, 128 * consumer + ctid, 128 * Kt::kConsumers);
      continue;
    }
    // This thread's two rows: tile row 64 consumer + 16 warp + group + 8 i;
    // rows past Sq see nothing.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int m = t.m0 + 64 * consumer + 16 * warp + group + 8 * i;
      const bool valid = m < t.m_end;
      row_key_begin[i] = valid ? static_cast<int>(band.key_begin(m)) : 0;
      row_key_end[i] = valid ? static_cast<int>(band.key_end(m)) : 0;
      row_sink_end[i] = valid ? static_cast<int>(band.sink_end(m)) : 0;
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
    }
#pragma unroll
    for (int e = 0; e < kD / 2; ++e) acc_o[e] = 0.f;
    auto stage_of = [&](int i) { return (kv_iter + i) % kStages; };
    auto phase_of = [&](int i) { return static_cast<uint32_t>(((kv_iter + i) / kStages) & 1); };
    auto v_landed = [&](int i) { return guard_v ? v_ready(stage_of(i)) : v_full(stage_of(i)); };

    mbar_wait_watchdog(q_full, q_iter & 1);

    // ---- key tile 0 (the highest n_block)
    float rescale[2];
    mbar_wait_watchdog(k_full(stage_of(0)), phase_of(0));
    turn_begin();
    issue_s(stage_of(0));
    turn_end();
    wgmma_wait<0>();
#pragma unroll
    for (int e = 0; e < kN / 2; ++e) fence_operand(acc_s[e]);
    if (t.n_tiles == 1) mbar_arrive(q_empty);  // Q no longer read
    softmax_tile(t, t.n_block(0), rescale);  // O is still zero: no rescale needed
    convert_p();

    // ---- key tiles 1 .. n - 1: S of tile i overlaps P V of tile i - 1
#pragma unroll 1
    for (int i = 1; i < t.n_tiles; ++i) {
      const int stage = stage_of(i);
      const int prev = stage_of(i - 1);
      mbar_wait_watchdog(k_full(stage), phase_of(i));
      mbar_wait_watchdog(v_landed(i - 1), phase_of(i - 1));
      turn_begin();
      issue_s(stage);
      issue_pv(prev);
      turn_end();
      wgmma_wait<1>();  // S of tile i is done; P V of tile i - 1 may still run
#pragma unroll
      for (int e = 0; e < kN / 2; ++e) fence_operand(acc_s[e]);
      if (i == t.n_tiles - 1) mbar_arrive(q_empty);  // the tile's last S: Q no longer read
      softmax_tile(t, t.n_block(i), rescale);
      wgmma_wait<0>();  // P V done: P's registers and stage prev are free
      fence_pv_done();
      mbar_arrive(empty(prev));
      rescale_o(rescale);
      convert_p();
    }

    // ---- P V of the last tile (the sink logit's load overlaps it)
    const bool has_sink = params.sinks != nullptr;  // uniform
    const float sink_logit = has_sink ? params.sinks[t.h] : -INFINITY;
    {
      const int last = stage_of(t.n_tiles - 1);
      mbar_wait_watchdog(v_landed(t.n_tiles - 1), phase_of(t.n_tiles - 1));
      issue_pv(last);
      wgmma_wait<0>();
      fence_pv_done();
      mbar_arrive(empty(last));
    }
    kv_iter += t.n_tiles;
    ++q_iter;

    // ---- normalise and store this thread's two rows
    T* const out_head = static_cast<T*>(params.out) + t.seq.stride_batch * params.out_batch_stride +
                        t.h * params.out_head_stride + t.seq.q0 * params.out_row_stride;
    float* const lse_head = params.lse + lse_offset(params, t.seq, t.b, t.h, 0);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int m = t.m0 + 64 * consumer + 16 * warp + group + 8 * i;
      const float sum = quad_sum(row_sum[i]);  // all 4 lanes of the group take part
      if (m >= t.m_end) continue;
      const RowFinish fin = finish_row(row_max[i], sum, has_sink, sink_logit);  // fwd_score.cuh
      T* const out = out_head + static_cast<int64_t>(m) * params.out_row_stride;
#pragma unroll
      for (int j = 0; j < Kt::kDTiles; ++j)
        *reinterpret_cast<uint32_t*>(out + 8 * j + 2 * tig) =
            pack2<T>(acc_o[4 * j + 2 * i] * fin.out_scale, acc_o[4 * j + 2 * i + 1] * fin.out_scale);
      if (tig == 0) lse_head[m] = fin.lse;
    }
  }
  if constexpr (Kt::kPingPong) {
    if (consumer == 0) named_bar_sync(Kt::kSchedBarrier, 256);  // consumer 1's last arrival
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
