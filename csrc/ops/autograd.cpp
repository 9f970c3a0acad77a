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

// What the three functions keep for their backward besides tensors: the
// window, scale, softcap and sink tokens (saved_data), and how they read the
// upstream gradients.
struct Options {
  int64_t window_left, window_right;
  std::optional<double> scale;
  double softcap;
  int64_t sink_tokens = 0;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["window_left"] = window_left;
    ctx->saved_data["window_right"] = window_right;
    ctx->saved_data["scale"] = scale.has_value() ? c10::IValue(*scale) : c10::IValue();
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["sink_tokens"] = sink_tokens;
    // An unused output's gradient arrives undefined rather than as zeros, so
    // a loss on out alone pays nothing for lse (and vice versa).
    ctx->set_materialize_grads(false);
  }
  static Options load(AutogradContext* ctx) {
    const c10::IValue& scale = ctx->saved_data["scale"];
    return {ctx->saved_data["window_left"].toInt(), ctx->saved_data["window_right"].toInt(),
            scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()),
            ctx->saved_data["softcap"].toDouble(), ctx->saved_data["sink_tokens"].toInt()};
  }
};

// The upstream gradients of (out, lse) as the backward ops take them: an
// undefined grad_out as zeros, and both unit-stride in the last dim (they
// may be broadcast views, stride 0, e.g. from .sum()).
struct UpstreamGrads {
  at::Tensor grad_out;
  std::optional<at::Tensor> grad_lse;
  UpstreamGrads(const variable_list& grads, const at::Tensor& out)
      : grad_out(grads[0].defined() ? grads[0] : at::zeros_like(out)) {
    if (grad_out.stride(-1) != 1) grad_out = grad_out.contiguous();
    if (grads[1].defined()) grad_lse = grads[1].contiguous();
  }
};

// An undefined tensor inside the optional is None too.
std::optional<at::Tensor> defined_or_none(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t : std::optional<at::Tensor>();
}

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, int64_t window_left, int64_t window_right,
                               std::optional<double> scale, double softcap) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = swa::attention(q, k, v, window_left, window_right, scale, softcap);
    ctx->save_for_backward({q, k, v, out, lse});
    Options{window_left, window_right, scale, softcap}.save(ctx);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const UpstreamGrads g(grads, out);
    const Options o = Options::load(ctx);
    auto [dq, dk, dv] = swa::attention_backward(g.grad_out, g.grad_lse, q, k, v, out, lse, o.window_left,
                                                o.window_right, o.scale, o.softcap,
                                                at::globalContext().deterministicAlgorithms());
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
    Options{window_left, window_right, scale, softcap, sink_tokens}.save(ctx);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const std::optional<at::Tensor> sinks = saved.size() > 5 ? std::optional<at::Tensor>(saved[5]) : std::nullopt;
    const UpstreamGrads g(grads, out);
    const Options o = Options::load(ctx);
    auto [dq, dk, dv, dsinks] = swa::attention_backward(
        g.grad_out, g.grad_lse, q, k, v, out, lse, o.window_left, o.window_right, o.scale, o.softcap,
        at::globalContext().deterministicAlgorithms(), sinks, o.sink_tokens);
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            sinks.has_value() ? dsinks : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_sinks_autograd(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, int64_t window_left,
                                                            int64_t window_right, std::optional<double> scale,
                                                            double softcap, const std::optional<at::Tensor>& sinks,
                                                            int64_t sink_tokens) {
  auto outputs = AttentionSinksFunction::apply(q, k, v, window_left, window_right, scale, softcap,
                                               defined_or_none(sinks), sink_tokens);
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
    Options{window_left, window_right, scale, softcap, sink_tokens}.save(ctx);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const std::optional<at::Tensor> sinks = saved.size() > 7 ? std::optional<at::Tensor>(saved[7]) : std::nullopt;
    const UpstreamGrads g(grads, out);
    const Options o = Options::load(ctx);
    auto [dq, dk, dv, dsinks] = swa::varlen_attention_backward(
        g.grad_out, g.grad_lse, q, k, v, out, lse, saved[5], saved[6], ctx->saved_data["max_seqlen_q"].toInt(),
        ctx->saved_data["max_seqlen_k"].toInt(), o.window_left, o.window_right, o.scale, o.softcap,
        at::globalContext().deterministicAlgorithms(), sinks, o.sink_tokens);
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
  auto outputs = AttentionVarlenFunction::apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                window_left, window_right, scale, softcap, defined_or_none(sinks),
                                                sink_tokens);
  return {outputs[0], outputs[1]};
}

// attention.per_head: the windows are tensors [Hq] (saved, not differentiable).
class AttentionPerHeadFunction : public torch::autograd::Function<AttentionPerHeadFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& window_left, const at::Tensor& window_right,
                               std::optional<double> scale, double softcap, const std::optional<at::Tensor>& sinks,
                               int64_t sink_tokens) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] =
        swa::per_head_attention(q, k, v, window_left, window_right, scale, softcap, sinks, sink_tokens);
    std::vector<at::Tensor> saved{q, k, v, out, lse, window_left, window_right};
    if (sinks.has_value()) saved.push_back(*sinks);
    ctx->save_for_backward(saved);
    Options{-1, -1, scale, softcap, sink_tokens}.save(ctx);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const std::optional<at::Tensor> sinks = saved.size() > 7 ? std::optional<at::Tensor>(saved[7]) : std::nullopt;
    const UpstreamGrads g(grads, out);
    const Options o = Options::load(ctx);
    auto [dq, dk, dv, dsinks] = swa::per_head_attention_backward(
        g.grad_out, g.grad_lse, q, k, v, out, lse, saved[5], saved[6], o.scale, o.softcap,
        at::globalContext().deterministicAlgorithms(), sinks, o.sink_tokens);
    variable_list result(9);
    result[0] = dq, result[1] = dk, result[2] = dv;
    if (sinks.has_value()) result[7] = dsinks;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> attention_per_head_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& window_left,
    const at::Tensor& window_right, std::optional<double> scale, double softcap,
    const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  auto outputs = AttentionPerHeadFunction::apply(q, k, v, window_left, window_right, scale, softcap,
                                                 defined_or_none(sinks), sink_tokens);
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
  m.impl("attention.per_head", &attention_per_head_autograd);
}

}  // namespace swa
