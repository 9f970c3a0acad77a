// Filling the kernels' params structs from checked tensors (host side of the
// CUDA backend). Only here do torch tensors meet swa/kernels/params.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/head_windows.h"
#include "ops/sinks.h"
#include "swa/kernels/launch.h"

namespace swa::cuda {

namespace kn = SWA_KERNEL_NS;

kn::DType kernel_dtype(at::ScalarType t);

// Base pointer and strides of a [B, H, S, D] tensor.
inline kn::TensorRef tensor_ref(const at::Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

// Multiprocessor count of a device (cached).
int sm_count(int device);

// On CUDA the 16-bit kernels exist for a few head dims only.
void check_cuda_head_dim(const char* op, const at::Tensor& q);

// Params of attention over q, k, v into out and lse (no split-KV workspaces).
kn::AttentionParams attention_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& out, const at::Tensor& lse,
                                     const AttentionShape& shape, int64_t window_left,
                                     int64_t window_right, std::optional<double> scale,
                                     double softcap);

// Points params at checked sink arguments (ops/sinks.h): sink_tokens, and the
// logits as contiguous float32 (and float64 for the float64 kernels). The
// returned tensors own that memory; keep them until the launch is queued (the
// caching allocator then keeps it valid for the stream's work).
std::vector<at::Tensor> set_sinks(kn::AttentionParams& params, const SinkArgs& sinks, const at::Tensor& q);

// Points params at checked per-head windows (ops/head_windows.h): their
// union as the window, the heads' own copied to q's device. The returned
// tensor owns that memory (keep it as set_sinks' ones).
at::Tensor set_head_windows(kn::AttentionParams& params, const HeadWindowArgs& heads, const at::Tensor& q);

// Chooses split-KV for small problems, allocates its workspaces from the
// caching allocator and launches the forward on the current stream.
void launch_forward(kn::AttentionParams& params, const at::Tensor& q);

}  // namespace swa::cuda
