// The Hopper flash forward (flash_attention_sm90.cu, built for sm_90a only):
// warp-specialized persistent CTAs (a TMA copy warp, wgmma math warpgroups of 64 queries
// each). flash_attention.cu sends it the dense problems of head dims 64, 128 and 256 and
// the masks of head dims 64 and 128 when the GPU can run it.
#pragma once

#include "src/ops/attention/flash_attention_device.cuh"

namespace subq::cuda::flash {

// A compute capability 9.0 GPU, unless SUBQ_FLASH_WGMMA=0 (then the sm_80 kernel runs
// everything, as on an A100: how its path stays tested on a Hopper machine).
bool sm90_available();

// Runs the forward for head dim 64, 128 or 256 and keys all or causal, or head dim 64 or
// 128 and keys listed (mask rows of q_block = 64 or 128 queries and blocks of k_block
// keys, a multiple of 64).
void sm90_forward(Params p, int batch, int head_dim, Keys keys, int q_block, int k_block);

}  // namespace subq::cuda::flash
