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

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// The virtual key sequence of batch entry b in cache_attention; pos[b] is read
// on the device (ring.pos != nullptr only).
__device__ __forceinline__ RingView ring_view(const AttentionParams& p, int64_t b) {
  return RingView{p.ring.pos[b], p.seqlen_q, p.ring.window, p.ring.capacity};
}

// The band of batch entry b: the plain window, or the ring's virtual sequence
// (seqlen_k and window from the view).
__device__ __forceinline__ Band batch_band(const AttentionParams& p, int64_t b) {
  if (p.ring.pos == nullptr) return Band{p.seqlen_q, p.seqlen_k, p.window_left, p.window_right};
  return ring_view(p, b).band();
}

// Key/value rows of one (batch, kv head). Virtual key j lives in the ring at
// slot (key_start + j) % capacity when j < ring_len, else in row j - ring_len
// of params.k / params.v. Plain attention is ring_len = 0.
template <typename T>
struct KeySource {
  const T* k;       // params.k at (b, hkv, row 0)
  const T* v;
  int64_t k_row_stride, v_row_stride;
  const T* k_ring;  // ring.k_cache at (b, hkv, slot 0); == k without a ring
  const T* v_ring;
  int64_t k_ring_row_stride, v_ring_row_stride;
  int64_t ring_len;   // keys [0, ring_len) are in the ring
  int64_t key_start;  // absolute position of virtual key 0
  int64_t capacity;   // ring slots (1 without a ring, never used then)
  int64_t start_slot; // slot of virtual key 0: key_start % capacity

  __device__ __forceinline__ int64_t slot(int64_t j) const { return ring_slot(key_start + j, capacity); }

  // Row pointers of key j (any j in [0, seqlen_k)); one 64-bit modulo for
  // ring keys: fine for the exact kernel, the tiled loader uses ring_row.
  __device__ __forceinline__ const T* k_row(int64_t j) const {
    return j < ring_len ? k_ring + slot(j) * k_ring_row_stride : k + (j - ring_len) * k_row_stride;
  }
  __device__ __forceinline__ const T* v_row(int64_t j) const {
    return j < ring_len ? v_ring + slot(j) * v_ring_row_stride : v + (j - ring_len) * v_row_stride;
  }

  // Slot of key n0 (a tile's first key), 0 when n0 is past the ring. 32-bit
  // math (a 64-bit modulo is a slow call): start_slot < capacity < 2^31 and
  // n0 < ring_len < 2^31. Keys n0 + r of the same tile that are still in the
  // ring sit at slot0 + r, wrapped at most once: r < ring_len - n0 <= window - 1
  // <= capacity.
  __device__ __forceinline__ int64_t tile_slot0(int64_t n0) const {
    if (n0 >= ring_len) return 0;
    return static_cast<uint32_t>(start_slot + n0) % static_cast<uint32_t>(capacity);
  }
  __device__ __forceinline__ int64_t tile_slot(int64_t slot0, int r) const {
    const int64_t s = slot0 + r;
    return s >= capacity ? s - capacity : s;
  }
};

template <typename T>
__device__ __forceinline__ KeySource<T> make_key_source(const AttentionParams& p, int64_t b,
                                                        int64_t hkv) {
  KeySource<T> s;
  s.k = static_cast<const T*>(p.k.ptr) + b * p.k.batch_stride + hkv * p.k.head_stride;
  s.v = static_cast<const T*>(p.v.ptr) + b * p.v.batch_stride + hkv * p.v.head_stride;
  s.k_row_stride = p.k.row_stride;
  s.v_row_stride = p.v.row_stride;
  if (p.ring.pos == nullptr) {
    s.k_ring = s.k;
    s.v_ring = s.v;
    s.k_ring_row_stride = s.k_row_stride;
    s.v_ring_row_stride = s.v_row_stride;
    s.ring_len = 0;
    s.key_start = 0;
    s.capacity = 1;
    s.start_slot = 0;
  } else {
    const RingView view = ring_view(p, b);
    const RingSource& r = p.ring;
    s.k_ring = static_cast<const T*>(r.k_cache.ptr) + b * r.k_cache.batch_stride + hkv * r.k_cache.head_stride;
    s.v_ring = static_cast<const T*>(r.v_cache.ptr) + b * r.v_cache.batch_stride + hkv * r.v_cache.head_stride;
    s.k_ring_row_stride = r.k_cache.row_stride;
    s.v_ring_row_stride = r.v_cache.row_stride;
    s.ring_len = view.ring_len();
    s.key_start = view.key_start();
    s.capacity = r.capacity;
    s.start_slot = ring_slot(s.key_start, r.capacity);
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

  __device__ __forceinline__ int query_row(int m) const { return m / pack; }
  __device__ __forceinline__ int64_t head(int m) const { return head0 + m % pack; }

  // Element offset of row m in a [B, H, S, D] tensor with these strides.
  __device__ __forceinline__ int64_t offset(int m, int64_t batch_stride, int64_t head_stride,
                                            int64_t row_stride) const {
    return batch * batch_stride + head(m) * head_stride + query_row(m) * row_stride;
  }
  // Index of row m in a contiguous [B, Hq, Sq] array (lse), or in split s of
  // a contiguous [splits, B, Hq, Sq] one.
  __device__ __forceinline__ int64_t lse_index(int m, const AttentionParams& p, int64_t split = 0) const {
    return ((split * p.batch + batch) * p.heads_q + head(m)) * p.seqlen_q + query_row(m);
  }
};

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
