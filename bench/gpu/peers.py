#!/usr/bin/env python3
"""Peers and ceilings for subq's CUDA kernels, run on the GPU machine by scripts/gpu-check
in the same call as subq_cuda_bench. Prints one JSON object per line, in the same form as
subq_cuda_bench, so the two can be joined by (op, shape).

  ceilings   bf16 matmul rate (8192^3, random data) and device-to-device copy bandwidth
  attention  PyTorch SDPA with only the flash backend enabled (FlashAttention-2)
  sparse     FlexAttention (torch.compile'd) on the block masks subq_cuda_bench sparse runs
  decode     PyTorch SDPA (its fastest backend for one query token, GQA) on decode shapes
  scan       mamba_ssm's selective_scan_fn / causal_conv1d_fn, when installed
"""
import json
import statistics
import sys

import torch


def median_ms(fn, warmup=3, reps=15):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def emit(impl, op, shape, ms, flops=0.0, nbytes=0.0, **extra):
    row = {"impl": impl, "op": op, "shape": shape, "ms": round(ms, 5),
           "tflops": round(flops / ms * 1e-9, 2), "gbps": round(nbytes / ms * 1e-6, 1)}
    row.update(extra)
    print(json.dumps(row), flush=True)


def ceilings():
    n = 8192
    # Several operand sets so repeated products do not run from L2; random, never zeros.
    sets = [(torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
             torch.randn(n, n, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
    i = [0]

    def mm():
        a, b = sets[i[0] % 3]
        i[0] += 1
        torch.mm(a, b)
    emit("torch", "ceiling.matmul_bf16", f"{n}^3", median_ms(mm, reps=20), flops=2.0 * n ** 3)
    src = torch.randn(1 << 30, device="cuda", dtype=torch.float32)  # 4 GiB
    dst = torch.empty_like(src)
    emit("torch", "ceiling.d2d_copy", "4 GiB f32", median_ms(lambda: dst.copy_(src)),
         nbytes=2.0 * src.numel() * 4)
    del src, dst


def attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    H, D = 16, 128
    for T in (4096, 8192, 16384, 32768, 65536):
        B = max(1, 16384 // T)
        # [B, T, H, D] as subq lays it out, viewed as SDPA's [B, H, T, D].
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
        for causal in (True, False):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
            flops = 4.0 * B * H * T * T * D / (2 if causal else 1)
            emit("torch-sdpa-flash", "attention", f"B={B} T={T} H={H} D={D} {'causal' if causal else 'full'}", ms,
                 flops=flops, nbytes=4.0 * B * T * H * D * 2)
    B, T, H, D = 2, 8192, 8, 256
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    emit("torch-sdpa-flash", "attention", f"B={B} T={T} H={H} D={D} causal", ms,
         flops=4.0 * B * H * T * T * D / 2, nbytes=4.0 * B * T * H * D * 2)


def random_block_kept(qb, kb):
    """bench/cuda/bench_main.cu's random_block_kept, bit for bit (uint32 arithmetic)."""
    h = (qb * 2654435761 + kb * 40503) & 0xFFFFFFFF
    return kb == qb or kb == 0 or (h >> 7) % 10 == 0


def sparse():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        print(json.dumps({"impl": "torch-flex", "op": "sparse_attention", "missing": repr(e)}), flush=True)
        return
    flex = torch.compile(flex_attention, dynamic=False)
    B, H, D, blk, window = 1, 16, 128, 128, 2048
    for T in (8192, 32768):
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
        nb = T // blk
        keep = torch.tensor([[kb <= qb and random_block_kept(qb, kb) for kb in range(nb)] for qb in range(nb)],
                            device="cuda")

        def window_mod(b, h, qi, ki):
            return (ki <= qi) & (qi - ki < window)

        def random_mod(b, h, qi, ki):
            return (ki <= qi) & keep[qi // blk, ki // blk]

        for name, mod in (("window=2048", window_mod), ("random10%", random_mod)):
            mask = create_block_mask(mod, None, None, T, T, device="cuda", BLOCK_SIZE=blk)
            ms = median_ms(lambda: flex(q, k, v, block_mask=mask))
            emit("torch-flex", "sparse_attention", f"B={B} T={T} H={H} D={D} {name}", ms)
        del q, k, v


def decode():
    import torch.nn.functional as F
    for B, H, Hkv, D, kv in ((1, 32, 8, 128, 8192), (1, 32, 8, 128, 32768), (1, 32, 8, 128, 131072),
                             (1, 32, 8, 128, 262144), (8, 32, 8, 128, 32768), (1, 32, 32, 128, 32768),
                             (4, 16, 2, 64, 65536)):
        q = torch.randn(B, 1, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        k, v = (torch.randn(B, kv, Hkv, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=Hkv != H))
        emit("torch-sdpa", "decode_attention", f"B={B} H={H} Hkv={Hkv} D={D} kv={kv}", ms,
             flops=4.0 * B * H * kv * D, nbytes=2.0 * k.numel() * 2)
        del q, k, v


def scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        print(json.dumps({"impl": "mamba_ssm", "op": "selective_scan", "missing": repr(e)}), flush=True)
        return
    for D, T in ((1536, 4096), (2048, 8192)):
        B, N = 1, 16
        x = torch.randn(B, D, T, device="cuda")
        dt = torch.randn(B, D, T, device="cuda")
        A = -torch.rand(D, N, device="cuda")
        Bm = torch.randn(B, 1, N, T, device="cuda")
        Cm = torch.randn(B, 1, N, T, device="cuda")
        Dv = torch.randn(D, device="cuda")
        z = torch.randn(B, D, T, device="cuda")
        bias = torch.randn(D, device="cuda")
        ms = median_ms(lambda: selective_scan_fn(x, dt, A, Bm, Cm, Dv, z, bias, True))
        nbytes = 4.0 * B * T * (4 * D + 2 * N)
        emit("mamba_ssm", "selective_scan", f"B={B} T={T} D={D} N={N} G=1 f32", ms, nbytes=nbytes)


if __name__ == "__main__":
    torch.manual_seed(0)
    jobs = {"ceilings": ceilings, "attention": attention, "sparse": sparse, "decode": decode, "scan": scan}
    for what in sys.argv[1:] or list(jobs):
        jobs[what]()
