// Split-KV combine: split s of a row produced a normalised partial output O_s
// and its logsumexp lse_s over its share of the keys (lse_s = -inf when the
// share had no visible key). The row's results are
//     lse = log(sum_s exp(lse_s)),   O = sum_s exp(lse_s - lse) O_s,
// with lse = -inf and O = 0 when no split saw a key. A sink logit (params.h)
// joins once, here: lse = log(sum_s exp(lse_s) + exp(sinks[h])), and a row no
// split saw a key of gets lse = sinks[h]. One warp per row (b, h, i);
// partials are [splits, B, Hq, Sq, (D)] float32, contiguous (packed sequences
// too: rows past a sequence's end are skipped).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "fwd_api.cuh"
#include "fwd_score.cuh"
#include "fwd_source.cuh"
#include "primitives.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {
namespace {

constexpr int kCombineWarps = 4;

__device__ __forceinline__ float warp_max_f(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

__device__ __forceinline__ float warp_sum_f(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename T>
__global__ void __launch_bounds__(kCombineWarps * 32) fwd_combine_kernel(const AttentionParams p) {
  __shared__ float weights[kCombineWarps][kMaxSplits];  // exp(lse_s - lse) of the warp's row
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int splits = p.num_splits;
  // rows < 2^31 (checked by the launcher; split-KV only runs on small grids),
  // so the row decode below is 32-bit (64-bit division is a slow call).
  const int rows = static_cast<int>(p.batch * p.heads_q * p.seqlen_q);
  const int dim = static_cast<int>(p.head_dim);
  const int seqlen_q = static_cast<int>(p.seqlen_q);
  const int heads_q = static_cast<int>(p.heads_q);

  for (int row = blockIdx.x * kCombineWarps + warp; row < rows; row += gridDim.x * kCombineWarps) {
    const int i = row % seqlen_q;
    const int h = (row / seqlen_q) % heads_q;
    const int b = row / (seqlen_q * heads_q);
    const SequenceRows seq = sequence_rows(p, b);
    if (i >= seq.seqlen_q) continue;  // past a packed sequence's end (warp-uniform)
    // lse = max + log(sum_s exp(lse_s - max)); max = -inf: no split saw a key.
    // A NaN lse_s (a NaN score in that split) makes lse NaN: fmaxf skips NaN,
    // so it is looked for apart.
    float lse_max = -INFINITY;
    bool nan = false;
    for (int s = lane; s < splits; s += 32) {
      const float lse_s = p.lse_accum[int64_t{s} * rows + row];
      lse_max = fmaxf(lse_max, lse_s);
      nan |= isnan(lse_s);
    }
    lse_max = warp_max_f(lse_max);
    float lse = __any_sync(0xffffffffu, nan) ? NAN : -INFINITY;
    if (lse_max != -INFINITY && lse == -INFINITY) {
      float sum = 0.f;
      for (int s = lane; s < splits; s += 32) sum += expf(p.lse_accum[int64_t{s} * rows + row] - lse_max);
      lse = lse_max + logf(warp_sum_f(sum));
    }
    if (p.sinks != nullptr) {
      constexpr float kLog2e = 1.4426950408889634f;
      constexpr float kLn2 = 0.6931471805599453f;
      lse = logaddexp2f(lse * kLog2e, p.sinks[h] * kLog2e) * kLn2;  // -inf lse: the sink itself
    }
    for (int s = lane; s < splits; s += 32)
      weights[warp][s] = lse == -INFINITY ? 0.f : expf(p.lse_accum[int64_t{s} * rows + row] - lse);
    __syncwarp();

    T* out = static_cast<T*>(p.out) + seq.stride_batch * p.out_batch_stride + h * p.out_head_stride +
             (seq.q0 + i) * p.out_row_stride;
    for (int d = lane; d < dim; d += 32) {
      float o = 0.f;
      for (int s = 0; s < splits; ++s)
        o += weights[warp][s] * p.out_accum[(int64_t{s} * rows + row) * dim + d];
      out[d] = from_float<T>(o);
    }
    if (lane == 0) p.lse[lse_offset(p, seq, b, h, i)] = lse;
    __syncwarp();  // weights are rewritten for the warp's next row
  }
}

}  // namespace

template <typename T>
cudaError_t run_fwd_combine(const AttentionParams& params, cudaStream_t stream) {
  if (params.num_splits < 1 || params.num_splits > kMaxSplits) return cudaErrorInvalidValue;
  const int64_t rows = params.batch * params.heads_q * params.seqlen_q;
  if (rows == 0) return cudaSuccess;
  if (rows >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  const int64_t blocks = (rows + kCombineWarps - 1) / kCombineWarps;
  const unsigned grid = static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
  fwd_combine_kernel<T><<<grid, kCombineWarps * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

template cudaError_t run_fwd_combine<__half>(const AttentionParams&, cudaStream_t);
template cudaError_t run_fwd_combine<__nv_bfloat16>(const AttentionParams&, cudaStream_t);

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
