// Tensor-core forward, head dim 32, bf16.
#include "fwd_launch.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {
template cudaError_t run_fwd<__nv_bfloat16, 32>(const AttentionParams&, const FwdGrid&, int, cudaStream_t);
}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
