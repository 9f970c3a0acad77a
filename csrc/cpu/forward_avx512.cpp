// The CPU forward kernel built for AVX-512 (see cpu/isa.h).
#include "cpu/forward_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx512
#include "cpu/forward_kernel.h"

namespace swa::cpu::avx512 {

void run(const ForwardProblem& p, TaskQueue& queue) { run_tasks<Avx512Config>(p, queue); }

}  // namespace swa::cpu::avx512

SWA_CPU_TARGET_END

// Default-target entries (declared in cpu/forward_problem.h): plain calls
// into the avx512 build.
void swa::cpu::forward_tasks_avx512(const ForwardProblem& p, TaskQueue& queue) { avx512::run(p, queue); }

#endif
