// Host-side entry points of the backward kernels, declared here and defined
// (explicitly instantiated) in their own .cu files, so that the dispatch
// (bwd_dispatch.cu) compiles without the kernel templates:
//   run_bwd<T, D>       bwd_hdim<D>_<fp16|bf16>.cu (bwd_launch.cuh)
//   run_exact_bwd<T>    bwd_exact.cu
#pragma once

#include <cuda_runtime_api.h>

#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Tensor-core backward of one (dtype, head dim): preprocess (D, dq_accum := 0),
// the dK/dV kernel (+ dQ atomics), then the dq_accum -> dq conversion, or in
// deterministic mode (or without dq_accum) the dQ kernel.
template <typename T, int kHeadDim>
cudaError_t run_bwd(const AttentionBackwardParams& params, cudaStream_t stream);

// Exact backward (any head dim <= 256): T = float, double, __half, __nv_bfloat16.
template <typename T>
cudaError_t run_exact_bwd(const AttentionBackwardParams& params, cudaStream_t stream);

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
