#!/usr/bin/env python3
"""Peers and ceilings for subq's CUDA kernels, run on the GPU machine by scripts/gpu-check
in the same call as subq_cuda_bench. Prints one JSON object per line, in the same form as
subq_cuda_bench, so the two can be joined by (op, shape).

  ceilings   bf16 matmul rate (8192^3, random data) and device-to-device copy bandwidth
  attention  PyTorch SDPA with only the flash backend enabled (FlashAttention-2)
  scan       mamba_ssm's selective_scan_fn / causal_conv1d_fn, when installed
  delta      flash-linear-attention's chunk_gated_delta_rule (Triton), from .peers/fla
"""
import json
import os
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


def delta():
    # fla's source travels with the checkout as .peers/fla (git-ignored); the package
    # directory itself is named fla, so .peers goes on the path.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for path in (os.path.join(root, ".peers"), ".peers"):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        print(json.dumps({"impl": "fla", "op": "delta", "missing": repr(e)}), flush=True)
        return
    # The shapes, inputs and counts of bench/cuda/delta.cu: [B, T, H, D] bf16 q, k, v with
    # l2 normalisation in the kernel, f32 log gates and betas, f32 state in and out.
    dk = dv = 128
    C = 64
    Hk = 16
    for T in (4096, 16384):
        B = 32768 // T
        for Hv in (16, 32):
            q = torch.randn(B, T, Hk, dk, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(B, T, Hk, dk, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(B, T, Hv, dv, device="cuda", dtype=torch.bfloat16)
            beta = torch.rand(B, T, Hv, device="cuda", dtype=torch.float32) * 0.95 + 0.05
            g = -0.1 * torch.rand(B, T, Hv, device="cuda", dtype=torch.float32)
            h0 = 0.1 * (2 * torch.rand(B, Hv, dk, dv, device="cuda", dtype=torch.float32) - 1)

            def run():
                chunk_gated_delta_rule(q, k, v, g, beta, scale=dk ** -0.5, initial_state=h0,
                                       output_final_state=True, use_qk_l2norm_in_kernel=True)
            try:
                with torch.no_grad():
                    ms = median_ms(run)
            except Exception as e:  # noqa: BLE001 - a failing peer must not stop the others
                print(json.dumps({"impl": "fla", "op": "delta", "missing": repr(e)}), flush=True)
                return
            chunks = B * Hv * ((T + C - 1) // C)
            tri = 10.0 / 16.0
            flops = chunks * (4.0 * tri * C * C * dk + 6.0 * C * dk * dv + 4.0 * tri * C * C * dv)
            nbytes = 2.0 * (2 * B * T * Hk * dk + 2 * B * T * Hv * dv) + 4.0 * 2 * B * T * Hv + 4.0 * 2 * B * Hv * dk * dv
            emit("fla", "delta", f"B={B} T={T} Hk={Hk} Hv={Hv} dk={dk} dv={dv} gated l2 bf16", ms,
                 flops=flops, nbytes=nbytes)


if __name__ == "__main__":
    torch.manual_seed(0)
    for what in sys.argv[1:] or ["ceilings", "attention", "scan", "delta"]:
        {"ceilings": ceilings, "attention": attention, "scan": scan, "delta": delta}[what]()
