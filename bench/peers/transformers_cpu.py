#!/usr/bin/env python3
"""transformers on the CPU, the way many users run these models today: prefill and decode
tokens/s of a Hugging Face model directory, to set beside `subq run` on the same
directory (docs/benchmarks.md, whole models). Needs torch and transformers (PyPI).

    python3 bench/peers/transformers_cpu.py MODEL_DIR [--prompt 512] [--new 32] [--threads 2]

Prefill is one forward over `prompt` random token ids; decode is what generate() adds on
top of it for `new` greedy tokens (with its cache). Weights stay in the dtype they were
saved in. Prints one JSON line; times are the best of `--reps` runs.
"""
import argparse
import json
import time

import torch
import transformers as tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = tf.AutoModelForCausalLM.from_pretrained(args.model, dtype="auto").eval()
    vocab = model.config.vocab_size
    ids = torch.randint(3, min(vocab, 97), (1, args.prompt))
    best_prefill = best_total = float("inf")
    with torch.inference_mode():
        for _ in range(args.reps):
            start = time.perf_counter()
            model(ids)
            best_prefill = min(best_prefill, time.perf_counter() - start)
            start = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                           min_new_tokens=args.new, do_sample=False)
            best_total = min(best_total, time.perf_counter() - start)
    # generate() prefills the prompt, then decodes; its decode time is the difference.
    best_decode = max(best_total - best_prefill, 1e-9)
    print(json.dumps({"impl": "transformers-cpu", "model": args.model, "dtype": str(model.dtype),
                      "threads": args.threads, "prompt": args.prompt, "new": args.new,
                      "prefill_tok_s": round(args.prompt / best_prefill, 1),
                      "decode_tok_s": round(args.new / best_decode, 2)}))


if __name__ == "__main__":
    main()
