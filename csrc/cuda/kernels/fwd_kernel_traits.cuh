// Compile-time shape of the tensor-core forward kernel: tile sizes per head
// dim, warps, shared-memory layout (swizzled) and its size.
//
// Work split inside a block: kNWarps warps, warp w owns query rows
// [16 w, 16 w + 16) of the (kBlockM, kHeadDim) query tile, so kBlockM =
// 16 * kNWarps and every warp walks all kBlockN keys of a key tile (FA2's
// split along M: no inter-warp reduction).
//
// Shared memory (bytes, 16-bit elements):
//   stage 0: K tile (kBlockN, kHeadDim), V tile (kBlockN, kHeadDim)
//   stage 1: K tile, V tile              <- Q tile (kBlockM, kHeadDim) aliases
//                                           stage 1 when kQInRegs (Q is moved to
//                                           registers before stage 1 is loaded)
//   [Q tile (kBlockM, kHeadDim)]         <- only when !kQInRegs
// Key tile n+1 is loaded into one stage while tile n is computed from the other.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Tile sizes per head dim (sm_80 / sm_90, fp16 and bf16 alike).
//   kQInRegs: Q fragments stay in registers for the whole block; when false
//   (d = 256, where they would cost 64 registers) they are re-read from shared
//   memory with ldmatrix at every key tile.
//   kMinBlocksPerSm: __launch_bounds__ hint, also the split-KV heuristic's
//   blocks per SM.
// kVariant 1 is a smaller-shared-memory shape for devices whose per-block
// opt-in limit is below the default's (sm_86 / sm_89: 99 KB); only d = 256
// needs one (the others use at most 64 KB).
template <int kHeadDim, int kVariant = 0>
struct FwdTileShape;
template <>
struct FwdTileShape<32> {
  static constexpr int kBlockM = 128, kBlockN = 64, kNWarps = 8, kMinBlocksPerSm = 2;
  static constexpr bool kQInRegs = true;
};
template <>
struct FwdTileShape<64> {
  static constexpr int kBlockM = 128, kBlockN = 64, kNWarps = 8, kMinBlocksPerSm = 1;
  static constexpr bool kQInRegs = true;
};
template <>
struct FwdTileShape<96> {
  static constexpr int kBlockM = 128, kBlockN = 64, kNWarps = 8, kMinBlocksPerSm = 1;
  static constexpr bool kQInRegs = true;
};
template <>
struct FwdTileShape<128> {
  static constexpr int kBlockM = 128, kBlockN = 64, kNWarps = 8, kMinBlocksPerSm = 1;
  static constexpr bool kQInRegs = true;
};
template <>
struct FwdTileShape<256> {  // 128 KB of shared memory
  static constexpr int kBlockM = 128, kBlockN = 32, kNWarps = 8, kMinBlocksPerSm = 1;
  static constexpr bool kQInRegs = false;
};
template <>
struct FwdTileShape<256, 1> {  // 96 KB of shared memory
  static constexpr int kBlockM = 64, kBlockN = 32, kNWarps = 4, kMinBlocksPerSm = 1;
  static constexpr bool kQInRegs = false;
};

// Bytes reserved after the tiles for the per-block state (fwd_kernel.cuh).
constexpr int kFwdStateBytes = 256;

template <typename Element_, int kHeadDim_, int kVariant_ = 0>
struct FwdTraits {
  using Element = Element_;
  using Shape = FwdTileShape<kHeadDim_, kVariant_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kVariant = kVariant_;
  static constexpr int kBlockM = Shape::kBlockM;
  static constexpr int kBlockN = Shape::kBlockN;
  static constexpr int kNWarps = Shape::kNWarps;
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int kMinBlocksPerSm = Shape::kMinBlocksPerSm;
  static constexpr bool kQInRegs = Shape::kQInRegs;

  static_assert(sizeof(Element) == 2, "tensor-core path is for 16-bit elements");
  static_assert(kBlockM == 16 * kNWarps, "one warp per 16 query rows");
  static_assert(kHeadDim % 32 == 0, "head dim: whole 32-column swizzle blocks, pairs of 8-col MMA tiles");
  static_assert(kBlockN % 16 == 0, "key tile: pairs of 8-key MMA tiles");

  // Fragment counts per warp.
  static constexpr int kKSteps = kHeadDim / 16;  // k-steps of S = Q K^T (over head dim)
  static constexpr int kNTiles = kBlockN / 8;    // 8-key column tiles of S
  static constexpr int kPSteps = kBlockN / 16;   // k-steps of O += P V (over keys)
  static constexpr int kDTiles = kHeadDim / 8;   // 8-dim column tiles of O

  // 16-byte chunks per row and per-thread copy iterations of each tile.
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kQCopies = kBlockM * kChunksPerRow / kThreads;
  static constexpr int kKvCopies = kBlockN * kChunksPerRow / kThreads;
  static_assert(kBlockM * kChunksPerRow % kThreads == 0, "Q tile copy must divide evenly");
  static_assert(kBlockN * kChunksPerRow % kThreads == 0, "K/V tile copy must divide evenly");

  // Shared memory, in elements and bytes.
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKvElems = kBlockN * kHeadDim;  // one K (or V) tile
  static constexpr int kStageElems = 2 * kKvElems;     // K tile then V tile
  static constexpr int kTileElems = 2 * kStageElems + (kQInRegs ? 0 : kQElems);
  static constexpr int kTileBytes = kTileElems * static_cast<int>(sizeof(Element));
  static constexpr int kSmemBytes = kTileBytes + kFwdStateBytes;  // dynamic shared memory per block
  static_assert(!kQInRegs || kQElems <= kStageElems, "Q must fit in the stage it aliases");
};

// ---- swizzled tile layout ---------------------------------------------------
// A (kRows, kCols) tile of 16-bit elements is stored as column blocks of
// kSwizzleCols (64 columns = 128 B when kCols % 64 == 0, else 32 = 64 B), each
// block row-major (kRows, kSwizzleCols). Inside a block the 16-byte chunk c of
// row r is stored at chunk position
//     c ^ (r % 8)          (64-col blocks: 8 chunks per 128-B row)
//     c ^ ((r / 2) % 4)    (32-col blocks: 4 chunks per 64-B row)
// so the 8 rows r0 .. r0 + 7 (r0 % 8 == 0) that one ldmatrix 8x8 matrix reads
// at the same logical chunk land in 8 distinct 16-byte bank groups of a 128-B
// line: conflict-free ldmatrix, and cp.async writes of whole rows stay dense.
template <int kCols>
struct Swizzle {
  static constexpr int kSwizzleCols = (kCols % 64 == 0) ? 64 : 32;
  static constexpr int kRowBytes = kSwizzleCols * 2;  // one row of one column block
  static_assert(kCols % kSwizzleCols == 0, "whole swizzle blocks");

  static __device__ __forceinline__ int row_xor(int row) {
    return kSwizzleCols == 64 ? (row & 7) : ((row >> 1) & 3);
  }

  // Element offset of (row, col) in a tile of kRows rows; col % 8 == 0.
  template <int kRows>
  static __device__ __forceinline__ int offset(int row, int col) {
    const int block = col / kSwizzleCols;
    const int chunk = (col % kSwizzleCols) / 8;
    return block * (kRows * kSwizzleCols) + row * kSwizzleCols + (chunk ^ row_xor(row)) * 8;
  }

  // Fragment loads address (row_lane + row_const, col_lane + col_const) with a
  // per-lane part and a part fixed by the (unrolled) loop indices, where
  // row_const % 8 == 0 (row_xor unchanged), col_const % 16 == 0 and col_lane is
  // 0 or 8 (so both columns share a column block and the chunks add without
  // carry: chunk = c_const ^ c_lane). With the tile's base 128-B aligned, bits
  // 4.. of a byte address inside a block row are the stored chunk, so
  //   address = (lane_address ^ (c_const << 4)) + row_const * kRowBytes
  //             + block * kRows * kRowBytes
  // where lane_address = tile + row_lane * kRowBytes + ((c_lane ^ row_xor(row_lane)) << 4).
  // The XOR acts below bit 7 (64-col) / bit 6 (32-col) and the added terms are
  // multiples of 128 / 64 B, so the two commute. One LOP3 per fragment load,
  // and nothing loop-invariant for the compiler to hoist into registers.
  static __device__ __forceinline__ uint32_t lane_address(uint32_t tile, int row_lane, int col_lane) {
    return tile + row_lane * kRowBytes + (((col_lane / 8) ^ row_xor(row_lane)) << 4);
  }
  template <int kRows>
  static __device__ __forceinline__ uint32_t address(uint32_t lane_addr, int row_const, int col_const) {
    const int block = col_const / kSwizzleCols;
    const int c_const = (col_const % kSwizzleCols) / 8;
    return (lane_addr ^ static_cast<uint32_t>(c_const << 4)) + row_const * kRowBytes +
           block * (kRows * kRowBytes);
  }
};

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
