// Host-side entry points of the forward kernels, declared here and defined
// (explicitly instantiated) in their own .cu files, so that the dispatch
// compiles without the kernel templates:
//   run_fwd<T, D>        fwd_hdim<D>_<fp16|bf16>.cu (fwd_launch.cuh)
//   run_fwd_combine<T>   fwd_combine.cu
//   run_exact_fwd<T>     exact_fwd.cu
//   run_fwd_sm90<T, D>   fwd_sm90_hdim<D>_<fp16|bf16>.cu (fwd_sm90_launch.cuh), sm_90a only
#pragma once

#include <cuda_runtime_api.h>

#include "swa/kernels/fwd_tiles.h"
#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Most key splits of the split-KV forward (and of fwd_combine's weights).
constexpr int kMaxSplits = 128;

// Tensor-core forward of one (dtype, head dim) over `grid` (fwd_tiles.h) with
// tile shape FwdTileShape<kHeadDim, variant> (fwd_kernel_traits.cuh; variant 1
// exists for d = 256 only); grid.splits > 1 writes the fp32 partials
// params.out_accum / lse_accum.
template <typename T, int kHeadDim>
cudaError_t run_fwd(const AttentionParams& params, const FwdGrid& grid, int variant, cudaStream_t stream);

// Reduces params.num_splits partials into out (T, strided) and lse.
template <typename T>
cudaError_t run_fwd_combine(const AttentionParams& params, cudaStream_t stream);

// Hopper forward (TMA + wgmma), D = 64 or 128, no ring, no split-KV, pack = 1.
// cudaErrorNotSupported (nothing launched) when TMA cannot describe the
// operands: the caller falls back to run_fwd. Needs a device of compute
// capability 9.0 (the caller checks).
template <typename T, int kHeadDim>
cudaError_t run_fwd_sm90(const AttentionParams& params, cudaStream_t stream);

// Exact forward (any head dim <= 256): T = float, double, __half, __nv_bfloat16.
template <typename T>
cudaError_t run_exact_fwd(const AttentionParams& params, cudaStream_t stream);

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
