// CPU backend of the rolling KV cache ops (see swa/kernels/ring.h for the
// slot rule and the virtual key sequence of cache_attention; the packed
// overloads are in cpu/cache_varlen.cpp).
//
// Every ring access is at most two slices of the ring (cpu/ring_rows.h).
// cache_attention with few new tokens (a decoding step) runs the decode
// kernel (cpu/decode.h), which reads those slices in place; a longer chunk
// (prefill) builds each sequence's virtual key sequence (ring slots, then
// the new keys) and runs the exact CPU attention kernel on it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/attention.h"
#include "cpu/decode.h"
#include "cpu/ring_rows.h"
#include "ops/cache_checks.h"
#include "ops/sinks.h"
#include "swa/kernels/ring.h"

namespace swa::cpu {
namespace {

namespace kn = SWA_KERNEL_NS;

// cache_append of every sequence (ring_rows.h), `sinks` sink slots before the rings.
void append_tokens(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& pos, const CacheShape& cache, int64_t sinks) {
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < cache.batch; ++b)
    append_sequence(k_cache.select(0, b), v_cache.select(0, b), k.select(0, b), v.select(0, b), p[b], sinks);
}

void cache_append_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& pos) {
  const char* op = "swa::cache_append";
  const CacheShape cache = check_cache_append(op, k_cache, v_cache, k, v, pos);
  check_pos_values(op, pos);
  append_tokens(k_cache, v_cache, k, v, pos, cache, 0);
}

void cache_append_sinks_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& pos, int64_t sink_tokens) {
  const char* op = "swa::cache_append.sinks";
  const CacheShape cache = check_cache_append(op, k_cache, v_cache, k, v, pos);
  check_sink_slots(op, cache, sink_tokens, 0);
  check_pos_values(op, pos);
  append_tokens(k_cache, v_cache, k, v, pos, cache, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor> cache_gather_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                    const at::Tensor& pos, int64_t n) {
  const char* op = "swa::cache_gather";
  const CacheShape cache = check_cache_gather(op, k_cache, v_cache, pos, n);
  check_pos_values(op, pos);
  at::Tensor k_out = at::empty({cache.batch, cache.heads_kv, n, cache.head_dim}, k_cache.options());
  at::Tensor v_out = at::empty_like(k_out);
  if (k_out.numel() == 0) return {k_out, v_out};
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < cache.batch; ++b) {
    // Row r is position pos - n + r; rows below position 0 are zeros.
    const int64_t zero_rows = std::min(n, std::max<int64_t>(0, -kn::gather_position(p[b], n, 0)));
    const int64_t held = n - zero_rows;
    at::Tensor kb = k_out.select(0, b), vb = v_out.select(0, b);  // (Hkv, n, D)
    kb.narrow(1, 0, zero_rows).zero_();
    vb.narrow(1, 0, zero_rows).zero_();
    if (held == 0) continue;
    const int64_t slot = kn::ring_slot(kn::gather_position(p[b], n, zero_rows), cache.capacity);
    kb.narrow(1, zero_rows, held).copy_(read_ring(k_cache.select(0, b), slot, held));
    vb.narrow(1, zero_rows, held).copy_(read_ring(v_cache.select(0, b), slot, held));
  }
  return {k_out, v_out};
}

std::tuple<at::Tensor, at::Tensor> attend_cache(const char* op, const at::Tensor& q, const at::Tensor& k_new,
                                                const at::Tensor& v_new, const at::Tensor& k_cache,
                                                const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
                                                std::optional<double> scale, double softcap, const SinkArgs& sinks) {
  const AttentionShape shape =
      check_cache_attention(op, q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap);
  const int64_t capacity = check_sink_slots(op, CacheShape{shape.batch, shape.heads_kv, k_cache.size(2),
                                                           shape.head_dim}, sinks.tokens, window);
  check_pos_values(op, pos);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  const double softmax_scale_value = softmax_scale(scale, shape.head_dim);
  if (decode_path_applies(shape.seqlen_q, shape.group())) {
    cache_decode_into(q, k_new, v_new, k_cache, v_cache, pos, window, softmax_scale_value, softcap, out, lse, sinks);
    return {out, lse};
  }
  const int64_t* p = pos.data_ptr<int64_t>();
  auto attend_sequence = [&](int64_t b) {
    // Sequences sit at different positions, so each has its own virtual key
    // sequence (ring_rows.h).
    const kn::RingView view{p[b], shape.seqlen_q, window, capacity, sinks.tokens};
    auto [k_b, v_b] = virtual_keys(k_cache.select(0, b), v_cache.select(0, b), k_new.select(0, b),
                                   v_new.select(0, b), view);
    // (1, Hkv, seqlen_k, D) keys; the T queries are its last T positions.
    at::Tensor out_b = out.narrow(0, b, 1), lse_b = lse.narrow(0, b, 1);
    attention_forward_into(q.narrow(0, b, 1), k_b.unsqueeze(0), v_b.unsqueeze(0), window - 1, 0,
                           softmax_scale_value, softcap, out_b, lse_b,
                           SinkArgs{sinks.logits, sinks.tokens});  // the first S virtual keys (ring.h)
  };
  // One sequence: the kernel parallelises over heads and query tiles. Several:
  // one parallel region over the sequences (the kernel then runs inline).
  if (shape.batch == 1) {
    attend_sequence(0);
  } else {
    at::parallel_for(0, shape.batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) attend_sequence(b);
    });
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> cache_attention_cpu(const at::Tensor& q, const at::Tensor& k_new,
                                                       const at::Tensor& v_new, const at::Tensor& k_cache,
                                                       const at::Tensor& v_cache, const at::Tensor& pos,
                                                       int64_t window, std::optional<double> scale,
                                                       double softcap) {
  return attend_cache("swa::cache_attention", q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap, {});
}

std::tuple<at::Tensor, at::Tensor> cache_attention_sinks_cpu(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& pos, int64_t window, std::optional<double> scale, double softcap,
    const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  const char* op = "swa::cache_attention.sinks";
  return attend_cache(op, q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap,
                      check_sinks(op, sinks, sink_tokens, q));
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) {
  m.impl("cache_append", &cache_append_cpu);
  m.impl("cache_gather", &cache_gather_cpu);
  m.impl("cache_attention", &cache_attention_cpu);
  m.impl("cache_append.sinks", &cache_append_sinks_cpu);
  m.impl("cache_attention.sinks", &cache_attention_sinks_cpu);
}

}  // namespace swa::cpu
