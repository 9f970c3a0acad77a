// The packed-sequence fields of the kernels' params (params.h: cu_seqlens_*),
// filled from checked tensors; shared by attention.varlen and
// cache_attention.varlen on CUDA.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "swa/kernels/params.h"

namespace swa::cuda {

// max_seqlen must be able to hold the tokens: sequences * max_seqlen >= tokens
// (the host cannot read cu_seqlens; a smaller max_seqlen would leave rows
// that no block covers). tensor names the packed tensor whose first dim is tokens.
void check_max_seqlen(const char* op, const char* name, int64_t max_seqlen, int64_t sequences, int64_t tokens,
                      const char* tensor);

// Points params at `sequences` packed sequences: cu_seqlens_q (and
// cu_seqlens_k unless null: a ring's new keys share q's rows), int32
// contiguous on the device, kept alive by the caller until the launch is
// queued; seqlen_q / seqlen_k become the longest sequences, and the batch
// strides of q, k, v and out (packed: not read) are zeroed.
void set_packed_sequences(SWA_KERNEL_NS::AttentionParams& params, int64_t sequences, int64_t tokens_q,
                          int64_t tokens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                          const at::Tensor& cu_seqlens_q, const at::Tensor* cu_seqlens_k);

}  // namespace swa::cuda
