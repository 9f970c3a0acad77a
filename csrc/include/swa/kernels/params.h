// Parameter structs of the CUDA kernels: filled once on the host, passed by
// value. Plain C++ (no torch, no CUDA headers) so that kernel files compile in
// seconds and other extensions can launch the kernels themselves.
//
// Layouts: q/out [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] with arbitrary strides
// (in elements, 64-bit) and a contiguous last dim; lse [B, Hq, Sq] float32,
// contiguous. Query head h reads kv head h / (Hq / Hkv).
#pragma once

#include <cstdint>

#include "swa/kernels/band.h"
#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

// One [B, H, S, D] operand: base pointer and strides in elements.
struct TensorRef {
  void* ptr = nullptr;  // const for inputs; written only where the op says so
  int64_t batch_stride = 0;
  int64_t head_stride = 0;
  int64_t row_stride = 0;
};

// Where keys/values come from in cache_attention: the ring, read in place.
// Virtual key j of batch b is position key_start + j (see ring.h): ring slot
// (key_start + j) % capacity below pos[b], else row (key_start + j - pos[b])
// of params.k / params.v (the new tokens). seqlen_k then varies per batch and
// is derived on the device from pos, never read back by the host.
struct RingSource {
  TensorRef k_cache;          // [B, Hkv, S + C, D]
  TensorRef v_cache;          // [B, Hkv, S + C, D]
  const int64_t* pos = nullptr;  // [B], device memory
  int64_t capacity = 0;       // C: ring slots, after the sink slots
  int64_t window = 0;         // W (window_left = W - 1, window_right = 0)
  int64_t sink_tokens = 0;    // S: sink slots 0 .. S-1 (ring.h); the virtual
                              // keys' band has sink_tokens = S (RingView::band)
};

struct AttentionParams {
  DType dtype = DType::kBFloat16;
  TensorRef q, k, v;
  void* out = nullptr;          // same strides as out_ref below
  int64_t out_batch_stride = 0, out_head_stride = 0, out_row_stride = 0;
  float* lse = nullptr;         // [B, Hq, Sq] contiguous

  int64_t batch = 0;
  int64_t heads_q = 0;
  int64_t heads_kv = 0;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;          // unused when ring is set (per batch then)
  int64_t head_dim = 0;
  int64_t window_left = -1;      // -1: unbounded
  int64_t window_right = 0;      // -1: unbounded
  float scale = 1.f;             // softmax scale applied to q.k
  float softcap = 0.f;           // > 0: s -> softcap * tanh(s / softcap)

  // Attention sinks (both optional, combinable). sinks: one logit per query
  // head that joins every row's softmax without a value (gpt-oss): lse =
  // log(sum_j exp(s_ij) + exp(sinks[h])); not scaled, not capped; a row that
  // sees no key gets out 0 and lse sinks[h]. sink_tokens: keys 0 .. S-1 seen
  // beside the band (Band::sink_tokens in band.h).
  const float* sinks = nullptr;  // [Hq] float32, device memory; nullptr: none
  // The same logits in float64 for the float64 kernels (CUDA exact kernels:
  // a float64 check must not see them rounded to float32); nullptr: use sinks.
  const double* sinks_f64 = nullptr;
  int64_t sink_tokens = 0;

  // Per-head windows (attention.per_head; band.h): device arrays [Hq] of each
  // query head's window in kernel form; window_left / window_right above then
  // hold their union, which sizes the grids and walks. Unset: every head has
  // window_left / window_right. Not combined with a ring or packed sequences.
  HeadWindows head_windows;

  // Optional rolling-cache key source (cache_attention); ring.pos == nullptr
  // means plain attention over params.k / params.v.
  RingSource ring;

  // Packed variable-length sequences (attention.varlen, cache_attention.varlen);
  // cu_seqlens_q == nullptr means the padded layout above. When set, q and
  // out hold the rows of all `batch` sequences back to back ([Tq, H, D]: their
  // batch strides are not read), sequence b owning rows cu_seqlens_q[b] ..
  // cu_seqlens_q[b+1] - 1; k / v likewise through cu_seqlens_k, except with a
  // ring, whose new keys are q's rows (cu_seqlens_k unused). Both int32
  // [batch + 1], device memory, read on the device only. seqlen_q / seqlen_k
  // are then the longest sequences (max_seqlen_*: the grid's bounds; blocks
  // past a sequence's end exit at once), lse is [Hq, total_q] (row r of head
  // h at h * total_q + r), and the split-KV partials keep their padded layout
  // [splits, B, Hq, seqlen_q, (D)].
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  int64_t total_q = 0;  // Tq: the packed query rows
  int64_t total_k = 0;  // Tk: the packed key rows (unused with a ring)

  // Split-KV (flash-decoding): when num_splits > 1 each split writes partial
  // results to out_accum [splits, B, Hq, Sq, D] and lse_accum
  // [splits, B, Hq, Sq] (float32, contiguous) and a combine kernel reduces them.
  int num_splits = 1;
  float* out_accum = nullptr;
  float* lse_accum = nullptr;

  int device_sm_count = 0;       // filled by the host for split heuristics
};

struct AttentionBackwardParams {
  AttentionParams fwd;           // q, k, v, out, lse and the problem shape
  TensorRef dout;                // [B, Hq, Sq, D]
  const float* dlse = nullptr;   // [B, Hq, Sq] contiguous, or nullptr (zero)
  TensorRef dq;                  // [B, Hq, Sq, D] (written), q's dtype
  TensorRef dk;                  // [B, Hkv, Sk, D] (written), k's dtype
  TensorRef dv;                  // [B, Hkv, Sk, D] (written), v's dtype
  // Workspaces: owned by the caller, contiguous, 16-byte aligned; none needs
  // to be initialised or zero-filled (the backward writes each before reading
  // it). Which ones a problem needs (csrc/cuda/kernels/bwd_dispatch.cu):
  //   fp16 / bf16: softmax_d, and dq_accum unless deterministic
  //   fp32:        softmax_d
  //   fp64:        softmax_stats_f64
  // A workspace a problem does not need may be nullptr.
  float* softmax_d = nullptr;    // [B, Hq, Sq] float32: D = rowsum(dO * O) - dlse
  float* dq_accum = nullptr;     // [B, Hq, Sq, D] float32: dQ / scale summed with atomics;
                                 // nullptr makes fp16/bf16 take the deterministic dQ kernel
  double* softmax_stats_f64 = nullptr;  // [2, B, Hq, Sq] float64 (fp64 only): lse recomputed
                                        // in float64, then D
  bool deterministic = false;    // bit-identical results run to run (no atomics)
};

struct CacheAppendParams {
  DType dtype = DType::kBFloat16;
  TensorRef k_cache, v_cache;    // [B, Hkv, S + C, D] (written)
  TensorRef k, v;                // [B, Hkv, T, D]
  const int64_t* pos = nullptr;  // [B]
  int64_t batch = 0, heads_kv = 0, capacity = 0, new_len = 0, head_dim = 0;
  int64_t sink_tokens = 0;       // S: sink slots before the C ring slots (ring.h)
  // Packed new tokens (cache_append.varlen): when set, k, v are [T, Hkv, D]
  // (batch strides not read) with new_len = T, and sequence b's rows are
  // cu_seqlens[b] .. cu_seqlens[b+1] - 1 (int32 [batch + 1], device memory),
  // at positions pos[b] ..; each thread finds its row's sequence on the device.
  const int32_t* cu_seqlens = nullptr;
};

struct CacheGatherParams {
  DType dtype = DType::kBFloat16;
  TensorRef k_cache, v_cache;    // [B, Hkv, C, D]
  void* k_out = nullptr;         // [B, Hkv, n, D] contiguous
  void* v_out = nullptr;
  const int64_t* pos = nullptr;  // [B]
  int64_t batch = 0, heads_kv = 0, capacity = 0, n = 0, head_dim = 0;
};

}  // namespace SWA_KERNEL_NS
