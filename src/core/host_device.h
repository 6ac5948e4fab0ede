// SUBQ_HOST_DEVICE marks a function that both g++ and nvcc compile, for the host and for
// the GPU alike: the definitions one CPU selector and one GPU kernel must agree on.
#pragma once

#if defined(__CUDACC__)
#define SUBQ_HOST_DEVICE __host__ __device__
#else
#define SUBQ_HOST_DEVICE
#endif
