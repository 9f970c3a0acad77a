// The CPU forward kernel built for the baseline instruction set of the compiler (see cpu/isa.h).
#include "cpu/forward_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#define SWA_CPU_ISA_NS baseline
#include "cpu/forward_kernel.h"

namespace swa::cpu::baseline {

void run(const ForwardProblem& p, TaskQueue& queue) { run_tasks<BaselineConfig>(p, queue); }

}  // namespace swa::cpu::baseline

// Default-target entries (declared in cpu/forward_problem.h): plain calls
// into the baseline build.
void swa::cpu::forward_tasks_baseline(const ForwardProblem& p, TaskQueue& queue) { baseline::run(p, queue); }
