// Launch template of the Hopper forward (fwd_sm90_kernel.cuh): builds the
// three TMA tensor maps on the host per call (sm90_tma.h gives their shape;
// cuTensorMapEncodeTiled is reached through cudaGetDriverEntryPointByVersion,
// so nothing links libcuda) and launches one block per (batch, query head,
// query tile); packed sequences: one [1, H, T, D] map per operand
// (sm90_operands), one block per (sequence, query head, query tile of the
// longest sequence). One explicit instantiation per (dtype, head dim) in
// fwd_sm90_hdim<D>_<fp16|bf16>.cu, compiled for sm_90a only.
//
// Returns cudaErrorNotSupported, launching nothing, when TMA cannot describe
// an operand (alignment, strides) or the driver lacks the entry point: the
// dispatch then runs the portable kernel.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdlib>
#include <cstring>

#include "fwd_api.cuh"
#include "fwd_launch.cuh"  // make_score_scale
#include "fwd_sm90_kernel.cuh"
#include "swa/kernels/sm90_tma.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

using Sm90EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                       const cuuint64_t*, const cuuint32_t*, const cuuint32_t*,
                                       CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                       CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled (ABI of CUDA 12.0), looked up once;
// nullptr when the driver does not have it.
inline Sm90EncodeTiledFn sm90_encode_fn() {
  static Sm90EncodeTiledFn fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
    // cudaGetDriverEntryPointByVersion exists from CUDA 12.5 on (and
    // cudaGetDriverEntryPoint is gone in 13.0): sm_90a builds with a 12.0 -
    // 12.4 toolkit take the older call, which returns the default (12.0 ABI)
    // version of the symbol.
#if CUDART_VERSION >= 12050
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status);
#else
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &ptr, cudaEnableDefault, &status);
#endif
    if (e != cudaSuccess || status != cudaDriverEntryPointSuccess || ptr == nullptr) {
      (void)cudaGetLastError();
      return static_cast<Sm90EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<Sm90EncodeTiledFn>(ptr);
  }();
  return fn;
}

// One operand's tensor map: 4-D (d, row, head, batch), 128-byte swizzle,
// out-of-bounds elements zero-filled.
inline bool sm90_encode(CUtensorMap* map, bool bf16, const void* ptr, int64_t batch, int64_t heads,
                        int64_t seqlen, int64_t head_dim, int64_t batch_stride, int64_t head_stride,
                        int64_t row_stride, int box_rows) {
  const Sm90TmaShape s = sm90_tma_shape(ptr, batch, heads, seqlen, head_dim, batch_stride, head_stride,
                                        row_stride, box_rows);
  const Sm90EncodeTiledFn encode = sm90_encode_fn();
  if (!s.ok || encode == nullptr) return false;
  cuuint64_t dims[4], strides[3];
  cuuint32_t box[4], elem_strides[4] = {1, 1, 1, 1};
  for (int i = 0; i < 4; ++i) {
    dims[i] = s.dims[i];
    box[i] = s.box[i];
  }
  for (int i = 0; i < 3; ++i) strides[i] = s.strides_bytes[i];
  const CUresult r = encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
                            const_cast<void*>(ptr), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// Persistent grid (one block per SM, each taking every gridDim-th query tile)
// unless SWA_SM90_PERSISTENT=0 (one block per query tile), read once.
inline bool sm90_persistent() {
  static const bool on = [] {
    const char* v = std::getenv("SWA_SM90_PERSISTENT");
    return !(v != nullptr && std::strcmp(v, "0") == 0);
  }();
  return on;
}

template <typename T, int kHeadDim>
cudaError_t run_fwd_sm90(const AttentionParams& p, cudaStream_t stream) {
  using Kt = Sm90FwdTraits<T, kHeadDim>;
  if (p.head_dim != kHeadDim || p.ring.pos != nullptr || p.num_splits > 1) return cudaErrorNotSupported;
  CUtensorMap tm_q, tm_k, tm_v;
  const Sm90Operands ops =
      sm90_operands(p.cu_seqlens_q != nullptr, p.batch, p.seqlen_q, p.seqlen_k, p.total_q, p.total_k);
  if (!sm90_encode(&tm_q, Kt::kBf16, p.q.ptr, ops.batch, p.heads_q, ops.rows_q, kHeadDim, p.q.batch_stride,
                   p.q.head_stride, p.q.row_stride, Kt::kBlockM) ||
      !sm90_encode(&tm_k, Kt::kBf16, p.k.ptr, ops.batch, p.heads_kv, ops.rows_k, kHeadDim, p.k.batch_stride,
                   p.k.head_stride, p.k.row_stride, Kt::kBlockN) ||
      !sm90_encode(&tm_v, Kt::kBf16, p.v.ptr, ops.batch, p.heads_kv, ops.rows_k, kHeadDim, p.v.batch_stride,
                   p.v.head_stride, p.v.row_stride, Kt::kBlockN))
    return cudaErrorNotSupported;
  const FwdGrid grid = make_fwd_grid(p.batch, p.heads_q, p.heads_kv, p.seqlen_q, 1, 1, Kt::kBlockM);
  const int64_t blocks = grid.blocks();
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT_MAX) return cudaErrorNotSupported;
  int64_t launch_blocks = blocks;
  if (sm90_persistent()) {
    int sms = p.device_sm_count;
    if (sms <= 0) {
      int device = 0;
      if (cudaGetDevice(&device) != cudaSuccess ||
          cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
        (void)cudaGetLastError();
        sms = 0;
      }
    }
    if (sms > 0 && sms < launch_blocks) launch_blocks = sms;  // one block per SM (smem / registers: 1 fits)
  }
  auto kernel = fwd_sm90_kernel<Kt>;
  // Per launch: the attribute belongs to the current device's context.
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Kt::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(launch_blocks), Kt::kThreads, Kt::kSmemBytes, stream>>>(tm_q, tm_k, tm_v, p, grid,
                                                                                   make_score_scale(p));
  return cudaGetLastError();
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS
