# The CUDA backend: every src/**/*.cu file, compiled for sm_80 (A100) and sm_90 (H100/H200)
# into the subq library. Kernels run only where a GPU is present; without one, the first
# CUDA call throws subq::Error (src/core/cuda/device.h) and tests/cuda skips.
# CUDAARCHS in the environment (CMake's own variable) picks others, e.g. CI's 90-real.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES 80-real 90)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
# CMake 3.25 does not know nvcc's C++20 flag; nvcc >= 12 has it. The headers are C++20.
if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION -std=c++20)
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION -std=c++20)
endif()
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

file(GLOB_RECURSE SUBQ_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/*.cu)
# Kernels that use Hopper's own instructions (wgmma), named *_sm90.cu, build for sm_90a
# alone: that code runs on compute capability 9.0 only, and the host side sends work there
# only on such a GPU.
file(GLOB_RECURSE SUBQ_CUDA_SM90A_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/*_sm90.cu)
list(REMOVE_ITEM SUBQ_CUDA_SOURCES ${SUBQ_CUDA_SM90A_SOURCES})
# -lineinfo: Nsight Compute maps stalls to source lines; the machine code is unchanged.
set(SUBQ_CUDA_FLAGS --expt-relaxed-constexpr -lineinfo -Xcompiler=-Wall,-Wextra)
# Object libraries so that nvcc never sees the C++ targets' GCC warning flags.
add_library(subq_cuda OBJECT ${SUBQ_CUDA_SOURCES})
add_library(subq_cuda_sm90a OBJECT ${SUBQ_CUDA_SM90A_SOURCES})
set_target_properties(subq_cuda_sm90a PROPERTIES CUDA_ARCHITECTURES 90a-real
                      CUDA_COMPILER_LAUNCHER ${PROJECT_SOURCE_DIR}/cmake/ptxas_guard.sh)
foreach(target subq_cuda subq_cuda_sm90a)
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  target_compile_options(${target} PRIVATE ${SUBQ_CUDA_FLAGS})
  target_link_libraries(${target} PRIVATE CUDA::cudart_static)
endforeach()

target_sources(subq PRIVATE $<TARGET_OBJECTS:subq_cuda> $<TARGET_OBJECTS:subq_cuda_sm90a>)
# Model::load(device = "cuda") reaches the GPU decoder only in this build.
target_compile_definitions(subq PRIVATE SUBQ_WITH_CUDA)
target_link_libraries(subq PRIVATE CUDA::cudart_static CUDA::cublas CUDA::cublasLt)

# Kernel timings for scripts/gpu-check: one executable, run on the GPU machine.
if(SUBQ_BUILD_TOOLS)
  file(GLOB SUBQ_CUDA_BENCH_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/bench/cuda/*.cu)
  add_executable(subq_cuda_bench ${SUBQ_CUDA_BENCH_SOURCES})
  set_target_properties(subq_cuda_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
  target_compile_options(subq_cuda_bench PRIVATE ${SUBQ_CUDA_FLAGS})
  target_include_directories(subq_cuda_bench PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(subq_cuda_bench PRIVATE subq CUDA::cudart_static)
endif()
