// The CPU backward's problem description and its per-ISA entry points (see
// cpu/backward_kernel.h for the algorithm, cpu/isa.h for the builds). Like
// cpu/forward_problem.h it includes everything from outside the project the
// kernel uses, so an ISA translation unit includes it before its target switch.
#pragma once

#include "cpu/forward_problem.h"

namespace swa::cpu {

constexpr int64_t kBackwardTileItems = 128;  // keys (dQ pass) / query rows (dK/dV pass) per block
constexpr int64_t kDqSinkKeys = 16;  // at most this many sink tokens: their pairs in the dQ pass (sink_grads)

// One backward problem. Strides in elements: [0] batch, [1] head, [2] row; the
// last dim has unit stride. grad_lse (float32) may be null.
struct BackwardProblem {
  c10::ScalarType dtype;
  const void* dout;
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const float* grad_lse;
  void* dq;
  void* dk;
  void* dv;
  int64_t dout_stride[3], q_stride[3], k_stride[3], v_stride[3], out_stride[3], grad_lse_stride[3];
  int64_t dq_stride[3], dk_stride[3], dv_stride[3];
  // Per query row, written by the dQ pass and read by the dK/dV pass, in the
  // accumulation type (float64 for float64 inputs, else float32), contiguous
  // [B, Hq, Sq]: the base-2 log-sum-exp and rowsum(dO * O) - dlse.
  void* lse2;
  void* delta;
  // lse2 filled by the caller from the forward's lse (float32 inputs: the
  // forward's float32 lse is exact enough), so the dQ pass skips its sweep 1;
  // so do bf16 inputs on bf16 pairs (their P is rounded to bf16 for the
  // products, and a P of 1 - 2^-24 rounds to 1). fp16 and bf16 widened to
  // float32 recompute it (a row seeing one key must get P = 1 exactly, which
  // lse rounded to float32 does not give) and float64 ones too (their
  // gradients are not limited by a float32 lse).
  bool lse2_given = false;
  // One pass (bounded windows, not packed; sink tokens only with sink_grads): the dK/dV
  // pass also takes dQ / scale += dS K. A task is a chunk of chunk_keys keys
  // (a multiple of the tile, set by the shape alone) of one kv head, whose
  // tiles go in order; its dQ sums go to its own slice of dq_chunks, rows
  // [chunk_rows[2c], chunk_rows[2c + 1]) of each query head of the group
  // (the rows that see the chunk), and the caller adds the slices of each row
  // in chunk order. So S and dP are computed once, not twice, and every sum
  // has a fixed order whatever the thread count. Tasks: (b * heads_kv + kv
  // head) * chunks + chunk. lse2 and delta come first, from the dQ pass run
  // with stats_only (delta and sweep 1, or lse2 read when given; no sweep 2).
  // With sink tokens (sink_grads) the dQ pass also runs sweep 2 over its
  // rows' sink runs only, which the dK/dV tasks leave out (band_row_range),
  // and writes that part of dQ / scale (0 for rows without one) as the start
  // of each row's first slice, that of the first chunk whose rows hold it
  // (sink_rows_start_slices): the dK/dV tasks then zero only the rows of their
  // slice that an earlier chunk holds, and no buffer beside the slices is
  // written, zeroed or read.
  bool fused_dq = false;
  bool sink_rows_start_slices = false;
  bool stats_only = false;
  int64_t chunk_keys = 0, chunks = 0;
  const int64_t* chunk_rows = nullptr;     // [2 * chunks]: row ranges
  const int64_t* chunk_offset = nullptr;   // [chunks + 1]: prefix sums of group * rows * head_dim
  // [chunks]: chunk c holds rows [chunk_first_row[c], chunk_rows[2c + 1])
  // first (no earlier chunk holds them; sink_rows_start_slices).
  const int64_t* chunk_first_row = nullptr;
  void* dq_chunks = nullptr;               // accumulation type; slice of task t at
                                           // ((b * heads_kv + hk) * chunk_offset[chunks] + chunk_offset[c])
  int64_t heads_q, heads_kv, group, seqlen_q, seqlen_k, head_dim, m_blocks, n_blocks;
  SWA_KERNEL_NS::Band band;  // band.sink_tokens: the sink-token run (band.h)
  // Per-head windows (attention.per_head; band.h): band then holds their union.
  SWA_KERNEL_NS::HeadWindows head_windows;
  double scale, softcap;
  const double* sinks = nullptr;  // [Hq] sink logits (natural base), or null: they join lse2
  // With few sink tokens (band.sink_tokens <= kDqSinkKeys) the dQ pass also
  // takes the sink keys' dK / dV through its rows' sink runs, where its Q and
  // dO tiles already are (the dK/dV pass would stream every row of the
  // sequence again for a few keys): per dQ task, [2][S][D] of the
  // accumulation type (dK / scale, then dV), zero where the tile has no sink
  // run; the dK/dV pass adds them up, task by task in order. Null: the dK/dV
  // pass takes those pairs itself.
  void* sink_grads = nullptr;
  // Packed sequences (cpu/packed_sequences.h): batch 1, rows offset per
  // sequence; the first task of each sequence in the dQ pass (by query
  // tiles) and in the dK/dV pass (by key tiles).
  PackedSequences seqs;
  const int64_t* q_task_begin = nullptr;
  const int64_t* k_task_begin = nullptr;
};

// One worker of the dQ pass (task = (batch * heads_q + head) * m_blocks +
// query tile) or of the dK/dV pass (task = (batch * heads_kv + kv head) *
// n_blocks + key tile), with the kernel built for one instruction set.
// The _avx512_bf16 entries take bf16 with an even head dim, fused_dq only.
void backward_dq_tasks_avx512_bf16(const BackwardProblem& p, TaskQueue& queue);
void backward_dkdv_tasks_avx512_bf16(const BackwardProblem& p, TaskQueue& queue);
void backward_dq_tasks_avx512(const BackwardProblem& p, TaskQueue& queue);
void backward_dq_tasks_avx2(const BackwardProblem& p, TaskQueue& queue);
void backward_dq_tasks_baseline(const BackwardProblem& p, TaskQueue& queue);
void backward_dkdv_tasks_avx512(const BackwardProblem& p, TaskQueue& queue);
void backward_dkdv_tasks_avx2(const BackwardProblem& p, TaskQueue& queue);
void backward_dkdv_tasks_baseline(const BackwardProblem& p, TaskQueue& queue);

}  // namespace swa::cpu
