// Packed variable-length sequences (attention.varlen) in the CPU kernels.
// The host views the packed [T, H, D] operands as one batch [1, H, T, D] and
// hands the kernels the sequences' row offsets: sequence s owns query rows
// [cu_q[s], cu_q[s+1]) and key rows [cu_k[s], cu_k[s+1]), and its window is
// the band of its own lengths (band.h), so nothing crosses a boundary.
// Tasks are numbered sequence by sequence (head-major inside one), so the
// work splits over (sequence, head, tile) whatever the lengths.
#pragma once

#include <algorithm>
#include <cstdint>

#include "swa/kernels/band.h"

namespace swa::cpu {

struct PackedSequences {
  const int64_t* cu_q = nullptr;  // [count + 1] query row offsets; nullptr: not packed
  const int64_t* cu_k = nullptr;  // [count + 1] key row offsets
  int64_t count = 0;              // sequences
  bool packed() const { return cu_q != nullptr; }
  int64_t len_q(int64_t s) const { return cu_q[s + 1] - cu_q[s]; }
  int64_t len_k(int64_t s) const { return cu_k[s + 1] - cu_k[s]; }
};

// A packed problem as the hosts hand it to the kernels: the sequences and
// the first task of each in the query-tile and key-tile passes (arrays owned
// by the caller).
struct PackedLayout {
  PackedSequences seqs;
  const int64_t* q_task_begin = nullptr;  // [count + 1]
  const int64_t* k_task_begin = nullptr;  // [count + 1] (backward only)
};

// A kernel task: batch b (0 when packed), sequence (-1 when not packed),
// head and tile.
struct TaskSpot {
  int64_t b, seq, head, block;
};

inline int64_t tiles_of(int64_t length, int64_t tile) { return (length + tile - 1) / tile; }

// task_begin[s] = first task of sequence s (count + 1 entries): heads * tiles
// of its length per sequence. by_keys: tiles of the key length (dK/dV).
inline void fill_task_begin(const PackedSequences& seqs, int64_t heads, int64_t tile, bool by_keys,
                            int64_t* task_begin) {
  task_begin[0] = 0;
  for (int64_t s = 0; s < seqs.count; ++s)
    task_begin[s + 1] = task_begin[s] + heads * tiles_of(by_keys ? seqs.len_k(s) : seqs.len_q(s), tile);
}

// Task -> spot. Not packed: task = (b * heads + head) * blocks + block.
// Packed: the sequence whose task range holds the task (zero-length
// sequences own none), then head-major inside it.
inline TaskSpot task_spot(int64_t task, int64_t heads, int64_t blocks, const PackedSequences& seqs,
                          const int64_t* task_begin, int64_t tile, bool by_keys) {
  if (!seqs.packed()) return {task / (blocks * heads), -1, (task / blocks) % heads, task % blocks};
  const int64_t s = std::upper_bound(task_begin, task_begin + seqs.count + 1, task) - task_begin - 1;
  const int64_t local = task - task_begin[s];
  const int64_t n = tiles_of(by_keys ? seqs.len_k(s) : seqs.len_q(s), tile);
  return {0, s, local / n, local % n};
}

// The band of a task's sequence (the call's band when not packed).
inline SWA_KERNEL_NS::Band sequence_band(const SWA_KERNEL_NS::Band& band, const PackedSequences& seqs, int64_t s) {
  if (s < 0) return band;
  SWA_KERNEL_NS::Band b = band;
  b.seqlen_q = seqs.len_q(s);
  b.seqlen_k = seqs.len_k(s);
  return b;
}

}  // namespace swa::cpu
