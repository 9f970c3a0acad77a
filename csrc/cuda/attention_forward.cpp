// CUDA backend of swa::attention, attention.sinks and attention.per_head:
// checks, params, launch on the current stream. Per-head windows (band.h,
// HeadWindows) are read by the kernels from device memory, the params'
// window being the heads' union; the Hopper forward declines those calls (the
// portable tensor-core kernel takes them, one query head per block).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/tensor_params.h"
#include "ops/head_windows.h"

namespace swa::cuda {
namespace {

// Per-head windows: the (window_left, window_right) tensors [Hq].
using PerHead = std::pair<const at::Tensor&, const at::Tensor&>;

// Every overload: no sink arguments is SinkArgs{}; per_head replaces the
// window (then passed as -1, -1).
std::tuple<at::Tensor, at::Tensor> run_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, int64_t window_left, int64_t window_right,
                                                 std::optional<double> scale, double softcap,
                                                 const std::optional<at::Tensor>& sinks, int64_t sink_tokens,
                                                 const std::optional<PerHead>& per_head = std::nullopt) {
  const AttentionShape shape = check_attention(op, q, k, v, window_left, window_right, scale, softcap);
  std::optional<HeadWindowArgs> heads;
  if (per_head.has_value())
    heads = check_head_windows(op, per_head->first, per_head->second, shape.heads_q, shape.seqlen_q, shape.seqlen_k);
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
      attention_params(q, k, v, out, lse, shape, window_left, window_right, scale, softcap);
  const std::vector<at::Tensor> sink_memory = set_sinks(params, sink_args, q);
  const at::Tensor head_window_memory = heads.has_value() ? set_head_windows(params, *heads, q) : at::Tensor();
  launch_forward(params, q);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, int64_t window_left,
                                                  int64_t window_right, std::optional<double> scale,
                                                  double softcap) {
  return run_attention("swa::attention", q, k, v, window_left, window_right, scale, softcap, std::nullopt, 0);
}

std::tuple<at::Tensor, at::Tensor> attention_sinks_cuda(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, int64_t window_left,
                                                        int64_t window_right, std::optional<double> scale,
                                                        double softcap, const std::optional<at::Tensor>& sinks,
                                                        int64_t sink_tokens) {
  return run_attention("swa::attention.sinks", q, k, v, window_left, window_right, scale, softcap, sinks,
                       sink_tokens);
}

std::tuple<at::Tensor, at::Tensor> attention_per_head_cuda(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& window_left,
                                                           const at::Tensor& window_right,
                                                           std::optional<double> scale, double softcap,
                                                           const std::optional<at::Tensor>& sinks,
                                                           int64_t sink_tokens) {
  return run_attention("swa::attention.per_head", q, k, v, -1, -1, scale, softcap, sinks, sink_tokens,
                       PerHead{window_left, window_right});
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CUDA, m) {
  m.impl("attention", &attention_cuda);
  m.impl("attention.sinks", &attention_sinks_cuda);
  m.impl("attention.per_head", &attention_per_head_cuda);
}

}  // namespace swa::cuda
