#!/usr/bin/env python3
"""Joins subq_cuda_bench's and peers.py's JSON lines into one markdown table: each subq
row beside each peer measured on the same (op, shape) in the same call, the ratio
(peer time / subq time, > 1 means subq is faster), and the fraction of the measured
ceilings (bf16 matmul TFLOP/s, device copy GB/s).

usage: summary.py subq.jsonl peers.jsonl > summary.md
"""
import json
import sys


def rows(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def main():
    subq, peers = rows(sys.argv[1]), rows(sys.argv[2])
    ceil = {r["op"]: r for r in peers if r["op"].startswith("ceiling.")}
    tf_ceiling = ceil.get("ceiling.matmul_bf16", {}).get("tflops", 0)
    bw_ceiling = ceil.get("ceiling.d2d_copy", {}).get("gbps", 0)
    print(f"Ceilings measured in this call: bf16 matmul {tf_ceiling} TFLOP/s, device copy {bw_ceiling} GB/s\n")
    for r in peers:
        if "missing" in r:
            print(f"Peer {r['impl']} for {r['op']} not available: {r['missing']}\n")
    print("| op | shape | subq ms | subq TFLOP/s | subq GB/s | of ceiling | peer | peer ms | peer/subq |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in subq:
        matches = [p for p in peers if "ms" in p and p["op"] == r["op"] and p["shape"] == r["shape"]]
        frac = ""
        if r["tflops"] > 0 and tf_ceiling:
            frac = f"{100 * r['tflops'] / tf_ceiling:.0f}% of matmul"
        elif r["gbps"] > 0 and bw_ceiling:
            frac = f"{100 * r['gbps'] / bw_ceiling:.0f}% of copy"
        if "speedup" in r:
            frac += (f"; density {r['density']:.3f}, {r['speedup']:.2f}x over dense causal "
                     f"(ideal {r['ideal']:.2f}x: {100 * r['speedup'] / r['ideal']:.0f}%)")
        for peer in matches or [None]:
            pname, pms, ratio = ((peer["impl"], f"{peer['ms']:.4f}", f"{peer['ms'] / r['ms']:.2f}x") if peer
                                 else ("-", "-", "-"))
            print(f"| {r['op']} | {r['shape']} | {r['ms']:.4f} | {r['tflops']} | {r['gbps']} | {frac} | {pname} | "
                  f"{pms} | {ratio} |")


if __name__ == "__main__":
    main()
