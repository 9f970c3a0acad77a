// Work decomposition of the CUDA forward: which query rows a thread block
// owns (with PackGQA), which key tiles it walks (band skipping, split-KV), and
// how many key splits a small problem gets. Plain integer math shared by the
// kernels (device) and the launcher (host), unit-tested on the CPU
// (tests/cpp/test_fwd_tiles.cpp). No CUDA or torch headers.
//
// PackGQA: with G = Hq / Hkv query heads per kv head and a short query
// sequence, the G heads of one kv head share a thread block. The block's
// "packed" rows are m = 0 .. Sq * G - 1, row m being query row m / G of query
// head hkv * G + m % G, so the group's keys and values are read once. pack = 1
// is the plain layout (one query head per block, packed row m = query row m).
#pragma once

#include <cstdint>

#include "swa/kernels/band.h"

namespace SWA_KERNEL_NS {

SWA_HOST_DEVICE int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The forward's 1-D grid: one block per (batch, grid head, split, m_block).
struct FwdGrid {
  int64_t batch;
  int64_t heads;     // grid heads: Hkv when packed (pack > 1), else Hq
  int64_t splits;    // key splits (1 = no split-KV)
  int64_t pack;      // query heads per block (1 or G)
  int64_t rows;      // packed rows per (batch, grid head): Sq * pack
  int64_t m_blocks;  // ceil(rows / block_m)
  SWA_HOST_DEVICE int64_t blocks() const { return batch * heads * splits * m_blocks; }
};

SWA_HOST_DEVICE FwdGrid make_fwd_grid(int64_t batch, int64_t heads_q, int64_t heads_kv,
                                      int64_t seqlen_q, int64_t pack, int64_t splits,
                                      int64_t block_m) {
  FwdGrid g;
  g.batch = batch;
  g.pack = pack;
  g.heads = pack > 1 ? heads_kv : heads_q;
  g.splits = splits;
  g.rows = seqlen_q * pack;
  g.m_blocks = ceil_div64(g.rows, block_m);
  return g;
}

struct FwdBlock {
  int64_t batch;
  int64_t head;     // grid head: the kv head when packed, else the query head
  int64_t split;
  int64_t m_block;
};

// Block index -> work. m_block varies fastest (neighbouring blocks share K/V in
// L2) and runs from the last tile down, so that with a causal mask the longest
// rows start first and the tail of the grid is short. The launcher keeps
// blocks() below 2^31, so 32-bit division is exact (64-bit division is a slow
// call on the GPU).
SWA_HOST_DEVICE FwdBlock fwd_block(const FwdGrid& g, int64_t index) {
  uint32_t x = static_cast<uint32_t>(index);
  const uint32_t m_blocks = static_cast<uint32_t>(g.m_blocks);
  const uint32_t splits = static_cast<uint32_t>(g.splits);
  const uint32_t heads = static_cast<uint32_t>(g.heads);
  FwdBlock blk;
  blk.m_block = g.m_blocks - 1 - static_cast<int64_t>(x % m_blocks);
  x /= m_blocks;
  blk.split = x % splits;
  x /= splits;
  blk.head = x % heads;
  blk.batch = x / heads;
  return blk;
}

// The query rows [begin, end) that the packed rows of m_block map to (several
// packed rows share a query row when pack > 1). Empty past the last row.
SWA_HOST_DEVICE KeyRange packed_query_rows(int64_t m_block, int64_t block_m, int64_t pack,
                                           int64_t rows) {
  const int64_t m0 = m_block * block_m;
  const int64_t m1 = band_min64(m0 + block_m, rows);
  if (m1 <= m0) return {0, 0};
  return {m0 / pack, (m1 - 1) / pack + 1};
}

// Key tiles of width block_n that query rows [rows.begin, rows.end) touch
// (key_tile_range of band.h for an arbitrary row range).
SWA_HOST_DEVICE TileRange rows_key_tile_range(const Band& band, KeyRange rows, int64_t block_n) {
  if (rows.empty()) return {0, 0};
  KeyRange r = key_range(band, rows.begin, rows.end);
  if (r.empty()) return {0, 0};
  return {r.begin / block_n, (r.end + block_n - 1) / block_n};
}

// tile_needs_mask of band.h for an arbitrary row range: false only when every
// row of [rows.begin, rows.end) sees every key of tile n_block (and the tile
// lies inside seqlen_k).
SWA_HOST_DEVICE bool rows_tile_needs_mask(const Band& band, KeyRange rows, int64_t n_block,
                                          int64_t block_n) {
  if (rows.empty()) return true;
  const int64_t key_first = n_block * block_n;
  const int64_t key_last = key_first + block_n - 1;
  if (key_last >= band.seqlen_k) return true;
  return !(band.key_begin(rows.end - 1) <= key_first && key_last < band.key_end(rows.begin));
}

// The key tiles that need no element mask for query rows [rows.begin,
// rows.end): those where every row sees every key, a contiguous range (empty
// when there is none). Tile n qualifies iff n * block_n >= key_begin(last row)
// and (n + 1) * block_n <= key_end(first row) (<= seqlen_k), i.e. exactly when
// rows_tile_needs_mask is false; the kernel tests this range per tile.
SWA_HOST_DEVICE TileRange rows_unmasked_tile_range(const Band& band, KeyRange rows, int64_t block_n) {
  if (rows.empty()) return {0, 0};
  const int64_t first = ceil_div64(band.key_begin(rows.end - 1), block_n);
  const int64_t last = band_min64(band.key_end(rows.begin), band.seqlen_k) / block_n;
  return {first, band_max64(first, last)};
}

// Split s of `splits` takes a contiguous share of the block's key tiles; the
// last splits may get fewer tiles or none (then they write an empty partial).
SWA_HOST_DEVICE TileRange split_tile_range(TileRange tiles, int64_t split, int64_t splits) {
  if (splits <= 1) return tiles;
  const int64_t per = ceil_div64(tiles.size(), splits);
  const int64_t begin = band_min64(tiles.n_block_min + split * per, tiles.n_block_max);
  const int64_t end = band_min64(begin + per, tiles.n_block_max);
  return {begin, end};
}

// Every key tile a block of query rows walks, in ascending key order: the
// sink run's tiles [0, n_sink) (sink_tile_range of band.h, all below the
// band's), then the band's tiles. Visit v = 0 .. size() - 1 is tile tile(v);
// split-KV cuts the visits (not the tile indices) into contiguous shares.
struct BlockKeyTiles {
  int64_t n_sink;  // sink tiles [0, n_sink)
  TileRange band;  // then the band's tiles
  SWA_HOST_DEVICE int64_t size() const { return n_sink + band.size(); }
  SWA_HOST_DEVICE int64_t tile(int64_t v) const { return v < n_sink ? v : band.n_block_min + (v - n_sink); }
};

SWA_HOST_DEVICE BlockKeyTiles rows_block_key_tiles(const Band& band, KeyRange rows, int64_t block_n) {
  const TileRange band_tiles = rows_key_tile_range(band, rows, block_n);
  const int64_t n_sink = rows.empty() ? 0 : sink_tile_range(band, rows.begin, rows.end, band_tiles, block_n).size();
  return {n_sink, band_tiles};
}

// Split s of `splits` takes a contiguous share of the visits [0, size()) of
// `tiles` (as split_tile_range does for the band alone): visits [begin, end).
SWA_HOST_DEVICE KeyRange split_visit_range(const BlockKeyTiles& tiles, int64_t split, int64_t splits) {
  const int64_t n = tiles.size();
  if (splits <= 1) return {0, n};
  const int64_t per = ceil_div64(n, splits);
  const int64_t begin = band_min64(split * per, n);
  return {begin, band_min64(begin + per, n)};
}

// Fraction of the device's slots busy over all the waves that `work` blocks
// take (1 = every wave full).
SWA_HOST_DEVICE double wave_efficiency(int64_t work, int64_t slots) {
  const int64_t waves = ceil_div64(work, slots);
  return static_cast<double>(work) / static_cast<double>(waves * slots);
}

// Split-KV heuristic (flash-decoding). blocks: thread blocks without split;
// tiles: the most key tiles one block walks; slots: blocks the device runs at
// once (SMs x blocks per SM). No split when the grid already fills most of a
// wave or the band is short; otherwise the smallest split count whose wave
// efficiency is within 15% of the best one reachable, with at least two key
// tiles per split and at most max_splits.
SWA_HOST_DEVICE int choose_num_splits(int64_t blocks, int64_t tiles, int64_t slots,
                                      int64_t max_splits) {
  if (blocks <= 0 || slots <= 0 || tiles < 4) return 1;
  if (blocks * 5 >= slots * 4) return 1;  // >= 80% of one wave already
  const int64_t cap = band_min64(max_splits, tiles / 2);
  if (cap < 2) return 1;
  double best = 0;
  for (int64_t s = 1; s <= cap; ++s) {
    const double e = wave_efficiency(blocks * s, slots);
    best = e > best ? e : best;
  }
  for (int64_t s = 1; s <= cap; ++s)
    if (wave_efficiency(blocks * s, slots) >= 0.85 * best) return static_cast<int>(s);
  return 1;
}

}  // namespace SWA_KERNEL_NS
