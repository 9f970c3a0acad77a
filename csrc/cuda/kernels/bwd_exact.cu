// Launcher of the exact backward kernels (bwd_exact.cuh) for every element
// type: the dQ kernel (which also stores D, and the float64 lse for fp64)
// runs first, the dK/dV kernel after it on the same stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "bwd_api.cuh"
#include "bwd_exact.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

namespace {
unsigned exact_blocks(int64_t rows) {
  const int64_t blocks = (rows + kExactBwdWarps - 1) / kExactBwdWarps;
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));  // grid-stride beyond
}
}  // namespace

template <typename T>
cudaError_t run_exact_bwd(const AttentionBackwardParams& params, cudaStream_t stream) {
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  const AttentionParams& f = params.fwd;
  if (f.head_dim < 1 || f.head_dim > kExactBwdMaxHeadDim) return cudaErrorInvalidValue;
  if (std::is_same<Acc, double>::value ? params.softmax_stats_f64 == nullptr : params.softmax_d == nullptr)
    return cudaErrorInvalidValue;
  const int64_t rows = f.batch * f.heads_q * f.seqlen_q;
  const int64_t keys = f.batch * f.heads_kv * f.seqlen_k;
  if (rows > 0) {
    exact_bwd_dq_kernel<T, Acc><<<exact_blocks(rows), kExactBwdWarps * 32, 0, stream>>>(params);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (keys > 0) exact_bwd_dkdv_kernel<T, Acc><<<exact_blocks(keys), kExactBwdWarps * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

template cudaError_t run_exact_bwd<float>(const AttentionBackwardParams&, cudaStream_t);
template cudaError_t run_exact_bwd<double>(const AttentionBackwardParams&, cudaStream_t);
template cudaError_t run_exact_bwd<__half>(const AttentionBackwardParams&, cudaStream_t);
template cudaError_t run_exact_bwd<__nv_bfloat16>(const AttentionBackwardParams&, cudaStream_t);

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
