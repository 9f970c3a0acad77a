// Compile-time shape of the tensor-core backward kernels: tile sizes per head
// dim, warp roles, the swizzled shared-memory tile layout, and the shared
// memory map of each kernel.
//
// dK/dV kernel (bwd_dkdv_kernel.cuh): one block owns kBlockN keys of one
// (batch, kv head). kNWarps = (kBlockN / 16) * kSplit warps; warp w is
// (wn, wx) = (w % kKeyWarps, w / kKeyWarps) and owns keys [16 wn, 16 wn + 16)
// of the tile. With kSplit = 1 it computes S^T and dP^T for all kBlockM
// queries of a streamed query tile and accumulates dK, dV for all kHeadDim
// columns. With kSplit > 1 (head dim 256, where dK + dV of 16 keys x 256 dims
// would need 256 accumulator registers per thread) the kSplit warps of a key
// group split the queries of S^T / dP^T (wx: queries [wx kBlockM / kSplit, ..))
// and the columns of dK / dV (wx: dims [wx kHeadDim / kSplit, ..)); P and dS
// then go through shared memory.
//
// dQ kernel (bwd_dq_kernel.cuh, deterministic mode): one block owns
// kDqBlockM query rows of one (batch, query head), warp w rows [16 w, 16 w + 16),
// and streams key tiles of kDqBlockN keys (FA2 forward-like).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Tile sizes per head dim (fp16 and bf16 alike; sized for sm_80 / sm_90
// shared memory: at most ~145 KB per block, see bwd_smem_bytes).
//   kBlockM, kBlockN, kSplit: dK/dV kernel tiles (above); kStages: query-tile
//   buffers (2: the next Q/dO tile loads during the current one's math).
//   kDqBlockM, kDqBlockN: the deterministic dQ kernel's tiles.
template <int kHeadDim>
struct BwdTileShape;
template <>
struct BwdTileShape<32> {
  static constexpr int kBlockM = 64, kBlockN = 128, kSplit = 1, kStages = 2, kMinBlocksPerSm = 1;
  static constexpr int kDqBlockM = 128, kDqBlockN = 64;
};
template <>
struct BwdTileShape<64> {
  static constexpr int kBlockM = 64, kBlockN = 128, kSplit = 1, kStages = 2, kMinBlocksPerSm = 1;
  static constexpr int kDqBlockM = 128, kDqBlockN = 64;
};
template <>
struct BwdTileShape<96> {
  static constexpr int kBlockM = 64, kBlockN = 128, kSplit = 1, kStages = 2, kMinBlocksPerSm = 1;
  static constexpr int kDqBlockM = 128, kDqBlockN = 64;
};
template <>
struct BwdTileShape<128> {
  static constexpr int kBlockM = 64, kBlockN = 128, kSplit = 1, kStages = 2, kMinBlocksPerSm = 1;
  static constexpr int kDqBlockM = 128, kDqBlockN = 64;
};
template <>
struct BwdTileShape<256> {
  static constexpr int kBlockM = 64, kBlockN = 64, kSplit = 2, kStages = 1, kMinBlocksPerSm = 1;
  static constexpr int kDqBlockM = 64, kDqBlockN = 32;
};

// ---- swizzled shared-memory tiles ---------------------------------------------
// A (kRows, kCols) tile of 16-bit elements is stored as column blocks of
// kBlockCols = 64 columns (128-byte rows; when kCols % 64 == 0) or 32 columns
// (64-byte rows), each block row-major. Inside a block, 16-byte chunk c of row
// r sits at chunk position
//     c ^ (r % 8)            (64-column blocks, 8 chunks per row)
//     c ^ ((r / 2) % 4)      (32-column blocks, 4 chunks per row)
// One 8x8 ldmatrix matrix reads one chunk column of 8 consecutive rows r0 ..
// r0 + 7 (r0 % 8 == 0); the XOR puts those 8 chunks in 8 different 16-byte
// bank groups (for 64-byte rows: two rows share a 128-byte bank line, and
// (r % 2, c ^ (r / 2) % 4) is distinct over the 8 rows), so ldmatrix and the
// 4-byte fragment stores of the backward are free of bank conflicts, while
// cp.async still writes whole 16-byte chunks.
template <int kRows_, int kCols_>
struct SmemTile {
  static constexpr int kRows = kRows_;
  static constexpr int kCols = kCols_;
  static constexpr int kBlockCols = (kCols % 64 == 0) ? 64 : 32;
  static constexpr int kRowBytes = kBlockCols * 2;
  static constexpr int kColBlockBytes = kRows * kRowBytes;
  static constexpr int kElems = kRows * kCols;
  static constexpr int kBytes = kElems * 2;
  static_assert(kCols % 32 == 0, "whole 32-column swizzle blocks");
  static_assert(kRows % 16 == 0, "whole 16-row fragments");

  static __device__ __forceinline__ int row_xor(int row) {
    return kBlockCols == 64 ? (row & 7) : ((row >> 1) & 3);
  }

  // Element offset of (row, col); col % 8 == 0 (a chunk start). Element col + e
  // (e < 8) of the same chunk is at offset(row, col) + e.
  static __device__ __forceinline__ int offset(int row, int col) {
    const int block = col / kBlockCols;
    const int chunk = (col % kBlockCols) / 8;
    return block * (kRows * kBlockCols) + row * kBlockCols + ((chunk ^ row_xor(row)) << 3);
  }

  // Element offsets of the 4-byte fragment stores at (row, col_const + cic):
  // store_lane_offset(row, cic) once per lane (cic < 8: the column inside a
  // chunk), then store_offset(lane_offset, col_const) for col_const % 8 == 0:
  // the chunk of col_const lands in bits 3.. of the lane offset by one XOR
  // (row * kBlockCols has no bit below 5, cic none above 2), so the compiler
  // rematerialises these instead of keeping one register per column.
  static __device__ __forceinline__ int store_lane_offset(int row, int cic) {
    return row * kBlockCols + (row_xor(row) << 3) + cic;
  }
  static __device__ __forceinline__ int store_offset(int lane_offset, int col_const) {
    return (lane_offset ^ (((col_const % kBlockCols) >> 3) << 3)) + (col_const / kBlockCols) * (kRows * kBlockCols);
  }

  // Fragment loads (ldmatrix) address (row + row_const, col_lane + col_const)
  // with a per-lane part (row, col_lane) and a loop-constant part where
  // row_const % 8 == 0 (row_xor unchanged), col_const % 16 == 0 and col_lane
  // is 0 or 8 (so chunk(col_lane + col_const) = chunk(col_const) ^ chunk(col_lane)
  // inside one column block). With the tile base 128-byte aligned, bits 4-6
  // (4-5 for 64-byte rows) of lane_address are exactly the stored chunk of
  // the lane part, so the constant chunk is applied with one XOR, and the
  // constant row and column block with one add (they change no bit below 6).
  static __device__ __forceinline__ uint32_t lane_address(uint32_t tile, int row, int col_lane) {
    return tile + row * kRowBytes + (((col_lane >> 3) ^ row_xor(row)) << 4);
  }
  // address() also moves a lane address to a warp's sub-tile (row_off % 8 == 0,
  // col_off % 16 == 0): address(address(lane, row_off, col_off), r, c) ==
  // address(lane, row_off + r, col_off + c) as long as adding c to col_off
  // carries no chunk bit, e.g. col_off a multiple of kBlockCols, or of a power
  // of two P > every later c with P | kBlockCols or kBlockCols | P.
  static __device__ __forceinline__ uint32_t address(uint32_t lane_addr, int row_const, int col_const) {
    const uint32_t chunk = static_cast<uint32_t>((col_const % kBlockCols) >> 3);
    return (lane_addr ^ (chunk << 4)) + row_const * kRowBytes + (col_const / kBlockCols) * kColBlockBytes;
  }
};

// The two per-lane addressing patterns of ldmatrix.x4 over a 16x16 block
// (rows row0 .., cols col0 ..; lane l, matrices i = 0..3 from lanes 8i .. 8i + 7):
//   kPatternRowsFirst:  row l % 16,               col 8 (l / 16)
//     matrices (rows 0-7, cols 0-7) (rows 8-15, cols 0-7) (rows 0-7, cols 8-15) (rows 8-15, cols 8-15)
//     non-trans: the m16n8k16 A fragment a0..a3 of a row-major (M = rows, K = cols) block;
//     .trans:    B fragments of a [k][n] block (K = rows, N = cols): b0, b1 of n-tile
//                cols 0-7, then b0, b1 of n-tile cols 8-15.
//   kPatternColsFirst:  row l % 8 + 8 (l / 16),   col 8 ((l / 8) % 2)
//     matrices (rows 0-7, cols 0-7) (rows 0-7, cols 8-15) (rows 8-15, cols 0-7) (rows 8-15, cols 8-15)
//     non-trans: B fragments of an [n][k] block (N = rows, K = cols): b0, b1 of n-tile
//                rows 0-7, then b0, b1 of n-tile rows 8-15;
//     .trans:    the A fragment a0..a3 of the transpose of a [k][m] block (M = cols, K = rows).
// (ldmatrix: lane t receives row t / 4, cols 2 (t % 4) + {0, 1} of each matrix;
// with .trans, rows 2 (t % 4) + {0, 1}, col t / 4. The m16n8k16 fragments are
// a0 (m = g, k = 2t..), a1 (m = g + 8, k = 2t..), a2 (m = g, k = 2t + 8..),
// a3 (m = g + 8, k = 2t + 8..), b0 (k = 2t.., n = g), b1 (k = 2t + 8.., n = g)
// with g = t / 4, t here = t % 4.)
__device__ __forceinline__ int pattern_rows_first_row(int lane) { return lane % 16; }
__device__ __forceinline__ int pattern_rows_first_col(int lane) { return (lane / 16) * 8; }
__device__ __forceinline__ int pattern_cols_first_row(int lane) { return lane % 8 + (lane / 16) * 8; }
__device__ __forceinline__ int pattern_cols_first_col(int lane) { return ((lane / 8) % 2) * 8; }

// Scalars of the score transform, computed on the host. x = scale * q.k;
// s = softcap * tanh(x / softcap) with a softcap, else s = x; the kernels work
// in log2 units: P = exp2(log2(e) s - log2(e) lse).
struct BwdScoreScale {
  float scale;           // softmax scale (dQ, dK epilogues)
  float scale_log2;      // scale * log2(e)             (no softcap)
  float softcap_log2;    // softcap * log2(e)           (softcap)
  float scale_over_cap;  // scale / softcap             (softcap)
  int use_softcap;
};

// Row-wise kernels (bwd_rows.cuh: preprocess, dq_accum -> dq): rows per block
// and threads per block.
constexpr int kBwdRowBlock = 64;
constexpr int kBwdRowThreads = 256;

// ---- dK/dV kernel ------------------------------------------------------------------

template <typename Element_, int kHeadDim_>
struct BwdTraits {
  using Element = Element_;
  using Shape = BwdTileShape<kHeadDim_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = Shape::kBlockM;
  static constexpr int kBlockN = Shape::kBlockN;
  static constexpr int kSplit = Shape::kSplit;
  static constexpr int kStages = Shape::kStages;
  static constexpr int kMinBlocksPerSm = Shape::kMinBlocksPerSm;
  static constexpr int kKeyWarps = kBlockN / 16;        // warps along keys (16 keys each)
  static constexpr int kNWarps = kKeyWarps * kSplit;
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int kWarpQueries = kBlockM / kSplit;  // queries of a warp's S^T / dP^T
  static constexpr int kWarpDims = kHeadDim / kSplit;    // columns of a warp's dK / dV

  static_assert(sizeof(Element) == 2, "tensor-core path is for 16-bit elements");
  static_assert(kHeadDim % 32 == 0 && kBlockM % 32 == 0 && kBlockN % 16 == 0, "tile granularity");
  static_assert(kSplit == 1 || kSplit == 2, "a key group is one or two warps");
  static_assert(kWarpQueries % 16 == 0 && kWarpDims % 16 == 0, "whole 16-wide fragments per warp");
  static_assert(kStages == 1 || kStages == 2, "single or double buffered query tiles");
  static_assert((kWarpQueries & (kWarpQueries - 1)) == 0, "the warp's query offset folds into lane addresses");

  // dQ = dS K (default mode): warps split the (kBlockM, kHeadDim) product into
  // kDqWarpsM row groups x kDqWarpsD column groups.
  static constexpr int kDqWarpsM = kBlockM / 16 < kNWarps ? kBlockM / 16 : kNWarps;
  static constexpr int kDqWarpsD = kNWarps / kDqWarpsM;
  static constexpr int kDqWarpRows = kBlockM / kDqWarpsM;  // multiple of 16
  static constexpr int kDqWarpDims = kHeadDim / kDqWarpsD;
  static_assert(kNWarps % kDqWarpsM == 0 && kBlockM % (16 * kDqWarpsM) == 0, "dQ row split");
  static_assert(kHeadDim % (16 * kDqWarpsD) == 0, "dQ column split");
  static_assert((kDqWarpRows & (kDqWarpRows - 1)) == 0, "the warp's dQ row offset folds into lane addresses");

  using KvTile = SmemTile<kBlockN, kHeadDim>;  // K, V: (kBlockN, kHeadDim)
  using QTile = SmemTile<kBlockM, kHeadDim>;   // Q, dO: (kBlockM, kHeadDim)
  using DsTile = SmemTile<kBlockN, kBlockM>;   // dS^T, P^T: (kBlockN keys, kBlockM queries)
  static_assert(kSplit == 1 || kWarpDims % QTile::kBlockCols == 0,
                "the warp's dK/dV column offset folds into lane addresses");
  // dQ passes of at most 64 columns (32 accumulator registers per row tile);
  // the pass start folds into the K lane address when it is a whole column block.
  static constexpr int kDqPassDims = kDqWarpDims < 64 ? kDqWarpDims : 64;
  static constexpr bool kDqFoldCols = kDqWarpDims % KvTile::kBlockCols == 0 && kDqPassDims % KvTile::kBlockCols == 0;
  static_assert(kDqWarpDims % kDqPassDims == 0 && kDqPassDims % 16 == 0, "whole dQ passes");

  // Shared memory map (bytes; every tile 128-byte aligned):
  //   K, V | stage s < kStages: Q, dO | dS^T | P^T (kSplit > 1) | lse[kStages][kBlockM], D[kStages][kBlockM]
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + KvTile::kBytes;
  static constexpr int kOffStages = kOffV + KvTile::kBytes;
  static constexpr int kStageBytes = 2 * QTile::kBytes;  // Q then dO
  static constexpr int kOffDs = kOffStages + kStages * kStageBytes;
  static constexpr int kOffP = kOffDs + DsTile::kBytes;
  static constexpr int kOffLse = kOffP + (kSplit > 1 ? DsTile::kBytes : 0);
  static constexpr int kOffD = kOffLse + kStages * kBlockM * 4;
  static constexpr int kSmemBytes = kOffD + kStages * kBlockM * 4;
};

// ---- dQ kernel (deterministic mode) -------------------------------------------------

template <typename Element_, int kHeadDim_>
struct BwdDqTraits {
  using Element = Element_;
  using Shape = BwdTileShape<kHeadDim_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = Shape::kDqBlockM;
  static constexpr int kBlockN = Shape::kDqBlockN;
  static constexpr int kNWarps = kBlockM / 16;
  static constexpr int kThreads = kNWarps * 32;

  static_assert(sizeof(Element) == 2, "tensor-core path is for 16-bit elements");
  static_assert(kHeadDim % 32 == 0 && kBlockM % 32 == 0 && kBlockN % 16 == 0, "tile granularity");

  using QTile = SmemTile<kBlockM, kHeadDim>;   // Q, dO: (kBlockM, kHeadDim), resident
  using KvTile = SmemTile<kBlockN, kHeadDim>;  // K, V: (kBlockN, kHeadDim), streamed

  // Shared memory map: Q | dO | stage s < 2: K, V.
  static constexpr int kOffQ = 0;
  static constexpr int kOffDo = QTile::kBytes;
  static constexpr int kOffStages = 2 * QTile::kBytes;
  static constexpr int kStageBytes = 2 * KvTile::kBytes;
  static constexpr int kSmemBytes = kOffStages + 2 * kStageBytes;
};

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
