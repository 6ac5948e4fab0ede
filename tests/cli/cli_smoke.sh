#!/usr/bin/env bash
# The CLI as a user meets it: help, version, bad arguments give `subq: error:` and a
# non-zero exit, and a tiny bench run writes a table, valid JSON and an SVG.
set -u
subq=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$subq" --help | grep -q "bench" || fail "--help does not list bench"
"$subq" --version | grep -q "^subq [0-9]" || fail "--version"
"$subq" bench --help | grep -q -- "--only" || fail "bench --help"
"$subq" bench --list | grep -q "common.rms_norm" || fail "bench --list misses common.rms_norm"

expect_error() {  # expect_error WHAT ARGS...: non-zero exit and a `subq: error:` line
  local what=$1; shift
  "$subq" "$@" >"$tmp/out" 2>"$tmp/err" && fail "$what: exit status 0"
  grep -q "^subq: error: " "$tmp/err" || fail "$what: no 'subq: error:' line: $(cat "$tmp/err")"
}
expect_error "unknown subcommand" frobnicate
expect_error "no subcommand"
expect_error "bad --seq" bench --seq 4x
expect_error "zero --seq" bench --seq 0
expect_error "unmatched --only" bench --only no-such-case
expect_error "bad --threads" --threads 0 bench --list
expect_error "bad --matmul" --matmul fp8 bench --list
SUBQ_THREADS=abc expect_error "bad SUBQ_THREADS" bench --only common.silu --seq 8
expect_error "unwritable --json" bench --only common.silu --seq 8 --min-time 0 --json /nonexistent/dir/x.json

"$subq" --threads 1 bench --only common.s,common.rms_norm --seq 8,16 --min-time 0 --json "$tmp/b.json" \
  --plot "$tmp/b.svg" >"$tmp/table" 2>"$tmp/err" || fail "bench run failed: $(cat "$tmp/err")"
grep -q "common.silu" "$tmp/table" || fail "table lacks common.silu"
grep -q "common.rms_norm" "$tmp/table" || fail "table lacks common.rms_norm (second --only pattern)"
grep -q "common.gemm\|attention\." "$tmp/table" && fail "--only ran cases neither pattern names"
grep -q "ceilings:" "$tmp/table" || fail "table lacks the machine ceilings"
python3 - "$tmp/b.json" <<'PY' || fail "JSON does not have the documented fields"
import json, sys
j = json.load(open(sys.argv[1]))
m = j["machine"]
assert m["threads"] == 1 and m["ceilings"]["bandwidth_gbs"] > 0 and m["ceilings"]["fma_gflops"] > 0
fields = {"name", "family", "shape", "T", "median_s", "tokens_per_s", "gflops", "gbs",
          "ceiling_fraction", "peak_bytes", "max_rel_err"}
assert j["cases"], "no cases"
for c in j["cases"]:
    assert fields <= set(c), set(c)
    assert c["median_s"] > 0 and c["max_rel_err"] is not None and c["max_rel_err"] < 1e-4
PY
grep -q "<svg" "$tmp/b.svg" && grep -q "polyline" "$tmp/b.svg" || fail "SVG plot missing lines"
# Models: run, info, perplexity on a fixture checkpoint; malformed directories fail cleanly.
models=$(cd "$(dirname "$0")/../fixtures/models" && pwd)
"$subq" info "$models/mamba2" | grep -q "schedule:  *mamba2 x 2" || fail "info schedule"
"$subq" run "$models/mamba" -p "Hello" -n 6 --temp 0.8 --seed 1 --logits-out "$tmp/l.npy" --save-state "$tmp/s.st" \
  >"$tmp/out" 2>"$tmp/err" || fail "run: $(cat "$tmp/err")"
grep -q "^Hello" "$tmp/out" || fail "run does not echo the prompt"
grep -q "decode: 6 tokens" "$tmp/err" || fail "run stats: $(cat "$tmp/err")"
"$subq" run "$models/mamba" -p "!" -n 2 --load-state "$tmp/s.st" >/dev/null 2>&1 || fail "run --load-state"
printf 'It was the best of times, it was the worst of times.' >"$tmp/text"
"$subq" perplexity "$models/mamba" --file "$tmp/text" --ctx 8 | grep -q "^perplexity: " || fail "perplexity"
dense=$("$subq" perplexity "$models/llama" --file "$tmp/text" --ctx 64)
window=$("$subq" perplexity "$models/llama" --file "$tmp/text" --ctx 64 --sparse window:window=4,block=4)
[ "$dense" != "$window" ] || fail "--sparse window does not change the perplexity"
expect_error "unknown sparse policy" perplexity "$models/llama" --file "$tmp/text" --sparse magic
bf16kv=$("$subq" perplexity "$models/llama_tied_bf16" --file "$tmp/text" --ctx 64)
f32kv=$("$subq" perplexity "$models/llama_tied_bf16" --file "$tmp/text" --ctx 64 --kv-cache f32)
[ "$bf16kv" != "$f32kv" ] || fail "--kv-cache f32 does not change a bf16 checkpoint's perplexity"
"$subq" --matmul bf16 perplexity "$models/llama_tied_bf16" --file "$tmp/text" --ctx 64 >"$tmp/out" 2>"$tmp/err" \
  || fail "--matmul bf16 perplexity failed: $(cat "$tmp/err")"
grep -q "^perplexity: " "$tmp/out" || fail "--matmul bf16 perplexity printed no result"
expect_error "unknown KV cache dtype" perplexity "$models/llama" --file "$tmp/text" --kv-cache f16
expect_error "unknown device" run "$models/llama" -p hi --device tpu
# On a machine without a GPU (or a build without CUDA), --device cuda is a clear error;
# with one, it runs (tests/cuda checks its numbers).
if "$subq" run "$models/llama" -p "Hello" -n 3 --device cuda >"$tmp/out" 2>"$tmp/err"; then
  grep -q "decode: 3 tokens" "$tmp/err" || fail "run --device cuda stats: $(cat "$tmp/err")"
else
  grep -q "^subq: error: .*\(GPU\|CUDA\)" "$tmp/err" || fail "run --device cuda without a GPU: $(cat "$tmp/err")"
fi
mkdir -p "$tmp/bad"
cp "$models/mamba/tokenizer.json" "$tmp/bad/"
echo '{"architectures": ["MambaForCausalLM"], "hidden_size": 40' >"$tmp/bad/config.json"
expect_error "truncated config.json" run "$tmp/bad" -p hi
cp "$models/mamba/config.json" "$tmp/bad/"
head -c 1000 "$models/mamba/model.safetensors" >"$tmp/bad/model.safetensors"
expect_error "truncated safetensors" run "$tmp/bad" -p hi
expect_error "missing model dir" info "$tmp/nope"
expect_error "state of another model" run "$models/mamba2" -p hi --load-state "$tmp/s.st"
expect_error "perplexity without file" perplexity "$models/mamba" --file "$tmp/nope.txt"

echo "cli smoke: ok"
