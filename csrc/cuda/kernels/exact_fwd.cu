// Launcher of the exact forward kernel (exact_fwd.cuh) for every element type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "exact_fwd.cuh"
#include "fwd_api.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

template <typename T>
cudaError_t run_exact_fwd(const AttentionParams& params, cudaStream_t stream) {
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  if (params.head_dim < 1 || params.head_dim > kExactMaxHeadDim) return cudaErrorInvalidValue;
  const int64_t rows = params.batch * params.heads_q * params.seqlen_q;
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows + kExactWarps - 1) / kExactWarps;
  const unsigned grid = static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
  exact_fwd_kernel<T, Acc><<<grid, kExactWarps * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

template cudaError_t run_exact_fwd<float>(const AttentionParams&, cudaStream_t);
template cudaError_t run_exact_fwd<double>(const AttentionParams&, cudaStream_t);
template cudaError_t run_exact_fwd<__half>(const AttentionParams&, cudaStream_t);
template cudaError_t run_exact_fwd<__nv_bfloat16>(const AttentionParams&, cudaStream_t);

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
