// CUDA backend of swa::attention_backward: checks, workspaces, launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/tensor_params.h"

namespace swa::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic) {
  const char* op = "swa::attention_backward";
  const AttentionShape shape = check_attention_backward(op, grad_out, grad_lse, q, k, v, out, lse,
                                                        window_left, window_right, scale, softcap);
  check_cuda_head_dim(op, q);
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (q.numel() == 0 || k.numel() == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    return {dq, dk, dv};
  }
  kn::AttentionBackwardParams params;
  params.fwd = attention_params(q, k, v, out, lse, shape, window_left, window_right, scale, softcap);
  params.dout = tensor_ref(grad_out);
  at::Tensor dlse;
  if (grad_lse.has_value() && grad_lse->defined()) {
    dlse = grad_lse->contiguous();
    params.dlse = dlse.data_ptr<float>();
  }
  params.dq = tensor_ref(dq);
  params.dk = tensor_ref(dk);
  params.dv = tensor_ref(dv);
  // Workspaces (csrc/cuda/kernels/bwd_dispatch.cu): none needs zero-filling.
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
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) { m.impl("attention_backward", &attention_backward_cuda); }

}  // namespace swa::cuda
