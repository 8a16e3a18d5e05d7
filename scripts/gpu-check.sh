#!/usr/bin/env bash
# Every GPU check of btx in one run, on a machine with an NVIDIA GPU, its driver, and python3
# with torch (for the benchmark's reference side). Budget: under 8 minutes on an H200.
#
#   scripts/gpu-check.sh [BTX]       # BTX: a CUDA build of btx (scripts/build-cuda.sh); default
#                                    # target/cuda/btx, else target/cuda/btx.xz unpacked here
#   OUT=dir scripts/gpu-check.sh     # where logs and summary.txt go (default /tmp/btx-gpu-check)
#   PEAK_TFLOPS=67 ...               # the GPU's f32 peak for MFU (default: H100/H200 67)
#   PEAK_BF16_TFLOPS=989 ...         # the bf16 dense peak for MFU (default: H100/H200 989)
#   SKIP_BENCH=1 ...                 # parity and the pipeline only (no speed, no bf16)
#
# 1. parity: `btx --device cuda selftest` — every transformers fixture (logits, losses, router
#    logits, every gradient) and the golden PyTorch training run, at the CPU tests' tolerances;
#    the same on the CPU beside it for comparison.
# 2. pipeline: `btx run examples/quick.toml --device cuda` end to end (every stage on the GPU),
#    then `btx status` (which GPU each stage used).
#    Then attention experts (BAM, both variants) mixed from that run's experts: held-out loss on
#    cuda against the CPU, and batched generation without an expert.
# 3. speed: `btx bench compare --device cuda` — btx against PyTorch eager and torch.compile
#    (f32, no TF32 on either side) on the CPU presets and the SmolLM2-135M shape.
# 4. bf16 mixed precision: examples/tiny-train.toml for 1,000 steps in f32 and in bf16 (the two
#    loss curves: metrics.jsonl of each), and `bench compare --precision bf16` on the SmolLM2
#    shapes (PyTorch under torch.autocast bf16).
# Prints a summary; exits non-zero when a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/btx-gpu-check}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
failed=0
t_start=$(date +%s)

# The binary: given, built here, or carried compressed (unpacked with Python's lzma: no xz
# binary needed on the GPU machine).
BTX="${1:-}"
if [ -z "$BTX" ]; then
    if [ -x target/cuda/btx ]; then
        BTX=target/cuda/btx
    elif [ -f target/cuda/btx.xz ]; then
        BTX="$OUT/btx"
        python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            target/cuda/btx.xz "$BTX" && chmod +x "$BTX"
    fi
fi
if [ -z "$BTX" ] || [ ! -x "$BTX" ]; then
    echo "error: no CUDA btx (target/cuda/btx or target/cuda/btx.xz)" >&2
    echo "HINT: build one with scripts/build-cuda.sh [--xz], or pass its path" >&2
    exit 2
fi
BTX="$(cd "$(dirname "$BTX")" && pwd)/$(basename "$BTX")"

# libdevice.10.bc: cubecl reads it from $CUDA_PATH/nvvm/libdevice; a CUDA toolkit has it, so
# does the PyPI wheel nvidia-cuda-nvcc-cu12.
if [ -z "${CUDA_PATH:-}" ] || [ ! -f "$CUDA_PATH/nvvm/libdevice/libdevice.10.bc" ]; then
    for c in /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")" \
        $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cuda_nvcc") for p in nvidia.__path__))' 2>/dev/null); do
        if [ -f "$c/nvvm/libdevice/libdevice.10.bc" ]; then
            export CUDA_PATH="$c"
            break
        fi
    done
fi
say "btx GPU check, $(date -u +%FT%TZ)"
say "binary: $BTX ($("$BTX" --version))"
say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
say "CUDA_PATH: ${CUDA_PATH:-unset (no libdevice.10.bc found)}"
PEAK="${PEAK_TFLOPS:-67}"

step() {
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local dt=$(($(date +%s) - t0))
    if [ $rc = 0 ]; then
        say "PASS $name (${dt}s)"
    else
        say "FAIL $name (exit $rc after ${dt}s; log $OUT/$name.log)"
        tail -n 15 "$OUT/$name.log" | sed 's/^/    | /' | tee -a "$SUMMARY"
        failed=1
    fi
    return $rc
}

# 1. Parity.
step selftest-cuda 240 "$BTX" --device cuda selftest --testdata testdata
grep -E "logits|golden|FAIL" "$OUT/selftest-cuda.log" | sed 's/^/    /' | tee -a "$SUMMARY"
step selftest-cpu 120 "$BTX" --device cpu selftest --testdata testdata

# 2. The pipeline on the GPU.
rm -rf "$OUT/run"
step run-quick 300 "$BTX" --device cuda run examples/quick.toml --out "$OUT/run" --jobs 2
"$BTX" status "$OUT/run" >"$OUT/run-status.txt" 2>&1
awk 'NR == 1 || /^(seed|expert:|mix:|finetune:btx |report)/' "$OUT/run-status.txt" | sed 's/^/    /' | tee -a "$SUMMARY"
if [ -f "$OUT/run/report.md" ]; then
    grep -A3 "avg loss" "$OUT/run/report.md" | head -4 | sed 's/^/    /' >>"$SUMMARY"
fi

# 2b. Attention experts (BAM) on the GPU: the quick run's experts mixed with attention experts
# (per-expert and shared K/V), held-out loss on cuda against the CPU (both read the same model),
# and generation without an expert (prune-experts' in-memory form) with the per-expert KV cache.
if [ -d "$OUT/run/experts/math/model" ]; then
    for att in experts experts-shared-kv; do
        step "mix-$att" 60 "$BTX" mix --seed "$OUT/run/seed/model" \
            --experts "$OUT/run/experts/math/model" "$OUT/run/experts/code/model" "$OUT/run/experts/knowledge/model" \
            --domains math code knowledge --generalist --attention "$att" --out "$OUT/bam-$att" --force
        for dev in cuda cpu; do
            step "bam-$att-eval-$dev" 120 "$BTX" --device "$dev" eval --model "$OUT/bam-$att" \
                --data "$OUT/run/data/tokens" --seq-len 128 --windows 16 --tasks 0
        done
        grep -E "^average" "$OUT/bam-$att-eval-cuda.log" "$OUT/bam-$att-eval-cpu.log" | sed 's/^/    /' | tee -a "$SUMMARY"
        step "bam-$att-generate-cuda" 60 "$BTX" --device cuda generate --model "$OUT/bam-$att" \
            --prompt "12 + 7 =" --prompt "def add(a, b):" --max-tokens 16 --without-expert math
    done
fi

# 3. Speed against PyTorch on the same GPU.
if [ -z "${SKIP_BENCH:-}" ]; then
    step bench 330 "$BTX" --device cuda bench compare --presets S,MoE-S,M,SmolLM2,MoE-SmolLM2 \
        --threads 1 --steps 6 --peak-tflops "$PEAK"
    grep -E "cuda:" "$OUT/bench.log" | sed 's/^/    /' | tee -a "$SUMMARY"
fi

# 4. bf16 mixed precision: the loss curve against f32, and the speed.
if [ -z "${SKIP_BENCH:-}" ]; then
    for p in f32 bf16; do
        rm -rf "$OUT/curve-$p"
        step "curve-$p" 150 "$BTX" --device cuda train --config examples/tiny-train.toml \
            --set train.steps=1000 --set train.log_every=50 --set train.precision=$p --out "$OUT/curve-$p"
        tail -n 1 "$OUT/curve-$p/metrics.jsonl" 2>/dev/null | sed "s/^/    $p final: /" | tee -a "$SUMMARY"
    done
    step bench-bf16 200 "$BTX" --device cuda bench compare --presets SmolLM2,MoE-SmolLM2 \
        --threads 1 --steps 6 --precision bf16 --peak-tflops "${PEAK_BF16_TFLOPS:-989}"
    grep -E "cuda:" "$OUT/bench-bf16.log" | sed 's/^/    /' | tee -a "$SUMMARY"
fi

say "total $(($(date +%s) - t_start))s; logs in $OUT"
exit $failed
