// Argument checks shared by every backend. Each violated precondition raises a
// RuntimeError (TORCH_CHECK) naming the op, the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace swa {

// The problem shape of attention, read off checked q [B, Hq, Sq, D] and
// k/v [B, Hkv, Sk, D].
struct AttentionShape {
  int64_t batch;
  int64_t heads_q;
  int64_t heads_kv;
  int64_t seqlen_q;
  int64_t seqlen_k;
  int64_t head_dim;
  int64_t group() const { return heads_q / heads_kv; }  // query heads per kv head
  bool empty() const { return batch == 0 || heads_q == 0 || seqlen_q == 0; }
};

// A 4-d [B, H, S, D] tensor with a contiguous last dim.
void check_bhsd(const char* op, const char* name, const at::Tensor& t);

// Same dtype (one of float16, bfloat16, float32, float64) and device as q.
void check_like_q(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q);

void check_window(const char* op, int64_t window_left, int64_t window_right);
void check_softcap(const char* op, double softcap);

// Checks q, k, v of attention (ranks, dtypes, devices, head dims, GQA, window,
// softcap, scale) and returns the shape.
AttentionShape check_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, int64_t window_left, int64_t window_right,
                               std::optional<double> scale, double softcap);

// check_attention plus the backward's own tensors: grad_out and out shaped and
// typed like q, lse and grad_lse (optional) float32 [B, Hq, Sq].
AttentionShape check_attention_backward(const char* op, const at::Tensor& grad_out,
                                        const std::optional<at::Tensor>& grad_lse,
                                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& out, const at::Tensor& lse,
                                        int64_t window_left, int64_t window_right,
                                        std::optional<double> scale, double softcap);

// scale, or 1/sqrt(head_dim) when not given.
double softmax_scale(std::optional<double> scale, int64_t head_dim);

// The window side as the kernels take it: a side that reaches past every key
// (window_left >= Sk, window_right >= Sq, e.g. sys.maxsize as "no limit") is
// the same band as -1 (unbounded), and becomes -1 so that the band arithmetic
// (positions +- windows) cannot overflow int64.
int64_t kernel_window_left(int64_t window_left, int64_t seqlen_k);
int64_t kernel_window_right(int64_t window_right, int64_t seqlen_q);

// The softcap as the kernels take it (float32 arithmetic): 0 stays 0 (off);
// others are clamped to [1e-30, 1e30]. Below 1e-30 every capped score is
// within 1e-30 of 0, so exp() of it is 1 even in float64: the uniform
// attention a tiny cap means (1e-50 would otherwise underflow to 0 in float32
// and switch capping off). Above 1e30 a cap moves no score below 1e26 by more
// than float32 rounds, and for larger scores the softmax is one-hot at the
// same key with either cap (capping is monotonic); an unclamped cap near
// FLT_MAX would make s / cap subnormal (flushed to 0 by fast-math code).
double kernel_softcap(double softcap);

}  // namespace swa
