// Per-head windows (attention.per_head) at the op level: the argument checks
// every backend shares, and the windows in the form the kernels read
// (swa/kernels/band.h, HeadWindows).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace swa {

// The checked per-head windows of an op: window_left / window_right are
// integer tensors [Hq] on any device (read once on the host), each entry
// >= -1 (-1: unbounded) as in attention's int window.
struct HeadWindowArgs {
  at::Tensor kernel_form;    // int64 [2, Hq] on the CPU, contiguous: row 0 the
                             // left windows, row 1 the right ones, kernel form
  int64_t union_left = -1;   // the widest left window of any head (kernel form)
  int64_t union_right = -1;  // the widest right window of any head (kernel form)
  const int64_t* left() const { return kernel_form.data_ptr<int64_t>(); }
  const int64_t* right() const { return kernel_form.data_ptr<int64_t>() + kernel_form.size(1); }
};

HeadWindowArgs check_head_windows(const char* op, const at::Tensor& window_left, const at::Tensor& window_right,
                                  int64_t heads_q, int64_t seqlen_q, int64_t seqlen_k);

}  // namespace swa
