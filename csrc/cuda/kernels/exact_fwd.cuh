// The exact forward kernel: any head dim 1 .. 256, any element type, scores and
// softmax accumulated in Acc (double for fp64 inputs, float otherwise). Clarity
// over speed: one warp per query row walks the row's visible keys one at a
// time with an online softmax; lane l owns head dims l, l + 32, ... .
// Serves fp32/fp64 inputs, and 16-bit inputs whose rows are not 16-byte
// aligned (the tensor-core kernel's cp.async needs that).
// Same conventions as the tensor-core kernel: window (band.h), GQA, strides,
// softcap, lse = natural-log logsumexp of the scaled (capped) scores, empty
// row -> out = 0, lse = -inf, and cache_attention's ring key source; attention
// sinks (params.h): the sink run [0, sink_end) walked before the band, the
// sink logit added to the sum at the end (in Acc: sinks_f64 for doubles).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "fwd_source.cuh"
#include "primitives.cuh"
#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

constexpr int kExactMaxHeadDim = 256;
constexpr int kExactDimsPerLane = kExactMaxHeadDim / 32;
constexpr int kExactWarps = 4;  // rows per block

// Element <-> accumulator conversions.
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }

template <typename T, typename Acc>
__device__ __forceinline__ T narrow(Acc x) {
  if constexpr (sizeof(T) == 2) {
    return from_float<T>(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kExactWarps * 32)
    exact_fwd_kernel(const AttentionParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t total_rows = p.batch * p.heads_q * p.seqlen_q;
  const int64_t group_size = p.heads_q / p.heads_kv;
  const int dim = static_cast<int>(p.head_dim);
  const Acc scale = static_cast<Acc>(p.scale);
  const Acc softcap = static_cast<Acc>(p.softcap);

  // Grid-stride over rows (b, h, i), one warp each.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kExactWarps + threadIdx.x / 32; row < total_rows;
       row += static_cast<int64_t>(gridDim.x) * kExactWarps) {
    const int64_t i = row % p.seqlen_q;
    const int64_t h = (row / p.seqlen_q) % p.heads_q;
    const int64_t b = row / (p.seqlen_q * p.heads_q);
    const SequenceRows seq = sequence_rows(p, b);
    if (i >= seq.seqlen_q) continue;  // past a packed sequence's end
    const Band band = batch_band(p, seq, b, h);
    const KeySource<T> keys = make_key_source<T>(p, seq, b, h / group_size);

    const T* q = static_cast<const T*>(p.q.ptr) + seq.stride_batch * p.q.batch_stride + h * p.q.head_stride +
                 (seq.q0 + i) * p.q.row_stride;
    Acc q_reg[kExactDimsPerLane];  // q[lane + 32 c]
    Acc acc[kExactDimsPerLane];    // sum_j exp(s_j - max) v_j[lane + 32 c]
#pragma unroll
    for (int c = 0; c < kExactDimsPerLane; ++c) {
      const int d = lane + 32 * c;
      q_reg[c] = d < dim ? static_cast<Acc>(widen(q[d])) : Acc(0);
      acc[c] = Acc(0);
    }

    // Online softmax over the row's visible keys: the sink run [0, sink_end)
    // (empty without sink tokens), then the band [key_begin, key_end).
    Acc row_max = -INFINITY, row_sum = 0;
    const int64_t sink_end = band.sink_end(i);
    const int64_t key_begin = band.key_begin(i);
    const int64_t key_end = band.key_end(i);
    for (int64_t j = sink_end > 0 ? 0 : key_begin; j < key_end; j = j + 1 == sink_end ? key_begin : j + 1) {
      const T* k = keys.k_row(j);
      const T* v = keys.v_row(j);
      Acc dot = 0;
#pragma unroll
      for (int c = 0; c < kExactDimsPerLane; ++c) {
        const int d = lane + 32 * c;
        if (d < dim) dot += q_reg[c] * static_cast<Acc>(widen(k[d]));
      }
      Acc s = scale * warp_sum(dot);
      if (softcap > 0) s = softcap * tanh(s / softcap);
      const Acc new_max = s > row_max ? s : row_max;
      const Acc rescale = exp(row_max - new_max);  // 0 on the first key (max was -inf)
      const Acc prob = exp(s - new_max);
      row_sum = row_sum * rescale + prob;
#pragma unroll
      for (int c = 0; c < kExactDimsPerLane; ++c) {
        const int d = lane + 32 * c;
        if (d < dim) acc[c] = acc[c] * rescale + prob * static_cast<Acc>(widen(v[d]));
      }
      row_max = new_max;
    }

    // row_sum = 0: no key seen (out 0, lse -inf); NaN: a NaN score reached the
    // row (out and lse NaN).
    Acc inv = row_sum == Acc(0) ? Acc(0) : Acc(1) / row_sum;
    Acc lse = row_sum == Acc(0) ? Acc(-INFINITY) : row_max + log(row_sum);
    if (p.sinks != nullptr) {
      // The value-less sink logit joins the sum: lse = log(sum e^(s - max) e^max
      // + e^sink), out = acc e^(max - lse); no key: out 0, lse = the sink.
      const Acc sink = sizeof(Acc) == 8 && p.sinks_f64 != nullptr ? static_cast<Acc>(p.sinks_f64[h])
                                                                  : static_cast<Acc>(p.sinks[h]);
      if (row_sum == Acc(0)) {
        lse = sink;
      } else {
        const Acc hi = lse > sink ? lse : sink;  // NaN on either side: NaN below
        const Acc lo = lse > sink ? sink : lse;
        lse = hi + log1p(exp(lo == hi ? Acc(0) : lo - hi));
        inv = exp(row_max - lse);
      }
    }
    T* out = static_cast<T*>(p.out) + seq.stride_batch * p.out_batch_stride + h * p.out_head_stride +
             (seq.q0 + i) * p.out_row_stride;
#pragma unroll
    for (int c = 0; c < kExactDimsPerLane; ++c) {
      const int d = lane + 32 * c;
      if (d < dim) out[d] = narrow<T>(acc[c] * inv);
    }
    if (lane == 0) p.lse[lse_offset(p, seq, b, h, i)] = static_cast<float>(lse);
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
