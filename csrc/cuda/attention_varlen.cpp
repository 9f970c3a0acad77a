// CUDA backend of swa::attention.varlen (packed variable-length sequences):
// checks, params, launch on the current stream. The values of cu_seqlens_q/k
// stay on the device (no sync, as in FlashAttention): the grid comes from the
// sequence count and max_seqlen_q, and each block reads its sequence's bounds
// (params.h). What the host checks here is what it can without reading them:
// dtype, device, shape, and that max_seqlen_* can hold the tokens
// (B * max_seqlen >= T). cu_seqlens values that break the contract (not from
// 0, decreasing, a sequence longer than max_seqlen, a last entry other than
// the token count) are the caller's error and are not detected on CUDA (the
// CPU backend checks them); the kernels clamp them to the tensors' rows, so
// they cannot make an access out of bounds (fwd_source.cuh: sequence_rows).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/tensor_params.h"
#include "cuda/varlen_params.h"
#include "ops/varlen_checks.h"

namespace swa::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_varlen_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
    int64_t window_right, std::optional<double> scale, double softcap, const std::optional<at::Tensor>& sinks,
    int64_t sink_tokens) {
  const char* op = "swa::attention.varlen";
  const VarlenShape shape = check_varlen(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                         window_left, window_right, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, packed_as_batch(q));
  check_cuda_head_dim(op, packed_as_batch(q));
  check_max_seqlen(op, "max_seqlen_q", max_seqlen_q, shape.sequences, shape.tokens_q, "q");
  check_max_seqlen(op, "max_seqlen_k", max_seqlen_k, shape.sequences, shape.tokens_k, "k");
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.heads.heads_q, shape.tokens_q}, q.options().dtype(at::kFloat));
  if (shape.heads.empty()) return {out, lse};
  if (shape.tokens_k == 0) {  // no keys: every row is empty (lse: the sink logit, if any)
    out.zero_();
    if (sink_args.logits.has_value()) {
      lse.copy_(sink_args.logits->to(at::kFloat).view({shape.heads.heads_q, 1}).expand_as(lse));
    } else {
      lse.fill_(-INFINITY);
    }
    return {out, lse};
  }
  at::Tensor out_b = packed_as_batch(out);
  kn::AttentionParams params = attention_params(packed_as_batch(q), packed_as_batch(k), packed_as_batch(v), out_b,
                                                lse, shape.heads, window_left, window_right, scale, softcap);
  const at::Tensor cu_q = cu_seqlens_q.contiguous(), cu_k = cu_seqlens_k.contiguous();
  set_packed_sequences(params, shape.sequences, shape.tokens_q, shape.tokens_k, max_seqlen_q, max_seqlen_k, cu_q,
                       &cu_k);
  params.window_left = kernel_window_left(window_left, max_seqlen_k);
  params.window_right = kernel_window_right(window_right, max_seqlen_q);
  const std::vector<at::Tensor> sink_memory = set_sinks(params, sink_args, q);
  launch_forward(params, q);
  return {out, lse};
}

// The packed backward has no CUDA kernel yet: say so by name rather than
// leave the dispatcher's "could not run" (autograd reaches it from
// varlen_attention's backward).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_varlen_cuda(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t,
    std::optional<double>, double, bool, const std::optional<at::Tensor>&, int64_t) {
  TORCH_CHECK_NOT_IMPLEMENTED(false,
                              "swa::attention_backward.varlen: the packed backward has no CUDA kernel yet (the "
                              "forward, attention.varlen, runs on CUDA); train on packed sequences on the CPU, or "
                              "pad them and use swa::attention");
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) {
  m.impl("attention.varlen", &attention_varlen_cuda);
  m.impl("attention_backward.varlen", &attention_backward_varlen_cuda);
}

}  // namespace swa::cuda
