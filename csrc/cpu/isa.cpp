// cpu_isa(): the instruction set the CPU kernels run with (cpu/isa.h).
#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace swa::cpu {
namespace {

Isa detect_isa() {
  Isa best = Isa::kBaseline;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) {
    best = __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi2")) {
    best = Isa::kAvx2;
  }
#endif
  // SWA_CPU_ISA lowers the choice, never raises it past what the CPU runs.
  const char* env = std::getenv("SWA_CPU_ISA");
  if (env != nullptr) {
    if (std::strcmp(env, "baseline") == 0) return Isa::kBaseline;
    const bool avx512 = best == Isa::kAvx512Bf16 || best == Isa::kAvx512;
    if (std::strcmp(env, "avx512") == 0 && avx512) return Isa::kAvx512;
    if (std::strcmp(env, "avx2") == 0 && avx512) return Isa::kAvx2;
  }
  return best;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

}  // namespace swa::cpu
