// The C++ API (swa/swa.h): each function looks its op up once and calls it
// through the dispatcher, exactly as torch.ops.swa.* does from Python.
#include <ATen/core/dispatch/Dispatcher.h>

#include "swa/swa.h"

namespace swa {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).typed<Signature>();
}

using AttentionOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, int64_t, std::optional<double>, double);
using AttentionBackwardOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, int64_t, int64_t, std::optional<double>, double, bool);
using AttentionSinksOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                            const at::Tensor&, int64_t, int64_t,
                                                            std::optional<double>, double,
                                                            const std::optional<at::Tensor>&, int64_t);
using AttentionBackwardSinksOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, int64_t, int64_t, std::optional<double>, double, bool,
    const std::optional<at::Tensor>&, int64_t);

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, int64_t window_left,
                                             int64_t window_right, std::optional<double> scale,
                                             double softcap) {
  static auto op = find_op<AttentionOp>("swa::attention");
  return op.call(q, k, v, window_left, window_right, scale, softcap);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic) {
  static auto op = find_op<AttentionBackwardOp>("swa::attention_backward");
  return op.call(grad_out, grad_lse, q, k, v, out, lse, window_left, window_right, scale, softcap,
                 deterministic);
}

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             int64_t window_left, int64_t window_right,
                                             std::optional<double> scale, double softcap,
                                             const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  static auto op = find_op<AttentionSinksOp>("swa::attention", "sinks");
  return op.call(q, k, v, window_left, window_right, scale, softcap, sinks, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic, const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  static auto op = find_op<AttentionBackwardSinksOp>("swa::attention_backward", "sinks");
  return op.call(grad_out, grad_lse, q, k, v, out, lse, window_left, window_right, scale, softcap,
                 deterministic, sinks, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor> per_head_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const at::Tensor& window_left, const at::Tensor& window_right,
                                                      std::optional<double> scale, double softcap,
                                                      const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  static auto op = find_op<decltype(per_head_attention)>("swa::attention", "per_head");
  return op.call(q, k, v, window_left, window_right, scale, softcap, sinks, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> per_head_attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& window_left, const at::Tensor& window_right, std::optional<double> scale, double softcap,
    bool deterministic, const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  static auto op = find_op<decltype(per_head_attention_backward)>("swa::attention_backward", "per_head");
  return op.call(grad_out, grad_lse, q, k, v, out, lse, window_left, window_right, scale, softcap, deterministic,
                 sinks, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor> varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                                    int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
                                                    int64_t window_right, std::optional<double> scale,
                                                    double softcap, const std::optional<at::Tensor>& sinks,
                                                    int64_t sink_tokens) {
  static auto op = find_op<decltype(varlen_attention)>("swa::attention", "varlen");
  return op.call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, window_left, window_right, scale,
                 softcap, sinks, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap, bool deterministic,
    const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  static auto op = find_op<decltype(varlen_attention_backward)>("swa::attention_backward", "varlen");
  return op.call(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                 window_left, window_right, scale, softcap, deterministic, sinks, sink_tokens);
}

void cache_append(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& pos) {
  static auto op = find_op<void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&)>("swa::cache_append");
  op.call(k_cache, v_cache, k, v, pos);
}

std::tuple<at::Tensor, at::Tensor> cache_gather(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                const at::Tensor& pos, int64_t n) {
  static auto op = find_op<decltype(cache_gather)>("swa::cache_gather");
  return op.call(k_cache, v_cache, pos, n);
}

std::tuple<at::Tensor, at::Tensor> cache_attention(const at::Tensor& q, const at::Tensor& k_new,
                                                   const at::Tensor& v_new, const at::Tensor& k_cache,
                                                   const at::Tensor& v_cache, const at::Tensor& pos,
                                                   int64_t window, std::optional<double> scale,
                                                   double softcap) {
  static auto op = find_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, int64_t, std::optional<double>, double)>("swa::cache_attention");
  return op.call(q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap);
}

void cache_append(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& pos, int64_t sink_tokens) {
  static auto op = find_op<void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                int64_t)>("swa::cache_append", "sinks");
  op.call(k_cache, v_cache, k, v, pos, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor> cache_attention(const at::Tensor& q, const at::Tensor& k_new,
                                                   const at::Tensor& v_new, const at::Tensor& k_cache,
                                                   const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
                                                   std::optional<double> scale, double softcap,
                                                   const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  static auto op = find_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, int64_t, std::optional<double>, double, const std::optional<at::Tensor>&, int64_t)>(
      "swa::cache_attention", "sinks");
  return op.call(q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap, sinks, sink_tokens);
}

void cache_append_varlen(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cu_seqlens, const at::Tensor& pos, int64_t sink_tokens) {
  static auto op = find_op<void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, int64_t)>("swa::cache_append", "varlen");
  op.call(k_cache, v_cache, k, v, cu_seqlens, pos, sink_tokens);
}

std::tuple<at::Tensor, at::Tensor> cache_attention_varlen(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& cu_seqlens_q,
    int64_t max_seqlen_q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
    int64_t window, std::optional<double> scale, double softcap, const std::optional<at::Tensor>& sinks,
    int64_t sink_tokens) {
  static auto op = find_op<decltype(cache_attention_varlen)>("swa::cache_attention", "varlen");
  return op.call(q, k_new, v_new, cu_seqlens_q, max_seqlen_q, k_cache, v_cache, pos, window, scale, softcap, sinks,
                 sink_tokens);
}

const char* built_torch_version() { return SWA_TORCH_VERSION; }
const char* built_cuda_version() { return SWA_CUDA_VERSION; }

}  // namespace swa
