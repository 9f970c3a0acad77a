// The instruction sets the CPU kernels are built for, and the one to run.
// Each kernel is compiled once per instruction set, in its own translation
// unit (cpu/forward_<isa>.cpp) whose code is all generated for that set:
//
//   #include <every std/c10 header the kernel needs>   default target
//   SWA_CPU_TARGET_BEGIN("avx512f,...")                  from here on AVX-512
//   #define SWA_CPU_ISA_NS avx512                        the kernel's namespace
//   #include "cpu/forward_kernel.h"
//   SWA_CPU_TARGET_END
//
// (A target attribute on an entry function alone is not enough: GCC lowers
// the wide vector operations of default-target inline helpers before they are
// inlined.) The kernel code lives in namespace swa::cpu::SWA_CPU_ISA_NS, so the
// builds are distinct functions and the linker never merges an AVX-512 copy
// into baseline code.
#pragma once

namespace swa::cpu {

// Instruction sets with a kernel build, best first. kAvx512Bf16 is AVX-512
// with AVX512-BF16 (vdpbf16ps): the forward's bf16 path and the backward's
// bf16 one pass have builds for it (cpu/forward_avx512_bf16.cpp,
// cpu/backward_avx512_bf16.cpp); every other kernel and dtype runs the
// kAvx512 build there.
enum class Isa { kAvx512Bf16, kAvx512, kAvx2, kBaseline };

// The best instruction set this CPU and OS run; SWA_CPU_ISA=avx512|avx2|
// baseline lowers it (to test every build of the kernels on one machine).
Isa cpu_isa();

}  // namespace swa::cpu

#if defined(__clang__)
#define SWA_CPU_PRAGMA(x) _Pragma(#x)
#define SWA_CPU_TARGET_BEGIN(isa) \
  SWA_CPU_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define SWA_CPU_TARGET_END _Pragma("clang attribute pop")
#else
#define SWA_CPU_PRAGMA(x) _Pragma(#x)
#define SWA_CPU_TARGET_BEGIN(isa) _Pragma("GCC push_options") SWA_CPU_PRAGMA(GCC target(isa))
#define SWA_CPU_TARGET_END _Pragma("GCC pop_options")
#endif
