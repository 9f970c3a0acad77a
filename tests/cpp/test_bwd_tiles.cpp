// Unit tests of the CUDA backward's work decomposition (swa/kernels/bwd_tiles.h)
// against brute force: the grid decodes, and a replay of both backward
// kernels' tile walks with their mask rules, checking that every visible
// (row, key) pair of every query head contributes exactly once and no other
// pair ever does. Plain C++: links no torch and no CUDA.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "expect.h"
#include "band_brute_force.h"
#include "swa/kernels/band.h"
#include "swa/kernels/bwd_tiles.h"

namespace kn = SWA_KERNEL_NS;
using kn::Band;
using kn::KeyRange;

namespace {

// The problem, for failure messages: CTXF in the format, CTXA among the arguments.
#define CTXF "Sq=%lld Sk=%lld wl=%lld wr=%lld bm=%lld bn=%lld"
#define CTXA                                                                                 \
  (long long)b.seqlen_q, (long long)b.seqlen_k, (long long)b.window_left, (long long)b.window_right, \
      (long long)bm, (long long)bn
#define CTX CTXF, CTXA

// key_query_rows: exactly the rows that see key j, for keys inside and past Sk.
void check_key_rows(const Band& b) {
  for (int64_t j = 0; j < b.seqlen_k + 3; ++j) {
    const KeyRange r = kn::key_query_rows(b, j);
    for (int64_t i = 0; i < b.seqlen_q; ++i) {
      const bool in = i >= r.begin && i < r.end;
      EXPECT(in == sees(b, i, j), "Sq=%lld Sk=%lld wl=%lld wr=%lld i=%lld j=%lld", (long long)b.seqlen_q,
             (long long)b.seqlen_k, (long long)b.window_left, (long long)b.window_right, (long long)i,
             (long long)j);
    }
    EXPECT(r.begin >= 0 && r.end <= b.seqlen_q, "range bounds j=%lld", (long long)j);
  }
}

// Replays the dK/dV kernel: block = key tile n; it walks the query heads of
// the group and the query tiles of make_bwd_query_walk; a tile pair that needs
// no mask takes every (row, key) of the tile, a masked one the pairs with
// key_query_rows(key).begin <= row < end. Rows >= Sq or keys >= Sk must never
// contribute; each visible pair exactly once per query head.
void check_dkdv_walk(const Band& b, int64_t bm, int64_t bn, int64_t group) {
  std::vector<int> count(static_cast<size_t>(group * b.seqlen_q * b.seqlen_k), 0);
  int bad = 0;
  const int64_t n_blocks = kn::bwd_ceil_div(b.seqlen_k, bn);
  for (int64_t n = 0; n < n_blocks; ++n) {
    const kn::BwdQueryWalk walk = kn::make_bwd_query_walk(b, n, bn, bm, group);
    for (int64_t it = 0; it < walk.count(); ++it) {
      const int64_t g = walk.head_in_group(it), m = walk.m_block(it);
      EXPECT(g >= 0 && g < group && m >= 0 && m * bm < b.seqlen_q, CTX);
      const bool masked = kn::bwd_tile_needs_mask(b, m, bm, n, bn);
      for (int64_t j = n * bn; j < (n + 1) * bn; ++j) {
        const KeyRange rows = kn::key_query_rows(b, j);
        for (int64_t i = m * bm; i < (m + 1) * bm; ++i) {
          const bool takes = !masked || (i >= rows.begin && i < rows.end);
          if (!takes) continue;
          if (i >= b.seqlen_q || j >= b.seqlen_k || !sees(b, i, j)) {
            ++bad;
            continue;
          }
          ++count[static_cast<size_t>((g * b.seqlen_q + i) * b.seqlen_k + j)];
        }
      }
    }
  }
  EXPECT(bad == 0, "%d invisible pairs taken; " CTXF, bad, CTXA);
  for (int64_t g = 0; g < group; ++g)
    for (int64_t i = 0; i < b.seqlen_q; ++i)
      for (int64_t j = 0; j < b.seqlen_k; ++j) {
        const int c = count[static_cast<size_t>((g * b.seqlen_q + i) * b.seqlen_k + j)];
        EXPECT(c == (sees(b, i, j) ? 1 : 0), "g=%lld i=%lld j=%lld count=%d; " CTXF, (long long)g,
               (long long)i, (long long)j, c, CTXA);
      }
}

// Replays the deterministic dQ kernel: block = query tile m; key tiles of
// key_tile_range; masked tiles take the pairs with key_begin(i) <= j <
// key_end(i) for rows i < Sq (rows past Sq see nothing).
void check_dq_walk(const Band& b, int64_t bm, int64_t bn) {
  std::vector<int> count(static_cast<size_t>(b.seqlen_q * b.seqlen_k), 0);
  int bad = 0;
  const int64_t m_blocks = kn::bwd_ceil_div(b.seqlen_q, bm);
  for (int64_t m = 0; m < m_blocks; ++m) {
    const kn::TileRange tiles = kn::key_tile_range(b, m, bm, bn);
    for (int64_t n = tiles.n_block_min; n < tiles.n_block_max; ++n) {
      const bool masked = kn::bwd_tile_needs_mask(b, m, bm, n, bn);
      for (int64_t i = m * bm; i < (m + 1) * bm; ++i) {
        const int64_t kb = i < b.seqlen_q ? b.key_begin(i) : 0;
        const int64_t ke = i < b.seqlen_q ? b.key_end(i) : 0;
        for (int64_t j = n * bn; j < (n + 1) * bn; ++j) {
          const bool takes = !masked || (j >= kb && j < ke);
          if (!takes) continue;
          if (i >= b.seqlen_q || j >= b.seqlen_k || !sees(b, i, j)) {
            ++bad;
            continue;
          }
          ++count[static_cast<size_t>(i * b.seqlen_k + j)];
        }
      }
    }
  }
  EXPECT(bad == 0, "%d invisible pairs taken; " CTXF, bad, CTXA);
  for (int64_t i = 0; i < b.seqlen_q; ++i)
    for (int64_t j = 0; j < b.seqlen_k; ++j) {
      const int c = count[static_cast<size_t>(i * b.seqlen_k + j)];
      EXPECT(c == (sees(b, i, j) ? 1 : 0), "i=%lld j=%lld count=%d; " CTXF, (long long)i, (long long)j, c,
             CTXA);
    }
}

void check_walks() {
  std::mt19937_64 rng(4321);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t windows[] = {-1, 0, 1, 3, 7, 16, 33};
  for (int iter = 0; iter < 500; ++iter) {
    Band b;
    b.seqlen_q = pick(1, 80);
    b.seqlen_k = pick(1, 90);
    b.window_left = windows[pick(0, 6)];
    b.window_right = windows[pick(0, 6)];
    const int64_t bm = iter % 2 ? 16 : 32;
    const int64_t bn = iter % 3 == 0 ? 8 : (iter % 3 == 1 ? 16 : 32);
    const int64_t group = 1 + iter % 3;
    check_key_rows(b);
    check_dkdv_walk(b, bm, bn, group);
    check_dq_walk(b, bm, bn);
  }
}

// The grid decodes visit every block exactly once, in the documented order.
void check_grids() {
  {
    const kn::BwdKvGrid g = kn::make_bwd_kv_grid(3, 5, 130, 64);
    EXPECT(g.n_blocks == 3 && g.blocks() == 45, "kv grid");
    std::vector<int> seen(g.blocks(), 0);
    for (int64_t idx = 0; idx < g.blocks(); ++idx) {
      const kn::BwdKvBlock k = kn::bwd_kv_block(g, idx);
      const bool ok = k.batch >= 0 && k.batch < 3 && k.head_kv >= 0 && k.head_kv < 5 && k.n_block >= 0 &&
                      k.n_block < 3;
      EXPECT(ok, "kv idx=%lld", (long long)idx);
      if (!ok) continue;
      ++seen[(k.batch * 5 + k.head_kv) * 3 + k.n_block];
      EXPECT(k.n_block == idx % 3, "kv n_block fastest, ascending: idx=%lld", (long long)idx);
    }
    for (size_t i = 0; i < seen.size(); ++i) EXPECT(seen[i] == 1, "kv block %zu seen %d times", i, seen[i]);
  }
  {
    const kn::BwdQGrid g = kn::make_bwd_q_grid(2, 6, 200, 64);
    EXPECT(g.m_blocks == 4 && g.blocks() == 48, "q grid");
    std::vector<int> seen(g.blocks(), 0);
    for (int64_t idx = 0; idx < g.blocks(); ++idx) {
      const kn::BwdQBlock q = kn::bwd_q_block(g, idx);
      const bool ok = q.batch >= 0 && q.batch < 2 && q.head >= 0 && q.head < 6 && q.m_block >= 0 && q.m_block < 4;
      EXPECT(ok, "q idx=%lld", (long long)idx);
      if (!ok) continue;
      ++seen[(q.batch * 6 + q.head) * 4 + q.m_block];
      EXPECT(q.m_block == 3 - idx % 4, "q m_block fastest, descending: idx=%lld", (long long)idx);
    }
    for (size_t i = 0; i < seen.size(); ++i) EXPECT(seen[i] == 1, "q block %zu seen %d times", i, seen[i]);
  }
  {
    const kn::BwdRowGrid g = kn::make_bwd_row_grid(3, 4, 65, 64);
    EXPECT(g.batch_heads == 12 && g.row_blocks == 2 && g.blocks() == 24, "row grid");
    for (int64_t idx = 0; idx < g.blocks(); ++idx) {
      const kn::BwdRowBlock r = kn::bwd_row_block(g, idx);
      EXPECT(r.batch_head == idx / 2 && r.row_block == idx % 2, "row idx=%lld", (long long)idx);
    }
  }
  {  // The walk: head-major, every (head, tile) once.
    const kn::BwdQueryWalk w{3, 4, 5};
    EXPECT(w.count() == 20, "walk count");
    for (int64_t it = 0; it < w.count(); ++it)
      EXPECT(w.head_in_group(it) == it / 4 && w.m_block(it) == 3 + it % 4, "walk it=%lld", (long long)it);
    const kn::BwdQueryWalk empty{0, 0, 5};
    EXPECT(empty.count() == 0, "empty walk");
  }
}

}  // namespace

int main() {
  check_walks();
  check_grids();
  return report("test_bwd_tiles");
}
