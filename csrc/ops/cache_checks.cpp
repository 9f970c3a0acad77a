#include "ops/cache_checks.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "ops/memory_overlap.h"
#include "ops/varlen_checks.h"

namespace swa {
namespace {

StridedLayout layout_of(const at::Tensor& t) {
  StridedLayout l{t.sizes().vec(), t.strides().vec(), t.storage_offset() * int64_t(t.element_size()),
                  int64_t(t.element_size())};
  return l;
}

bool same_allocation(const at::Tensor& a, const at::Tensor& b) {
  return a.has_storage() && b.has_storage() && a.storage().is_alias_of(b.storage());
}

// An in-place write into `dest` must not land twice on one element (an
// expanded dim, overlapping strides) and must not touch memory that another
// operand of the same call reads or writes.
void check_writable(const char* op, const char* name, const at::Tensor& dest) {
  const Overlap o = internal_overlap(layout_of(dest));
  TORCH_CHECK(o == Overlap::kNo, op, ": ", name,
              " has elements that share memory (e.g. an expanded batch dim or overlapping strides: sizes ",
              dest.sizes(), ", strides ", dest.strides(), "); writing into it would lose tokens",
              o == Overlap::kUnknown ? " (this layout cannot be proved free of overlap)" : "",
              ". Pass a tensor that owns its elements (e.g. .clone())");
}

void check_apart(const char* op, const char* dest_name, const at::Tensor& dest, const char* other_name,
                 const at::Tensor& other) {
  if (!same_allocation(dest, other)) return;
  const Overlap o = mutual_overlap(layout_of(dest), layout_of(other));
  TORCH_CHECK(o == Overlap::kNo, op, ": ", dest_name, " and ", other_name,
              o == Overlap::kYes ? " share memory" : " may share memory (their layouts cannot be proved apart)",
              "; ", dest_name, " is written in place, so they must not overlap (pass separate tensors)");
}

}  // namespace

CacheShape check_cache(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  check_bhsd(op, "k_cache", k_cache);
  check_bhsd(op, "v_cache", v_cache);
  const auto dtype = k_cache.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble,
              op, ": k_cache must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(v_cache.scalar_type() == dtype, op, ": v_cache must have k_cache's dtype ", dtype,
              ", got ", v_cache.scalar_type());
  TORCH_CHECK(v_cache.device() == k_cache.device(), op, ": v_cache must be on k_cache's device ",
              k_cache.device(), ", got ", v_cache.device());
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), op,
              ": k_cache and v_cache must have the same shape [B, Hkv, C, D], got k_cache ",
              k_cache.sizes(), " and v_cache ", v_cache.sizes());
  CacheShape s{k_cache.size(0), k_cache.size(1), k_cache.size(2), k_cache.size(3)};
  TORCH_CHECK(s.capacity >= 1, op, ": k_cache's capacity C (dim 2) must be >= 1, got ", s.capacity);
  return s;
}

void check_pos(const char* op, const at::Tensor& pos, const CacheShape& cache, const at::Device& device) {
  TORCH_CHECK(pos.defined(), op, ": pos must be a tensor, got None");
  TORCH_CHECK(pos.scalar_type() == at::kLong, op, ": pos must be int64, got ", pos.scalar_type());
  TORCH_CHECK(pos.dim() == 1 && pos.size(0) == cache.batch, op, ": pos must have shape [B] = [",
              cache.batch, "], got ", pos.sizes());
  TORCH_CHECK(pos.device() == device, op, ": pos must be on the cache's device ", device, ", got ",
              pos.device());
  TORCH_CHECK(pos.size(0) <= 1 || pos.stride(0) == 1, op, ": pos must be contiguous, got stride ",
              pos.stride(0));
}

void check_pos_values(const char* op, const at::Tensor& pos) {
  if (pos.numel() == 0) return;
  const auto [lowest, highest] = at::aminmax(pos);
  const int64_t lo = lowest.item<int64_t>(), hi = highest.item<int64_t>();
  TORCH_CHECK(lo >= 0, op, ": pos must be >= 0 (absolute positions), got ", lo);
  // Positions + chunk lengths must stay far from int64's end.
  TORCH_CHECK(hi <= kMaxPosition, op, ": pos must be <= 2^62 (absolute positions), got ", hi);
}

int64_t check_new_tokens(const char* op, const char* k_name, const char* v_name, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& k_cache, const CacheShape& cache) {
  check_bhsd(op, k_name, k);
  check_bhsd(op, v_name, v);
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{k_name, &k}, {v_name, &v}}) {
    TORCH_CHECK(t->scalar_type() == k_cache.scalar_type(), op, ": ", name, " must have k_cache's dtype ",
                k_cache.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == k_cache.device(), op, ": ", name, " must be on k_cache's device ",
                k_cache.device(), ", got ", t->device());
  }
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": ", k_name, " and ", v_name,
              " must have the same shape [B, Hkv, T, D], got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(k.size(0) == cache.batch && k.size(1) == cache.heads_kv && k.size(3) == cache.head_dim, op,
              ": ", k_name, " and ", v_name, " must be [B, Hkv, T, D] with the cache's B = ", cache.batch,
              ", Hkv = ", cache.heads_kv, " and D = ", cache.head_dim, ", got ", k.sizes());
  return k.size(2);
}

CacheShape check_cache_append(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos) {
  const CacheShape cache = check_cache(op, k_cache, v_cache);
  check_new_tokens(op, "k", "v", k, v, k_cache, cache);
  check_pos(op, pos, cache, k_cache.device());
  check_writable(op, "k_cache", k_cache);
  check_writable(op, "v_cache", v_cache);
  check_apart(op, "k_cache", k_cache, "v_cache", v_cache);
  for (auto [dest_name, dest] : {std::pair<const char*, const at::Tensor*>{"k_cache", &k_cache}, {"v_cache", &v_cache}}) {
    check_apart(op, dest_name, *dest, "k", k);
    check_apart(op, dest_name, *dest, "v", v);
    check_apart(op, dest_name, *dest, "pos", pos);
  }
  return cache;
}

CacheShape check_cache_append_varlen(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                                     const at::Tensor& pos) {
  const CacheShape cache = check_cache(op, k_cache, v_cache);
  check_packed(op, "k", k);
  check_packed(op, "v", v);
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->scalar_type() == k_cache.scalar_type(), op, ": ", name, " must have k_cache's dtype ",
                k_cache.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == k_cache.device(), op, ": ", name, " must be on k_cache's device ",
                k_cache.device(), ", got ", t->device());
    TORCH_CHECK(t->size(2) <= 1 || t->stride(2) == 1 || t->numel() == 0, op, ": ", name,
                " must have a contiguous last dim (stride 1), got strides ", t->strides());
  }
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have the same shape [T, Hkv, D], got ", k.sizes(),
              " and ", v.sizes());
  TORCH_CHECK(k.size(1) == cache.heads_kv && k.size(2) == cache.head_dim, op,
              ": k and v must be [T, Hkv, D] with the cache's Hkv = ", cache.heads_kv, " and D = ", cache.head_dim,
              ", got ", k.sizes());
  check_cu_seqlens(op, "cu_seqlens", cu_seqlens, k_cache.device(), "k_cache");
  TORCH_CHECK(cu_seqlens.size(0) == cache.batch + 1, op, ": cu_seqlens must have B + 1 = ", cache.batch + 1,
              " entries (one ring per sequence: k_cache's B = ", cache.batch, "), got ", cu_seqlens.size(0));
  check_pos(op, pos, cache, k_cache.device());
  check_writable(op, "k_cache", k_cache);
  check_writable(op, "v_cache", v_cache);
  check_apart(op, "k_cache", k_cache, "v_cache", v_cache);
  for (auto [dest_name, dest] : {std::pair<const char*, const at::Tensor*>{"k_cache", &k_cache}, {"v_cache", &v_cache}}) {
    check_apart(op, dest_name, *dest, "k", k);
    check_apart(op, dest_name, *dest, "v", v);
    check_apart(op, dest_name, *dest, "cu_seqlens", cu_seqlens);
    check_apart(op, dest_name, *dest, "pos", pos);
  }
  return cache;
}

CacheShape check_cache_gather(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& pos, int64_t n) {
  const CacheShape cache = check_cache(op, k_cache, v_cache);
  check_pos(op, pos, cache, k_cache.device());
  TORCH_CHECK(n >= 0 && n <= cache.capacity, op, ": n must be in [0, C] = [0, ", cache.capacity,
              "] (the ring holds C tokens), got ", n);
  return cache;
}

AttentionShape check_cache_attention(const char* op, const at::Tensor& q, const at::Tensor& k_new,
                                     const at::Tensor& v_new, const at::Tensor& k_cache,
                                     const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
                                     std::optional<double> scale, double softcap) {
  TORCH_CHECK(window >= 1, op, ": window must be >= 1 (keys seen per query, itself included), got ",
              window);
  // The new keys by their own names first; check_attention then covers the
  // dtype, GQA, head dim, softcap and scale.
  check_bhsd(op, "q", q);
  check_bhsd(op, "k_new", k_new);
  check_bhsd(op, "v_new", v_new);
  check_like_q(op, "k_new", k_new, q);
  check_like_q(op, "v_new", v_new, q);
  TORCH_CHECK(k_new.sizes() == v_new.sizes(), op,
              ": k_new and v_new must have the same shape [B, Hkv, T, D], got k_new ", k_new.sizes(),
              " and v_new ", v_new.sizes());
  TORCH_CHECK(k_new.size(0) == q.size(0) && k_new.size(3) == q.size(3), op,
              ": k_new and v_new must have q's batch size ", q.size(0), " and head dim ", q.size(3),
              ", got ", k_new.sizes());
  const AttentionShape shape = check_attention(op, q, k_new, v_new, window - 1, 0, scale, softcap);
  TORCH_CHECK(shape.seqlen_k == shape.seqlen_q, op,
              ": k_new and v_new must hold one key per query (T = q.size(2) = ", shape.seqlen_q,
              "), got ", shape.seqlen_k);
  const CacheShape cache = check_cache(op, k_cache, v_cache);
  check_like_q(op, "k_cache", k_cache, q);
  TORCH_CHECK(cache.batch == shape.batch && cache.heads_kv == shape.heads_kv &&
                  cache.head_dim == shape.head_dim,
              op, ": k_cache and v_cache must be [B, Hkv, C, D] with k_new's B = ", shape.batch,
              ", Hkv = ", shape.heads_kv, " and D = ", shape.head_dim, ", got ", k_cache.sizes());
  TORCH_CHECK(cache.capacity >= window - 1, op, ": k_cache's capacity C (dim 2) must be >= window - 1 = ",
              window - 1, " (the ring must hold every earlier key a query sees), got ", cache.capacity);
  check_pos(op, pos, cache, q.device());
  return shape;
}

AttentionShape check_cache_attention_varlen(const char* op, const at::Tensor& q, const at::Tensor& k_new,
                                            const at::Tensor& v_new, const at::Tensor& cu_seqlens_q,
                                            int64_t max_seqlen_q, const at::Tensor& k_cache,
                                            const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
                                            std::optional<double> scale, double softcap) {
  TORCH_CHECK(window >= 1, op, ": window must be >= 1 (keys seen per query, itself included), got ",
              window);
  check_packed(op, "q", q);
  check_packed(op, "k_new", k_new);
  check_packed(op, "v_new", v_new);
  check_like_q(op, "k_new", k_new, q);
  check_like_q(op, "v_new", v_new, q);
  TORCH_CHECK(k_new.sizes() == v_new.sizes(), op,
              ": k_new and v_new must have the same shape [T, Hkv, D], got k_new ", k_new.sizes(), " and v_new ",
              v_new.sizes());
  TORCH_CHECK(k_new.size(0) == q.size(0) && k_new.size(2) == q.size(2), op,
              ": k_new and v_new must hold one key per query (q's T = ", q.size(0), ") and q's head dim ", q.size(2),
              ", got ", k_new.sizes());
  const AttentionShape shape = check_attention(op, packed_as_batch(q), packed_as_batch(k_new),
                                               packed_as_batch(v_new), window - 1, 0, scale, softcap);
  const CacheShape cache = check_cache(op, k_cache, v_cache);
  check_like_q(op, "k_cache", k_cache, q);
  TORCH_CHECK(cache.heads_kv == shape.heads_kv && cache.head_dim == shape.head_dim, op,
              ": k_cache and v_cache must be [B, Hkv, C, D] with k_new's Hkv = ", shape.heads_kv, " and D = ",
              shape.head_dim, ", got ", k_cache.sizes());
  TORCH_CHECK(cache.capacity >= window - 1, op, ": k_cache's capacity C (dim 2) must be >= window - 1 = ",
              window - 1, " (the ring must hold every earlier key a query sees), got ", cache.capacity);
  check_cu_seqlens(op, "cu_seqlens_q", cu_seqlens_q, q.device(), "q");
  TORCH_CHECK(cu_seqlens_q.size(0) == cache.batch + 1, op, ": cu_seqlens_q must have B + 1 = ", cache.batch + 1,
              " entries (one ring per sequence: k_cache's B = ", cache.batch, "), got ", cu_seqlens_q.size(0));
  TORCH_CHECK(max_seqlen_q >= 0, op, ": max_seqlen_q must be >= 0, got ", max_seqlen_q);
  check_pos(op, pos, cache, q.device());
  return shape;
}

int64_t check_sink_slots(const char* op, const CacheShape& cache, int64_t sink_tokens, int64_t window) {
  TORCH_CHECK(sink_tokens >= 0, op, ": sink_tokens must be >= 0 (sink slots before the ring; 0 = none), got ",
              sink_tokens);
  const int64_t ring = cache.capacity - sink_tokens;
  const int64_t need = std::max<int64_t>(1, window - 1);
  TORCH_CHECK(ring >= need, op, ": k_cache's ", cache.capacity, " slots (dim 2) must hold sink_tokens = ", sink_tokens,
              " sink slots and a ring of at least ", need, window > 1 ? " (window - 1)" : "",
              " slots, i.e. dim 2 >= ", sink_tokens + need,
              " (a cache without sink slots cannot serve sink tokens: allocate it with them)");
  return ring;
}

}  // namespace swa
