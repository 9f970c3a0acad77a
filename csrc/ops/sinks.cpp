#include "ops/sinks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace swa {

SinkArgs check_sinks(const char* op, const std::optional<at::Tensor>& sinks, int64_t sink_tokens,
                     const at::Tensor& q) {
  TORCH_CHECK(sink_tokens >= 0, op, ": sink_tokens must be >= 0 (the number of leading key positions "
              "every query sees beside its window; 0 = none), got ", sink_tokens);
  SinkArgs args;
  args.tokens = sink_tokens;
  if (!sinks.has_value() || !sinks->defined()) return args;
  const at::Tensor& s = *sinks;
  const int64_t heads_q = q.dim() >= 2 ? q.size(1) : -1;
  TORCH_CHECK(s.dim() == 1 && s.size(0) == heads_q, op,
              ": sinks must be a 1-d tensor of one logit per query head, shape [", heads_q, "], got shape ",
              s.sizes());
  const bool dtype_ok = s.scalar_type() == at::kFloat ||
                        (s.scalar_type() == at::kDouble && q.scalar_type() == at::kDouble);
  TORCH_CHECK(dtype_ok, op, ": sinks must be float32 (or float64 with float64 q), got ", s.scalar_type(),
              " (cast it with sinks.float())");
  TORCH_CHECK(s.device() == q.device(), op, ": sinks must be on q's device ", q.device(), ", got ",
              s.device());
  args.logits = s;
  return args;
}

at::Tensor softmax_delta(const at::Tensor& grad_out, const at::Tensor& out,
                         const std::optional<at::Tensor>& grad_lse, at::ScalarType acc) {
  at::Tensor delta = (grad_out.to(acc) * out.to(acc)).sum(-1);
  if (grad_lse.has_value() && grad_lse->defined()) delta = delta - grad_lse->to(acc);
  return delta;
}

at::Tensor sink_logits_grad(const at::Tensor& sinks, const at::Tensor& lse, const at::Tensor& delta) {
  const auto acc = at::kDouble;  // a sum over B * Sq rows: kept exact enough whatever the inputs
  // P_sink[b, h, i] = exp(sinks[h] - lse[b, h, i]): the weight the sink took.
  const at::Tensor p_sink = at::exp(sinks.to(acc).view({1, -1, 1}) - lse.to(acc));
  return (p_sink * delta.to(acc)).sum(at::IntArrayRef{0, 2}).neg().to(sinks.scalar_type());
}

}  // namespace swa
