// Kernel-level launchers: for extensions that fill the params structs
// themselves and launch on their own stream. Each returns the launch status
// (cudaGetLastError after its last launch); nothing here synchronises with the
// host or allocates memory: workspaces named in the params are the caller's.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "swa/kernels/params.h"

namespace SWA_KERNEL_NS {

// Head dims with tensor-core kernels built into this library for dtype
// (fp16/bf16); fp32/fp64 use an exact kernel for any head dim <= 256.
bool attention_supported(DType dtype, int64_t head_dim);

// Number of key splits the forward would use for this problem on a device with
// sm_count SMs (1 = no split). The caller sizes out_accum/lse_accum from it.
int attention_num_splits(const AttentionParams& params, int sm_count);

// out, lse = attention(q, k, v). params.num_splits > 1 needs the workspaces.
cudaError_t attention_forward(const AttentionParams& params, cudaStream_t stream);

// The kernel attention_forward runs for these params on the current device.
enum class ForwardPath : int {
  kUnsupported = 0,      // attention_forward returns an error
  kExact = 1,            // exact kernel (fp32/fp64, or 16-bit the tensor-core kernels cannot take)
  kTensorCore = 2,       // portable tensor-core kernel (sm_80+)
  kTensorCoreSplit = 3,  // portable tensor-core kernel, split-KV + combine
  kSm90 = 4,             // Hopper kernel (TMA + wgmma, sm_90a)
};
ForwardPath attention_forward_path(const AttentionParams& params);
const char* forward_path_name(ForwardPath path);  // "exact", "sm80", "sm80-split", "sm90", "unsupported"

// dq, dk, dv from dout (and dlse). The accumulators must be zeroed.
cudaError_t attention_backward(const AttentionBackwardParams& params, cudaStream_t stream);

cudaError_t cache_append(const CacheAppendParams& params, cudaStream_t stream);
cudaError_t cache_gather(const CacheGatherParams& params, cudaStream_t stream);

}  // namespace SWA_KERNEL_NS
