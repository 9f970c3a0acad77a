// Where one batch entry's rows live: the padded layout [B, H, S, D], or one
// sequence of a packed [T, H, D] batch (params.h: cu_seqlens_*, read on the
// device), and where its rows sit in the per-row float arrays (lse, dlse and
// the backward's row workspaces softmax_d, dq_accum, softmax_stats_f64).
// Shared by the forward and backward kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Where batch entry b's rows live and how long its sequences are: the
// padded layout (row 0 of batch b, the call's lengths), or a packed sequence
// (params.h: cu_seqlens_*, read here on the device).
struct SequenceRows {
  int64_t q0;            // its first row of q / out (and of lse's row axis when packed)
  int64_t k0;            // its first row of params.k / v
  int64_t seqlen_q;      // its query rows
  int64_t seqlen_k;      // its rows of params.k / v (with a ring: the new keys, = seqlen_q)
  int64_t stride_batch;  // b for the padded layout's batch strides; 0 when packed (not read)
};

// cu_seqlens values that break the contract (not from 0, decreasing, past
// the token count) are the caller's error on CUDA (never read by the host);
// they are clamped to [0, total] here, so that no row outside q, k, v, out or
// lse is read or written whatever they hold (the results are then undefined).
__device__ __forceinline__ SequenceRows sequence_rows(const AttentionParams& p, int64_t b) {
  if (p.cu_seqlens_q == nullptr) return {0, 0, p.seqlen_q, p.ring.pos == nullptr ? p.seqlen_k : p.seqlen_q, b};
  auto clamp = [](int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; };
  const int64_t q0 = clamp(p.cu_seqlens_q[b], 0, p.total_q);
  const int64_t q1 = clamp(p.cu_seqlens_q[b + 1], q0, p.total_q);
  if (p.ring.pos != nullptr) return {q0, q0, q1 - q0, q1 - q0, 0};
  const int64_t k0 = clamp(p.cu_seqlens_k[b], 0, p.total_k);
  const int64_t k1 = clamp(p.cu_seqlens_k[b + 1], k0, p.total_k);
  return {q0, k0, q1 - q0, k1 - k0, 0};
}

// Index of query row i of (b, h) in lse: [B, Hq, Sq] contiguous, or [Hq, Tq] packed.
__device__ __forceinline__ int64_t lse_offset(const AttentionParams& p, const SequenceRows& seq, int64_t b,
                                              int64_t h, int64_t i) {
  if (p.cu_seqlens_q != nullptr) return h * p.total_q + seq.q0 + i;
  return (b * p.heads_q + h) * p.seqlen_q + i;
}

// Rows of the per-row arrays (lse and its kin): B * Hq * Sq padded, Hq * Tq packed.
__host__ __device__ __forceinline__ int64_t lse_rows(const AttentionParams& p) {
  return p.cu_seqlens_q != nullptr ? p.heads_q * p.total_q : p.batch * p.heads_q * p.seqlen_q;
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
