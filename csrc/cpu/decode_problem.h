// The CPU decode kernel's problem description and its per-ISA entry points
// (see cpu/decode_kernel.h for the algorithm, cpu/decode.cpp for the host
// side, cpu/isa.h for the builds).
//
// cache_attention with few new tokens (T * Hq / Hkv query rows per kv head
// at most kDecodeMaxRows) reads the ring in place: a task is one kv head of
// one sequence (all its query heads and new tokens together, so each key row
// is read once) over one split of its virtual key sequence (ring slots, then
// the new keys); with splits > 1 the tasks leave partial results that the
// host merges through their log-sum-exp (flash-decoding).
#pragma once

#include "cpu/forward_problem.h"  // everything from outside the project the kernels use

namespace swa::cpu {

constexpr int64_t kDecodeMaxRows = 32;     // query rows per kv head (T * group) of the decode path
constexpr int64_t kDecodeBlockKeys = 64;   // keys per online-softmax block
constexpr int64_t kDecodePrefetchKeys = 64;  // key and value rows are prefetched this many rows ahead
constexpr int64_t kDecodeSplitAlign = 64;  // splits start at multiples of this many keys

// One decode problem. Strides in elements: [0] batch, [1] head, [2] row; the
// last dim has unit stride. out has q's dtype, lse is float32.
struct DecodeProblem {
  c10::ScalarType dtype;
  const void* q;
  const void* k_new;
  const void* v_new;
  const void* k_cache;
  const void* v_cache;
  void* out;
  float* lse;
  const int64_t* pos;  // [B]: position of each sequence's first new token
  int64_t q_stride[3], k_new_stride[3], v_new_stride[3], k_cache_stride[3], v_cache_stride[3];
  int64_t out_stride[3], lse_stride[3];
  int64_t heads_kv, group, new_len, head_dim, window, capacity;
  // Sinks: S sink slots before the ring (capacity = the ring's slots; see
  // swa/kernels/ring.h) and/or one logit per query head, or null.
  int64_t sink_tokens = 0;
  const double* sinks = nullptr;
  double scale, softcap;
  // Packed new tokens (cache_attention.varlen), or null (the padded layout):
  // sequence b's T_b <= new_len tokens are rows cu_seqlens[b] ..
  // cu_seqlens[b+1] - 1 of q, k_new, v_new, out and lse (stride [2]; stride
  // [0] is 0), and the problem's sequences are those listed in `sequences`
  // (cache sequences; T_b >= 1 each), so the decode steps of a mixed batch
  // run here while its prefill chunks go elsewhere.
  const int64_t* cu_seqlens = nullptr;
  const int64_t* sequences = nullptr;
  // Window split: task = (i * heads_kv + hk) * splits + split (sequence i
  // of the problem, decode_sequence), the split
  // covering virtual keys [split * split_keys, (split + 1) * split_keys).
  int64_t splits, split_keys;
  // Software prefetch of the next block's key and value rows: on when the
  // step's window K/V exceed the last-level cache (from memory the hardware
  // prefetchers stall at page edges on the two streams); off when they fit,
  // where the extra load-port work only slows the step (B1 Hq8 Hkv8 D64
  // W4096 fp32, 16 MiB in a 32 MiB L3: 230 -> 180 us without it).
  bool prefetch = true;
  // splits > 1: per task, rows x (2 + head_dim) values of the accumulation
  // type (float, double for float64): the row's base-2 max m, sum l and
  // unnormalised output (see merge in cpu/decode.cpp). Else out and lse are
  // written directly.
  void* partial;
};

// Sequence i of a problem: its cache sequence b, the row of its first new
// token in q, k_new, v_new, out, lse, and its number of new tokens.
struct DecodeSequence {
  int64_t b, row0, new_len;
};
inline DecodeSequence decode_sequence(const DecodeProblem& p, int64_t i) {
  if (p.cu_seqlens == nullptr) return {i, 0, p.new_len};
  const int64_t b = p.sequences[i];
  return {b, p.cu_seqlens[b], p.cu_seqlens[b + 1] - p.cu_seqlens[b]};
}

// The accumulation type's rows of one task's partial result (at most; a
// packed sequence's first group * T_b).
inline int64_t decode_rows(const DecodeProblem& p) { return p.group * p.new_len; }
inline int64_t decode_partial_stride(const DecodeProblem& p) { return decode_rows(p) * (2 + p.head_dim); }

// One worker: drains the queue of decode tasks with the kernel built for one
// instruction set.
void decode_tasks_avx512(const DecodeProblem& p, TaskQueue& queue);
void decode_tasks_avx2(const DecodeProblem& p, TaskQueue& queue);
void decode_tasks_baseline(const DecodeProblem& p, TaskQueue& queue);

}  // namespace swa::cpu
