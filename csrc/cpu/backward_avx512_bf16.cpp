// The CPU backward's one pass for bf16 built for AVX-512 with AVX512-BF16
// (vdpbf16ps; see cpu/isa.h and cpu/micro_gemm_bf16.h). Other dtypes, odd
// head dims and the two-pass structure run the avx512 build.
#include "cpu/backward_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx512_bf16
#include "cpu/backward_kernel.h"

namespace swa::cpu::avx512_bf16 {

void run_dq(const BackwardProblem& p, TaskQueue& queue) {
  run_backward_dot_tasks<BackwardDqKernel, Avx512Bf16Config>(p, queue);
}
void run_dkdv(const BackwardProblem& p, TaskQueue& queue) {
  run_backward_dot_tasks<BackwardDkdvKernel, Avx512Bf16Config>(p, queue);
}

}  // namespace swa::cpu::avx512_bf16

SWA_CPU_TARGET_END

// Default-target entries (declared in cpu/backward_problem.h): plain calls
// into the avx512_bf16 build.
void swa::cpu::backward_dq_tasks_avx512_bf16(const BackwardProblem& p, TaskQueue& queue) {
  avx512_bf16::run_dq(p, queue);
}
void swa::cpu::backward_dkdv_tasks_avx512_bf16(const BackwardProblem& p, TaskQueue& queue) {
  avx512_bf16::run_dkdv(p, queue);
}

#endif
