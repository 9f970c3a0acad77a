// CUDA backend of swa::attention: checks, params, launch on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/tensor_params.h"

namespace swa::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, int64_t window_left,
                                                  int64_t window_right, std::optional<double> scale,
                                                  double softcap) {
  const char* op = "swa::attention";
  const AttentionShape shape = check_attention(op, q, k, v, window_left, window_right, scale, softcap);
  check_cuda_head_dim(op, q);
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  if (shape.seqlen_k == 0) {  // no keys: every row is empty
    out.zero_();
    lse.fill_(-INFINITY);
    return {out, lse};
  }
  kn::AttentionParams params =
      attention_params(q, k, v, out, lse, shape, window_left, window_right, scale, softcap);
  launch_forward(params, q);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) { m.impl("attention", &attention_cuda); }

}  // namespace swa::cuda
