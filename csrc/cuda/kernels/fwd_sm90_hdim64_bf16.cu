// Hopper (sm_90a) forward, head dim 64, bf16. Compiled for sm_90a only.
#include "fwd_sm90_launch.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {
template cudaError_t run_fwd_sm90<__nv_bfloat16, 64>(const AttentionParams&, cudaStream_t);
}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
