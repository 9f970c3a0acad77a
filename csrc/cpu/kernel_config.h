// Register blocking of the CPU kernels per instruction set (cpu/isa.h):
//   kBytes  vector width in bytes
//   kNJ     items (keys or rows) per product micro-kernel   accumulators:
//   kND     head dims per accumulate micro-kernel             kNJ * kNV and
//   kNV     lane vectors per micro-kernel (<= 4)              kND * kNV vectors
#pragma once

namespace swa::cpu {

struct Avx512Config {
  static constexpr int kBytes = 64, kNJ = 4, kND = 4, kNV = 4;  // 32 zmm registers
};
struct Avx512Bf16Config {  // the forward's bf16 path (cpu/micro_gemm_bf16.h)
  static constexpr int kBytes = 64, kNJ = 4, kND = 4, kNV = 4;
};
struct Avx2Config {
  static constexpr int kBytes = 32, kNJ = 3, kND = 3, kNV = 3;  // 16 ymm registers
};
struct BaselineConfig {
  static constexpr int kBytes = 16, kNJ = 3, kND = 3, kNV = 3;  // 16 xmm registers
};

}  // namespace swa::cpu
