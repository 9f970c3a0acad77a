// The CPU decode kernel built for AVX2 (see cpu/isa.h).
#include "cpu/decode_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx2
#include "cpu/decode_kernel.h"

namespace swa::cpu::avx2 {

void run_decode(const DecodeProblem& p, TaskQueue& queue) { run_decode_tasks<Avx2Config>(p, queue); }

}  // namespace swa::cpu::avx2

SWA_CPU_TARGET_END

// Default-target entry (declared in cpu/decode_problem.h): a plain call into
// the avx2 build.
void swa::cpu::decode_tasks_avx2(const DecodeProblem& p, TaskQueue& queue) { avx2::run_decode(p, queue); }

#endif
