// CUDA backend of swa::attention.per_head and attention_backward.per_head:
// the forward and backward with each query head's window (band.h,
// HeadWindows) read by the kernels from device memory; the params' window is
// the heads' union. The Hopper forward declines these calls (the portable
// tensor-core kernel takes them, one query head per block).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/attention_backward.h"
#include "cuda/tensor_params.h"
#include "ops/head_windows.h"

namespace swa::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_per_head_cuda(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& window_left,
                                                           const at::Tensor& window_right,
                                                           std::optional<double> scale, double softcap,
                                                           const std::optional<at::Tensor>& sinks,
                                                           int64_t sink_tokens) {
  const char* op = "swa::attention.per_head";
  const AttentionShape shape = check_attention(op, q, k, v, -1, -1, scale, softcap);
  const HeadWindowArgs heads =
      check_head_windows(op, window_left, window_right, shape.heads_q, shape.seqlen_q, shape.seqlen_k);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, q);
  check_cuda_head_dim(op, q);
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  if (shape.seqlen_k == 0) {  // no keys: every row is empty (lse: the sink logit, if any)
    out.zero_();
    if (sink_args.logits.has_value()) {
      lse.copy_(sink_args.logits->to(at::kFloat).view({1, shape.heads_q, 1}).expand_as(lse));
    } else {
      lse.fill_(-INFINITY);
    }
    return {out, lse};
  }
  kn::AttentionParams params =
      attention_params(q, k, v, out, lse, shape, heads.union_left, heads.union_right, scale, softcap);
  const std::vector<at::Tensor> sink_memory = set_sinks(params, sink_args, q);
  const at::Tensor head_window_memory = set_head_windows(params, heads, q);
  launch_forward(params, q);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_per_head_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& window_left, const at::Tensor& window_right, std::optional<double> scale, double softcap,
    bool deterministic, const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  const char* op = "swa::attention_backward.per_head";
  const AttentionShape shape = check_attention(op, q, k, v, -1, -1, scale, softcap);
  const HeadWindowArgs heads =
      check_head_windows(op, window_left, window_right, shape.heads_q, shape.seqlen_q, shape.seqlen_k);
  BackwardResult r = attention_backward_run(op, grad_out, grad_lse, q, k, v, out, lse, heads.union_left,
                                            heads.union_right, scale, softcap, deterministic, sinks, sink_tokens,
                                            nullptr, &heads);
  return {r.dq, r.dk, r.dv, r.dsinks};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) {
  m.impl("attention.per_head", &attention_per_head_cuda);
  m.impl("attention_backward.per_head", &attention_backward_per_head_cuda);
}

}  // namespace swa::cuda
