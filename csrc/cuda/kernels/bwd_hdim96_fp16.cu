// Tensor-core backward, head dim 96, fp16.
#include "bwd_launch.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {
template cudaError_t run_bwd<__half, 96>(const AttentionBackwardParams&, cudaStream_t);
}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
