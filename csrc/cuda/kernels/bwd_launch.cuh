// Launch template of the tensor-core backward (bwd_dkdv_kernel.cuh,
// bwd_dq_kernel.cuh, bwd_rows.cuh): one explicit instantiation per (dtype,
// head dim) in bwd_hdim<D>_<fp16|bf16>.cu. The dispatch has checked the
// problem (alignment, 32-bit ranges, shared memory) before calling run_bwd.
#pragma once

#include <cuda_runtime.h>

#include <climits>

#include "bwd_api.cuh"
#include "bwd_dkdv_kernel.cuh"
#include "bwd_dq_kernel.cuh"
#include "bwd_kernel_traits.cuh"
#include "bwd_rows.cuh"
#include "fwd_score.cuh"  // saturate_to_float
#include "swa/kernels/bwd_tiles.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

inline BwdScoreScale make_bwd_score_scale(const AttentionParams& p) {
  constexpr double kLog2eD = 1.4426950408889634;
  BwdScoreScale sc;
  sc.scale = p.scale;
  sc.use_softcap = p.softcap > 0.f;
  sc.scale_log2 = static_cast<float>(static_cast<double>(p.scale) * kLog2eD);
  sc.softcap_log2 = sc.use_softcap ? static_cast<float>(static_cast<double>(p.softcap) * kLog2eD) : 0.f;
  sc.scale_over_cap = sc.use_softcap ? saturate_to_float(static_cast<double>(p.scale) / p.softcap) : 0.f;
  return sc;
}

// Kernels with more than the default 48 KB of shared memory must opt in (per
// device context, so per launch).
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, int bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <typename T, int kHeadDim>
cudaError_t run_bwd(const AttentionBackwardParams& params_in, cudaStream_t stream) {
  using Kt = BwdTraits<T, kHeadDim>;
  using Qt = BwdDqTraits<T, kHeadDim>;
  const AttentionParams& f = params_in.fwd;
  AttentionBackwardParams params = params_in;
  params.deterministic = params_in.deterministic || params_in.dq_accum == nullptr;
  const BwdScoreScale sc = make_bwd_score_scale(f);
  cudaError_t err = cudaSuccess;

  // 1. D = rowsum(dO * O) - dlse (and dq_accum := 0 for the atomics).
  const BwdRowGrid rows = make_bwd_row_grid(f.batch, f.heads_q, f.seqlen_q, kBwdRowBlock);
  if (rows.blocks() > INT_MAX) return cudaErrorInvalidConfiguration;
  if (rows.blocks() > 0) {
    bwd_preprocess_kernel<T, kHeadDim><<<static_cast<unsigned>(rows.blocks()), kBwdRowThreads, 0, stream>>>(
        params, rows, params.deterministic ? 0 : 1);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }

  // 2. dK, dV (and the dQ atomics): one block per (key tile, batch, kv head).
  const BwdKvGrid kv = make_bwd_kv_grid(f.batch, f.heads_kv, f.seqlen_k, Kt::kBlockN);
  if (kv.blocks() > INT_MAX) return cudaErrorInvalidConfiguration;
  if (kv.blocks() > 0) {
    auto kernel = bwd_dkdv_kernel<Kt>;
    if ((err = allow_smem(kernel, Kt::kSmemBytes)) != cudaSuccess) return err;
    kernel<<<static_cast<unsigned>(kv.blocks()), Kt::kThreads, Kt::kSmemBytes, stream>>>(params, kv, sc);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }

  // 3. dq: from dq_accum, or recomputed by the deterministic dQ kernel.
  if (rows.blocks() == 0) return cudaSuccess;
  if (params.deterministic) {
    const BwdQGrid qg = make_bwd_q_grid(f.batch, f.heads_q, f.seqlen_q, Qt::kBlockM);
    if (qg.blocks() > INT_MAX) return cudaErrorInvalidConfiguration;
    auto kernel = bwd_dq_kernel<Qt>;
    if ((err = allow_smem(kernel, Qt::kSmemBytes)) != cudaSuccess) return err;
    kernel<<<static_cast<unsigned>(qg.blocks()), Qt::kThreads, Qt::kSmemBytes, stream>>>(params, qg, sc);
  } else {
    bwd_convert_dq_kernel<T, kHeadDim><<<static_cast<unsigned>(rows.blocks()), kBwdRowThreads, 0, stream>>>(
        params, rows, sc.scale);
  }
  return cudaGetLastError();
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
