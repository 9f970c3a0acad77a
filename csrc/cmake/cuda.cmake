# The CUDA part of the build: whether to build it, for which architectures,
# and which kernel instantiations.
#
# Kernel files (csrc/cuda/kernels/*.cu) include no torch headers and compile in
# seconds; instantiation files are named <family>_hdim<D>_<fp16|bf16>.cu and
# are dropped when their head dim or dtype is not selected. For each selected
# one, SWA_HDIM_<D> / SWA_DTYPE_<FP16|BF16> is defined for all CUDA sources so
# the run-time dispatch calls only what was built.
include(CheckLanguage)
if(NOT DEFINED SWA_WITH_CUDA)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(SWA_WITH_CUDA ON)
  else()
    set(SWA_WITH_CUDA OFF)
  endif()
endif()
set(SWA_WITH_CUDA ${SWA_WITH_CUDA} CACHE BOOL "Build the CUDA kernels")

# TORCH_CUDA_ARCH_LIST syntax ("8.0;9.0+PTX") -> CMake syntax ("80-real;90").
function(swa_arch_list_to_cmake arch_list out)
  string(REPLACE " " ";" arch_list "${arch_list}")
  set(result "")
  foreach(arch IN LISTS arch_list)
    string(REGEX MATCH "^([0-9]+)\\.([0-9]+)([a-z]?)(\\+PTX)?$" ok "${arch}")
    if(NOT ok)
      message(FATAL_ERROR "swa_cuda: cannot read CUDA arch '${arch}' (expected e.g. 8.0 or 9.0+PTX)")
    endif()
    set(num "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
    if(CMAKE_MATCH_4)
      list(APPEND result "${num}")
    else()
      list(APPEND result "${num}-real")
    endif()
  endforeach()
  set(${out} "${result}" PARENT_SCOPE)
endfunction()

if(SWA_WITH_CUDA)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # the libcudart torch already loads
  if(NOT SWA_CUDA_ARCHS)
    if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
      swa_arch_list_to_cmake("$ENV{TORCH_CUDA_ARCH_LIST}" SWA_CUDA_ARCHS)
    else()
      swa_arch_list_to_cmake("8.0;9.0+PTX" SWA_CUDA_ARCHS)
    endif()
  endif()
  # The Hopper forward (sm_90a): AUTO builds it when the architectures include
  # a 9.x one.
  set(SWA_HOPPER "AUTO" CACHE STRING "Build the Hopper (sm_90a) forward kernels: AUTO, ON or OFF")
  if(SWA_HOPPER STREQUAL "AUTO")
    set(SWA_HOPPER_ENABLED OFF)
    foreach(arch IN LISTS SWA_CUDA_ARCHS)
      if(arch MATCHES "^9[0-9]")
        set(SWA_HOPPER_ENABLED ON)
      endif()
    endforeach()
  elseif(SWA_HOPPER)
    set(SWA_HOPPER_ENABLED ON)
  else()
    set(SWA_HOPPER_ENABLED OFF)
  endif()
  message(STATUS "swa_cuda: CUDA ${CUDAToolkit_VERSION}, architectures ${SWA_CUDA_ARCHS}, "
                 "head dims ${SWA_HEAD_DIMS}, dtypes ${SWA_DTYPES}, Hopper kernels ${SWA_HOPPER_ENABLED}")
else()
  message(STATUS "swa_cuda: building without CUDA (CPU kernels only)")
endif()

# Selected kernel sources: `out` gets the portable ones (built for
# SWA_CUDA_ARCHS), `out_sm90` the Hopper ones (fwd_sm90_*.cu, built for sm_90a
# only, and only when SWA_HOPPER_ENABLED).
function(swa_select_kernel_sources out out_sm90)
  file(GLOB all CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/csrc/cuda/kernels/*.cu)
  set(selected "")
  set(selected_sm90 "")
  foreach(src IN LISTS all)
    get_filename_component(name ${src} NAME_WE)
    if(name MATCHES "_hdim([0-9]+)_(fp16|bf16)$")
      if(NOT CMAKE_MATCH_1 IN_LIST SWA_HEAD_DIMS OR NOT CMAKE_MATCH_2 IN_LIST SWA_DTYPES)
        continue()
      endif()
    endif()
    if(name MATCHES "^fwd_sm90_")
      if(SWA_HOPPER_ENABLED)
        list(APPEND selected_sm90 ${src})
      endif()
      continue()
    endif()
    list(APPEND selected ${src})
  endforeach()
  set(${out} ${selected} PARENT_SCOPE)
  set(${out_sm90} ${selected_sm90} PARENT_SCOPE)
endfunction()

# Compile definitions shared by every CUDA source of the library.
function(swa_cuda_definitions out)
  set(defs SWA_WITH_CUDA)
  foreach(d IN LISTS SWA_HEAD_DIMS)
    list(APPEND defs SWA_HDIM_${d})
  endforeach()
  foreach(t IN LISTS SWA_DTYPES)
    string(TOUPPER ${t} t)
    list(APPEND defs SWA_DTYPE_${t})
  endforeach()
  set(${out} ${defs} PARENT_SCOPE)
endfunction()

# The Hopper kernels: an object library compiled for sm_90a alone (wgmma and
# setmaxnreg exist nowhere else), whatever SWA_CUDA_ARCHS says, linked into
# `target`, which then gets SWA_SM90 so the dispatch may call them. The
# -gencode form, not -arch=sm_90a (nvcc 13.0 also ran a plain sm_90 pass
# for the latter, which rejects wgmma).
function(swa_add_sm90_kernels target sources)
  if(NOT sources)
    return()
  endif()
  add_library(${target}_sm90 OBJECT ${sources})
  set_target_properties(${target}_sm90 PROPERTIES CUDA_ARCHITECTURES OFF POSITION_INDEPENDENT_CODE ON)
  swa_cuda_definitions(defs)
  target_compile_definitions(${target}_sm90 PRIVATE ${defs} SWA_SM90)
  target_include_directories(${target}_sm90 PRIVATE
    ${PROJECT_SOURCE_DIR}/csrc/include ${PROJECT_SOURCE_DIR}/csrc/cuda/kernels)
  target_compile_options(${target}_sm90 PRIVATE
    --expt-relaxed-constexpr -lineinfo "-gencode=arch=compute_90a,code=sm_90a")
  target_sources(${target} PRIVATE $<TARGET_OBJECTS:${target}_sm90>)
  target_compile_definitions(${target} PRIVATE SWA_SM90)
endfunction()

function(swa_configure_cuda_target target)
  set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES "${SWA_CUDA_ARCHS}")
  swa_cuda_definitions(defs)
  target_compile_definitions(${target} PRIVATE ${defs})
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/csrc/cuda/kernels)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
  target_link_libraries(${target} PRIVATE CUDA::cudart ${SWA_TORCH_LIBRARY_DIR}/libc10_cuda.so)
  set_property(TARGET ${target} APPEND PROPERTY BUILD_RPATH ${CUDAToolkit_LIBRARY_DIR})
endfunction()
