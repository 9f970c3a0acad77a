// CUDA backend of swa::attention.varlen and attention_backward.varlen (packed
// variable-length sequences): checks, params, launch on the current stream. The values of cu_seqlens_q/k
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

#include "cuda/attention_backward.h"
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

// The packed backward: the portable backward kernels over the [1, H, T, D]
// views, each block reading its sequence's bounds (attention_backward.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_varlen_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
    int64_t window_right, std::optional<double> scale, double softcap, bool deterministic,
    const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  const char* op = "swa::attention_backward.varlen";
  const VarlenShape shape = check_varlen(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                         window_left, window_right, scale, softcap);
  check_packed(op, "grad_out", grad_out);
  check_packed(op, "out", out);
  TORCH_CHECK(lse.dim() == 2, op, ": lse must be float32 [Hq, Tq], got shape ", lse.sizes());
  const bool has_grad_lse = grad_lse.has_value() && grad_lse->defined();
  TORCH_CHECK(!has_grad_lse || grad_lse->dim() == 2, op, ": grad_lse must be float32 [Hq, Tq], got shape ",
              grad_lse->sizes());
  check_max_seqlen(op, "max_seqlen_q", max_seqlen_q, shape.sequences, shape.tokens_q, "q");
  check_max_seqlen(op, "max_seqlen_k", max_seqlen_k, shape.sequences, shape.tokens_k, "k");
  std::optional<at::Tensor> grad_lse_b;
  if (has_grad_lse) grad_lse_b = grad_lse->unsqueeze(0);
  const PackedBackward packed{shape.sequences, shape.tokens_q,           shape.tokens_k,
                              max_seqlen_q,    max_seqlen_k,             cu_seqlens_q.contiguous(),
                              cu_seqlens_k.contiguous()};
  BackwardResult r = attention_backward_run(op, packed_as_batch(grad_out), grad_lse_b, packed_as_batch(q),
                                            packed_as_batch(k), packed_as_batch(v), packed_as_batch(out),
                                            lse.unsqueeze(0), window_left, window_right, scale, softcap,
                                            deterministic, sinks, sink_tokens, &packed);
  // The gradients come back as [1, H, T, D] tensors laid out like the views.
  return {r.dq.squeeze(0).transpose(0, 1), r.dk.squeeze(0).transpose(0, 1), r.dv.squeeze(0).transpose(0, 1),
          r.dsinks};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) {
  m.impl("attention.varlen", &attention_varlen_cuda);
  m.impl("attention_backward.varlen", &attention_backward_varlen_cuda);
}

}  // namespace swa::cuda
