// The CPU decode kernel built for the baseline instruction set of the compiler (see cpu/isa.h).
#include "cpu/decode_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#define SWA_CPU_ISA_NS baseline
#include "cpu/decode_kernel.h"

// Default-target entry (declared in cpu/decode_problem.h).
void swa::cpu::decode_tasks_baseline(const DecodeProblem& p, TaskQueue& queue) {
  baseline::run_decode_tasks<BaselineConfig>(p, queue);
}
