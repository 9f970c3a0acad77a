// attention_backward (launch.h): run-time dispatch on dtype and head dim to the
// tensor-core backward instantiations that are built (SWA_HDIM_<D>,
// SWA_DTYPE_<FP16|BF16>), or to the exact backward.
//
// Contract (params.h, AttentionBackwardParams):
//   Inputs fwd.q/k/v/out, dout: [B, H, S, D] with any 64-bit strides and a
//   contiguous last dim; fwd.lse, dlse (optional): [B, Hq, Sq] float32,
//   contiguous. Outputs dq, dk, dv (fully written, zeros where nothing is
//   visible): q's / k's / v's dtype and strides. fwd.ring must be unset.
//   Packed sequences (fwd.cu_seqlens_q and fwd.cu_seqlens_k both set, as in
//   the forward): every [B, H, S, D] above is [T, H, D] (batch strides not
//   read), B is the sequence count, S the longest sequence, and lse, dlse and
//   the row workspaces below are [Hq, Tq] (B * Hq * Sq reads Hq * Tq).
//   Sinks: fwd.sink_tokens >= 0 (keys seen beside the band, band.h);
//   fwd.sinks (float32 [Hq] device logits or nullptr) is read by the fp64
//   path only, whose recomputed lse must include it: every other path takes
//   P = exp(s - lse) with the forward's lse, which already does. The
//   gradient of the logits is not computed here (ops/sinks.h:
//   sink_logits_grad from lse and D, e.g. softmax_d after the call).
//   Workspaces (caller-owned, contiguous, 16-byte aligned, NONE needs to be
//   initialised or zero-filled; each may be nullptr where unused):
//     softmax_d          float32 [B, Hq, Sq]         fp16, bf16, fp32: required
//                        (B * Hq * Sq * 4 bytes)      fp64: unused
//     dq_accum           float32 [B, Hq, Sq, D]      fp16, bf16 with !deterministic:
//                        (B * Hq * Sq * D * 4 bytes)  dQ summed with atomics (zeroed
//                                                     by the backward itself); when
//                                                     nullptr the deterministic dQ
//                                                     kernel is used instead;
//                                                     deterministic, fp32, fp64: unused
//     softmax_stats_f64  float64 [2, B, Hq, Sq]      fp64: required (lse recomputed
//                        (B * Hq * Sq * 16 bytes)     in float64, then D); others: unused
//   Returns cudaErrorInvalidValue for a malformed problem or a missing
//   workspace, else the launch status. Nothing is synchronised or allocated.
//
// Paths:
//   fp16/bf16: tensor-core kernels (bwd_launch.cuh) when the head dim is built,
//     the rows are 16-byte aligned (q, k, v, out, dout) and 4-byte aligned (dq,
//     dk, dv), indices fit 32 bits and the device's opt-in shared memory holds
//     the kernels' tiles; otherwise the exact kernels.
//   fp32/fp64: the exact kernels (bwd_exact.cuh), deterministic.
// deterministic = true: no atomics anywhere, bit-identical results run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "bwd_api.cuh"
#include "bwd_kernel_traits.cuh"
#include "swa/kernels/bwd_tiles.h"
#include "swa/kernels/launch.h"

namespace SWA_KERNEL_NS {
namespace {

using cuda_detail::BwdDqTraits;
using cuda_detail::BwdTraits;

// Shared memory (bytes) of the built tensor-core backward of a head dim (0:
// not built): the dK/dV kernel, and the deterministic dQ kernel.
struct BwdSmem {
  int dkdv = 0;
  int dq = 0;
  int block_n = 0;  // the dK/dV kernel's key tile
  int block_m = 0;  // the dQ kernel's query tile
};

template <int kHeadDim>
BwdSmem smem_of() {
  using Kt = BwdTraits<__half, kHeadDim>;
  using Qt = BwdDqTraits<__half, kHeadDim>;
  return {Kt::kSmemBytes, Qt::kSmemBytes, Kt::kBlockN, Qt::kBlockM};
}

BwdSmem bwd_smem(int64_t head_dim) {
  switch (head_dim) {
#ifdef SWA_HDIM_32
    case 32: return smem_of<32>();
#endif
#ifdef SWA_HDIM_64
    case 64: return smem_of<64>();
#endif
#ifdef SWA_HDIM_96
    case 96: return smem_of<96>();
#endif
#ifdef SWA_HDIM_128
    case 128: return smem_of<128>();
#endif
#ifdef SWA_HDIM_256
    case 256: return smem_of<256>();
#endif
    default: return {};
  }
}

// Every row starts at a multiple of `align` bytes: base and the strides of
// dims with extent > 1 (elements of `elem` bytes).
bool rows_aligned(const void* ptr, int64_t align, int64_t elem,
                  std::initializer_list<std::pair<int64_t, int64_t>> stride_extent) {
  if (reinterpret_cast<uintptr_t>(ptr) % align != 0) return false;
  for (const auto& se : stride_extent)
    if (se.second > 1 && (se.first * elem) % align != 0) return false;
  return true;
}

bool q_side_aligned(const AttentionBackwardParams& p, const void* ptr, int64_t bs, int64_t hs, int64_t rs,
                    int64_t align) {
  const AttentionParams& f = p.fwd;
  return rows_aligned(ptr, align, 2, {{bs, f.batch}, {hs, f.heads_q}, {rs, f.seqlen_q}});
}

bool kv_side_aligned(const AttentionBackwardParams& p, const TensorRef& t, int64_t align) {
  const AttentionParams& f = p.fwd;
  return rows_aligned(t.ptr, align, 2, {{t.batch_stride, f.batch}, {t.head_stride, f.heads_kv}, {t.row_stride, f.seqlen_k}});
}

// Can the tensor-core backward take this problem?
bool tensor_core_ok(const AttentionBackwardParams& p, const BwdSmem& smem, bool deterministic) {
  const AttentionParams& f = p.fwd;
  if (smem.dkdv == 0) return false;
  constexpr int64_t kInt32Limit = (int64_t{1} << 31) - 1024;
  if (f.seqlen_q > kInt32Limit || f.seqlen_k > kInt32Limit || f.heads_q > kInt32Limit) return false;
  if (make_bwd_kv_grid(f.batch, f.heads_kv, f.seqlen_k, smem.block_n).blocks() > kInt32Limit) return false;
  if (make_bwd_q_grid(f.batch, f.heads_q, f.seqlen_q, smem.block_m).blocks() > kInt32Limit) return false;
  if (make_bwd_row_grid(f.batch, f.heads_q, f.seqlen_q, cuda_detail::kBwdRowBlock).blocks() > kInt32Limit) return false;
  // cp.async / 16-byte loads: q, out, dout, k, v rows; 4-byte stores: dq, dk, dv.
  if (!q_side_aligned(p, f.q.ptr, f.q.batch_stride, f.q.head_stride, f.q.row_stride, 16) ||
      !q_side_aligned(p, f.out, f.out_batch_stride, f.out_head_stride, f.out_row_stride, 16) ||
      !q_side_aligned(p, p.dout.ptr, p.dout.batch_stride, p.dout.head_stride, p.dout.row_stride, 16) ||
      !q_side_aligned(p, p.dq.ptr, p.dq.batch_stride, p.dq.head_stride, p.dq.row_stride, 4) ||
      !kv_side_aligned(p, f.k, 16) || !kv_side_aligned(p, f.v, 16) || !kv_side_aligned(p, p.dk, 4) ||
      !kv_side_aligned(p, p.dv, 4))
    return false;
  if (!deterministic && reinterpret_cast<uintptr_t>(p.dq_accum) % 16 != 0) return false;
  // Shared memory: the device's opt-in limit per block (A100: 163 KB, H100:
  // 227 KB; the sm_86/89 parts have 99 KB and take the exact path for the
  // larger head dims).
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error of the failed query
    return false;
  }
  const int needed = deterministic && smem.dq > smem.dkdv ? smem.dq : smem.dkdv;
  return needed <= limit;
}

template <typename T>
cudaError_t run_bwd_head_dim(const AttentionBackwardParams& p, cudaStream_t stream) {
  using cuda_detail::run_bwd;
  switch (p.fwd.head_dim) {
#ifdef SWA_HDIM_32
    case 32: return run_bwd<T, 32>(p, stream);
#endif
#ifdef SWA_HDIM_64
    case 64: return run_bwd<T, 64>(p, stream);
#endif
#ifdef SWA_HDIM_96
    case 96: return run_bwd<T, 96>(p, stream);
#endif
#ifdef SWA_HDIM_128
    case 128: return run_bwd<T, 128>(p, stream);
#endif
#ifdef SWA_HDIM_256
    case 256: return run_bwd<T, 256>(p, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t backward_16bit(const AttentionBackwardParams& params, cudaStream_t stream) {
  if (params.softmax_d == nullptr) return cudaErrorInvalidValue;
  const bool deterministic = params.deterministic || params.dq_accum == nullptr;
  if (tensor_core_ok(params, bwd_smem(params.fwd.head_dim), deterministic))
    return run_bwd_head_dim<T>(params, stream);
  return cuda_detail::run_exact_bwd<T>(params, stream);
}

}  // namespace

cudaError_t attention_backward(const AttentionBackwardParams& params, cudaStream_t stream) {
  const AttentionParams& f = params.fwd;
  if (f.batch < 0 || f.heads_q < 0 || f.seqlen_q < 0 || f.seqlen_k < 0) return cudaErrorInvalidValue;
  if (f.batch * f.heads_q * f.seqlen_q == 0 && f.batch * f.heads_kv * f.seqlen_k == 0) return cudaSuccess;
  if (f.heads_kv <= 0 || f.heads_q % f.heads_kv != 0) return cudaErrorInvalidValue;
  if (f.head_dim < 1 || f.head_dim > 256 || f.ring.pos != nullptr) return cudaErrorInvalidValue;
  if (f.sink_tokens < 0) return cudaErrorInvalidValue;
  if ((f.cu_seqlens_q == nullptr) != (f.cu_seqlens_k == nullptr)) return cudaErrorInvalidValue;
  switch (f.dtype) {
    case DType::kFloat32: return cuda_detail::run_exact_bwd<float>(params, stream);
    case DType::kFloat64: return cuda_detail::run_exact_bwd<double>(params, stream);
#ifdef SWA_DTYPE_FP16
    case DType::kFloat16: return backward_16bit<__half>(params, stream);
#endif
#ifdef SWA_DTYPE_BF16
    case DType::kBFloat16: return backward_16bit<__nv_bfloat16>(params, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace SWA_KERNEL_NS
