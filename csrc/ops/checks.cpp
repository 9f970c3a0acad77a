#include "ops/checks.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace swa {

void check_bhsd(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must have 4 dims [B, H, S, D], got ", t.dim(),
              " dims (shape ", t.sizes(), ")");
  TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1 || t.numel() == 0, op, ": ", name,
              " must have a contiguous last dim (stride 1), got strides ", t.strides());
}

void check_like_q(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " must have q's dtype ",
              q.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), op, ": ", name, " must be on q's device ", q.device(),
              ", got ", t.device());
}

void check_window(const char* op, int64_t window_left, int64_t window_right) {
  TORCH_CHECK(window_left >= -1, op, ": window_left must be >= -1 (-1 = unbounded), got ",
              window_left);
  TORCH_CHECK(window_right >= -1, op, ": window_right must be >= -1 (-1 = unbounded), got ",
              window_right);
}

void check_softcap(const char* op, double softcap) {
  TORCH_CHECK(std::isfinite(softcap) && softcap >= 0, op,
              ": softcap must be a finite number >= 0 (0 = off), got ", softcap);
}

namespace {
constexpr double kMinSoftcap = 1e-30;
constexpr double kMaxSoftcap = 1e30;
}  // namespace

int64_t kernel_window_left(int64_t window_left, int64_t seqlen_k) {
  // Row positions are at most Sk - 1, so key_begin = max(0, p - window_left)
  // is 0 for every row once window_left >= Sk - 1.
  return window_left >= seqlen_k ? -1 : window_left;
}

int64_t kernel_window_right(int64_t window_right, int64_t seqlen_q) {
  // Row positions are at least Sk - Sq, so key_end = min(Sk, p + window_right
  // + 1) is Sk for every row once window_right >= Sq - 1.
  return window_right >= seqlen_q ? -1 : window_right;
}

double kernel_softcap(double softcap) {
  if (softcap <= 0) return 0;
  return std::clamp(softcap, kMinSoftcap, kMaxSoftcap);
}

AttentionShape check_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, int64_t window_left, int64_t window_right,
                               std::optional<double> scale, double softcap) {
  check_bhsd(op, "q", q);
  check_bhsd(op, "k", k);
  check_bhsd(op, "v", v);
  auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat ||
                  dtype == at::kDouble,
              op, ": q must be float16, bfloat16, float32 or float64, got ", dtype);
  check_like_q(op, "k", k, q);
  check_like_q(op, "v", v, q);
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have the same shape [B, Hkv, Sk, D], got k ",
              k.sizes(), " and v ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0), op, ": k and v must have q's batch size ", q.size(0),
              ", got ", k.size(0));
  TORCH_CHECK(k.size(3) == q.size(3), op, ": k and v must have q's head dim ", q.size(3),
              ", got ", k.size(3));
  TORCH_CHECK(q.size(3) >= 1, op, ": the head dim (last dim of q) must be >= 1, got ", q.size(3));
  AttentionShape s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  TORCH_CHECK(s.heads_kv >= 1 || s.heads_q == 0, op, ": k and v must have at least one head, got 0");
  TORCH_CHECK(s.heads_kv == 0 || s.heads_q % s.heads_kv == 0, op,
              ": q's head count must be a multiple of k's (GQA/MQA), got Hq = ", s.heads_q,
              " and Hkv = ", s.heads_kv);
  check_window(op, window_left, window_right);
  check_softcap(op, softcap);
  // The kernels compute in float32 (float64 inputs aside): a scale beyond
  // float32's range would turn every score into inf or NaN.
  TORCH_CHECK(!scale.has_value() || (std::isfinite(*scale) && std::fabs(*scale) <= FLT_MAX), op,
              ": scale must be None or a finite number within float32's range (|scale| <= ", FLT_MAX,
              "), got ", scale.value_or(0.0));
  return s;
}

AttentionShape check_attention_backward(const char* op, const at::Tensor& grad_out,
                                        const std::optional<at::Tensor>& grad_lse,
                                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& out, const at::Tensor& lse,
                                        int64_t window_left, int64_t window_right,
                                        std::optional<double> scale, double softcap) {
  const AttentionShape shape = check_attention(op, q, k, v, window_left, window_right, scale, softcap);
  check_bhsd(op, "grad_out", grad_out);
  check_like_q(op, "grad_out", grad_out, q);
  check_bhsd(op, "out", out);
  check_like_q(op, "out", out, q);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), op,
              ": grad_out and out must have q's shape ", q.sizes(), ", got ", grad_out.sizes(),
              " and ", out.sizes());
  const std::vector<int64_t> lse_shape{shape.batch, shape.heads_q, shape.seqlen_q};
  auto check_lse = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.sizes() == lse_shape && t.device() == q.device(),
                op, ": ", name, " must be float32 of shape ", c10::IntArrayRef(lse_shape), " on q's device, got ",
                t.scalar_type(), " ", t.sizes(), " on ", t.device());
  };
  check_lse("lse", lse);
  if (grad_lse.has_value() && grad_lse->defined()) check_lse("grad_lse", *grad_lse);
  return shape;
}

double softmax_scale(std::optional<double> scale, int64_t head_dim) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

}  // namespace swa
