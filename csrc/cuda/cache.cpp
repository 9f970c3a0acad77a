// CUDA backend of the rolling KV cache ops: checks, params, launch on the
// current stream. Nothing here reads pos back to the host, allocates pinned
// memory or synchronises, so a decoding step (cache_attention + cache_append)
// can be captured in a CUDA graph. Tensors are passed by pointer and strides:
// no copies, whatever their layout (last dim contiguous).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/tensor_params.h"
#include "ops/cache_checks.h"

namespace swa::cuda {
namespace {

// Both overloads; sink_tokens = S: slots [0, S) hold positions 0 .. S-1, the
// ring is the C = dim 2 - S slots after them (ring.h).
void append(const char* op, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& pos, int64_t sink_tokens) {
  const CacheShape cache = check_cache_append(op, k_cache, v_cache, k, v, pos);
  const int64_t capacity = check_sink_slots(op, cache, sink_tokens, 0);
  if (k.numel() == 0) return;
  c10::cuda::CUDAGuard guard(k_cache.device());
  kn::CacheAppendParams params;
  params.dtype = kernel_dtype(k_cache.scalar_type());
  params.k_cache = tensor_ref(k_cache);
  params.v_cache = tensor_ref(v_cache);
  params.k = tensor_ref(k);
  params.v = tensor_ref(v);
  params.pos = pos.data_ptr<int64_t>();
  params.batch = cache.batch;
  params.heads_kv = cache.heads_kv;
  params.capacity = capacity;
  params.sink_tokens = sink_tokens;
  params.new_len = k.size(2);
  params.head_dim = cache.head_dim;
  C10_CUDA_CHECK(kn::cache_append(params, c10::cuda::getCurrentCUDAStream()));
}

void cache_append_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& pos) {
  append("swa::cache_append", k_cache, v_cache, k, v, pos, 0);
}

void cache_append_sinks_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& pos, int64_t sink_tokens) {
  append("swa::cache_append.sinks", k_cache, v_cache, k, v, pos, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor> cache_gather_cuda(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                     const at::Tensor& pos, int64_t n) {
  const char* op = "swa::cache_gather";
  const CacheShape cache = check_cache_gather(op, k_cache, v_cache, pos, n);
  c10::cuda::CUDAGuard guard(k_cache.device());
  at::Tensor k_out = at::empty({cache.batch, cache.heads_kv, n, cache.head_dim}, k_cache.options());
  at::Tensor v_out = at::empty_like(k_out);
  if (k_out.numel() == 0) return {k_out, v_out};
  kn::CacheGatherParams params;
  params.dtype = kernel_dtype(k_cache.scalar_type());
  params.k_cache = tensor_ref(k_cache);
  params.v_cache = tensor_ref(v_cache);
  params.k_out = k_out.data_ptr();
  params.v_out = v_out.data_ptr();
  params.pos = pos.data_ptr<int64_t>();
  params.batch = cache.batch;
  params.heads_kv = cache.heads_kv;
  params.capacity = cache.capacity;
  params.n = n;
  params.head_dim = cache.head_dim;
  C10_CUDA_CHECK(kn::cache_gather(params, c10::cuda::getCurrentCUDAStream()));
  return {k_out, v_out};
}

// The forward attention kernel with its key/value loader reading the cache in
// place (params.ring; see RingSource in params.h and RingView in ring.h):
// virtual key j of sequence b is a sink slot (j < sink_len), a ring slot
// (below pos[b]), else row j - cached of k_new / v_new (KeySource of
// fwd_source.cuh). Decoding (T = 1) goes through the launcher's split-KV
// (flash-decoding) so that B = 1 still fills the GPU. Both overloads.
std::tuple<at::Tensor, at::Tensor> attend(const char* op, const at::Tensor& q, const at::Tensor& k_new,
                                          const at::Tensor& v_new, const at::Tensor& k_cache,
                                          const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
                                          std::optional<double> scale, double softcap,
                                          const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  const AttentionShape shape =
      check_cache_attention(op, q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, q);
  const int64_t capacity = check_sink_slots(
      op, CacheShape{shape.batch, shape.heads_kv, k_cache.size(2), shape.head_dim}, sink_args.tokens, window);
  check_cuda_head_dim(op, q);
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  // k = k_new, v = v_new; banded with window (W - 1, 0) over each sequence's
  // virtual keys, whose T queries are the last T rows (bottom-right aligned).
  kn::AttentionParams params =
      attention_params(q, k_new, v_new, out, lse, shape, window - 1, 0, scale, softcap);
  params.ring.k_cache = tensor_ref(k_cache);
  params.ring.v_cache = tensor_ref(v_cache);
  params.ring.pos = pos.data_ptr<int64_t>();
  params.ring.capacity = capacity;
  params.ring.window = window;
  params.ring.sink_tokens = sink_args.tokens;  // the virtual keys' band carries them (RingView::band)
  const std::vector<at::Tensor> sink_memory = set_sinks(params, SinkArgs{sink_args.logits, 0}, q);
  // The real key count is per sequence (RingView::seqlen_k, on the device);
  // this is its upper bound (sink_len <= S, ring_len <= W - 1), for the split
  // heuristics.
  params.seqlen_k = sink_args.tokens + (window - 1) + shape.seqlen_q;
  launch_forward(params, q);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> cache_attention_cuda(const at::Tensor& q, const at::Tensor& k_new,
                                                        const at::Tensor& v_new, const at::Tensor& k_cache,
                                                        const at::Tensor& v_cache, const at::Tensor& pos,
                                                        int64_t window, std::optional<double> scale,
                                                        double softcap) {
  return attend("swa::cache_attention", q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap,
                std::nullopt, 0);
}

std::tuple<at::Tensor, at::Tensor> cache_attention_sinks_cuda(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& pos, int64_t window, std::optional<double> scale, double softcap,
    const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  return attend("swa::cache_attention.sinks", q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap, sinks,
                sink_tokens);
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) {
  m.impl("cache_append", &cache_append_cuda);
  m.impl("cache_gather", &cache_gather_cuda);
  m.impl("cache_attention", &cache_attention_cuda);
  m.impl("cache_append.sinks", &cache_append_sinks_cuda);
  m.impl("cache_attention.sinks", &cache_attention_sinks_cuda);
}

}  // namespace swa::cuda
