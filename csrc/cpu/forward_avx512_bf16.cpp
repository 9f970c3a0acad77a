// The CPU forward kernel's bf16 path built for AVX-512 with AVX512-BF16
// (vdpbf16ps; see cpu/isa.h and cpu/micro_gemm_bf16.h). Other dtypes, and
// odd head dims, run the avx512 build.
#include "cpu/forward_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx512_bf16
#include "cpu/forward_kernel.h"

namespace swa::cpu::avx512_bf16 {

void run(const ForwardProblem& p, TaskQueue& queue) { run_bf16_dot_tasks<Avx512Bf16Config>(p, queue); }

}  // namespace swa::cpu::avx512_bf16

SWA_CPU_TARGET_END

// Default-target entry (declared in cpu/forward_problem.h): a plain call
// into the avx512_bf16 build.
void swa::cpu::forward_tasks_avx512_bf16(const ForwardProblem& p, TaskQueue& queue) { avx512_bf16::run(p, queue); }

#endif
