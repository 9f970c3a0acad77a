// Autograd for swa::attention, registered in C++ under the Autograd key so that
// Python callers, C++ callers that only link the library, and torch.compile
// (which traces through this kernel) all get the same backward.
#include <ATen/Context.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "swa/swa.h"

namespace swa {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, int64_t window_left, int64_t window_right,
                               std::optional<double> scale, double softcap) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = swa::attention(q, k, v, window_left, window_right, scale, softcap);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["window_left"] = window_left;
    ctx->saved_data["window_right"] = window_right;
    ctx->saved_data["scale"] = scale.has_value() ? c10::IValue(*scale) : c10::IValue();
    ctx->saved_data["softcap"] = softcap;
    // An unused output's gradient arrives undefined rather than as zeros, so
    // a loss on out alone pays nothing for lse (and vice versa).
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    // Upstream gradients may be broadcast views (stride 0, e.g. from .sum()).
    at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(out);
    if (grad_out.stride(-1) != 1) grad_out = grad_out.contiguous();
    std::optional<at::Tensor> grad_lse;
    if (grads[1].defined()) grad_lse = grads[1].contiguous();
    const c10::IValue& scale = ctx->saved_data["scale"];
    auto [dq, dk, dv] = swa::attention_backward(
        grad_out, grad_lse, q, k, v, out, lse, ctx->saved_data["window_left"].toInt(),
        ctx->saved_data["window_right"].toInt(),
        scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()),
        ctx->saved_data["softcap"].toDouble(), at::globalContext().deterministicAlgorithms());
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// attention.sinks: the same, with the sink logits as a differentiable input.
class AttentionSinksFunction : public torch::autograd::Function<AttentionSinksFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, int64_t window_left, int64_t window_right,
                               std::optional<double> scale, double softcap,
                               const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = swa::attention(q, k, v, window_left, window_right, scale, softcap, sinks, sink_tokens);
    if (sinks.has_value()) ctx->save_for_backward({q, k, v, out, lse, *sinks});
    else ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["window_left"] = window_left;
    ctx->saved_data["window_right"] = window_right;
    ctx->saved_data["scale"] = scale.has_value() ? c10::IValue(*scale) : c10::IValue();
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["sink_tokens"] = sink_tokens;
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const std::optional<at::Tensor> sinks = saved.size() > 5 ? std::optional<at::Tensor>(saved[5]) : std::nullopt;
    at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(out);
    if (grad_out.stride(-1) != 1) grad_out = grad_out.contiguous();
    std::optional<at::Tensor> grad_lse;
    if (grads[1].defined()) grad_lse = grads[1].contiguous();
    const c10::IValue& scale = ctx->saved_data["scale"];
    auto [dq, dk, dv, dsinks] = swa::attention_backward(
        grad_out, grad_lse, q, k, v, out, lse, ctx->saved_data["window_left"].toInt(),
        ctx->saved_data["window_right"].toInt(),
        scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()),
        ctx->saved_data["softcap"].toDouble(), at::globalContext().deterministicAlgorithms(), sinks,
        ctx->saved_data["sink_tokens"].toInt());
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            sinks.has_value() ? dsinks : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_sinks_autograd(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, int64_t window_left,
                                                            int64_t window_right, std::optional<double> scale,
                                                            double softcap, const std::optional<at::Tensor>& sinks,
                                                            int64_t sink_tokens) {
  // An undefined tensor inside the optional is None too.
  const std::optional<at::Tensor> sink_logits =
      sinks.has_value() && sinks->defined() ? sinks : std::optional<at::Tensor>();
  auto outputs = AttentionSinksFunction::apply(q, k, v, window_left, window_right, scale, softcap, sink_logits,
                                               sink_tokens);
  return {outputs[0], outputs[1]};
}

// attention.varlen: packed sequences, sinks optional.
class AttentionVarlenFunction : public torch::autograd::Function<AttentionVarlenFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                               int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
                               int64_t window_right, std::optional<double> scale, double softcap,
                               const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = swa::varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                            window_left, window_right, scale, softcap, sinks, sink_tokens);
    std::vector<at::Tensor> saved{q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k};
    if (sinks.has_value()) saved.push_back(*sinks);
    ctx->save_for_backward(saved);
    ctx->saved_data["max_seqlen_q"] = max_seqlen_q;
    ctx->saved_data["max_seqlen_k"] = max_seqlen_k;
    ctx->saved_data["window_left"] = window_left;
    ctx->saved_data["window_right"] = window_right;
    ctx->saved_data["scale"] = scale.has_value() ? c10::IValue(*scale) : c10::IValue();
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["sink_tokens"] = sink_tokens;
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const std::optional<at::Tensor> sinks = saved.size() > 7 ? std::optional<at::Tensor>(saved[7]) : std::nullopt;
    at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(out);
    if (grad_out.stride(-1) != 1) grad_out = grad_out.contiguous();
    std::optional<at::Tensor> grad_lse;
    if (grads[1].defined()) grad_lse = grads[1].contiguous();
    const c10::IValue& scale = ctx->saved_data["scale"];
    auto [dq, dk, dv, dsinks] = swa::varlen_attention_backward(
        grad_out, grad_lse, q, k, v, out, lse, saved[5], saved[6], ctx->saved_data["max_seqlen_q"].toInt(),
        ctx->saved_data["max_seqlen_k"].toInt(), ctx->saved_data["window_left"].toInt(),
        ctx->saved_data["window_right"].toInt(),
        scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()),
        ctx->saved_data["softcap"].toDouble(), at::globalContext().deterministicAlgorithms(), sinks,
        ctx->saved_data["sink_tokens"].toInt());
    variable_list result(13);
    result[0] = dq, result[1] = dk, result[2] = dv;
    if (sinks.has_value()) result[11] = dsinks;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> attention_varlen_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
    int64_t window_right, std::optional<double> scale, double softcap, const std::optional<at::Tensor>& sinks,
    int64_t sink_tokens) {
  const std::optional<at::Tensor> sink_logits =
      sinks.has_value() && sinks->defined() ? sinks : std::optional<at::Tensor>();
  auto outputs = AttentionVarlenFunction::apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                window_left, window_right, scale, softcap, sink_logits, sink_tokens);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, at::Tensor> attention_autograd(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, int64_t window_left,
                                                      int64_t window_right,
                                                      std::optional<double> scale, double softcap) {
  auto outputs = AttentionFunction::apply(q, k, v, window_left, window_right, scale, softcap);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, Autograd, m) {
  m.impl("attention", &attention_autograd);
  m.impl("attention.sinks", &attention_sinks_autograd);
  m.impl("attention.varlen", &attention_varlen_autograd);
}

}  // namespace swa
