// The exact CPU attention kernels, callable from other CPU ops (cache_attention
// runs them over the ring's keys). Arguments are checked by the caller.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/sinks.h"

namespace swa::cpu {

// out [B, Hq, Sq, D] and lse [B, Hq, Sq] (float32) of banded attention, written
// in place. Parallel over batch x query heads x query tiles. sinks: the
// checked sink arguments (ops/sinks.h; none by default).
void attention_forward_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t window_left, int64_t window_right, double scale,
                            double softcap, at::Tensor& out, at::Tensor& lse,
                            const SinkArgs& sinks = {});

}  // namespace swa::cpu
