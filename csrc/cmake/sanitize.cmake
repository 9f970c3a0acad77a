# SWA_SANITIZE: a -fsanitize= list (e.g. "address,undefined") for the library
# and the C++ unit tests, CPU code only (nvcc takes no sanitizer: build with
# SWA_WITH_CUDA=OFF). tests/run_sanitizers.sh builds and runs the CPU tests so.
# Every finding aborts (-fno-sanitize-recover); vptr is left out, since torch's
# libraries are not instrumented and their type info would be reported falsely.
# -O1 -g1 (line tables): file:line in every report, and a third of the compile
# time of -O3 -g, which under the sanitizers' instrumentation is most of CI's
# sanitizer step (the kernels' vector intrinsics are the same at any level).
set(SWA_SANITIZE "" CACHE STRING "Sanitizers for the CPU code, as for -fsanitize= (empty: none)")

function(swa_sanitize target)
  if(NOT SWA_SANITIZE)
    return()
  endif()
  if(SWA_WITH_CUDA)
    message(FATAL_ERROR "SWA_SANITIZE needs a CPU-only build (SWA_WITH_CUDA=OFF / SWA_CPU_ONLY=1)")
  endif()
  target_compile_options(${target} PRIVATE -fsanitize=${SWA_SANITIZE} -fno-sanitize=vptr
                         -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g1)
  target_link_options(${target} PRIVATE -fsanitize=${SWA_SANITIZE})
endfunction()
