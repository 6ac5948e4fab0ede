#!/usr/bin/env python3
"""Peers and ceilings for subq's CUDA kernels, run on the GPU machine by scripts/gpu-check
in the same call as subq_cuda_bench. Prints one JSON object per line, in the same form as
subq_cuda_bench, so the two can be joined by (op, shape).

  ceilings   bf16 matmul rate (8192^3, random data) and device-to-device copy bandwidth
  attention  PyTorch SDPA with only the flash backend enabled (FlashAttention-2)
  sparse     FlexAttention (torch.compile'd) on the block masks subq_cuda_bench sparse runs
  decode     PyTorch SDPA (its fastest backend for one query token, GQA) on decode shapes
  scan       mamba_ssm's selective_scan_fn / causal_conv1d_fn, when installed
  linear     mamba_ssm's Triton mamba_chunk_scan_combined (Mamba-2 SSD) and fla's
             chunk_simple_gla and chunk_gla, from the sources at .peers/mamba_src and .peers/fla
  delta      flash-linear-attention's chunk_gated_delta_rule (Triton), from .peers/fla
  dplr       flash-linear-attention's chunk_rwkv7 and fused_recurrent_rwkv7 (Triton), from .peers/fla
  models     writes random-init Llama-160M-, Mamba-130M-, Mamba2-130M- and Jamba-MoE-shaped bf16 checkpoints to
             $SUBQ_BENCH_MODELS (default /tmp/subq-bench-models) for `subq_cuda_bench
             models`, and times them in transformers on the GPU (prefill, decode)
"""
import importlib
import json
import os
import re
import statistics
import sys
import types

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
    for B, T, H, D in ((2, 8192, 8, 256), (4, 8192, 16, 64)):
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


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def package_version(init_py):
    """The `__version__ = "..."` a package's __init__ declares (fla's submodules import it)."""
    try:
        with open(init_py) as f:
            found = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", f.read(), re.M)
    except OSError:
        return "0"
    return found.group(1) if found else "0"


def import_from_source(module, packages):
    """Imports `module` from peer sources without running the __init__ of `packages`
    ({name: directory under the repository root}): mamba_ssm's imports a compiled extension that is absent here,
    fla's imports every op. Each package becomes a bare module whose __path__ is its
    source directory, so only the submodules `module` needs are executed."""
    for name, path in packages.items():
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [os.path.join(ROOT, path)]
            stub.__version__ = package_version(os.path.join(ROOT, path, "__init__.py"))
            sys.modules[name] = stub
    return importlib.import_module(module)


def chunked_flops(B, T, H, dk, dv):
    """subq_cuda_bench's count (bench/cuda/linear.cu): the useful matmul work of the
    chunked algorithm with 64-token chunks, whatever chunk the peer uses."""
    C, chunks = 64, (T + 63) // 64
    return (2 * (C * (C + 1) / 2) * (dk + dv) + 4 * C * dk * dv) * chunks * B * H


def linear():
    tokens = 32768
    try:
        ssd = import_from_source("mamba_ssm.ops.triton.ssd_combined", {"mamba_ssm": ".peers/mamba_src/mamba_ssm"})
        mamba_chunk_scan_combined = ssd.mamba_chunk_scan_combined
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        print(json.dumps({"impl": "mamba_ssm", "op": "ssd", "missing": repr(e)}), flush=True)
    else:
        P, N, G = 64, 128, 1
        for H in (24, 48):
            for T in (4096, 16384):
                B = max(1, tokens // T)
                x = torch.randn(B, T, H, P, device="cuda", dtype=torch.bfloat16)
                dt = torch.empty(B, T, H, device="cuda").uniform_(0.001, 0.1)
                A = torch.empty(H, device="cuda").uniform_(-8.0, -1.0)
                Bm = torch.randn(B, T, G, N, device="cuda", dtype=torch.bfloat16)
                Cm = torch.randn(B, T, G, N, device="cuda", dtype=torch.bfloat16)
                D = torch.randn(H, device="cuda")
                h0 = torch.empty(B, H, P, N, device="cuda").uniform_(-1.0, 1.0)  # mamba's [B, H, P, N]
                shape = f"B={B} T={T} H={H} P={P} N={N} G={G} bf16"
                nbytes = 2.0 * x.numel() + 4.0 * dt.numel() + 2.0 * (Bm.numel() + Cm.numel()) + 8.0 * h0.numel() + 2.0 * x.numel()
                # Mamba-2 layers run with chunk_size 256 (the module default); 64 is subq's chunk.
                for chunk, impl in ((256, "mamba_ssm"), (64, "mamba_ssm-chunk64")):
                    try:
                        ms = median_ms(lambda: mamba_chunk_scan_combined(x, dt, A, Bm, Cm, chunk, D=D, initial_states=h0,
                                                                         return_final_states=True))
                    except Exception as e:  # noqa: BLE001
                        print(json.dumps({"impl": impl, "op": "ssd", "shape": shape, "missing": repr(e)}), flush=True)
                        continue
                    emit(impl, "ssd", shape, ms, flops=chunked_flops(B, T, H, N, P), nbytes=nbytes, chunk=chunk)
                del x, dt, Bm, Cm, h0
    fla_paths = {"fla": ".peers/fla", "fla.ops": ".peers/fla/ops"}
    try:
        gla_ops = {"simple_gla": import_from_source("fla.ops.simple_gla", fla_paths).chunk_simple_gla,
                   "gla": import_from_source("fla.ops.gla", fla_paths).chunk_gla}
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"impl": "fla", "op": "gla", "missing": repr(e)}), flush=True)
        return
    H, dk, dv = 16, 128, 128
    for op, gate in (("simple_gla", "per_token"), ("gla", "per_token_vector")):
        for T in (4096, 16384):
            B = max(1, tokens // T)
            q, k = (torch.randn(B, T, H, dk, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            v = torch.randn(B, T, H, dv, device="cuda", dtype=torch.bfloat16)
            g_shape = (B, T, H, dk) if op == "gla" else (B, T, H)
            g = torch.empty(*g_shape, device="cuda").uniform_(-0.1, 0.0)  # natural-log decay
            h0 = torch.empty(B, H, dk, dv, device="cuda").uniform_(-1.0, 1.0)
            shape = f"B={B} T={T} H={H} dk={dk} dv={dv} {gate} bf16"
            nbytes = 2.0 * (q.numel() + k.numel() + v.numel()) + 4.0 * g.numel() + 8.0 * h0.numel() + 2.0 * v.numel()
            try:
                ms = median_ms(lambda: gla_ops[op](q, k, v, g=g, scale=dk ** -0.5, initial_state=h0,
                                                   output_final_state=True))
            except Exception as e:  # noqa: BLE001
                print(json.dumps({"impl": "fla", "op": op, "shape": shape, "missing": repr(e)}), flush=True)
                continue
            emit("fla", op, shape, ms, flops=chunked_flops(B, T, H, dk, dv), nbytes=nbytes)
            del q, k, v, g, h0


def delta():
    try:
        chunk_gated_delta_rule = import_from_source("fla.ops.gated_delta_rule", {
            "fla": ".peers/fla", "fla.ops": ".peers/fla/ops"}).chunk_gated_delta_rule
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


def dplr():
    fla_paths = {"fla": ".peers/fla", "fla.ops": ".peers/fla/ops"}
    try:
        rwkv7 = import_from_source("fla.ops.rwkv7", fla_paths)
        kernels = {"fla chunk": rwkv7.chunk_rwkv7, "fla recurrent": rwkv7.fused_recurrent_rwkv7}
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        print(json.dumps({"impl": "fla", "op": "dplr", "missing": repr(e)}), flush=True)
        return
    # The shapes, inputs and counts of bench_dplr (bench/cuda/delta.cu), all bf16 here
    # (subq reads log_w in f32), f32 state in and out.
    dk = dv = 64
    H = 32
    for B, T in ((1, 4096), (8, 4096), (2, 16384)):
        kappa = torch.nn.functional.normalize(torch.randn(B, T, H, dk, device="cuda"), dim=-1)
        a = (-kappa).to(torch.bfloat16)
        b = (kappa * torch.rand(B, T, H, dk, device="cuda")).to(torch.bfloat16)
        r = torch.randn(B, T, H, dk, device="cuda", dtype=torch.bfloat16)
        k = (0.25 * torch.rand(B, T, H, dk, device="cuda") - 0.125).to(torch.bfloat16)
        v = torch.randn(B, T, H, dv, device="cuda", dtype=torch.bfloat16)
        w = (-0.61 * torch.rand(B, T, H, dk, device="cuda")).to(torch.bfloat16)
        h0 = 0.1 * (2 * torch.rand(B, H, dk, dv, device="cuda", dtype=torch.float32) - 1)
        tokens = B * T * H
        nbytes = tokens * (2.0 * (4 * dk + 2 * dv) + 4.0 * dk) + 4.0 * 2 * B * H * dk * dv
        for impl, fn in kernels.items():
            def run():
                fn(r, w, k, v, a, b, scale=0.125, initial_state=h0, output_final_state=True)
            try:
                with torch.no_grad():
                    ms = median_ms(run)
            except Exception as e:  # noqa: BLE001 - a failing peer must not stop the others
                print(json.dumps({"impl": impl, "op": "dplr", "missing": repr(e)}), flush=True)
                continue
            emit(impl, "dplr", f"B={B} T={T} H={H} dk={dk} dv={dv} rwkv7 bf16", ms,
                 flops=9.0 * tokens * dk * dv, nbytes=nbytes)


MODEL_SHAPES = {
    "llama160m": ("LlamaConfig", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, num_key_value_heads=12, vocab_size=32000,
                                      max_position_embeddings=8192)),
    "mamba130m": ("MambaConfig", dict(hidden_size=768, num_hidden_layers=24, vocab_size=50280, state_size=16)),
    "mamba2_130m": ("Mamba2Config", dict(hidden_size=768, num_hidden_layers=24, num_heads=24, head_dim=64,
                                         expand=2, state_size=128, n_groups=1, vocab_size=50288)),
    # A mixture of experts (16 experts, top 2, every other layer) on Mamba and attention.
    "jamba_moe": ("JambaConfig", dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                                      num_attention_heads=16, num_key_value_heads=8, num_experts=16,
                                      num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
                                      attn_layer_period=8, attn_layer_offset=4, mamba_d_state=16, mamba_expand=2,
                                      use_mamba_kernels=False, vocab_size=32000)),
}


def models():
    import time
    import transformers as tf
    root = os.environ.get("SUBQ_BENCH_MODELS", "/tmp/subq-bench-models")
    for name, (cls, kw) in MODEL_SHAPES.items():
        model = tf.AutoModelForCausalLM.from_config(getattr(tf, cls)(**kw)).to(torch.bfloat16)
        model.save_pretrained(os.path.join(root, name))
        model = model.cuda().eval()
        # The token ids of bench/cuda/model.cu.
        for T in (512, 4096):
            ids = torch.tensor([[3 + (t * 7919) % 94 for t in range(T)]], device="cuda")
            with torch.inference_mode():
                # (transformers' Mamba and Jamba without the mamba_ssm CUDA extension run
                # a per-token PyTorch loop: seconds per call, so fewer of them)
                slow = name.startswith(("mamba", "jamba"))
                ms = median_ms(lambda: model(ids, logits_to_keep=1), warmup=1 if slow else 3, reps=3 if slow else 7)
            emit("transformers", "model.prefill", f"{name} bf16 T={T}", ms)
            if T != 512:
                continue
            # Decode: what generate() adds to the prefill for 32 greedy tokens (its cache,
            # its per-token host sync), per token.
            steps, best = 32, float("inf")
            with torch.inference_mode():
                for _ in range(3):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps + 1,
                                   min_new_tokens=steps + 1, do_sample=False)
                    torch.cuda.synchronize()
                    best = min(best, (time.perf_counter() - start) * 1e3)
            emit("transformers", "model.decode", f"{name} bf16 T=512", max(best - ms, 1e-6) / steps)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    torch.manual_seed(0)
    jobs = {"ceilings": ceilings, "attention": attention, "sparse": sparse, "decode": decode, "scan": scan,
            "linear": linear, "delta": delta, "dplr": dplr, "models": models}
    for what in sys.argv[1:] or list(jobs):
        jobs[what]()
