// The CPU forward kernel built for AVX2 (see cpu/isa.h).
#include "cpu/forward_problem.h"  // first: everything from outside the project

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx2
#include "cpu/forward_kernel.h"

namespace swa::cpu::avx2 {

struct Config {
  static constexpr int kBytes = 32, kNJ = 3, kND = 3, kNV = 3;  // 16 ymm registers
};

void run(const ForwardProblem& p, TaskQueue& queue) { run_tasks<Config>(p, queue); }

}  // namespace swa::cpu::avx2

SWA_CPU_TARGET_END

// Default-target entry (declared in cpu/forward_problem.h): a plain call
// into the avx2 build.
void swa::cpu::forward_tasks_avx2(const ForwardProblem& p, TaskQueue& queue) { avx2::run(p, queue); }

#endif
