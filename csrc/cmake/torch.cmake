# swa_torch: an interface target for the torch C++ libraries, found through
# the torch Python package (SWA_PYTHON, default: the Python3 interpreter).
#
# find_package(Torch) is avoided on purpose: with the CUDA wheels of torch it
# needs the whole CUDA toolkit (cuBLAS headers, nvrtc) and fails on lean
# toolkits. The library only needs c10 and torch_cpu (plus c10_cuda for CUDA).
if(NOT SWA_PYTHON)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  set(SWA_PYTHON ${Python3_EXECUTABLE})
endif()

execute_process(
  COMMAND ${SWA_PYTHON} -c "import torch, os
inc = os.path.join(os.path.dirname(torch.__file__), 'include')
print(inc + ';' + os.path.join(inc, 'torch', 'csrc', 'api', 'include'))
print(os.path.join(os.path.dirname(torch.__file__), 'lib'))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.__version__.split('+')[0])
print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _swa_torch_info
  RESULT_VARIABLE _swa_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _swa_torch_rc EQUAL 0)
  message(FATAL_ERROR "swa_cuda: could not import torch with ${SWA_PYTHON}")
endif()
string(REPLACE "\n" ";" _swa_torch_info "${_swa_torch_info}")
list(GET _swa_torch_info -4 SWA_TORCH_LIBRARY_DIR)
list(GET _swa_torch_info -3 SWA_TORCH_CXX11_ABI)
list(GET _swa_torch_info -2 SWA_TORCH_VERSION)
list(GET _swa_torch_info -1 SWA_TORCH_CUDA_VERSION)
list(LENGTH _swa_torch_info _n)
math(EXPR _n_includes "${_n} - 4")
list(SUBLIST _swa_torch_info 0 ${_n_includes} SWA_TORCH_INCLUDE_DIRS)
message(STATUS "swa_cuda: torch ${SWA_TORCH_VERSION} (CUDA '${SWA_TORCH_CUDA_VERSION}') from ${SWA_TORCH_LIBRARY_DIR}")

add_library(swa_torch INTERFACE)
target_include_directories(swa_torch SYSTEM INTERFACE ${SWA_TORCH_INCLUDE_DIRS})
target_compile_definitions(swa_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${SWA_TORCH_CXX11_ABI})
target_link_libraries(swa_torch INTERFACE
  ${SWA_TORCH_LIBRARY_DIR}/libc10.so ${SWA_TORCH_LIBRARY_DIR}/libtorch_cpu.so)
