// The window convention, written down once and used by every backend.
//
// Query row i of a sequence with Sq queries and Sk keys sits at key position
// p = i + Sk - Sq (bottom-right alignment). It sees key j when
//     p - window_left <= j <= p + window_right,
// where -1 means "unbounded on that side". (W-1, 0) is a sliding window of W
// tokens including the token itself, (-1, 0) is causal, (-1, -1) is full.
//
// Sink tokens (StreamingLLM): with sink_tokens = S the keys 0 .. S-1 are seen
// too by every row whose right edge reaches them (j <= p + window_right), in
// addition to the band. A row's keys are then two disjoint runs, the sink run
// [0, sink_end) before the band and the band [key_begin, key_end):
//
//         keys j ->
//   i   s . x x x . . .      sink_tokens = 1, window_left = 2
//   |   s . . x x x . .      (a sink key inside the band is the band's)
//   v   s . . . x x x .
//
//         keys j ->
//   i   . x x x . . .      window_left = 2, window_right = 0
//   |   . . x x x . .      each row sees 3 keys ending at its own position
//   v   . . . x x x .
//
// Everything here is plain integer math on one sequence, so the same code
// serves the CPU kernels, the CUDA kernels and packed variable-length batches
// (pass each sequence's own lengths). No CUDA or torch headers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SWA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SWA_HOST_DEVICE inline
#endif

#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {

SWA_HOST_DEVICE int64_t band_min64(int64_t a, int64_t b) { return a < b ? a : b; }
SWA_HOST_DEVICE int64_t band_max64(int64_t a, int64_t b) { return a > b ? a : b; }

// The window of one sequence. Lengths are per sequence so that a packed batch
// only needs a different (seqlen_q, seqlen_k) per sequence.
struct Band {
  int64_t seqlen_q;
  int64_t seqlen_k;
  int64_t window_left;   // -1: unbounded
  int64_t window_right;  // -1: unbounded
  int64_t sink_tokens = 0;  // keys [0, S) seen beside the band (see above)

  // Key position of query row i.
  SWA_HOST_DEVICE int64_t key_position(int64_t row) const { return row + seqlen_k - seqlen_q; }

  // First visible key of row i, clamped to 0 (may exceed key_end: empty row).
  SWA_HOST_DEVICE int64_t key_begin(int64_t row) const {
    if (window_left < 0) return 0;
    return band_max64(0, key_position(row) - window_left);
  }

  // One past the last visible key of row i, clamped to [0, seqlen_k].
  SWA_HOST_DEVICE int64_t key_end(int64_t row) const {
    if (window_right < 0) return seqlen_k;
    return band_max64(0, band_min64(seqlen_k, key_position(row) + window_right + 1));
  }

  // One past the last key that row i sees through the sinks only: the sink
  // run is [0, sink_end), before key_begin (0 when there are no sinks).
  SWA_HOST_DEVICE int64_t sink_end(int64_t row) const {
    if (sink_tokens <= 0) return 0;
    return band_max64(0, band_min64(band_min64(sink_tokens, key_end(row)), key_begin(row)));
  }

  SWA_HOST_DEVICE bool visible(int64_t row, int64_t key) const {
    if (key < 0 || key >= seqlen_k) return false;
    return (key >= key_begin(row) && key < key_end(row)) || key < sink_end(row);
  }

  // Number of keys row i sees (0 for a row that sees nothing).
  SWA_HOST_DEVICE int64_t visible_count(int64_t row) const {
    int64_t n = key_end(row) - key_begin(row);
    return (n > 0 ? n : 0) + sink_end(row);
  }
};

// Per-head windows (attention.per_head): query head h has its own
// (window_left, window_right), in the kernel form above (-1: unbounded), read
// from two arrays of Hq entries (host memory for the CPU kernels, device
// memory for the CUDA ones). The problem's own Band then carries the union of
// the heads' windows (what grids and tile walks are sized by); each head's
// kernel work narrows it to its own window with of_head.
struct HeadWindows {
  const int64_t* left = nullptr;   // [Hq]; nullptr: every head has the Band's window
  const int64_t* right = nullptr;  // [Hq]
  SWA_HOST_DEVICE bool set() const { return left != nullptr; }
  SWA_HOST_DEVICE Band of_head(Band band, int64_t head) const {
    if (left != nullptr) {
      band.window_left = left[head];
      band.window_right = right[head];
    }
    return band;
  }
};

// The element masks of the kernels' score tiles: is column c of a tile
// visible to a row whose band holds the tile's columns [lo, hi) and whose
// sink run holds [0, sink_hi) (relative to the tile's first key; sink_hi <= 0
// without sink tokens)? A tile can hold both runs: one with sink and band keys
// is walked with the band (sink_tile_range below).
// (I: the kernels' int columns, or int64_t.)
template <class I>
SWA_HOST_DEVICE bool column_visible(I c, I sink_hi, I lo, I hi) {
  return (c >= lo && c < hi) || c < sink_hi;
}

// The keys that the query rows [row_begin, row_end) see between them, as a
// half-open range [begin, end); begin >= end when no row sees any key.
// key_begin and key_end are non-decreasing in the row, so the first row gives
// the lower bound and the last row the upper one.
struct KeyRange {
  int64_t begin;
  int64_t end;
  SWA_HOST_DEVICE bool empty() const { return begin >= end; }
};

// This is the band's run only; sink_key_range below gives the sink run.
SWA_HOST_DEVICE KeyRange key_range(const Band& band, int64_t row_begin, int64_t row_end) {
  int64_t last = band_min64(row_end, band.seqlen_q) - 1;
  if (last < row_begin) return {0, 0};
  return {band.key_begin(row_begin), band.key_end(last)};
}

// The sink keys that rows [row_begin, row_end) see outside their bands:
// [0, sink_end(last row)) (sink_end is non-decreasing in the row). Disjoint
// from key_range of the same rows only row by row: the first rows' bands may
// start inside it. Empty without sinks.
SWA_HOST_DEVICE KeyRange sink_key_range(const Band& band, int64_t row_begin, int64_t row_end) {
  int64_t last = band_min64(row_end, band.seqlen_q) - 1;
  if (last < row_begin) return {0, 0};
  return {0, band.sink_end(last)};
}

// Every key that rows [row_begin, row_end) see: the sink run and the band run.
struct SeenKeys {
  KeyRange sink;
  KeyRange band;
  SWA_HOST_DEVICE bool contains(int64_t key) const {
    return (key >= sink.begin && key < sink.end) || (key >= band.begin && key < band.end);
  }
  SWA_HOST_DEVICE bool empty() const { return sink.empty() && band.empty(); }
};

SWA_HOST_DEVICE SeenKeys seen_keys(const Band& band, int64_t row_begin, int64_t row_end) {
  return {sink_key_range(band, row_begin, row_end), key_range(band, row_begin, row_end)};
}

// The key tiles of width block_n that a query tile [m0, m0 + block_m) touches:
// tile indices [n_block_min, n_block_max). Tiles outside are never loaded.
struct TileRange {
  int64_t n_block_min;
  int64_t n_block_max;
  SWA_HOST_DEVICE bool empty() const { return n_block_min >= n_block_max; }
  SWA_HOST_DEVICE int64_t size() const { return empty() ? 0 : n_block_max - n_block_min; }
};

// (The band's tiles; sink_tile_range gives the tiles of the sink run.)
SWA_HOST_DEVICE TileRange key_tile_range(const Band& band, int64_t m_block, int64_t block_m,
                                         int64_t block_n) {
  KeyRange r = key_range(band, m_block * block_m, (m_block + 1) * block_m);
  if (r.empty()) return {0, 0};
  return {r.begin / block_n, (r.end + block_n - 1) / block_n};
}

// The key tiles of the sink run of query rows [row_begin, row_end) that the
// band's tiles `band_tiles` do not already cover: [0, n) with n clipped to
// band_tiles.n_block_min, so that a tile holding sink and band keys is walked
// once, with the band. A kernel walks these tiles and band_tiles; the
// element masks (Band::visible) tell the two runs apart inside a tile.
SWA_HOST_DEVICE TileRange sink_tile_range(const Band& band, int64_t row_begin, int64_t row_end,
                                          TileRange band_tiles, int64_t block_n) {
  KeyRange r = sink_key_range(band, row_begin, row_end);
  if (r.empty()) return {0, 0};
  int64_t n = (r.end + block_n - 1) / block_n;
  if (!band_tiles.empty()) n = band_min64(n, band_tiles.n_block_min);
  return {0, n};
}

// Does key tile n_block need element masks for query tile m_block? It does not
// when every (row, key) pair of the tile is visible; then the kernel skips the
// per-element test. Rows past seqlen_q are ignored (they are never stored).
SWA_HOST_DEVICE bool tile_needs_mask(const Band& band, int64_t m_block, int64_t block_m,
                                     int64_t n_block, int64_t block_n) {
  int64_t row_first = m_block * block_m;
  int64_t row_last = band_min64((m_block + 1) * block_m, band.seqlen_q) - 1;
  int64_t key_first = n_block * block_n;
  int64_t key_last = (n_block + 1) * block_n - 1;
  if (row_last < row_first) return true;
  if (key_last >= band.seqlen_k) return true;
  // The latest-starting row and the earliest-ending row bound the whole tile.
  return !(band.key_begin(row_last) <= key_first && key_last < band.key_end(row_first));
}

// The query rows that see any key of [key_begin, key_end), as a half-open
// range (empty when none does). Found by inverting the band: row i sees key j
// iff j - window_right <= p(i) <= j + window_left. A sink key j < S is seen by
// every row from its first one on (p(i) >= j - window_right), so a range that
// starts inside the sinks reaches the last row: still one contiguous range.
SWA_HOST_DEVICE KeyRange row_range(const Band& band, int64_t key_begin, int64_t key_end) {
  key_begin = band_max64(key_begin, 0);
  int64_t key_last = band_min64(key_end, band.seqlen_k) - 1;
  if (key_last < key_begin) return {0, 0};
  int64_t shift = band.seqlen_k - band.seqlen_q;  // p(i) = i + shift
  int64_t begin = band.window_right < 0 ? 0 : band_max64(0, key_begin - band.window_right - shift);
  int64_t end = band.window_left < 0 || key_begin < band.sink_tokens
                    ? band.seqlen_q
                    : band_min64(band.seqlen_q, key_last + band.window_left - shift + 1);
  if (end <= begin) return {0, 0};
  return {begin, end};
}

// The rows that see a key of [key_begin, key_end) through their band, not
// their sink run: row_range without the sink tokens.
SWA_HOST_DEVICE KeyRange band_row_range(Band band, int64_t key_begin, int64_t key_end) {
  band.sink_tokens = 0;
  return row_range(band, key_begin, key_end);
}

// The query tiles of height block_m whose rows see any key of key tile n_block:
// [m_block_min, m_block_max) in TileRange's fields. The backward pass walks
// this range per key tile.
SWA_HOST_DEVICE TileRange query_tile_range(const Band& band, int64_t n_block, int64_t block_n,
                                           int64_t block_m) {
  KeyRange r = row_range(band, n_block * block_n, (n_block + 1) * block_n);
  if (r.empty()) return {0, 0};
  return {r.begin / block_m, (r.end + block_m - 1) / block_m};
}

}  // namespace SWA_KERNEL_NS
