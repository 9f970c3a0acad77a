// Where the forward kernels read their operands: the band of one batch entry
// and the address of key/value row j, for plain attention and for
// cache_attention's rolling-cache key source (ring.h), and the addresses of
// the (packed) query/output rows. Shared by the tensor-core and exact kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "swa/kernels/band.h"
#include "swa/kernels/params.h"
#include "swa/kernels/ring.h"
#include "sequence_rows.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// The virtual key sequence of batch entry b in cache_attention; pos[b] is read
// on the device (ring.pos != nullptr only).
__device__ __forceinline__ RingView ring_view(const AttentionParams& p, const SequenceRows& seq, int64_t b) {
  return RingView{p.ring.pos[b], seq.seqlen_q, p.ring.window, p.ring.capacity, p.ring.sink_tokens};
}

// The band of query head h of batch entry b: the plain window (with its sink
// tokens; head h's own with per-head windows), or the ring's virtual sequence
// (seqlen_k, window and sink run from the view).
__device__ __forceinline__ Band batch_band(const AttentionParams& p, const SequenceRows& seq, int64_t b,
                                           int64_t h) {
  if (p.ring.pos == nullptr)
    return p.head_windows.of_head(Band{seq.seqlen_q, seq.seqlen_k, p.window_left, p.window_right, p.sink_tokens}, h);
  return ring_view(p, seq, b).band();
}

// Key/value rows of one (batch, kv head). With a rolling cache (ring.h) the
// virtual keys are, in order: the sink positions seen, j < sink_len, in cache
// slot j; the window's cached positions, sink_len <= j < cached, in slot
// sink_slots + (start_slot + j - sink_len) mod capacity; the new keys, row
// j - cached of params.k / params.v. Plain attention is cached = 0.
template <typename T>
struct KeySource {
  const T* k;       // params.k at (b, hkv, row 0)
  const T* v;
  int64_t k_row_stride, v_row_stride;
  const T* k_ring;  // ring.k_cache at (b, hkv, slot 0); == k without a ring
  const T* v_ring;
  int64_t k_ring_row_stride, v_ring_row_stride;
  int64_t sink_len;    // virtual keys [0, sink_len) are sink slots
  int64_t cached;      // virtual keys [0, cached) are in the cache buffer
  int64_t sink_slots;  // S: the ring's slots start after the sink slots
  int64_t capacity;    // C: ring slots (1 without a ring, never used then)
  int64_t start_slot;  // ring slot (before the sink offset) of virtual key sink_len

  // Cache-buffer slot of virtual key j < cached. No modulo (a 64-bit one is a
  // slow call): start_slot < C and j - sink_len < ring_len <= W - 1 <= C, so
  // the sum wraps at most once.
  __device__ __forceinline__ int64_t slot(int64_t j) const {
    if (j < sink_len) return j;
    const int64_t s = start_slot + (j - sink_len);
    return sink_slots + (s >= capacity ? s - capacity : s);
  }
  __device__ __forceinline__ const T* k_row(int64_t j) const {
    return j < cached ? k_ring + slot(j) * k_ring_row_stride : k + (j - cached) * k_row_stride;
  }
  __device__ __forceinline__ const T* v_row(int64_t j) const {
    return j < cached ? v_ring + slot(j) * v_ring_row_stride : v + (j - cached) * v_row_stride;
  }
};

template <typename T>
__device__ __forceinline__ KeySource<T> make_key_source(const AttentionParams& p, const SequenceRows& seq,
                                                        int64_t b, int64_t hkv) {
  KeySource<T> s;
  s.k = static_cast<const T*>(p.k.ptr) + seq.stride_batch * p.k.batch_stride + hkv * p.k.head_stride +
        seq.k0 * p.k.row_stride;
  s.v = static_cast<const T*>(p.v.ptr) + seq.stride_batch * p.v.batch_stride + hkv * p.v.head_stride +
        seq.k0 * p.v.row_stride;
  s.k_row_stride = p.k.row_stride;
  s.v_row_stride = p.v.row_stride;
  if (p.ring.pos == nullptr) {
    s.k_ring = s.k;
    s.v_ring = s.v;
    s.k_ring_row_stride = s.k_row_stride;
    s.v_ring_row_stride = s.v_row_stride;
    s.sink_len = 0;
    s.cached = 0;
    s.sink_slots = 0;
    s.capacity = 1;
    s.start_slot = 0;
  } else {
    const RingView view = ring_view(p, seq, b);
    const RingSource& r = p.ring;
    s.k_ring = static_cast<const T*>(r.k_cache.ptr) + b * r.k_cache.batch_stride + hkv * r.k_cache.head_stride;
    s.v_ring = static_cast<const T*>(r.v_cache.ptr) + b * r.v_cache.batch_stride + hkv * r.v_cache.head_stride;
    s.k_ring_row_stride = r.k_cache.row_stride;
    s.v_ring_row_stride = r.v_cache.row_stride;
    s.sink_len = view.sink_len();
    s.cached = view.sink_len() + view.ring_len();
    s.sink_slots = r.sink_tokens;
    s.capacity = r.capacity;
    s.start_slot = ring_slot(view.key_start(), r.capacity);
  }
  return s;
}

// Query/output rows of one (batch, grid head) with PackGQA (fwd_tiles.h):
// packed row m is query row m / pack of query head head0 + m % pack. Packed
// row counts (Sq * pack) are below 2^31 (the launcher checks), so the
// divisions are 32-bit.
struct PackedRows {
  int64_t batch;
  int64_t head0;  // query head of packed row 0
  int pack;
  SequenceRows seq;  // where the batch entry's rows are

  __device__ __forceinline__ int query_row(int m) const { return m / pack; }
  __device__ __forceinline__ int64_t head(int m) const { return head0 + m % pack; }

  // Element offset of row m in q or out with these strides.
  __device__ __forceinline__ int64_t offset(int m, int64_t batch_stride, int64_t head_stride,
                                            int64_t row_stride) const {
    return seq.stride_batch * batch_stride + head(m) * head_stride + (seq.q0 + query_row(m)) * row_stride;
  }
  // Index of row m in lse (lse_offset).
  __device__ __forceinline__ int64_t lse_index(int m, const AttentionParams& p) const {
    return lse_offset(p, seq, batch, head(m), query_row(m));
  }
  // Index of row m in split s of the contiguous [splits, B, Hq, Sq] partials
  // (the padded layout, Sq = seqlen_q, packed sequences too).
  __device__ __forceinline__ int64_t accum_index(int m, const AttentionParams& p, int64_t split) const {
    return ((split * p.batch + batch) * p.heads_q + head(m)) * p.seqlen_q + query_row(m);
  }
};

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
