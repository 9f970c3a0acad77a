// Unit tests of the CUDA forward's work decomposition (swa/kernels/fwd_tiles.h):
// PackGQA row ranges, key tile ranges, mask decisions, the unmasked tile
// range, the block index decode, split ranges and the split heuristic, against
// brute force and against band.h. Plain C++: links no torch and no CUDA.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "expect.h"
#include "band_brute_force.h"
#include "swa/kernels/band.h"
#include "swa/kernels/fwd_tiles.h"

namespace kn = SWA_KERNEL_NS;
using kn::Band;
using kn::KeyRange;
using kn::TileRange;

namespace {

// One packed query tile against brute force: rows m in [m0, m1) of a
// (batch, kv head) are query row m / pack.
void check_packed_tile(const Band& b, int64_t pack, int64_t m_block, int64_t bm, int64_t bn) {
  const int64_t rows = b.seqlen_q * pack;
  const int64_t m0 = m_block * bm, m1 = std::min(m0 + bm, rows);
  const KeyRange q = kn::packed_query_rows(m_block, bm, pack, rows);
#define CTX                                                                                    \
  "Sq=%lld Sk=%lld wl=%lld wr=%lld pack=%lld m_block=%lld bm=%lld bn=%lld",                    \
      (long long)b.seqlen_q, (long long)b.seqlen_k, (long long)b.window_left,                  \
      (long long)b.window_right, (long long)pack, (long long)m_block, (long long)bm, (long long)bn
  // Query rows: exactly the rows m / pack of the tile's packed rows.
  if (m1 <= m0) {
    EXPECT(q.empty(), CTX);
  } else {
    EXPECT(q.begin == m0 / pack && q.end == (m1 - 1) / pack + 1, CTX);
  }
  // Hull of the visible keys of the tile's rows.
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t j = 0; j < b.seqlen_k; ++j)
      if (sees(b, m / pack, j)) lo = std::min(lo, j), hi = std::max(hi, j);
  const TileRange t = kn::rows_key_tile_range(b, q, bn);
  if (lo > hi) {
    EXPECT(t.empty(), CTX);
  } else {
    EXPECT(t.n_block_min == lo / bn && t.n_block_max == hi / bn + 1, CTX);
  }
  // Mask decision per tile, and the unmasked range, against brute force.
  const TileRange unmasked = kn::rows_unmasked_tile_range(b, q, bn);
  const int64_t n_tiles = (b.seqlen_k + bn - 1) / bn + 1;
  for (int64_t n = 0; n < n_tiles; ++n) {
    bool full = m1 > m0;
    for (int64_t m = m0; m < m1 && full; ++m)
      for (int64_t j = n * bn; j < (n + 1) * bn && full; ++j)
        if (!sees(b, m / pack, j)) full = false;
    EXPECT(kn::rows_tile_needs_mask(b, q, n, bn) == !full, CTX);
    const bool in_unmasked = n >= unmasked.n_block_min && n < unmasked.n_block_max;
    EXPECT(in_unmasked == full, "%s n=%lld", "unmasked range", (long long)n);
  }
  // pack = 1 agrees with band.h's own tile functions.
  if (pack == 1) {
    const TileRange t1 = kn::key_tile_range(b, m_block, bm, bn);
    EXPECT(t1.empty() == t.empty(), CTX);
    if (!t.empty()) EXPECT(t1.n_block_min == t.n_block_min && t1.n_block_max == t.n_block_max, CTX);
    if (m1 > m0)
      for (int64_t n = 0; n < n_tiles; ++n)
        EXPECT(kn::tile_needs_mask(b, m_block, bm, n, bn) == kn::rows_tile_needs_mask(b, q, n, bn), CTX);
  }
#undef CTX
}

void check_tiles() {
  std::mt19937_64 rng(1234);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t windows[] = {-1, 0, 1, 3, 7, 16, 33};
  for (int iter = 0; iter < 400; ++iter) {
    Band b;
    b.seqlen_q = pick(1, 70);
    b.seqlen_k = pick(0, 90);
    b.window_left = windows[pick(0, 6)];
    b.window_right = windows[pick(0, 6)];
    const int64_t pack = iter % 3 == 0 ? 1 : pick(1, 6);
    const int64_t bm = iter % 2 ? 16 : 32;
    const int64_t bn = iter % 4 < 2 ? 8 : 16;
    const int64_t m_blocks = (b.seqlen_q * pack + bm - 1) / bm;
    for (int64_t mb = 0; mb <= m_blocks; ++mb) check_packed_tile(b, pack, mb, bm, bn);
  }
}

// Every (batch, head, split, m_block) exactly once, m_block fastest.
void check_grid() {
  for (int64_t pack : {1, 4}) {
    const kn::FwdGrid g = kn::make_fwd_grid(3, 8, 2, 37, pack, 5, 16);
    EXPECT(g.heads == (pack > 1 ? 2 : 8) && g.rows == 37 * pack && g.m_blocks == (37 * pack + 15) / 16,
           "pack=%lld", (long long)pack);
    std::vector<int> seen(g.blocks(), 0);
    for (int64_t idx = 0; idx < g.blocks(); ++idx) {
      const kn::FwdBlock blk = kn::fwd_block(g, idx);
      const bool ok = blk.batch >= 0 && blk.batch < g.batch && blk.head >= 0 && blk.head < g.heads &&
                      blk.split >= 0 && blk.split < g.splits && blk.m_block >= 0 && blk.m_block < g.m_blocks;
      EXPECT(ok, "idx=%lld", (long long)idx);
      if (!ok) continue;
      const int64_t flat = ((blk.batch * g.heads + blk.head) * g.splits + blk.split) * g.m_blocks + blk.m_block;
      ++seen[flat];
      if (idx > 0 && idx % g.m_blocks != 0)  // neighbours: same work, next m_block down
        EXPECT(kn::fwd_block(g, idx - 1).m_block == blk.m_block + 1, "idx=%lld", (long long)idx);
    }
    for (size_t i = 0; i < seen.size(); ++i) EXPECT(seen[i] == 1, "block %zu seen %d times", i, seen[i]);
  }
}

// Splits cover the tiles contiguously, in order, without overlap.
void check_splits() {
  for (int64_t lo = 0; lo < 5; ++lo)
    for (int64_t n = 0; n < 40; ++n)
      for (int64_t splits = 1; splits <= 12; ++splits) {
        const TileRange t{lo, lo + n};
        int64_t next = lo;
        for (int64_t s = 0; s < splits; ++s) {
          const TileRange r = kn::split_tile_range(t, s, splits);
          EXPECT(r.n_block_min == next || r.empty(), "lo=%lld n=%lld splits=%lld s=%lld", (long long)lo,
                 (long long)n, (long long)splits, (long long)s);
          EXPECT(r.n_block_min >= t.n_block_min && r.n_block_max <= t.n_block_max, "range");
          if (!r.empty()) next = r.n_block_max;
        }
        EXPECT(next == t.n_block_max, "lo=%lld n=%lld splits=%lld: covered up to %lld", (long long)lo,
               (long long)n, (long long)splits, (long long)next);
      }
}

void check_heuristic() {
  // Full grids and short bands never split.
  EXPECT(kn::choose_num_splits(200, 64, 132, 128) == 1, "full grid");
  EXPECT(kn::choose_num_splits(106, 64, 132, 128) == 1, "80%% of a wave");
  EXPECT(kn::choose_num_splits(8, 3, 132, 128) == 1, "short band");
  EXPECT(kn::choose_num_splits(0, 64, 132, 128) == 1, "no blocks");
  // Decoding: one sequence, 8 kv heads, 4096 keys in 64-key tiles.
  const int s = kn::choose_num_splits(8, 64, 132, 128);
  EXPECT(s >= 8 && s <= 32, "decode split %d", s);
  // Bounds: at least two tiles per split, at most max_splits.
  for (int64_t blocks = 1; blocks < 150; blocks += 7)
    for (int64_t tiles = 0; tiles < 300; tiles += 13)
      for (int64_t max_splits : {4, 128}) {
        const int n = kn::choose_num_splits(blocks, tiles, 132, max_splits);
        EXPECT(n >= 1 && n <= max_splits && (n == 1 || 2 * n <= tiles), "blocks=%lld tiles=%lld n=%d",
               (long long)blocks, (long long)tiles, n);
        if (blocks * 5 >= 132 * 4) EXPECT(n == 1, "blocks=%lld", (long long)blocks);
      }
}

}  // namespace

int main() {
  check_tiles();
  check_grid();
  check_splits();
  check_heuristic();
  return report("test_fwd_tiles");
}
