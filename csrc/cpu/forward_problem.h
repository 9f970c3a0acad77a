// The CPU forward's problem description and its per-ISA entry points (see
// cpu/forward_kernel.h for the algorithm, cpu/isa.h for the builds). This
// header also includes everything outside the project that the kernel uses,
// so that an ISA translation unit includes it before switching its target.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // the x86 intrinsics of cpu/simd.h
#endif

#include "cpu/isa.h"
#include "cpu/packed_sequences.h"
#include "cpu/parallel.h"
#include "swa/kernels/band.h"

namespace swa::cpu {

// Lanes of a task's tile (cpu/lane_tile.h): query rows per forward / dQ
// task, keys per dK/dV task.
constexpr int64_t kTileLanes = 64;
constexpr int64_t kForwardTileKeys = 128;  // keys per online-softmax block

// One forward problem. Strides in elements: [0] batch, [1] head, [2] row; the
// last dim has unit stride. out has q's dtype, lse is float32.
struct ForwardProblem {
  c10::ScalarType dtype;
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int64_t q_stride[3], k_stride[3], v_stride[3], out_stride[3], lse_stride[3];
  int64_t heads_q, group, seqlen_q, head_dim, m_blocks;
  SWA_KERNEL_NS::Band band;  // band.sink_tokens: the sink-token run (band.h)
  // Per-head windows (attention.per_head; band.h): band then holds their union.
  SWA_KERNEL_NS::HeadWindows head_windows;
  double scale, softcap;
  const double* sinks = nullptr;  // [Hq] sink logits (natural base), or null
  // Packed sequences (cpu/packed_sequences.h): batch 1, rows offset per
  // sequence, band lengths per sequence; task_begin[s]: first task of s.
  PackedSequences seqs;
  const int64_t* task_begin = nullptr;
};

// One worker: drains the queue of tasks (task = (batch * heads_q + head) *
// m_blocks + query tile, or per sequence when packed: task_spot) with the
// kernel built for one instruction set.
void forward_tasks_avx512_bf16(const ForwardProblem& p, TaskQueue& queue);  // bf16, even head dims
void forward_tasks_avx512(const ForwardProblem& p, TaskQueue& queue);
void forward_tasks_avx2(const ForwardProblem& p, TaskQueue& queue);
void forward_tasks_baseline(const ForwardProblem& p, TaskQueue& queue);

}  // namespace swa::cpu
