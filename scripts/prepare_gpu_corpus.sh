#!/usr/bin/env bash
# A larger English corpus for GPU runs (~4M SmolLM2 tokens), from what the package registry serves: the
# documentation shipped in the source archives of Django, SymPy, SQLAlchemy and Celery, plus the stdlib
# docstrings. Pre-tokenized into one .tokens.npz that fits a device call's carry.
#
#   scripts/prepare_gpu_corpus.sh TOKENIZER_DIR [OUT_DIR]      # OUT_DIR default: .carry/corpus_docs
#
# Each source's license is recorded in OUT_DIR/SOURCES.json (from the archive's LICENSE file, by hand here).
set -euo pipefail
TOK=${1:?usage: $0 TOKENIZER_DIR [OUT_DIR]}
OUT=${2:-.carry/corpus_docs}
CACHE=${ACTSPARSE_CACHE:-$HOME/.cache/actsparse}/sdists
mkdir -p "$CACHE"
# name==version  folder-inside-the-archive  license (SPDX)
SOURCES=(
  "django==5.2.8 docs BSD-3-Clause"
  "sympy==1.14.0 doc BSD-3-Clause"
  "sqlalchemy==2.0.44 doc/build MIT"
  "celery==5.5.3 docs BSD-3-Clause"
)
INCLUDES=()
for entry in "${SOURCES[@]}"; do
  read -r spec folder license <<<"$entry"
  name=${spec%%==*}; version=${spec##*==}
  dir="$CACHE/$name-$version"
  if [ ! -d "$dir" ]; then
    python3 -m pip download -q --no-deps --no-binary :all: -d "$CACHE" "$spec"
    tar xzf "$CACHE/$name-$version.tar.gz" -C "$CACHE"
  fi
  INCLUDES+=(--include "$dir/$folder=$license")
done
actsparse prepare-data --tokenizer "$TOK" --out "$OUT" "${INCLUDES[@]}"
du -sh "$OUT"
