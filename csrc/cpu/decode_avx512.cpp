// The CPU decode kernel built for AVX-512 (see cpu/isa.h).
#include "cpu/decode_problem.h"  // first: everything from outside the project
#include "cpu/kernel_config.h"

#if defined(__x86_64__) || defined(__i386__)

SWA_CPU_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi2")
#define SWA_CPU_ISA_NS avx512
#include "cpu/decode_kernel.h"

namespace swa::cpu::avx512 {

void run_decode(const DecodeProblem& p, TaskQueue& queue) { run_decode_tasks<Avx512Config>(p, queue); }

}  // namespace swa::cpu::avx512

SWA_CPU_TARGET_END

// Default-target entry (declared in cpu/decode_problem.h): a plain call into
// the avx512 build.
void swa::cpu::decode_tasks_avx512(const DecodeProblem& p, TaskQueue& queue) { avx512::run_decode(p, queue); }

#endif
