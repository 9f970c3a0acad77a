// Work decomposition of the CUDA backward: which key tile / query tile / rows a
// thread block owns, the order in which a dK/dV block walks its query tiles,
// and when a (query tile, key tile) pair needs element masks. Plain integer
// math shared by the kernels (device) and the launcher (host), unit-tested on
// the CPU (tests/cpp/test_bwd_tiles.cpp). No CUDA or torch headers.
//
// The kernels' grids are 1-D: the launcher keeps blocks() below 2^31, so the
// decodes below use 32-bit division (64-bit division is a slow call on the GPU).
#pragma once

#include <cstdint>

#include "swa/kernels/band.h"

namespace SWA_KERNEL_NS {

SWA_HOST_DEVICE int64_t bwd_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- dK/dV kernel: one block per (key tile, batch, kv head) -----------------

struct BwdKvGrid {
  int64_t batch;
  int64_t heads_kv;
  int64_t n_blocks;  // ceil(seqlen_k / block_n)
  SWA_HOST_DEVICE int64_t blocks() const { return batch * heads_kv * n_blocks; }
};

SWA_HOST_DEVICE BwdKvGrid make_bwd_kv_grid(int64_t batch, int64_t heads_kv, int64_t seqlen_k,
                                           int64_t block_n) {
  return {batch, heads_kv, bwd_ceil_div(seqlen_k, block_n)};
}

struct BwdKvBlock {
  int64_t batch;
  int64_t head_kv;
  int64_t n_block;
};

// n_block varies fastest and ascending: neighbouring blocks share query tiles
// in L2, and under a causal mask the first key tiles (seen by the most rows,
// the longest blocks) start first.
SWA_HOST_DEVICE BwdKvBlock bwd_kv_block(const BwdKvGrid& g, int64_t index) {
  uint32_t x = static_cast<uint32_t>(index);
  const uint32_t n_blocks = static_cast<uint32_t>(g.n_blocks);
  const uint32_t heads = static_cast<uint32_t>(g.heads_kv);
  BwdKvBlock blk;
  blk.n_block = x % n_blocks;
  x /= n_blocks;
  blk.head_kv = x % heads;
  blk.batch = x / heads;
  return blk;
}

// The query tiles a dK/dV block visits, as one flat loop it = 0 .. count() - 1:
// the `group` query heads of its kv head (head-major), and for each the query
// tiles [m_block_min, m_block_min + m_blocks) whose rows see the key tile
// (query_tile_range of band.h: band skipping).
struct BwdQueryWalk {
  int64_t m_block_min;
  int64_t m_blocks;  // per query head (0: the key tile is seen by no row)
  int64_t group;     // query heads per kv head
  SWA_HOST_DEVICE int64_t count() const { return group * m_blocks; }
  // Query head of the group (0 .. group - 1) and query tile of step it.
  SWA_HOST_DEVICE int64_t head_in_group(int64_t it) const {
    return static_cast<uint32_t>(it) / static_cast<uint32_t>(m_blocks);
  }
  SWA_HOST_DEVICE int64_t m_block(int64_t it) const {
    return m_block_min + static_cast<uint32_t>(it) % static_cast<uint32_t>(m_blocks);
  }
};

SWA_HOST_DEVICE BwdQueryWalk make_bwd_query_walk(const Band& band, int64_t n_block, int64_t block_n,
                                                 int64_t block_m, int64_t group) {
  const TileRange t = query_tile_range(band, n_block, block_n, block_m);
  return {t.n_block_min, t.size(), group};
}

// ---- dQ kernel (deterministic mode): one block per (query tile, batch, query head)

struct BwdQGrid {
  int64_t batch;
  int64_t heads_q;
  int64_t m_blocks;  // ceil(seqlen_q / block_m)
  SWA_HOST_DEVICE int64_t blocks() const { return batch * heads_q * m_blocks; }
};

SWA_HOST_DEVICE BwdQGrid make_bwd_q_grid(int64_t batch, int64_t heads_q, int64_t seqlen_q,
                                         int64_t block_m) {
  return {batch, heads_q, bwd_ceil_div(seqlen_q, block_m)};
}

struct BwdQBlock {
  int64_t batch;
  int64_t head;
  int64_t m_block;
};

// m_block varies fastest and runs from the last tile down: under a causal mask
// the last query tiles see the most keys and start first.
SWA_HOST_DEVICE BwdQBlock bwd_q_block(const BwdQGrid& g, int64_t index) {
  uint32_t x = static_cast<uint32_t>(index);
  const uint32_t m_blocks = static_cast<uint32_t>(g.m_blocks);
  const uint32_t heads = static_cast<uint32_t>(g.heads_q);
  BwdQBlock blk;
  blk.m_block = g.m_blocks - 1 - static_cast<int64_t>(x % m_blocks);
  x /= m_blocks;
  blk.head = x % heads;
  blk.batch = x / heads;
  return blk;
}

// ---- row-wise kernels (preprocess D, dq_accum -> dq): one block per
// (batch, query head, block_rows rows)

struct BwdRowGrid {
  int64_t batch_heads;  // B * Hq
  int64_t row_blocks;   // ceil(seqlen_q / block_rows)
  SWA_HOST_DEVICE int64_t blocks() const { return batch_heads * row_blocks; }
};

SWA_HOST_DEVICE BwdRowGrid make_bwd_row_grid(int64_t batch, int64_t heads_q, int64_t seqlen_q,
                                             int64_t block_rows) {
  return {batch * heads_q, bwd_ceil_div(seqlen_q, block_rows)};
}

struct BwdRowBlock {
  int64_t batch_head;  // b * Hq + h
  int64_t row_block;
};

SWA_HOST_DEVICE BwdRowBlock bwd_row_block(const BwdRowGrid& g, int64_t index) {
  const uint32_t x = static_cast<uint32_t>(index);
  const uint32_t row_blocks = static_cast<uint32_t>(g.row_blocks);
  return {x / row_blocks, x % row_blocks};
}

// ---- masks ----------------------------------------------------------------------

// Does the (query tile m_block, key tile n_block) pair need element masks in
// the backward? Unlike the forward (which never stores rows past seqlen_q),
// every row of the tile feeds dK and dV, so the last, partial query tile is
// always masked as well. When this is false every (row, key) pair of the tile
// is visible, row < seqlen_q and key < seqlen_k.
SWA_HOST_DEVICE bool bwd_tile_needs_mask(const Band& band, int64_t m_block, int64_t block_m,
                                         int64_t n_block, int64_t block_n) {
  if ((m_block + 1) * block_m > band.seqlen_q) return true;
  return tile_needs_mask(band, m_block, block_m, n_block, block_n);
}

// The query rows that see key j, [begin, end) (empty: begin >= end; also for
// j >= seqlen_k). Row i sees j iff begin <= i < end.
SWA_HOST_DEVICE KeyRange key_query_rows(const Band& band, int64_t key) {
  return row_range(band, key, key + 1);
}

}  // namespace SWA_KERNEL_NS
