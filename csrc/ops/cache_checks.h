// Argument checks of the rolling KV cache ops (cache_append, cache_gather,
// cache_attention), shared by every backend. Each violated precondition raises
// a RuntimeError (TORCH_CHECK) naming the op, the argument and what was
// expected. Values inside pos are not read here (that would sync with a GPU):
// backends that can read them cheaply call check_pos_values.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "ops/checks.h"

namespace swa {

// The shape of a ring read off checked k_cache / v_cache [B, Hkv, C, D].
struct CacheShape {
  int64_t batch;
  int64_t heads_kv;
  int64_t capacity;  // C
  int64_t head_dim;
};

// k_cache and v_cache: 4-d [B, Hkv, C, D] with a contiguous last dim, the same
// shape, a floating dtype (float16, bfloat16, float32, float64), the same
// device, capacity C >= 1.
CacheShape check_cache(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache);

// pos: int64 [B], contiguous, on device.
void check_pos(const char* op, const at::Tensor& pos, const CacheShape& cache, const at::Device& device);

// The largest position pos may hold: pos + T and the ring arithmetic stay in
// int64 for every chunk a tensor can hold.
constexpr int64_t kMaxPosition = int64_t{1} << 62;

// 0 <= every pos <= kMaxPosition (CPU only: reads the values).
void check_pos_values(const char* op, const at::Tensor& pos);

// New tokens k, v [B, Hkv, T, D] for the ring: same shape, the cache's dtype
// and device, the cache's B, Hkv and D. Returns T.
int64_t check_new_tokens(const char* op, const char* k_name, const char* v_name, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& k_cache, const CacheShape& cache);

// cache_append: the ring, the new tokens and pos, and that the in-place
// write is safe: k_cache and v_cache each free of internal overlap, apart from
// each other and from k, v and pos. Returns the ring's shape.
CacheShape check_cache_append(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos);

// cache_gather: the ring, pos and 0 <= n <= C.
CacheShape check_cache_gather(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& pos, int64_t n);

// cache_attention: q [B, Hq, T, D] and k_new, v_new [B, Hkv, T, D] as for
// attention (dtype, GQA, head dim, scale, softcap), the ring like k_new,
// pos, window >= 1 and C >= window - 1. Returns the shape of the attention
// of q over the new keys (seqlen_k = T: the ring's part varies per sequence).
AttentionShape check_cache_attention(const char* op, const at::Tensor& q, const at::Tensor& k_new,
                                     const at::Tensor& v_new, const at::Tensor& k_cache,
                                     const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
                                     std::optional<double> scale, double softcap);

// cache_append.varlen: the ring, packed new tokens k, v [T, Hkv, D] (the
// cache's dtype, device, Hkv and D), cu_seqlens int32 [B + 1] (the cache's
// B) on the cache's device, pos, and the in-place write's safety as in
// check_cache_append. The values of cu_seqlens are not read here
// (checked_cu_seqlens_values in ops/varlen_checks.h reads them on the CPU).
CacheShape check_cache_append_varlen(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                                     const at::Tensor& pos);

// cache_attention.varlen: q [T, Hq, D] and k_new, v_new [T, Hkv, D] as for
// attention.varlen (one new key per query), cu_seqlens_q int32 [B + 1] (the
// cache's B) on q's device, max_seqlen_q >= 0, the ring like k_new, pos,
// window >= 1 and C >= window - 1. Returns the shape of the attention of the
// [1, H, T, D] views of q over the new keys (batch 1, seqlen_q = seqlen_k = T).
AttentionShape check_cache_attention_varlen(const char* op, const at::Tensor& q, const at::Tensor& k_new,
                                            const at::Tensor& v_new, const at::Tensor& cu_seqlens_q,
                                            int64_t max_seqlen_q, const at::Tensor& k_cache,
                                            const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
                                            std::optional<double> scale, double softcap);

// A cache with sink_tokens S sink slots before its ring (swa/kernels/ring.h):
// S >= 0 and C - S >= max(1, window - 1) ring slots (window 0: any ring).
// Returns the ring's capacity C - S.
int64_t check_sink_slots(const char* op, const CacheShape& cache, int64_t sink_tokens, int64_t window);

}  // namespace swa
