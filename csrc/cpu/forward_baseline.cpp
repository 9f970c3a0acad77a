// The CPU forward kernel built for the baseline instruction set of the compiler (see cpu/isa.h).
#include "cpu/forward_problem.h"  // first: everything from outside the project

#define SWA_CPU_ISA_NS baseline
#include "cpu/forward_kernel.h"

namespace swa::cpu::baseline {

struct Config {
  static constexpr int kBytes = 16, kNJ = 3, kND = 3, kNV = 3;  // 16 xmm registers
};

void run(const ForwardProblem& p, TaskQueue& queue) { run_tasks<Config>(p, queue); }

}  // namespace swa::cpu::baseline

// Default-target entry (declared in cpu/forward_problem.h): a plain call
// into the baseline build.
void swa::cpu::forward_tasks_baseline(const ForwardProblem& p, TaskQueue& queue) { baseline::run(p, queue); }
