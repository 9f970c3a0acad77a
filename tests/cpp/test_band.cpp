// Unit tests of the band index math (swa/kernels/band.h) that the CPU and CUDA
// kernels share, against brute force over every (row, key) pair. Plain C++:
// links no torch and no CUDA.
#include <cstdint>
#include <cstdio>
#include <random>

#include "expect.h"
#include "band_brute_force.h"
#include "swa/kernels/band.h"

using SWA_KERNEL_NS::Band;

namespace {

bool tile_pair_visible(const Band& b, int64_t m, int64_t bm, int64_t n, int64_t bn) {
  for (int64_t i = m * bm; i < (m + 1) * bm && i < b.seqlen_q; ++i)
    for (int64_t j = n * bn; j < (n + 1) * bn && j < b.seqlen_k; ++j)
      if (sees(b, i, j)) return true;
  return false;
}

bool tile_pair_full(const Band& b, int64_t m, int64_t bm, int64_t n, int64_t bn) {
  for (int64_t i = m * bm; i < (m + 1) * bm && i < b.seqlen_q; ++i)
    for (int64_t j = n * bn; j < (n + 1) * bn; ++j)
      if (!sees(b, i, j)) return false;
  return true;
}

void check_band(const Band& b, int64_t bm, int64_t bn) {
  const char* fmt = "Sq=%lld Sk=%lld wl=%lld wr=%lld S=%lld bm=%lld bn=%lld i/m=%lld j/n=%lld";
#define ARGS(x, y)                                                                            \
  (long long)b.seqlen_q, (long long)b.seqlen_k, (long long)b.window_left,                  \
      (long long)b.window_right, (long long)b.sink_tokens, (long long)bm, (long long)bn,   \
      (long long)(x), (long long)(y)
  // Per row: visible(), and the two runs [0, sink_end) and [key_begin,
  // key_end) hold exactly the visible keys, each once.
  for (int64_t i = 0; i < b.seqlen_q; ++i) {
    int64_t count = 0;
    for (int64_t j = -2; j < b.seqlen_k + 2; ++j) {
      EXPECT(b.visible(i, j) == sees(b, i, j), fmt, ARGS(i, j));
      count += sees(b, i, j);
      const bool in_sink = j >= 0 && j < b.sink_end(i);
      const bool in_band = j >= b.key_begin(i) && j < b.key_end(i);
      EXPECT(!(in_sink && in_band), fmt, ARGS(i, j));
      EXPECT((in_sink || in_band) == sees(b, i, j), fmt, ARGS(i, j));
      // The element mask of the kernels' tiles, relative to any tile start.
      if (j >= 0 && j < b.seqlen_k) {
        const int n0 = int(j / bn * bn);
        EXPECT(SWA_KERNEL_NS::column_visible<int>(int(j) - n0, int(b.sink_end(i)) - n0, int(b.key_begin(i)) - n0,
                                                  int(b.key_end(i)) - n0) == sees(b, i, j),
               fmt, ARGS(i, j));
      }
    }
    EXPECT(b.visible_count(i) == count, fmt, ARGS(i, count));
  }
  // seen_keys of a row range holds every key its rows see, and no key
  // that none of them sees at its runs' ends.
  for (int64_t r0 = 0; r0 < b.seqlen_q; r0 += bm) {
    const int64_t r1 = r0 + bm;
    const auto seen = SWA_KERNEL_NS::seen_keys(b, r0, r1);
    for (int64_t j = 0; j < b.seqlen_k; ++j) {
      bool any = false;
      for (int64_t i = r0; i < r1 && i < b.seqlen_q; ++i) any |= sees(b, i, j);
      if (any) EXPECT(seen.contains(j), fmt, ARGS(r0, j));
    }
    for (const auto run : {seen.sink, seen.band}) {
      if (run.empty()) continue;
      for (const int64_t j : {run.begin, run.end - 1}) {
        bool any = false;
        for (int64_t i = r0; i < r1 && i < b.seqlen_q; ++i) any |= sees(b, i, j);
        EXPECT(any, fmt, ARGS(r0, j));
      }
    }
  }
  const int64_t m_blocks = (b.seqlen_q + bm - 1) / bm;
  const int64_t n_blocks = (b.seqlen_k + bn - 1) / bn;
  for (int64_t m = 0; m < m_blocks; ++m) {
    auto tiles = SWA_KERNEL_NS::key_tile_range(b, m, bm, bn);
    auto sink_tiles = SWA_KERNEL_NS::sink_tile_range(b, m * bm, (m + 1) * bm, tiles, bn);
    EXPECT(sink_tiles.empty() || tiles.empty() || sink_tiles.n_block_max <= tiles.n_block_min, fmt,
           ARGS(m, sink_tiles.n_block_max));
    for (int64_t n = 0; n < n_blocks; ++n) {
      bool visible = tile_pair_visible(b, m, bm, n, bn);
      bool in_range = !tiles.empty() && n >= tiles.n_block_min && n < tiles.n_block_max;
      bool in_sinks = !sink_tiles.empty() && n >= sink_tiles.n_block_min && n < sink_tiles.n_block_max;
      // Band skipping never drops a tile with a visible pair...
      if (visible) EXPECT(in_range || in_sinks, fmt, ARGS(m, n));
      // ...and only a tile that straddles the band edge needs element masks
      // (with sinks: a tile without masks is all visible; the sink tiles
      // are always masked).
      if (in_range) {
        bool needs = SWA_KERNEL_NS::tile_needs_mask(b, m, bm, n, bn);
        if (b.sink_tokens == 0) EXPECT(needs == !tile_pair_full(b, m, bm, n, bn), fmt, ARGS(m, n));
        else if (!needs) EXPECT(tile_pair_full(b, m, bm, n, bn), fmt, ARGS(m, n));
      }
      auto q_tiles = SWA_KERNEL_NS::query_tile_range(b, n, bn, bm);
      bool in_q_range = !q_tiles.empty() && m >= q_tiles.n_block_min && m < q_tiles.n_block_max;
      if (visible) EXPECT(in_q_range, fmt, ARGS(m, n));
    }
    // The sink tiles are tight at their end too.
    if (!sink_tiles.empty())
      EXPECT(tile_pair_visible(b, m, bm, sink_tiles.n_block_max - 1, bn), fmt, ARGS(m, sink_tiles.n_block_max));
    // The key range is tight: its first and last tiles hold a visible pair.
    if (!tiles.empty()) {
      EXPECT(tile_pair_visible(b, m, bm, tiles.n_block_min, bn), fmt, ARGS(m, tiles.n_block_min));
      EXPECT(tile_pair_visible(b, m, bm, tiles.n_block_max - 1, bn), fmt, ARGS(m, tiles.n_block_max));
    }
  }
  // row_range: exactly the rows that see some key of a key interval.
  for (int64_t k0 = 0; k0 < b.seqlen_k; k0 += bn) {
    int64_t k1 = k0 + bn;
    auto rows = SWA_KERNEL_NS::row_range(b, k0, k1);
    for (int64_t i = 0; i < b.seqlen_q; ++i) {
      bool any = false;
      for (int64_t j = k0; j < k1 && j < b.seqlen_k; ++j) any |= sees(b, i, j);
      bool in = !rows.empty() && i >= rows.begin && i < rows.end;
      EXPECT(any == in, fmt, ARGS(i, k0));
    }
  }
  // band_row_range: the rows that see a key of the interval through their
  // band (not their sink run).
  for (int64_t k0 = 0; k0 < b.seqlen_k; k0 += bn) {
    const int64_t k1 = k0 + bn;
    auto rows = SWA_KERNEL_NS::band_row_range(b, k0, k1);
    for (int64_t i = 0; i < b.seqlen_q; ++i) {
      bool any = false;
      for (int64_t j = k0; j < k1 && j < b.seqlen_k; ++j) any |= j >= b.key_begin(i) && j < b.key_end(i);
      const bool in = !rows.empty() && i >= rows.begin && i < rows.end;
      EXPECT(any == in, fmt, ARGS(i, k0));
    }
  }
#undef ARGS
}

}  // namespace

int main() {
  std::mt19937_64 rng(1234);
  auto pick = [&](std::initializer_list<int64_t> xs) {
    auto it = xs.begin();
    std::advance(it, rng() % xs.size());
    return *it;
  };
  int cases = 0;
  for (int t = 0; t < 3000; ++t) {
    Band b{pick({0, 1, 3, 16, 17, 40, 64, 100}), pick({0, 1, 5, 16, 33, 64, 90}),
           pick({-1, 0, 1, 2, 7, 16, 31, 200}), pick({-1, 0, 0, 1, 5, 40}),
           t % 2 ? 0 : pick({1, 2, 4, 9, 16, 17, 70, 200})};
    check_band(b, pick({1, 4, 16, 64}), pick({1, 8, 16, 32}));
    ++cases;
  }
  std::printf("test_band: %d random bands, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
