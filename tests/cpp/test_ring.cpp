// Unit tests of the rolling-cache index math (swa/kernels/ring.h) against a
// brute-force simulation: a ring of C slots written token by token, and the
// definition of sliding-window visibility over absolute positions. Plain C++:
// links no torch and no CUDA.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "expect.h"
#include "swa/kernels/ring.h"

namespace kn = SWA_KERNEL_NS;

namespace {

// A ring filled one token at a time: slot -> position it holds (-1 = never written).
struct SimulatedRing {
  std::vector<int64_t> held;
  explicit SimulatedRing(int64_t capacity) : held(capacity, -1) {}
  int64_t capacity() const { return static_cast<int64_t>(held.size()); }
  void push(int64_t position) { held[position % capacity()] = position; }
  // Slot holding position p, or -1 when the ring no longer (or never) held it.
  int64_t find(int64_t position) const {
    for (int64_t s = 0; s < capacity(); ++s)
      if (held[s] == position) return s;
    return -1;
  }
};

// cache_attention over a ring filled with positions 0 .. pos - 1 and T new
// tokens: RingView's virtual keys must be exactly the positions the queries
// see, each read from where the simulated ring (or the new tokens) holds it.
void check_view(int64_t pos, int64_t new_len, int64_t window, int64_t capacity) {
  const char* fmt = "pos=%lld T=%lld W=%lld C=%lld key=%lld";
#define ARGS(key) (long long)pos, (long long)new_len, (long long)window, (long long)capacity, (long long)(key)
  SimulatedRing ring(capacity);
  for (int64_t p = 0; p < pos; ++p) ring.push(p);
  const kn::RingView view{pos, new_len, window, capacity};
  const kn::Band band = view.band();

  // The virtual keys are positions key_start .. pos + T - 1: every position
  // some query sees, and nothing earlier.
  const int64_t oldest_seen = pos - (window - 1) < 0 ? 0 : pos - (window - 1);
  EXPECT(view.key_start() == oldest_seen, fmt, ARGS(-1));
  EXPECT(view.seqlen_k() == pos + new_len - oldest_seen, fmt, ARGS(-1));
  EXPECT(view.ring_len() >= 0 && view.ring_len() <= window - 1, fmt, ARGS(-1));
  EXPECT(band.seqlen_q == new_len && band.window_left == window - 1 && band.window_right == 0, fmt, ARGS(-1));

  for (int64_t key = 0; key < view.seqlen_k(); ++key) {
    const int64_t position = view.key_start() + key;
    if (view.in_ring(key)) {
      EXPECT(position < pos, fmt, ARGS(key));
      // The ring still holds this position, in the slot RingView names.
      EXPECT(view.slot(key) == ring.find(position) && view.slot(key) >= 0, fmt, ARGS(key));
    } else {
      EXPECT(position >= pos, fmt, ARGS(key));
      EXPECT(view.new_row(key) == position - pos, fmt, ARGS(key));
      EXPECT(view.new_row(key) >= 0 && view.new_row(key) < new_len, fmt, ARGS(key));
    }
    // Query t (position pos + t) sees key iff the window says so.
    for (int64_t t = 0; t < new_len; ++t) {
      const int64_t q_position = pos + t;
      const bool sees = position <= q_position && position >= q_position - (window - 1);
      EXPECT(band.visible(t, key) == sees, fmt, ARGS(key));
      EXPECT(band.key_position(t) == q_position - view.key_start(), fmt, ARGS(key));
    }
  }
  // Every position a query sees is a virtual key (nothing is missed).
  for (int64_t t = 0; t < new_len; ++t) {
    const int64_t q_position = pos + t;
    for (int64_t p = q_position - (window - 1); p <= q_position; ++p) {
      if (p < 0) continue;
      EXPECT(p >= view.key_start() && p < view.key_start() + view.seqlen_k(), fmt, ARGS(p));
    }
  }
  // Ring keys occupy distinct slots.
  std::vector<bool> used(capacity, false);
  for (int64_t key = 0; key < view.ring_len(); ++key) {
    EXPECT(!used[view.slot(key)], fmt, ARGS(key));
    used[view.slot(key)] = true;
  }
#undef ARGS
}

// cache_append of T tokens at pos: only rows append_first_row .. T - 1 land,
// and the ring ends up as if every token had been pushed one by one.
void check_append(int64_t pos, int64_t new_len, int64_t capacity) {
  const char* fmt = "pos=%lld T=%lld C=%lld slot=%lld";
  SimulatedRing one_by_one(capacity), batched(capacity);
  for (int64_t p = 0; p < pos; ++p) {
    one_by_one.push(p);
    batched.push(p);
  }
  for (int64_t t = 0; t < new_len; ++t) one_by_one.push(pos + t);
  const int64_t first = kn::append_first_row(new_len, capacity);
  EXPECT(first >= 0 && new_len - first <= capacity, fmt, (long long)pos, (long long)new_len,
         (long long)capacity, -1LL);
  std::vector<int> writes(capacity, 0);
  for (int64_t t = first; t < new_len; ++t) {
    const int64_t slot = kn::ring_slot(pos + t, capacity);
    ++writes[slot];
    batched.held[slot] = pos + t;
  }
  for (int64_t s = 0; s < capacity; ++s) {
    EXPECT(batched.held[s] == one_by_one.held[s], fmt, (long long)pos, (long long)new_len,
           (long long)capacity, (long long)s);
    EXPECT(writes[s] <= 1, fmt, (long long)pos, (long long)new_len, (long long)capacity, (long long)s);
  }
}

// cache_gather of n <= C tokens before pos: row r is position pos - n + r,
// in chronological order, held by the ring whenever it is >= 0.
void check_gather(int64_t pos, int64_t n, int64_t capacity) {
  const char* fmt = "pos=%lld n=%lld C=%lld row=%lld";
  SimulatedRing ring(capacity);
  for (int64_t p = 0; p < pos; ++p) ring.push(p);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t position = kn::gather_position(pos, n, r);
    EXPECT(position == pos - n + r, fmt, (long long)pos, (long long)n, (long long)capacity, (long long)r);
    if (position >= 0) {
      EXPECT(ring.find(position) == kn::ring_slot(position, capacity), fmt, (long long)pos, (long long)n,
             (long long)capacity, (long long)r);
    }
  }
}

}  // namespace

// A cache with S sink slots before a ring of C (ring.h): the virtual keys are
// exactly the positions the queries see (window or sink position, each
// once), the band over them (sink_tokens = S) gives each query its keys, and
// each key is read from the slot that a token-by-token simulation put it in.
void check_sink_view(int64_t pos, int64_t new_len, int64_t window, int64_t capacity, int64_t sinks) {
  const char* fmt = "pos=%lld T=%lld W=%lld C=%lld S=%lld key=%lld";
#define SARGS(key) (long long)pos, (long long)new_len, (long long)window, (long long)capacity, (long long)sinks, \
      (long long)(key)
  SimulatedRing ring(capacity);
  std::vector<int64_t> sink_slot(sinks, -1);  // slot s -> position it holds
  for (int64_t p = 0; p < pos; ++p) {
    ring.push(p);
    if (p < sinks) sink_slot[p] = p;
  }
  const kn::RingView view{pos, new_len, window, capacity, sinks};
  const kn::Band band = view.band();
  EXPECT(band.sink_tokens == sinks, fmt, SARGS(-1));
  // Positions strictly increase along the virtual keys.
  for (int64_t j = 1; j < view.seqlen_k(); ++j) EXPECT(view.position(j) > view.position(j - 1), fmt, SARGS(j));
  for (int64_t t = 0; t < new_len; ++t) {
    const int64_t q_pos = pos + t;
    std::vector<int64_t> seen;
    for (int64_t j = 0; j < view.seqlen_k(); ++j)
      if (band.visible(t, j)) seen.push_back(view.position(j));
    std::vector<int64_t> want;
    for (int64_t p = 0; p <= q_pos; ++p)
      if (p > q_pos - window || p < sinks) want.push_back(p);
    EXPECT(seen == want, fmt, SARGS(t));
  }
  for (int64_t j = 0; j < view.seqlen_k(); ++j) {
    const int64_t p = view.position(j);
    if (!view.in_ring(j)) {
      EXPECT(p >= pos && view.new_row(j) == p - pos, fmt, SARGS(j));
      continue;
    }
    const int64_t slot = view.slot(j);
    if (slot < sinks) {
      EXPECT(sink_slot[slot] == p, fmt, SARGS(j));
    } else {
      EXPECT(slot < sinks + capacity && ring.held[slot - sinks] == p, fmt, SARGS(j));
    }
  }
#undef SARGS
}

int main() {
  // Exhaustive over small sizes (the edges: pos = 0, pos < W, C = W - 1, W = 1, T > C).
  for (int64_t window = 1; window <= 6; ++window)
    for (int64_t capacity = (window > 2 ? window - 1 : 1); capacity <= window + 3; ++capacity)
      for (int64_t pos = 0; pos <= 3 * capacity + 2; ++pos)
        for (int64_t new_len = 1; new_len <= 2 * capacity + 2; ++new_len) check_view(pos, new_len, window, capacity);
  for (int64_t capacity = 1; capacity <= 7; ++capacity)
    for (int64_t pos = 0; pos <= 3 * capacity; ++pos) {
      for (int64_t new_len = 0; new_len <= 3 * capacity; ++new_len) check_append(pos, new_len, capacity);
      for (int64_t n = 0; n <= capacity; ++n) check_gather(pos, n, capacity);
    }
  // Random larger problems, including long histories.
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 300; ++i) {
    const int64_t window = 1 + static_cast<int64_t>(rng() % 200);
    const int64_t capacity = std::max<int64_t>(1, window - 1) + static_cast<int64_t>(rng() % 50);
    const int64_t pos = static_cast<int64_t>(rng() % 2000);
    const int64_t new_len = 1 + static_cast<int64_t>(rng() % 300);
    check_view(pos, new_len, window, capacity);
    check_append(pos, new_len, capacity);
    check_gather(pos, static_cast<int64_t>(rng() % (capacity + 1)), capacity);
  }
  for (int64_t sinks : {1, 2, 5})
    for (int64_t window = 1; window <= 6; ++window)
      for (int64_t capacity = (window > 2 ? window - 1 : 1); capacity <= window + 2; ++capacity)
        for (int64_t pos = 0; pos <= 3 * capacity + 8; ++pos)
          for (int64_t new_len = 1; new_len <= capacity + 3; ++new_len)
            check_sink_view(pos, new_len, window, capacity, sinks);
  return report("test_ring");
}
