// Tensor-core backward, head dim 64, bf16.
#include "bwd_launch.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {
template cudaError_t run_bwd<__nv_bfloat16, 64>(const AttentionBackwardParams&, cudaStream_t);
}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
