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
  const char* fmt = "Sq=%lld Sk=%lld wl=%lld wr=%lld bm=%lld bn=%lld i/m=%lld j/n=%lld";
#define ARGS(x, y)                                                                            \
  (long long)b.seqlen_q, (long long)b.seqlen_k, (long long)b.window_left,                  \
      (long long)b.window_right, (long long)bm, (long long)bn, (long long)(x), (long long)(y)
  // Per row: visible() and the [key_begin, key_end) range.
  for (int64_t i = 0; i < b.seqlen_q; ++i) {
    int64_t count = 0;
    for (int64_t j = -2; j < b.seqlen_k + 2; ++j) {
      EXPECT(b.visible(i, j) == sees(b, i, j), fmt, ARGS(i, j));
      count += sees(b, i, j);
    }
    EXPECT(b.visible_count(i) == count, fmt, ARGS(i, count));
  }
  const int64_t m_blocks = (b.seqlen_q + bm - 1) / bm;
  const int64_t n_blocks = (b.seqlen_k + bn - 1) / bn;
  for (int64_t m = 0; m < m_blocks; ++m) {
    auto tiles = SWA_KERNEL_NS::key_tile_range(b, m, bm, bn);
    for (int64_t n = 0; n < n_blocks; ++n) {
      bool visible = tile_pair_visible(b, m, bm, n, bn);
      bool in_range = !tiles.empty() && n >= tiles.n_block_min && n < tiles.n_block_max;
      // Band skipping never drops a tile with a visible pair...
      if (visible) EXPECT(in_range, fmt, ARGS(m, n));
      // ...and only a tile that straddles the band edge needs element masks.
      if (in_range) {
        bool needs = SWA_KERNEL_NS::tile_needs_mask(b, m, bm, n, bn);
        EXPECT(needs == !tile_pair_full(b, m, bm, n, bn), fmt, ARGS(m, n));
      }
      auto q_tiles = SWA_KERNEL_NS::query_tile_range(b, n, bn, bm);
      bool in_q_range = !q_tiles.empty() && m >= q_tiles.n_block_min && m < q_tiles.n_block_max;
      if (visible) EXPECT(in_q_range, fmt, ARGS(m, n));
    }
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
           pick({-1, 0, 1, 2, 7, 16, 31, 200}), pick({-1, 0, 0, 1, 5, 40})};
    check_band(b, pick({1, 4, 16, 64}), pick({1, 8, 16, 32}));
    ++cases;
  }
  std::printf("test_band: %d random bands, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
