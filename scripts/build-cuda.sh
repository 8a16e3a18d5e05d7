#!/usr/bin/env bash
# Builds btx with CUDA on a Debian 12 (bookworm) machine from Debian's packages and crates.io
# alone, with no download at build time. Idempotent: run it again and it only rebuilds.
#
#   scripts/build-cuda.sh            # setup, then target/cuda/btx (stripped)
#   scripts/build-cuda.sh --xz       # also target/cuda/btx.xz, to carry to a GPU machine
#   scripts/build-cuda.sh --check    # setup, then `cargo check --features cuda` (what CI runs)
#   scripts/build-cuda.sh --setup    # the setup only
#
# Why the setup: cubecl-cuda always pulls cubecl-llvm (kernels are lowered through LLVM NVPTX),
# whose build dependency tracel-llvm-bundler 23.1.0-4 downloads LLVM 23 into
# $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4 (default ~/.local/share) unless that directory
# already holds the marker `.tracel-llvm-installed`; cubecl-llvm's build script then runs
# `<dir>/bin/llvm-config --link-static`. Debian's LLVM 22 (bookworm-security) has every C
# function the bindings call, so the directory is made of links to /usr/lib/llvm-22. The bundler
# turns `libz3.so` from `llvm-config --system-libs` into `-llibz3`, hence a `liblibz3.so` link.
#
# At run time the binary opens libcuda (cudarc loads it dynamically) and reads libdevice.10.bc
# from $CUDA_PATH/nvvm/libdevice (the PyPI wheel nvidia-cuda-nvcc-cu12 ships one); it needs
# glibc >= 2.36. See the README's GPU section.
set -euo pipefail

mode=build
xz=0
for a in "$@"; do
    case "$a" in
        --check) mode=check ;;
        --setup) mode=setup ;;
        --xz) xz=1 ;;
        -h | --help)
            sed -n '2,9p' "$0"
            exit 0
            ;;
        *)
            echo "error: unknown argument $a" >&2
            echo "HINT: scripts/build-cuda.sh [--check | --setup] [--xz]" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "$0")/.."
LLVM=/usr/lib/llvm-22
BUNDLE="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4"
PACKAGES=(llvm-22-dev libpolly-22-dev libzstd-dev)

say() { echo "[build-cuda] $*" >&2; }
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "error: '$*' needs root and there is no sudo" >&2
        echo "HINT: run as root, or install ${PACKAGES[*]} yourself and rerun" >&2
        exit 1
    fi
}

# 1. Debian's LLVM 22 and the libraries its static link needs.
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if ! apt-cache policy llvm-22-dev 2>/dev/null | grep -q "Candidate: [0-9]"; then
        say "apt has no llvm-22-dev yet: apt-get update"
        as_root apt-get update -q
    fi
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if [ ! -x "$LLVM/bin/llvm-config" ]; then
    echo "error: $LLVM/bin/llvm-config is missing after installing ${PACKAGES[*]}" >&2
    echo "HINT: this recipe is for Debian 12 with bookworm-security enabled (llvm-22-dev 1:22.1.x)" >&2
    exit 1
fi

# 2. `-llibz3` must resolve: a liblibz3.so beside LLVM's libraries.
z3=$("$LLVM/bin/llvm-config" --link-static --system-libs | tr ' ' '\n' | grep -E 'libz3\.so' || true)
if [ -n "$z3" ] && [ ! -e "$LLVM/lib/liblibz3.so" ]; then
    say "linking $LLVM/lib/liblibz3.so -> $z3"
    as_root ln -sf "$z3" "$LLVM/lib/liblibz3.so"
fi

# 3. The bundler's directory, made of links to Debian's LLVM, with its marker.
mkdir -p "$BUNDLE"
for d in bin lib include; do
    if [ "$(readlink "$BUNDLE/$d" || true)" != "$LLVM/$d" ]; then
        rm -rf "${BUNDLE:?}/$d"
        ln -s "$LLVM/$d" "$BUNDLE/$d"
    fi
done
# Created once: the bundler's build script reruns when the marker changes, and with it every
# crate above cubecl-llvm (a touch on each run cost a 10-minute rebuild).
[ -e "$BUNDLE/.tracel-llvm-installed" ] || touch "$BUNDLE/.tracel-llvm-installed"
say "LLVM for cubecl: $BUNDLE -> $LLVM ($("$BUNDLE/bin/llvm-config" --version))"

[ "$mode" = setup ] && exit 0

# cudarc picks the CUDA API version at build time; 13.0 matches the driver of the H200 machines
# (580) and runs on any driver that supports CUDA 13.
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
# A target directory of its own: the CPU build in target/release stays as it is.
target=target/cuda
if [ "$mode" = check ]; then
    say "cargo check --features cuda (target dir $target)"
    cargo check --release --features cuda -p btx --target-dir "$target"
    exit 0
fi
say "cargo build --release --features cuda (target dir $target; ~17 min on 2 cores)"
cargo build --release --features cuda -p btx --target-dir "$target"
bin="$target/btx"
strip -o "$bin.tmp" "$target/release/btx"
mv "$bin.tmp" "$bin"
"$bin" --version >/dev/null
say "built $bin ($(du -h "$bin" | cut -f1), stripped; unstripped: $target/release/btx)"
if [ "$xz" = 1 ]; then
    xz -T0 -6 -c "$bin" >"$target/btx.xz.tmp"
    mv "$target/btx.xz.tmp" "$target/btx.xz"
    say "compressed $target/btx.xz ($(du -h "$target/btx.xz" | cut -f1))"
fi
