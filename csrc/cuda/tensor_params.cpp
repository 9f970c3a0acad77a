#include "cuda/tensor_params.h"

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <mutex>
#include <vector>

namespace swa::cuda {

kn::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return kn::DType::kFloat16;
    case at::kBFloat16: return kn::DType::kBFloat16;
    case at::kFloat: return kn::DType::kFloat32;
    case at::kDouble: return kn::DType::kFloat64;
    default: TORCH_CHECK(false, "swa: unsupported dtype ", t);
  }
}

int sm_count(int device) {
  static std::mutex mutex;
  static std::vector<int> counts;
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= static_cast<int>(counts.size())) counts.resize(device + 1, 0);
  if (counts[device] == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  }
  return counts[device];
}

void check_cuda_head_dim(const char* op, const at::Tensor& q) {
  const int64_t d = q.size(3);
  TORCH_CHECK(kn::attention_supported(kernel_dtype(q.scalar_type()), d), op, ": head dim ", d,
              " is not supported by the CUDA kernels for ", q.scalar_type(),
              " (16-bit: 32, 64, 96, 128 or 256 where built; float32/float64: 1 to 256)");
}

kn::AttentionParams attention_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& out, const at::Tensor& lse,
                                     const AttentionShape& shape, int64_t window_left,
                                     int64_t window_right, std::optional<double> scale,
                                     double softcap) {
  kn::AttentionParams p;
  p.dtype = kernel_dtype(q.scalar_type());
  p.q = tensor_ref(q);
  p.k = tensor_ref(k);
  p.v = tensor_ref(v);
  p.out = out.data_ptr();
  p.out_batch_stride = out.stride(0);
  p.out_head_stride = out.stride(1);
  p.out_row_stride = out.stride(2);
  p.lse = lse.data_ptr<float>();
  p.batch = shape.batch;
  p.heads_q = shape.heads_q;
  p.heads_kv = shape.heads_kv;
  p.seqlen_q = shape.seqlen_q;
  p.seqlen_k = shape.seqlen_k;
  p.head_dim = shape.head_dim;
  p.window_left = kernel_window_left(window_left, shape.seqlen_k);
  p.window_right = kernel_window_right(window_right, shape.seqlen_q);
  p.scale = static_cast<float>(softmax_scale(scale, shape.head_dim));
  p.softcap = static_cast<float>(kernel_softcap(softcap));
  p.device_sm_count = sm_count(q.get_device());
  return p;
}

std::vector<at::Tensor> set_sinks(kn::AttentionParams& params, const SinkArgs& sinks, const at::Tensor& q) {
  std::vector<at::Tensor> keep;
  params.sink_tokens = sinks.tokens;
  if (sinks.logits.has_value()) {
    at::Tensor f32 = sinks.logits->to(at::kFloat).contiguous();
    params.sinks = f32.data_ptr<float>();
    keep.push_back(f32);
    if (q.scalar_type() == at::kDouble) {
      at::Tensor f64 = sinks.logits->to(at::kDouble).contiguous();
      params.sinks_f64 = f64.data_ptr<double>();
      keep.push_back(f64);
    }
  }
  return keep;
}

at::Tensor set_head_windows(kn::AttentionParams& params, const HeadWindowArgs& heads, const at::Tensor& q) {
  at::Tensor on_device = heads.kernel_form.to(q.device());
  params.window_left = heads.union_left;
  params.window_right = heads.union_right;
  const int64_t* windows = on_device.data_ptr<int64_t>();
  params.head_windows = {windows, windows + on_device.size(1)};
  return on_device;
}

void launch_forward(kn::AttentionParams& params, const at::Tensor& q) {
  at::Tensor out_accum, lse_accum;
  params.num_splits = kn::attention_num_splits(params, params.device_sm_count);
  if (params.num_splits > 1) {
    auto f32 = q.options().dtype(at::kFloat);
    const int64_t rows = params.batch * params.heads_q * params.seqlen_q;
    out_accum = at::empty({params.num_splits, rows, params.head_dim}, f32);
    lse_accum = at::empty({params.num_splits, rows}, f32);
    params.out_accum = out_accum.data_ptr<float>();
    params.lse_accum = lse_accum.data_ptr<float>();
  }
  // The caching allocator keeps the workspaces valid for work queued on the
  // current stream even after these tensors go out of scope.
  C10_CUDA_CHECK(kn::attention_forward(params, c10::cuda::getCurrentCUDAStream()));
}

}  // namespace swa::cuda
