// Argument checks of the packed variable-length overloads (attention.varlen,
// attention_backward.varlen), shared by every backend: the packed layout
// q [Tq, Hq, D], k/v [Tk, Hkv, D], cu_seqlens int32 [B + 1].
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "ops/checks.h"

namespace swa {

struct VarlenShape {
  int64_t sequences;  // B
  int64_t tokens_q;   // Tq
  int64_t tokens_k;   // Tk
  AttentionShape heads;  // batch 1, seqlen_q Tq, seqlen_k Tk: as the [1, H, T, D] views
};

// The packed tensors as one batch: [T, H, D] -> [1, H, T, D] (a view).
at::Tensor packed_as_batch(const at::Tensor& t);

// t: a packed [T, H, D] tensor (3 dims).
void check_packed(const char* op, const char* name, const at::Tensor& t);

// cu: int32 [B + 1] (1-d, length >= 1) on `device` (the device of the
// argument named device_owner). Its values are checked apart (below).
void check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu, const at::Device& device,
                      const char* device_owner);

// Checks ranks, dtypes, devices, head dims, GQA, windows, softcap, scale and
// cu_seqlens_q/k (int32, 1-d, same length >= 1, on q's device) and
// max_seqlen_q/k (>= 0).
VarlenShape check_varlen(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                         int64_t max_seqlen_k, int64_t window_left, int64_t window_right,
                         std::optional<double> scale, double softcap);

// The values of a cu_seqlens tensor held on the CPU, checked: starts at 0,
// non-decreasing, ends at `tokens`, no sequence longer than max_seqlen.
// Returns them as int64 (a CPU tensor of the same length).
at::Tensor checked_cu_seqlens_values(const char* op, const char* name, const at::Tensor& cu_seqlens,
                                     int64_t tokens, int64_t max_seqlen, const char* max_name);

}  // namespace swa
