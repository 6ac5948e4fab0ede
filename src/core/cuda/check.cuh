// Error checks for CUDA runtime calls and kernel launches (device code files only).
#pragma once

#include <cuda_runtime.h>

namespace subq::cuda {

// Throws subq::Error naming the call, its file:line and CUDA's message.
[[noreturn]] void throw_error(cudaError_t code, const char* call, const char* file, int line);

inline void check(cudaError_t code, const char* call, const char* file, int line) {
  if (code != cudaSuccess) throw_error(code, call, file, line);
}

}  // namespace subq::cuda

#define SUBQ_CUDA_CHECK(call) ::subq::cuda::check((call), #call, __FILE__, __LINE__)
// After every <<<...>>>: catches bad launch configurations at once; faults inside the
// kernel surface at the next synchronising call, which is checked too.
#define SUBQ_CUDA_CHECK_LAUNCH(kernel) ::subq::cuda::check(cudaGetLastError(), kernel, __FILE__, __LINE__)
