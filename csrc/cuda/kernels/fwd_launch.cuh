// Launch template of the tensor-core forward (fwd_kernel.cuh): one explicit
// instantiation per (dtype, head dim) in fwd_hdim<D>_<fp16|bf16>.cu.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "fwd_api.cuh"
#include "fwd_kernel.cuh"
#include "fwd_kernel_traits.cuh"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

inline FwdScoreScale make_score_scale(const AttentionParams& p) {
  constexpr double kLog2e = 1.4426950408889634;
  FwdScoreScale sc;
  sc.use_softcap = p.softcap > 0.f;
  sc.scale_log2 = static_cast<float>(static_cast<double>(p.scale) * kLog2e);
  sc.softcap_log2 = sc.use_softcap ? static_cast<float>(static_cast<double>(p.softcap) * kLog2e) : 0.f;
  sc.scale_over_cap = sc.use_softcap ? saturate_to_float(static_cast<double>(p.scale) / p.softcap) : 0.f;
  return sc;
}

template <typename T, int kHeadDim, int kVariant>
cudaError_t launch_fwd(const AttentionParams& params, const FwdGrid& grid, cudaStream_t stream) {
  using Kt = FwdTraits<T, kHeadDim, kVariant>;
  const int64_t blocks = grid.blocks();
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  auto kernel = fwd_kernel<Kt>;
  constexpr int smem = Kt::kSmemBytes;
  if (smem > 48 * 1024) {
    // Per launch: the attribute belongs to the current device's context.
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(blocks), Kt::kThreads, smem, stream>>>(params, grid,
                                                                        make_score_scale(params));
  return cudaGetLastError();
}

template <typename T, int kHeadDim>
cudaError_t run_fwd(const AttentionParams& params, const FwdGrid& grid, int variant, cudaStream_t stream) {
  if constexpr (kHeadDim == 256) {
    if (variant == 1) return launch_fwd<T, kHeadDim, 1>(params, grid, stream);
  }
  if (variant != 0) return cudaErrorInvalidValue;
  return launch_fwd<T, kHeadDim, 0>(params, grid, stream);
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
