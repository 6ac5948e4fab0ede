// Hopper's asynchronous copy machinery (sm_90a): shared-memory mbarriers (init, arrive
// and wait also on sm_80), which count arrivals and bytes in flight and let threads wait
// for a phase to complete; tiles copied by the tensor memory accelerator (TMA) from a
// tensor map straight into shared memory, signalling an mbarrier as their bytes land, and
// from shared memory back to global memory; named barriers among some of a CTA's warps;
// and warpgroup register reallocation, which moves registers from a copy warpgroup to the
// math warpgroups of a warp-specialized CTA.
//
// Phases: a barrier's phase completes when its expected arrivals have arrived and its
// expected bytes have landed; wait(bar, parity) returns once the phase of that parity has
// completed. A consumer's k-th wait on a barrier uses parity k & 1; a producer waiting for
// a buffer to be released uses (k & 1) ^ 1, so that its first wait returns at once.
#pragma once

#include <cstdint>

#include "src/core/cuda/mma.cuh"

namespace subq::cuda {

__device__ __forceinline__ void mbar_init(uint64_t* bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
}
// After every mbar_init and before the barrier that publishes them: makes the barriers'
// initial state visible to the TMA unit as well as to other threads.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// An arrival that also announces `bytes` more to land before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

// try_wait (sm_90) lets the thread sleep in hardware for a while before it reports;
// test_wait (sm_80) answers at once.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
#else
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
#endif
  } while (!done);
}

// Copies the box at coordinates (c0, c1, c2, c3) (innermost first) of the tensor map at
// `map` (a __grid_constant__ kernel parameter) into shared memory at dst; its bytes count
// towards bar's phase. Elements outside the tensor land as zeros.
__device__ __forceinline__ void tma_load_4d(void* dst, const void* map, int c0, int c1, int c2, int c3,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
      "%5}], [%6];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_addr(bar))
      : "memory");
}

// Copies the box at (c0, c1, c2, c3) of the tensor map at `map` from shared memory at src
// into global memory, in this thread's current bulk group; parts of the box outside the
// tensor are not written. The writes to src must be ordered before it by
// fence_proxy_async() and a barrier.
__device__ __forceinline__ void tma_store_4d(const void* map, int c0, int c1, int c2, int c3, const void* src) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_addr(src))
               : "memory");
}
// Closes this thread's current bulk group of TMA stores.
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Returns once this thread's bulk groups have read their shared memory (which may then be
// written again).
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// Returns once this thread's bulk groups have also written global memory.
__device__ __forceinline__ void bulk_wait_complete() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// A named barrier (ids 1-15; __syncthreads() uses 0) among `threads` threads, a multiple
// of 32, whole warps: returns once all of them have reached it. bar.sync is the aligned
// form: all of them at this one instruction (not one role's barrier met by another
// role's), each warp converged, which spins on mbarriers and branches on one lane may
// leave undone, hence the __syncwarp. (The non-aligned barrier.sync, which allows both,
// made the flash kernel's dense rows 10-15% slower.)
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  __syncwarp();
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Lowers (dec) or raises (inc) the registers of every thread of the calling warpgroup to
// kRegs; all four warps must execute it.
template <int kRegs>
__device__ __forceinline__ void warpgroup_release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void warpgroup_claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace subq::cuda
