// The CPU backward kernels built for AVX2 (see cpu/isa.h).
#include "cpu/backward_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx2
#include "cpu/backward_kernel.h"

namespace swa::cpu::avx2 {

void run_dq(const BackwardProblem& p, TaskQueue& queue) {
  run_backward_tasks<BackwardDqKernel, Avx2Config>(p, queue);
}
void run_dkdv(const BackwardProblem& p, TaskQueue& queue) {
  run_backward_tasks<BackwardDkdvKernel, Avx2Config>(p, queue);
}

}  // namespace swa::cpu::avx2

SWA_CPU_TARGET_END

// Default-target entries (declared in cpu/backward_problem.h): plain calls
// into the avx2 build.
void swa::cpu::backward_dq_tasks_avx2(const BackwardProblem& p, TaskQueue& queue) { avx2::run_dq(p, queue); }
void swa::cpu::backward_dkdv_tasks_avx2(const BackwardProblem& p, TaskQueue& queue) {
  avx2::run_dkdv(p, queue);
}

#endif
