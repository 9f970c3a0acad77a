// Rolling KV cache index math (Mistral's rolling buffer).
//
// A ring of capacity C keeps the key/value of absolute position p in slot
// p mod C. A sequence whose next token is at position pos holds positions
// max(0, pos - C) .. pos - 1 in its ring.
//
// cache_attention sees, for T new tokens at positions pos .. pos + T - 1, a
// virtual key sequence made of the ring's tokens followed by the T new ones.
// Only positions a query can see are part of it: it starts at
// key_start = max(0, pos - (window - 1)), so virtual key j is position
// key_start + j, read from ring slot (key_start + j) mod C while below pos and
// from row (key_start + j - pos) of the new keys after. The queries are then
// the last T rows of a banded attention with window (window - 1, 0) over
// seqlen_k = pos + T - key_start keys: bottom-right alignment puts query t at
// position pos + t, as it should.
//
// Sink tokens (StreamingLLM): a cache with S sink slots keeps positions
// 0 .. S-1 in buffer slots 0 .. S-1, never overwritten, and its ring in slots
// S .. S + C - 1 (position p in slot S + p mod C; positions below S are
// written to both). The virtual key sequence then starts with the sink
// positions the window no longer holds, 0 .. sink_len - 1 with
// sink_len = min(S, key_start), read from their sink slots, followed by the
// window's keys as above. Either way the sink positions 0 .. S-1 are the
// first S virtual keys (those at or after key_start are the window's first
// keys, read from the ring), so the queries' keys are a band with
// sink_tokens = S (band.h). No CUDA or torch headers.
#pragma once

#include <cstdint>

#include "swa/kernels/band.h"

namespace SWA_KERNEL_NS {

SWA_HOST_DEVICE int64_t ring_slot(int64_t position, int64_t capacity) {
  return position % capacity;  // position >= 0
}

// The buffer slot of position p in a cache with `sinks` sink slots before its
// ring of `capacity` slots (the ring's slot when p is also a sink position).
SWA_HOST_DEVICE int64_t cache_slot(int64_t position, int64_t capacity, int64_t sinks) {
  return sinks + ring_slot(position, capacity);
}

// The virtual key sequence of one sequence in cache_attention.
struct RingView {
  int64_t pos;       // absolute position of the first new token
  int64_t new_len;   // T, number of new tokens (queries and new keys)
  int64_t window;    // W: keys seen per query, itself included
  int64_t capacity;  // C >= W - 1: ring slots (after the sink slots)
  int64_t sink_tokens = 0;  // S: sink slots before the ring (see above)

  SWA_HOST_DEVICE int64_t key_start() const { return band_max64(0, pos - (window - 1)); }
  // Sink positions seen beside the window: virtual keys 0 .. sink_len - 1.
  SWA_HOST_DEVICE int64_t sink_len() const { return band_min64(sink_tokens, key_start()); }
  SWA_HOST_DEVICE int64_t seqlen_k() const { return sink_len() + pos + new_len - key_start(); }
  // The window's keys held by the ring (positions key_start .. pos - 1).
  SWA_HOST_DEVICE int64_t ring_len() const { return pos - key_start(); }
  // Keys below this virtual index live in the cache buffer (sink slots, then
  // the ring), the rest in the new keys.
  SWA_HOST_DEVICE bool in_ring(int64_t key) const { return key < sink_len() + ring_len(); }
  // Buffer slot of a key in the cache buffer (in_ring(key)).
  SWA_HOST_DEVICE int64_t slot(int64_t key) const {
    const int64_t s = sink_len();
    return key < s ? key : cache_slot(key_start() + key - s, capacity, sink_tokens);
  }
  SWA_HOST_DEVICE int64_t new_row(int64_t key) const { return key - sink_len() - ring_len(); }
  // Absolute position of virtual key j.
  SWA_HOST_DEVICE int64_t position(int64_t key) const {
    const int64_t s = sink_len();
    return key < s ? key : key_start() + key - s;
  }
  SWA_HOST_DEVICE Band band() const { return {new_len, seqlen_k(), window - 1, 0, sink_tokens}; }
};

// cache_append writes positions pos .. pos + T - 1; when T > C only the last C
// land (as if written one by one). Returns the first source row that lands.
SWA_HOST_DEVICE int64_t append_first_row(int64_t new_len, int64_t capacity) {
  return new_len > capacity ? new_len - capacity : 0;
}

// cache_gather returns the n most recent positions before pos, oldest first:
// output row r is position pos - n + r (zeros when negative).
SWA_HOST_DEVICE int64_t gather_position(int64_t pos, int64_t n, int64_t row) { return pos - n + row; }

}  // namespace SWA_KERNEL_NS
