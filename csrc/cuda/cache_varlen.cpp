// CUDA backend of the packed cache ops (cache_append.varlen,
// cache_attention.varlen): one launch serves a continuous batch of decoding
// steps, prefill chunks and idle sequences. The forward kernel reads each
// block's sequence bounds from cu_seqlens_q and its ring from pos on the
// device (params.h: cu_seqlens_*, ring), so, as in cache.cpp, nothing here
// reads a value back to the host, and a step can be captured in a CUDA graph.
// The values of cu_seqlens are not checked on CUDA (attention_varlen.cpp says
// what is); an append never writes outside the cache whatever they are.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/tensor_params.h"
#include "cuda/varlen_params.h"
#include "ops/cache_checks.h"
#include "ops/varlen_checks.h"

namespace swa::cuda {
namespace {

void cache_append_varlen_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cu_seqlens, const at::Tensor& pos, int64_t sink_tokens) {
  const char* op = "swa::cache_append.varlen";
  const CacheShape cache = check_cache_append_varlen(op, k_cache, v_cache, k, v, cu_seqlens, pos);
  const int64_t capacity = check_sink_slots(op, cache, sink_tokens, 0);
  if (k.numel() == 0) return;
  c10::cuda::CUDAGuard guard(k_cache.device());
  const at::Tensor cu = cu_seqlens.contiguous();
  kn::CacheAppendParams params;
  params.dtype = kernel_dtype(k_cache.scalar_type());
  params.k_cache = tensor_ref(k_cache);
  params.v_cache = tensor_ref(v_cache);
  params.k = tensor_ref(packed_as_batch(k));
  params.v = tensor_ref(packed_as_batch(v));
  params.k.batch_stride = params.v.batch_stride = 0;
  params.pos = pos.data_ptr<int64_t>();
  params.batch = cache.batch;
  params.heads_kv = cache.heads_kv;
  params.capacity = capacity;
  params.sink_tokens = sink_tokens;
  params.new_len = k.size(0);
  params.head_dim = cache.head_dim;
  params.cu_seqlens = cu.data_ptr<int32_t>();
  C10_CUDA_CHECK(kn::cache_append(params, c10::cuda::getCurrentCUDAStream()));
}

std::tuple<at::Tensor, at::Tensor> cache_attention_varlen_cuda(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& cu_seqlens_q,
    int64_t max_seqlen_q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
    int64_t window, std::optional<double> scale, double softcap, const std::optional<at::Tensor>& sinks,
    int64_t sink_tokens) {
  const char* op = "swa::cache_attention.varlen";
  const AttentionShape shape = check_cache_attention_varlen(op, q, k_new, v_new, cu_seqlens_q, max_seqlen_q,
                                                            k_cache, v_cache, pos, window, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, packed_as_batch(q));
  const CacheShape cache{k_cache.size(0), k_cache.size(1), k_cache.size(2), k_cache.size(3)};
  const int64_t capacity = check_sink_slots(op, cache, sink_args.tokens, window);
  check_cuda_head_dim(op, packed_as_batch(q));
  check_max_seqlen(op, "max_seqlen_q", max_seqlen_q, cache.batch, q.size(0), "q");
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.heads_q, q.size(0)}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  // As cache.cpp's attend, over packed sequences: sequence b's T_b queries
  // are the last T_b rows of its virtual keys (ring.h), its new keys q's rows.
  kn::AttentionParams params = attention_params(packed_as_batch(q), packed_as_batch(k_new), packed_as_batch(v_new),
                                                packed_as_batch(out), lse, shape, window - 1, 0, scale, softcap);
  const at::Tensor cu = cu_seqlens_q.contiguous();
  set_packed_sequences(params, cache.batch, q.size(0), q.size(0), max_seqlen_q, max_seqlen_q, cu, nullptr);
  params.ring.k_cache = tensor_ref(k_cache);
  params.ring.v_cache = tensor_ref(v_cache);
  params.ring.pos = pos.data_ptr<int64_t>();
  params.ring.capacity = capacity;
  params.ring.window = window;
  params.ring.sink_tokens = sink_args.tokens;
  const std::vector<at::Tensor> sink_memory = set_sinks(params, SinkArgs{sink_args.logits, 0}, q);
  // The upper bound of any sequence's virtual keys, for the split heuristics.
  params.seqlen_k = sink_args.tokens + (window - 1) + max_seqlen_q;
  launch_forward(params, q);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) {
  m.impl("cache_append.varlen", &cache_append_varlen_cuda);
  m.impl("cache_attention.varlen", &cache_attention_varlen_cuda);
}

}  // namespace swa::cuda
