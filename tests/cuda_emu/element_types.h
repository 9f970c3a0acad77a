// Conversions between the kernels' element types and double, for the
// emulator tests' inputs and float64 references.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

template <typename T>
double to_d(T x) {
  if constexpr (std::is_same<T, __half>::value) return __half2float(x);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __bfloat162float(x);
  else return static_cast<double>(x);
}
template <typename T>
T from_d(double x) {
  if constexpr (std::is_same<T, __half>::value) return __float2half_rn(static_cast<float>(x));
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __float2bfloat16_rn(static_cast<float>(x));
  else return static_cast<T>(x);
}
