#include "cuda/varlen_params.h"

#include <c10/util/Exception.h>

namespace swa::cuda {

void check_max_seqlen(const char* op, const char* name, int64_t max_seqlen, int64_t sequences, int64_t tokens,
                      const char* tensor) {
  TORCH_CHECK(tokens == 0 || (sequences > 0 && max_seqlen > 0 && max_seqlen >= (tokens + sequences - 1) / sequences),
              op, ": ", name, " = ", max_seqlen, " is too small for ", sequences, " sequences holding ", tokens,
              " tokens (", tensor, "'s first dim): no sequence may be longer than ", name);
}

void set_packed_sequences(SWA_KERNEL_NS::AttentionParams& params, int64_t sequences, int64_t tokens_q,
                          int64_t tokens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                          const at::Tensor& cu_seqlens_q, const at::Tensor* cu_seqlens_k) {
  params.batch = sequences;
  params.seqlen_q = max_seqlen_q;
  params.seqlen_k = max_seqlen_k;
  params.total_q = tokens_q;
  params.total_k = tokens_k;
  params.cu_seqlens_q = cu_seqlens_q.data_ptr<int32_t>();
  params.cu_seqlens_k = cu_seqlens_k != nullptr ? cu_seqlens_k->data_ptr<int32_t>() : nullptr;
  params.q.batch_stride = params.k.batch_stride = params.v.batch_stride = 0;
  params.out_batch_stride = 0;
}

}  // namespace swa::cuda
