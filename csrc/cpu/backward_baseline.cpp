// The CPU backward kernels built for the baseline instruction set of the compiler (see cpu/isa.h).
#include "cpu/backward_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#define SWA_CPU_ISA_NS baseline
#include "cpu/backward_kernel.h"

namespace swa::cpu::baseline {

void run_dq(const BackwardProblem& p, TaskQueue& queue) {
  run_backward_tasks<BackwardDqKernel, BaselineConfig>(p, queue);
}
void run_dkdv(const BackwardProblem& p, TaskQueue& queue) {
  run_backward_tasks<BackwardDkdvKernel, BaselineConfig>(p, queue);
}

}  // namespace swa::cpu::baseline

// Default-target entries (declared in cpu/backward_problem.h): plain calls
// into the baseline build.
void swa::cpu::backward_dq_tasks_baseline(const BackwardProblem& p, TaskQueue& queue) { baseline::run_dq(p, queue); }
void swa::cpu::backward_dkdv_tasks_baseline(const BackwardProblem& p, TaskQueue& queue) {
  baseline::run_dkdv(p, queue);
}
