// The exact CPU attention kernels, callable from other CPU ops (cache_attention
// runs them over the ring's keys). Arguments are checked by the caller.
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu/packed_sequences.h"
#include "ops/head_windows.h"
#include "ops/sinks.h"

namespace swa::cpu {

// out [B, Hq, Sq, D] and lse [B, Hq, Sq] (float32) of banded attention, written
// in place. Parallel over batch x query heads x query tiles. sinks: the
// checked sink arguments (ops/sinks.h; none by default). packed: the
// sequences packed along the rows of a batch of one (attention.varlen).
// heads: per-head windows (attention.per_head), which then replace
// window_left / window_right.
void attention_forward_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t window_left, int64_t window_right, double scale,
                            double softcap, at::Tensor& out, at::Tensor& lse,
                            const SinkArgs& sinks = {}, const PackedLayout* packed = nullptr,
                            const HeadWindowArgs* heads = nullptr);

// The gradients of attention (dq, dk, dv) and of its sink logits (dsinks,
// empty [0] without them), after checking the arguments as `op`.
struct BackwardResult {
  at::Tensor dq, dk, dv, dsinks;
};
BackwardResult attention_backward_run(const char* op, const at::Tensor& grad_out,
                                      const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                      const at::Tensor& lse, int64_t window_left, int64_t window_right,
                                      std::optional<double> scale, double softcap,
                                      const std::optional<at::Tensor>& sinks, int64_t sink_tokens,
                                      const PackedLayout* packed = nullptr,
                                      const HeadWindowArgs* heads = nullptr);

}  // namespace swa::cpu
