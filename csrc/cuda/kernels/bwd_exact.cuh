// The exact backward: any head dim 1 .. 256, any element type, accumulated in
// Acc (double for fp64 inputs, float otherwise). Clarity over speed, and
// deterministic (no atomics, fixed summation orders). Serves fp32/fp64 inputs,
// and 16-bit inputs that the tensor-core kernels cannot take (alignment,
// shared memory, head dims without an instantiation).
//
//   exact_bwd_dq_kernel    one warp per query row (b, h, i):
//       D = dO.O - dlse; lse = the forward's lse (Acc = float) or recomputed
//       in float64 (Acc = double: float64 gradients need more than the
//       float32 lse output; it includes the sink logit, as the forward's
//       does); both stored for the second kernel; then over the row's
//       visible keys j (its sink run, then its band): P = exp(s - lse), dP = dO.v_j,
//       dX = P (dP - D) [* (1 - tanh^2)], dq += dX k_j; dq *= scale.
//   exact_bwd_dkdv_kernel  one warp per key row (b, hkv, j), after the first:
//       over the query heads of the group and the rows that see j
//       (key_query_rows, contiguous with sink tokens too): dv += P dO_i,
//       dk += dX q_i; dk *= scale.
// Lane l owns head dims l, l + 32, ...; dot products are warp sums, identical
// in every lane (xor butterfly). Packed sequences: the warps walk the padded
// (sequence, head, longest-sequence row) space and skip rows past their own
// sequence's end (sequence_rows); lse and the row workspaces are [Hq, Tq].
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "primitives.cuh"
#include "sequence_rows.cuh"
#include "swa/kernels/band.h"
#include "swa/kernels/bwd_tiles.h"
#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

constexpr int kExactBwdMaxHeadDim = 256;
constexpr int kExactBwdDimsPerLane = kExactBwdMaxHeadDim / 32;
constexpr int kExactBwdWarps = 4;  // rows per block

__device__ __forceinline__ float exact_widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float exact_widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float exact_widen(float x) { return x; }
__device__ __forceinline__ double exact_widen(double x) { return x; }

template <typename T, typename Acc>
__device__ __forceinline__ T exact_narrow(Acc x) {
  if constexpr (sizeof(T) == 2) {
    return from_float<T>(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <typename Acc>
__device__ __forceinline__ Acc exact_warp_sum(Acc x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Row `dims` of a [B, H, S, D] operand into registers, lane l holding l + 32 c.
template <typename T, typename Acc>
__device__ __forceinline__ void exact_load_row(Acc (&r)[kExactBwdDimsPerLane], const T* row, int dim, int lane) {
#pragma unroll
  for (int c = 0; c < kExactBwdDimsPerLane; ++c) {
    const int d = lane + 32 * c;
    r[c] = d < dim ? static_cast<Acc>(exact_widen(row[d])) : Acc(0);
  }
}

template <typename Acc>
__device__ __forceinline__ Acc exact_dot(const Acc (&a)[kExactBwdDimsPerLane], const Acc (&b)[kExactBwdDimsPerLane]) {
  Acc s = 0;
#pragma unroll
  for (int c = 0; c < kExactBwdDimsPerLane; ++c) s += a[c] * b[c];
  return exact_warp_sum(s);
}

// The score gradient of one pair: x = scale * q.k; s = x or softcap tanh(x /
// softcap); P = exp(s - lse) (lse_use = +inf for a row that sees nothing: P =
// 0); dX = P (dP - D) [* (1 - tanh^2)].
template <typename Acc>
struct ExactScore {
  Acc scale, softcap;
  __device__ __forceinline__ Acc score(Acc qk, Acc& t) const {
    const Acc x = scale * qk;
    if (softcap > Acc(0)) {
      t = tanh(x / softcap);
      return softcap * t;
    }
    t = 0;
    return x;
  }
  __device__ __forceinline__ void grad(Acc qk, Acc dp, Acc lse_use, Acc d, Acc& p, Acc& dx) const {
    Acc t;
    const Acc s = score(qk, t);
    p = exp(s - lse_use);
    dx = p * (dp - d);
    if (softcap > Acc(0)) dx *= Acc(1) - t * t;
  }
};

template <typename Acc>
__device__ __forceinline__ Acc exact_lse_use(Acc lse) {
  return lse == -static_cast<Acc>(INFINITY) ? static_cast<Acc>(INFINITY) : lse;
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kExactBwdWarps * 32) exact_bwd_dq_kernel(const AttentionBackwardParams p) {
  const AttentionParams& f = p.fwd;
  const int lane = threadIdx.x % 32;
  const int64_t padded_rows = f.batch * f.heads_q * f.seqlen_q;  // the walk
  const int64_t total_rows = lse_rows(f);                          // the row arrays
  const int64_t group_size = f.heads_q / f.heads_kv;
  const int dim = static_cast<int>(f.head_dim);
  const ExactScore<Acc> sc{static_cast<Acc>(f.scale), static_cast<Acc>(f.softcap)};

  for (int64_t walk = static_cast<int64_t>(blockIdx.x) * kExactBwdWarps + threadIdx.x / 32; walk < padded_rows;
       walk += static_cast<int64_t>(gridDim.x) * kExactBwdWarps) {
    const int64_t i = walk % f.seqlen_q;
    const int64_t h = (walk / f.seqlen_q) % f.heads_q;
    const int64_t b = walk / (f.seqlen_q * f.heads_q);
    const SequenceRows seq = sequence_rows(f, b);
    if (i >= seq.seqlen_q) continue;  // past a packed sequence's end (the whole warp)
    const Band band =
        f.head_windows.of_head(Band{seq.seqlen_q, seq.seqlen_k, f.window_left, f.window_right, f.sink_tokens}, h);
    const int64_t row = lse_offset(f, seq, b, h, i);
    const int64_t hkv = h / group_size;
    const int64_t qi = seq.q0 + i;
    const T* q = static_cast<const T*>(f.q.ptr) + seq.stride_batch * f.q.batch_stride + h * f.q.head_stride +
                 qi * f.q.row_stride;
    const T* dout = static_cast<const T*>(p.dout.ptr) + seq.stride_batch * p.dout.batch_stride +
                    h * p.dout.head_stride + qi * p.dout.row_stride;
    const T* out = static_cast<const T*>(f.out) + seq.stride_batch * f.out_batch_stride + h * f.out_head_stride +
                   qi * f.out_row_stride;
    const T* k_head = static_cast<const T*>(f.k.ptr) + seq.stride_batch * f.k.batch_stride +
                      hkv * f.k.head_stride + seq.k0 * f.k.row_stride;
    const T* v_head = static_cast<const T*>(f.v.ptr) + seq.stride_batch * f.v.batch_stride +
                      hkv * f.v.head_stride + seq.k0 * f.v.row_stride;

    Acc q_reg[kExactBwdDimsPerLane], do_reg[kExactBwdDimsPerLane], dq[kExactBwdDimsPerLane];
    exact_load_row<T, Acc>(q_reg, q, dim, lane);
    exact_load_row<T, Acc>(do_reg, dout, dim, lane);
    {
      Acc o_reg[kExactBwdDimsPerLane];
      exact_load_row<T, Acc>(o_reg, out, dim, lane);
      // dq doubles as the scratch for O here.
#pragma unroll
      for (int c = 0; c < kExactBwdDimsPerLane; ++c) dq[c] = o_reg[c];
    }
    const Acc d = exact_dot(do_reg, dq) - (p.dlse != nullptr ? static_cast<Acc>(p.dlse[row]) : Acc(0));
    // The row's keys: the sink run [0, sink_end) and the band [key_begin,
    // key_end), disjoint (band.h); visit v of the two as one loop.
    const int64_t sink_end = band.sink_end(i);
    const int64_t key_begin = band.key_begin(i);
    const int64_t visits = sink_end + band_max64(0, band.key_end(i) - key_begin);
    auto key_of_visit = [&](int64_t v) { return v < sink_end ? v : key_begin + (v - sink_end); };

    Acc lse;
    if constexpr (std::is_same<Acc, double>::value) {
      // lse recomputed in float64 (online logsumexp over the visible keys).
      Acc m = -static_cast<Acc>(INFINITY), l = 0;
      for (int64_t v = 0; v < visits; ++v) {
        Acc k_reg[kExactBwdDimsPerLane];
        exact_load_row<T, Acc>(k_reg, k_head + key_of_visit(v) * f.k.row_stride, dim, lane);
        Acc t;
        const Acc s = sc.score(exact_dot(q_reg, k_reg), t);
        const Acc m_new = s > m ? s : m;
        l = l * exp(m - m_new) + exp(s - m_new);
        m = m_new;
      }
      lse = l == 0 ? -static_cast<Acc>(INFINITY) : m + log(l);  // NaN stays NaN
      // The sink logit joins the softmax as one more (value-less) logit, as in
      // the forward: lse = log(exp(lse) + exp(sink)); a row without keys gets
      // the sink itself (also keeps -inf - -inf out of the log-add-exp).
      if (f.sinks != nullptr) {
        // float64 logits where the host kept them (AttentionParams::sinks_f64).
        const Acc sink = f.sinks_f64 != nullptr ? static_cast<Acc>(f.sinks_f64[h]) : static_cast<Acc>(f.sinks[h]);
        if (l == 0) {
          lse = sink;
        } else {
          const Acc hi = sink > lse ? sink : lse;  // a NaN lse or sink: NaN below
          const Acc inf = static_cast<Acc>(INFINITY);
          lse = hi == inf ? inf : hi + log(exp(lse - hi) + exp(sink - hi));
        }
      }
      if (lane == 0) {
        p.softmax_stats_f64[row] = lse;
        p.softmax_stats_f64[total_rows + row] = d;
      }
    } else {
      lse = f.lse[row];
      if (lane == 0) p.softmax_d[row] = static_cast<float>(d);
    }
    const Acc lse_use = exact_lse_use(lse);

#pragma unroll
    for (int c = 0; c < kExactBwdDimsPerLane; ++c) dq[c] = 0;
    for (int64_t v = 0; v < visits; ++v) {
      const int64_t j = key_of_visit(v);
      Acc k_reg[kExactBwdDimsPerLane], v_reg[kExactBwdDimsPerLane];
      exact_load_row<T, Acc>(k_reg, k_head + j * f.k.row_stride, dim, lane);
      exact_load_row<T, Acc>(v_reg, v_head + j * f.v.row_stride, dim, lane);
      Acc prob, dx;
      sc.grad(exact_dot(q_reg, k_reg), exact_dot(do_reg, v_reg), lse_use, d, prob, dx);
#pragma unroll
      for (int c = 0; c < kExactBwdDimsPerLane; ++c) dq[c] += dx * k_reg[c];
    }
    T* dq_row = static_cast<T*>(p.dq.ptr) + seq.stride_batch * p.dq.batch_stride + h * p.dq.head_stride +
                qi * p.dq.row_stride;
#pragma unroll
    for (int c = 0; c < kExactBwdDimsPerLane; ++c) {
      const int dd = lane + 32 * c;
      if (dd < dim) dq_row[dd] = exact_narrow<T>(sc.scale * dq[c]);
    }
  }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kExactBwdWarps * 32) exact_bwd_dkdv_kernel(const AttentionBackwardParams p) {
  const AttentionParams& f = p.fwd;
  const int lane = threadIdx.x % 32;
  const int64_t padded_keys = f.batch * f.heads_kv * f.seqlen_k;  // the walk
  const int64_t total_rows = lse_rows(f);                           // the row arrays
  const int64_t group_size = f.heads_q / f.heads_kv;
  const int dim = static_cast<int>(f.head_dim);
  const ExactScore<Acc> sc{static_cast<Acc>(f.scale), static_cast<Acc>(f.softcap)};

  for (int64_t walk = static_cast<int64_t>(blockIdx.x) * kExactBwdWarps + threadIdx.x / 32; walk < padded_keys;
       walk += static_cast<int64_t>(gridDim.x) * kExactBwdWarps) {
    const int64_t j = walk % f.seqlen_k;
    const int64_t hkv = (walk / f.seqlen_k) % f.heads_kv;
    const int64_t b = walk / (f.seqlen_k * f.heads_kv);
    const SequenceRows seq = sequence_rows(f, b);
    if (j >= seq.seqlen_k) continue;  // past a packed sequence's end (the whole warp)
    const Band band{seq.seqlen_q, seq.seqlen_k, f.window_left, f.window_right, f.sink_tokens};
    const int64_t kj = seq.k0 + j;
    Acc k_reg[kExactBwdDimsPerLane], v_reg[kExactBwdDimsPerLane];
    exact_load_row<T, Acc>(k_reg, static_cast<const T*>(f.k.ptr) + seq.stride_batch * f.k.batch_stride +
                                      hkv * f.k.head_stride + kj * f.k.row_stride, dim, lane);
    exact_load_row<T, Acc>(v_reg, static_cast<const T*>(f.v.ptr) + seq.stride_batch * f.v.batch_stride +
                                      hkv * f.v.head_stride + kj * f.v.row_stride, dim, lane);
    Acc dk[kExactBwdDimsPerLane], dv[kExactBwdDimsPerLane];
#pragma unroll
    for (int c = 0; c < kExactBwdDimsPerLane; ++c) dk[c] = dv[c] = 0;

    for (int64_t g = 0; g < group_size; ++g) {
      const int64_t h = hkv * group_size + g;
      const KeyRange rows = key_query_rows(f.head_windows.of_head(band, h), j);  // band: the union
      for (int64_t i = rows.begin; i < rows.end; ++i) {
        const int64_t row = lse_offset(f, seq, b, h, i);
        Acc lse, d;
        if constexpr (std::is_same<Acc, double>::value) {
          lse = p.softmax_stats_f64[row];
          d = p.softmax_stats_f64[total_rows + row];
        } else {
          lse = f.lse[row];
          d = p.softmax_d[row];
        }
        Acc q_reg[kExactBwdDimsPerLane], do_reg[kExactBwdDimsPerLane];
        const int64_t qi = seq.q0 + i;
        exact_load_row<T, Acc>(q_reg, static_cast<const T*>(f.q.ptr) + seq.stride_batch * f.q.batch_stride +
                                          h * f.q.head_stride + qi * f.q.row_stride, dim, lane);
        exact_load_row<T, Acc>(do_reg, static_cast<const T*>(p.dout.ptr) + seq.stride_batch * p.dout.batch_stride +
                                           h * p.dout.head_stride + qi * p.dout.row_stride, dim, lane);
        Acc prob, dx;
        sc.grad(exact_dot(q_reg, k_reg), exact_dot(do_reg, v_reg), exact_lse_use(lse), d, prob, dx);
#pragma unroll
        for (int c = 0; c < kExactBwdDimsPerLane; ++c) {
          dv[c] += prob * do_reg[c];
          dk[c] += dx * q_reg[c];
        }
      }
    }
    T* dk_row = static_cast<T*>(p.dk.ptr) + seq.stride_batch * p.dk.batch_stride + hkv * p.dk.head_stride +
                kj * p.dk.row_stride;
    T* dv_row = static_cast<T*>(p.dv.ptr) + seq.stride_batch * p.dv.batch_stride + hkv * p.dv.head_stride +
                kj * p.dv.row_stride;
#pragma unroll
    for (int c = 0; c < kExactBwdDimsPerLane; ++c) {
      const int dd = lane + 32 * c;
      if (dd < dim) {
        dk_row[dd] = exact_narrow<T>(sc.scale * dk[c]);
        dv_row[dd] = exact_narrow<T>(dv[c]);
      }
    }
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
