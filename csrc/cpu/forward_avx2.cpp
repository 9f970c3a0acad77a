// The CPU forward kernel built for AVX2 (see cpu/isa.h).
#include "cpu/forward_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx2
#include "cpu/forward_kernel.h"

namespace swa::cpu::avx2 {

void run(const ForwardProblem& p, TaskQueue& queue) { run_tasks<Avx2Config>(p, queue); }

}  // namespace swa::cpu::avx2

SWA_CPU_TARGET_END

// Default-target entries (declared in cpu/forward_problem.h): plain calls
// into the avx2 build.
void swa::cpu::forward_tasks_avx2(const ForwardProblem& p, TaskQueue& queue) { avx2::run(p, queue); }

#endif
