// The CUDA backward shared by attention_backward, attention_backward.sinks and
// attention_backward.varlen (attention_backward.cpp): checks, workspaces,
// launch, and the gradient of the sink logits.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "ops/head_windows.h"

namespace swa::cuda {

// The gradients of attention (dq, dk, dv, shaped like q, k, v) and of its
// sink logits (dsinks [Hq]; empty [0] without them).
struct BackwardResult {
  at::Tensor dq, dk, dv;
  at::Tensor dsinks;
};

// A packed call (attention_backward.varlen): the tensors passed to
// attention_backward_run are the [1, H, T, D] views of the packed [T, H, D]
// ones (lse [1, Hq, Tq]); cu_seqlens_q/k int32 contiguous on the device.
struct PackedBackward {
  int64_t sequences, tokens_q, tokens_k, max_seqlen_q, max_seqlen_k;
  at::Tensor cu_seqlens_q, cu_seqlens_k;
};

// Checks the arguments as `op` and runs the backward on the current stream.
// The plain op is the sinks one with sinks = None, sink_tokens = 0. heads:
// per-head windows (attention_backward.per_head; window_left / window_right
// are then their union).
BackwardResult attention_backward_run(const char* op, const at::Tensor& grad_out,
                                      const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                      const at::Tensor& lse, int64_t window_left, int64_t window_right,
                                      std::optional<double> scale, double softcap, bool deterministic,
                                      const std::optional<at::Tensor>& sinks, int64_t sink_tokens,
                                      const PackedBackward* packed = nullptr,
                                      const HeadWindowArgs* heads = nullptr);

}  // namespace swa::cuda
