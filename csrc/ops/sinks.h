// Attention sinks (both kinds, swa/kernels/params.h) at the op level: the
// argument checks every backend shares and the gradient of the sink logits,
// which is a per-head reduction over what the backward already knows.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace swa {

// The sink arguments of an op, checked: logits float32 [Hq] on q's device
// (float64 too when q is float64, for float64 checks), tokens >= 0.
struct SinkArgs {
  std::optional<at::Tensor> logits;  // none: no sink logits
  int64_t tokens = 0;
  bool any() const { return logits.has_value() || tokens > 0; }
};

SinkArgs check_sinks(const char* op, const std::optional<at::Tensor>& sinks, int64_t sink_tokens,
                     const at::Tensor& q);

// d sinks[h] = -sum_{b,i} exp(sinks[h] - lse[b,h,i]) * delta[b,h,i] with
// delta = rowsum(dO * O) - dlse ([B, Hq, Sq], any floating dtype): the
// gradient of the sink logits (float32 [Hq], or float64 for float64 logits).
// Deterministic (a fixed-order reduction).
at::Tensor sink_logits_grad(const at::Tensor& sinks, const at::Tensor& lse, const at::Tensor& delta);

// delta = rowsum(dO * O) - dlse, [B, Hq, Sq], computed in `acc`.
at::Tensor softmax_delta(const at::Tensor& grad_out, const at::Tensor& out,
                         const std::optional<at::Tensor>& grad_lse, at::ScalarType acc);

}  // namespace swa
