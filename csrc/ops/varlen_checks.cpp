#include "ops/varlen_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace swa {

at::Tensor packed_as_batch(const at::Tensor& t) { return t.transpose(0, 1).unsqueeze(0); }

void check_packed(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  TORCH_CHECK(t.dim() == 3, op, ": ", name, " must have 3 dims [T, H, D] (tokens of all sequences back to back), got ",
              t.dim(), " dims (shape ", t.sizes(), ")");
}

void check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu, const at::Device& device,
                      const char* device_owner) {
  TORCH_CHECK(cu.defined(), op, ": ", name, " must be a tensor, got None");
  TORCH_CHECK(cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.size(0) >= 1, op, ": ", name,
              " must be a 1-d int32 tensor [B + 1] of prefix sums starting at 0, got ", cu.scalar_type(), " of shape ",
              cu.sizes());
  TORCH_CHECK(cu.device() == device, op, ": ", name, " must be on ", device_owner, "'s device ", device, ", got ",
              cu.device());
}

VarlenShape check_varlen(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                         int64_t max_seqlen_k, int64_t window_left, int64_t window_right,
                         std::optional<double> scale, double softcap) {
  check_packed(op, "q", q);
  check_packed(op, "k", k);
  check_packed(op, "v", v);
  // The shape checks in the packed layout's terms (check_attention below
  // sees the [1, H, T, D] views).
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have the same shape [Tk, Hkv, D], got k ", k.sizes(),
              " and v ", v.sizes());
  TORCH_CHECK(k.size(2) == q.size(2), op, ": k and v must have q's head dim ", q.size(2), ", got ", k.size(2));
  TORCH_CHECK(k.size(1) == 0 || q.size(1) % k.size(1) == 0, op,
              ": q's head count must be a multiple of k's (GQA/MQA), got Hq = ", q.size(1), " and Hkv = ", k.size(1));
  VarlenShape s;
  s.heads = check_attention(op, packed_as_batch(q), packed_as_batch(k), packed_as_batch(v), window_left,
                            window_right, scale, softcap);
  check_cu_seqlens(op, "cu_seqlens_q", cu_seqlens_q, q.device(), "q");
  check_cu_seqlens(op, "cu_seqlens_k", cu_seqlens_k, q.device(), "q");
  TORCH_CHECK(cu_seqlens_q.size(0) == cu_seqlens_k.size(0), op,
              ": cu_seqlens_q and cu_seqlens_k must have the same length B + 1, got ", cu_seqlens_q.size(0), " and ",
              cu_seqlens_k.size(0));
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, op, ": max_seqlen_q and max_seqlen_k must be >= 0, got ",
              max_seqlen_q, " and ", max_seqlen_k);
  s.sequences = cu_seqlens_q.size(0) - 1;
  s.tokens_q = q.size(0);
  s.tokens_k = k.size(0);
  return s;
}

at::Tensor checked_cu_seqlens_values(const char* op, const char* name, const at::Tensor& cu_seqlens,
                                     int64_t tokens, int64_t max_seqlen, const char* max_name) {
  at::Tensor values = cu_seqlens.to(at::kLong).contiguous();
  const int64_t* c = values.data_ptr<int64_t>();
  const int64_t n = values.size(0);
  TORCH_CHECK(c[0] == 0, op, ": ", name, " must start at 0, got ", c[0]);
  for (int64_t i = 0; i + 1 < n; ++i) {
    const int64_t len = c[i + 1] - c[i];
    TORCH_CHECK(len >= 0, op, ": ", name, " must be non-decreasing, got ", c[i], " then ", c[i + 1], " at index ",
                i + 1);
    TORCH_CHECK(len <= max_seqlen, op, ": sequence ", i, " has ", len, " tokens (", name, "[", i + 1, "] - ", name,
                "[", i, "]), more than ", max_name, " = ", max_seqlen);
  }
  TORCH_CHECK(c[n - 1] == tokens, op, ": the last entry of ", name, " must be the token count ", tokens,
              " (the tensors' first dim), got ", c[n - 1]);
  return values;
}

}  // namespace swa
