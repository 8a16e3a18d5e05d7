#!/usr/bin/env bash
# Decoding speed side by side on this CPU: `btx bench generate` vs llama.cpp's `llama-bench` on
# the same model (SmolLM2-135M-Instruct, imported by btx and exported as GGUF), batch 1,
# tokens/s at 1 and 2 threads, for f32, f16 and bf16 exports. llama-bench times 128 tokens
# decoded from an empty context (tg128, the mean of 3 runs); btx decodes 128 tokens after a
# 16-token prompt (the prompt's prefill included in its time), once after a warm-up.
# Run it on an otherwise idle machine: both sides are memory-bound.
#
# usage: scripts/llama-cpp-bench.sh [OUT_DIR]   (default runs/llama-cpp-bench)
# Setup as scripts/llama-cpp-check.sh (the same cache, $LLAMA_CPP_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/llama-cpp-bench}
# shellcheck source=scripts/llama-cpp/setup.sh
source scripts/llama-cpp/setup.sh

W=$OUT/work
rm -rf "$W"
mkdir -p "$W"
btx import-gguf "$SEED_GGUF" --out "$W/seed" >/dev/null
rows=()
for dtype in f32 f16 bf16; do
  gguf=$W/seed-$dtype.gguf
  btx export --model "$W/seed" --format gguf --dtype "$dtype" --out "$gguf" >/dev/null
  ref=$W/seed
  if [ "$dtype" != f32 ]; then
    ref=$W/seed-$dtype-hf
    btx export --model "$W/seed" --format hf --dtype "$dtype" --out "$ref" >/dev/null
  fi
  for t in 1 2; do
    say "$dtype, $t thread(s)"
    l=$("$BIN/llama-bench" -m "$gguf" -p 0 -n 128 -t "$t" -r 3 -o json 2>/dev/null |
      python -c "import json, sys; print(f\"{json.load(sys.stdin)[0]['avg_ts']:.1f}\")")
    b=$("$BTX" --threads "$t" bench generate --model "$ref" --tokens 128 --batch 1 --json 2>/dev/null |
      python -c "import json, sys; print(f\"{json.loads(sys.stdin.read().strip().splitlines()[-1])['tokens_per_s']:.1f}\")")
    r=$(python -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$b" "$l")
    rows+=("| $dtype | $t | $b | $l | ${r}x |")
  done
done
{
  echo "# Decoding speed, SmolLM2-135M, batch 1 ($(date -u +%Y-%m-%d), $(nproc) cores, llama.cpp $LLAMA_CPP_PKG)"
  echo
  echo "| weights | threads | btx tokens/s | llama.cpp tokens/s | btx / llama.cpp |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "btx computes in f32 whatever the stored type (f16/bf16 weights are widened when loaded); llama.cpp multiplies f16/bf16 weights as stored."
} >"$OUT/summary.md.tmp"
mv "$OUT/summary.md.tmp" "$OUT/summary.md"
cat "$OUT/summary.md"
