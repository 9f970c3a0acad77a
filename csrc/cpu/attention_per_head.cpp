// CPU kernels of attention.per_head and attention_backward.per_head: the
// exact forward and backward (cpu/attention.h) with each query head's own
// window (swa/kernels/band.h, HeadWindows); the problem's band is their union.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/attention.h"
#include "ops/checks.h"
#include "ops/head_windows.h"
#include "ops/sinks.h"

namespace swa::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_per_head_cpu(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, const at::Tensor& window_left,
                                                          const at::Tensor& window_right, std::optional<double> scale,
                                                          double softcap, const std::optional<at::Tensor>& sinks,
                                                          int64_t sink_tokens) {
  const char* op = "swa::attention.per_head";
  const AttentionShape shape = check_attention(op, q, k, v, -1, -1, scale, softcap);
  const HeadWindowArgs heads =
      check_head_windows(op, window_left, window_right, shape.heads_q, shape.seqlen_q, shape.seqlen_k);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, q);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  attention_forward_into(q, k, v, heads.union_left, heads.union_right, softmax_scale(scale, shape.head_dim), softcap,
                         out, lse, sink_args, nullptr, &heads);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_per_head_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& window_left, const at::Tensor& window_right, std::optional<double> scale, double softcap,
    bool /*deterministic: always*/, const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  const char* op = "swa::attention_backward.per_head";
  const AttentionShape shape = check_attention(op, q, k, v, -1, -1, scale, softcap);
  const HeadWindowArgs heads =
      check_head_windows(op, window_left, window_right, shape.heads_q, shape.seqlen_q, shape.seqlen_k);
  BackwardResult r = attention_backward_run(op, grad_out, grad_lse, q, k, v, out, lse, heads.union_left,
                                            heads.union_right, scale, softcap, sinks, sink_tokens, nullptr, &heads);
  return {r.dq, r.dk, r.dv, r.dsinks};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) {
  m.impl("attention.per_head", &attention_per_head_cpu);
  m.impl("attention_backward.per_head", &attention_backward_per_head_cpu);
}

}  // namespace swa::cpu
