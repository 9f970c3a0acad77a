// CUDA backend of swa::attention_backward, attention_backward.sinks and
// attention_backward.per_head (each query head's window, band.h):
// checks, workspaces, launch, and the gradient of the sink logits; the packed
// overload (attention_varlen.cpp) runs the same with a PackedBackward.
#include "cuda/attention_backward.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/tensor_params.h"
#include "cuda/varlen_params.h"
#include "ops/sinks.h"

namespace swa::cuda {

BackwardResult attention_backward_run(const char* op, const at::Tensor& grad_out,
                                      const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                      const at::Tensor& lse, int64_t window_left, int64_t window_right,
                                      std::optional<double> scale, double softcap, bool deterministic,
                                      const std::optional<at::Tensor>& sinks, int64_t sink_tokens,
                                      const PackedBackward* packed, const HeadWindowArgs* heads) {
  const AttentionShape shape = check_attention_backward(op, grad_out, grad_lse, q, k, v, out, lse,
                                                        window_left, window_right, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, q);
  check_cuda_head_dim(op, q);
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  at::Tensor dsinks = sink_args.logits.has_value() ? at::zeros_like(*sink_args.logits)
                                                   : at::empty({0}, q.options().dtype(at::kFloat));
  if (q.numel() == 0 || k.numel() == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    // No key: every row's weight is the sink's (exp(sink - lse) = 1).
    if (sink_args.logits.has_value() && q.numel() > 0)
      dsinks = sink_logits_grad(*sink_args.logits, lse, softmax_delta(grad_out, out, grad_lse, at::kDouble));
    return {dq, dk, dv, dsinks};
  }
  kn::AttentionBackwardParams params;
  params.fwd = attention_params(q, k, v, out, lse, shape, window_left, window_right, scale, softcap);
  // Sink tokens change which keys a row sees; the sink logits are already in
  // lse, and only the fp64 path (which recomputes lse in float64) reads them.
  const std::vector<at::Tensor> sink_memory = set_sinks(params.fwd, sink_args, q);
  const at::Tensor head_window_memory = heads != nullptr ? set_head_windows(params.fwd, *heads, q) : at::Tensor();
  params.dout = tensor_ref(grad_out);
  params.dq = tensor_ref(dq);
  params.dk = tensor_ref(dk);
  params.dv = tensor_ref(dv);
  if (packed != nullptr) {  // one [1, H, T, D] batch of packed sequences: batch strides not read
    set_packed_sequences(params.fwd, packed->sequences, packed->tokens_q, packed->tokens_k, packed->max_seqlen_q,
                         packed->max_seqlen_k, packed->cu_seqlens_q, &packed->cu_seqlens_k);
    params.fwd.window_left = kernel_window_left(window_left, packed->max_seqlen_k);
    params.fwd.window_right = kernel_window_right(window_right, packed->max_seqlen_q);
    params.dout.batch_stride = params.dq.batch_stride = params.dk.batch_stride = params.dv.batch_stride = 0;
  }
  at::Tensor dlse;
  if (grad_lse.has_value() && grad_lse->defined()) {
    dlse = grad_lse->contiguous();
    params.dlse = dlse.data_ptr<float>();
  }
  // Workspaces (csrc/cuda/kernels/bwd_dispatch.cu): none needs zero-filling.
  // Packed, [B = 1, Hq, Sq = Tq] is the kernels' [Hq, Tq] row layout.
  const bool half = q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16;
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor softmax_d, dq_accum, softmax_stats_f64;
  if (q.scalar_type() == at::kDouble) {
    softmax_stats_f64 = at::empty({2, shape.batch, shape.heads_q, shape.seqlen_q}, q.options());
    params.softmax_stats_f64 = softmax_stats_f64.data_ptr<double>();
  } else {
    softmax_d = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, f32);
    params.softmax_d = softmax_d.data_ptr<float>();
  }
  if (half && !deterministic) {
    dq_accum = at::empty({shape.batch, shape.heads_q, shape.seqlen_q, shape.head_dim}, f32);
    params.dq_accum = dq_accum.data_ptr<float>();
  }
  params.deterministic = deterministic;
  C10_CUDA_CHECK(kn::attention_backward(params, c10::cuda::getCurrentCUDAStream()));
  // d sinks from the row statistics the backward has just stored (queued
  // after it on the same stream): D = rowsum(dO * O) - dlse, and the lse the
  // kernels used (fp64: recomputed in float64, sink logit included).
  if (sink_args.logits.has_value()) {
    if (softmax_stats_f64.defined()) {
      dsinks = sink_logits_grad(*sink_args.logits, softmax_stats_f64[0], softmax_stats_f64[1]);
    } else {
      dsinks = sink_logits_grad(*sink_args.logits, lse, softmax_d);
    }
  }
  return {dq, dk, dv, dsinks};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic) {
  BackwardResult r = attention_backward_run("swa::attention_backward", grad_out, grad_lse, q, k, v, out, lse,
                                            window_left, window_right, scale, softcap, deterministic,
                                            std::nullopt, 0);
  return {r.dq, r.dk, r.dv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_sinks_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic, const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  BackwardResult r = attention_backward_run("swa::attention_backward.sinks", grad_out, grad_lse, q, k, v, out,
                                            lse, window_left, window_right, scale, softcap, deterministic, sinks,
                                            sink_tokens);
  return {r.dq, r.dk, r.dv, r.dsinks};
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
  m.impl("attention_backward", &attention_backward_cuda);
  m.impl("attention_backward.sinks", &attention_backward_sinks_cuda);
  m.impl("attention_backward.per_head", &attention_backward_per_head_cuda);
}

}  // namespace swa::cuda
