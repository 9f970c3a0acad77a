// How the CPU kernels' hosts hand tensors to a problem struct: rows with unit
// stride along the head dim, and the (batch, head, row) strides in elements.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace swa::cpu {

// t itself when its head dim (the last dim) has unit stride, else a
// contiguous copy (a head dim of 1 may have any stride: it is never stepped).
inline at::Tensor unit_last(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

// dst = strides of dims 0, 1, 2 ([B, H, S, D] operands and [B, H, S] lse).
inline void fill_strides(int64_t (&dst)[3], const at::Tensor& t) {
  for (int i = 0; i < 3; ++i) dst[i] = t.stride(i);
}

}  // namespace swa::cpu
