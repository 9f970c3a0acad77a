// Row-wise kernels around the tensor-core backward (fp16/bf16), one block per
// (batch entry or packed sequence, query head, kBwdRowBlock rows) (BwdRowGrid;
// blocks past a packed sequence's end exit at once):
//   bwd_preprocess_kernel:  D = rowsum(dO * O) - dlse -> softmax_d (fp32), and
//                           in the default mode dq_accum rows := 0
//   bwd_convert_dq_kernel:  dq = scale * dq_accum in q's dtype and strides
// Rows of dO / O / dq are read and written in 16-byte (resp. 4-byte) pieces:
// the launcher checks that alignment.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "bwd_kernel_traits.cuh"
#include "primitives.cuh"
#include "sequence_rows.cuh"
#include "swa/kernels/bwd_tiles.h"
#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// The two 16-bit values of a 32-bit word (low half first), as floats; bit
// conversions rather than a pointer cast (no type-punning of the loaded vector).
template <typename T>
__device__ __forceinline__ float2 unpack_pair(uint32_t w);
template <>
__device__ __forceinline__ float2 unpack_pair<__half>(uint32_t w) {
  return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16))));
}
template <>
__device__ __forceinline__ float2 unpack_pair<__nv_bfloat16>(uint32_t w) {
  return make_float2(__bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(w & 0xffffu))),
                     __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(w >> 16))));
}


// Lanes that share one row in the preprocess: the power of two >= the row's
// 16-byte chunks (kHeadDim / 8), so that a row's partial sums reduce with
// xor-shuffles inside an aligned lane group.
template <int kHeadDim>
constexpr int preprocess_lanes_per_row() {
  return kHeadDim / 8 <= 4 ? 4 : kHeadDim / 8 <= 8 ? 8 : kHeadDim / 8 <= 16 ? 16 : 32;
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kBwdRowThreads)
    bwd_preprocess_kernel(const AttentionBackwardParams params, const BwdRowGrid grid, int zero_dq_accum) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kLanes = preprocess_lanes_per_row<kHeadDim>();
  constexpr int kRowsPerPass = kBwdRowThreads / kLanes;
  static_assert(kChunks <= 32 && kBwdRowBlock % kRowsPerPass == 0, "every thread runs the same passes");
  const AttentionParams& fp = params.fwd;
  const BwdRowBlock blk = bwd_row_block(grid, blockIdx.x);
  const int64_t batch = blk.batch_head / fp.heads_q;
  const int64_t head = blk.batch_head % fp.heads_q;
  const int row0 = static_cast<int>(blk.row_block) * kBwdRowBlock;
  const SequenceRows seq = sequence_rows(fp, batch);
  if (row0 >= seq.seqlen_q) return;  // the whole block: no shuffle is left waiting
  const int sub = threadIdx.x % kLanes;  // this thread's chunk of the row
  const T* dout = static_cast<const T*>(params.dout.ptr) + seq.stride_batch * params.dout.batch_stride +
                  head * params.dout.head_stride + seq.q0 * params.dout.row_stride;
  const T* out = static_cast<const T*>(fp.out) + seq.stride_batch * fp.out_batch_stride +
                 head * fp.out_head_stride + seq.q0 * fp.out_row_stride;
  const int64_t row_index0 = lse_offset(fp, seq, batch, head, 0);  // of lse, D, dq_accum rows

  // Every thread makes the same kBwdRowBlock / kRowsPerPass passes (the
  // shuffles need all 32 lanes).
#pragma unroll 1
  for (int r = threadIdx.x / kLanes; r < kBwdRowBlock; r += kRowsPerPass) {
    const int row = row0 + r;
    const bool valid = row < seq.seqlen_q;
    float acc = 0.f;
    if (valid && sub < kChunks) {
      const uint4 dv = *reinterpret_cast<const uint4*>(dout + row * params.dout.row_stride + 8 * sub);
      const uint4 ov = *reinterpret_cast<const uint4*>(out + row * fp.out_row_stride + 8 * sub);
      const uint32_t dw[4] = {dv.x, dv.y, dv.z, dv.w};
      const uint32_t ow[4] = {ov.x, ov.y, ov.z, ov.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 d2 = unpack_pair<T>(dw[e]);
        const float2 o2 = unpack_pair<T>(ow[e]);
        acc = fmaf(d2.x, o2.x, acc);
        acc = fmaf(d2.y, o2.y, acc);
      }
    }
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (!valid) continue;
    const int64_t row_index = row_index0 + row;
    if (sub == 0) params.softmax_d[row_index] = acc - (params.dlse != nullptr ? params.dlse[row_index] : 0.f);
    if (zero_dq_accum) {
      float4* dq_row = reinterpret_cast<float4*>(params.dq_accum + row_index * kHeadDim);
      for (int v = sub; v < kHeadDim / 4; v += kLanes) dq_row[v] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kBwdRowThreads)
    bwd_convert_dq_kernel(const AttentionBackwardParams params, const BwdRowGrid grid, float scale) {
  constexpr int kChunks = kHeadDim / 8;  // 8 elements each
  const AttentionParams& fp = params.fwd;
  const BwdRowBlock blk = bwd_row_block(grid, blockIdx.x);
  const int64_t batch = blk.batch_head / fp.heads_q;
  const int64_t head = blk.batch_head % fp.heads_q;
  const int row0 = static_cast<int>(blk.row_block) * kBwdRowBlock;
  const SequenceRows seq = sequence_rows(fp, batch);
  if (row0 >= seq.seqlen_q) return;
  T* dq = static_cast<T*>(params.dq.ptr) + seq.stride_batch * params.dq.batch_stride +
          head * params.dq.head_stride + seq.q0 * params.dq.row_stride;
  const float* acc = params.dq_accum + lse_offset(fp, seq, batch, head, 0) * kHeadDim;
  for (int idx = threadIdx.x; idx < kBwdRowBlock * kChunks; idx += kBwdRowThreads) {
    const int row = row0 + idx / kChunks;
    const int c = idx % kChunks;
    if (row >= seq.seqlen_q) continue;
    const float4* src = reinterpret_cast<const float4*>(acc + static_cast<int64_t>(row) * kHeadDim + 8 * c);
    const float4 x = src[0], y = src[1];
    uint32_t* dst = reinterpret_cast<uint32_t*>(dq + row * params.dq.row_stride + 8 * c);
    dst[0] = pack2<T>(scale * x.x, scale * x.y);
    dst[1] = pack2<T>(scale * x.z, scale * x.w);
    dst[2] = pack2<T>(scale * y.x, scale * y.y);
    dst[3] = pack2<T>(scale * y.z, scale * y.w);
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
