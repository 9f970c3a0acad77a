// Pieces shared by the tensor-core backward kernels: global -> shared tile
// copies (cp.async into the swizzled tiles of bwd_kernel_traits.cuh) and the
// per-element score gradient.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "bwd_kernel_traits.cuh"
#include "primitives.cuh"
#include "swa/kernels/band.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// ---- global -> shared copies ----------------------------------------------------

// A (kRows, kCols) tile from global rows src + r * row_stride (src: the tile's
// first row); rows r >= valid_rows and r < first_row are zero-filled and not
// read (first_row: a key tile's keys before any row of the call sees one),
// except rows r < sink_rows, which are read (a key tile's sink keys: with
// sink tokens the seen keys are two runs, [0, sink_rows) and
// [first_row, valid_rows), and the gap between them is zero-filled). Chunk
// L = tid + it * kThreads is row L / kChunksPerRow, 16-byte chunk
// L % kChunksPerRow: consecutive threads read consecutive 16 B of a row.
// When kThreads is a multiple of kChunksPerRow a thread keeps its chunk and
// steps kThreads / kChunksPerRow rows per iteration (same row_xor, so the
// shared offset grows by a constant): few registers live across the kernels'
// main loops. Needs 16-byte aligned rows (checked by the launcher).
template <typename Tile, int kThreads, typename T>
__device__ __forceinline__ void copy_tile_async(T* tile, const T* src, int64_t row_stride,
                                                int valid_rows, int tid, int first_row = 0,
                                                int sink_rows = 0) {
  constexpr int kChunksPerRow = Tile::kCols / 8;
  constexpr int kChunks = Tile::kRows * kChunksPerRow;
  if constexpr (kThreads % kChunksPerRow == 0 && (kThreads / kChunksPerRow) % 8 == 0) {
    constexpr int kRowStep = kThreads / kChunksPerRow;
    const int r0 = tid / kChunksPerRow;
    const int c = tid % kChunksPerRow;
    T* dst = tile + Tile::offset(r0, c * 8);
    const T* g = src + r0 * row_stride + c * 8;
#pragma unroll
    for (int it = 0; it < (Tile::kRows + kRowStep - 1) / kRowStep; ++it) {
      const int r = r0 + it * kRowStep;
      if (Tile::kRows % kRowStep == 0 || r < Tile::kRows) {
        const bool valid = (r >= first_row && r < valid_rows) || r < sink_rows;
        cp_async_16(dst + it * kRowStep * Tile::kBlockCols, valid ? g : src, valid);
      }
      g += kRowStep * row_stride;
    }
  } else {
#pragma unroll
    for (int it = 0; it < (kChunks + kThreads - 1) / kThreads; ++it) {
      const int chunk_id = tid + it * kThreads;
      if (kChunks % kThreads == 0 || chunk_id < kChunks) {
        const int r = chunk_id / kChunksPerRow;
        const int c = chunk_id % kChunksPerRow;
        const bool valid = (r >= first_row && r < valid_rows) || r < sink_rows;
        const T* g = valid ? src + r * row_stride + c * 8 : src;
        cp_async_16(tile + Tile::offset(r, c * 8), g, valid);
      }
    }
  }
}

// kRows consecutive floats (a query tile's lse or D); entries r >= valid_rows
// are zero-filled and not read.
template <int kRows, int kThreads>
__device__ __forceinline__ void copy_row_values_async(float* dst, const float* src, int valid_rows,
                                                      int tid) {
#pragma unroll
  for (int r0 = 0; r0 < kRows; r0 += kThreads) {
    const int r = r0 + tid;
    if (kRows % kThreads == 0 || r < kRows) {
      const bool valid = r < valid_rows;
      cp_async_4(dst + r, valid ? src + r : src, valid);
    }
  }
}

// The rows of a key tile [n0, n0 + kRows) that copy_tile_async reads, from
// the keys that the tile's readers see between them (SeenKeys of band.h: the
// sink run and the band run); every other key of the tile is zero-filled, so
// that a key no row sees (NaN or inf included) cannot reach dQ through
// 0 * NaN in dS K. seen.band.end <= seqlen_k, so no row past Sk is read.
struct KeyTileRows {
  int first;  // copy_tile_async's first_row
  int valid;  // valid_rows
  int sink;   // sink_rows
};
template <int kRows>
__device__ __forceinline__ KeyTileRows key_tile_rows(const SeenKeys& seen, int64_t n0) {
  KeyTileRows r;
  r.valid = static_cast<int>(band_min64(kRows, seen.band.end - n0));
  r.first = static_cast<int>(band_max64(0, seen.band.begin - n0));
  r.sink = static_cast<int>(band_max64(0, band_min64(kRows, seen.sink.end - n0)));
  return r;
}

// ---- score gradient of one element ------------------------------------------------

constexpr float kLog2e = 1.4426950408889634f;

// lse in log2 units for P = exp2(s2 - lse2). A row with lse = -inf (it sees no
// key) gets +inf, so that every P of the row is exp2(-inf) = 0 and its
// gradients are 0 rather than NaN.
__device__ __forceinline__ float lse_to_log2(float lse) {
  return lse == -INFINITY ? INFINITY : lse * kLog2e;
}

// One (query, key) pair: qk = q.k (the raw MMA accumulator), dp = dO.v; lse2 =
// lse_to_log2(lse of the query row), d = D of the row. Returns P (through p)
// and dX = dL/dx with x = scale * q.k (through dx):
//   s = x (no softcap) or softcap * tanh(x / softcap), P = exp(s - lse),
//   dS = P (dp - D), dX = dS or dS (1 - tanh^2).
template <bool kSoftcap>
__device__ __forceinline__ void score_grad(float qk, float dp, float lse2, float d, const BwdScoreScale& sc,
                                           float& p, float& dx) {
  if constexpr (kSoftcap) {
    const float t = tanhf(qk * sc.scale_over_cap);
    p = exp2f(fmaf(t, sc.softcap_log2, -lse2));
    dx = p * (dp - d) * (1.f - t * t);
  } else {
    p = exp2f(fmaf(qk, sc.scale_log2, -lse2));
    dx = p * (dp - d);
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
