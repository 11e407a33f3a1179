#!/usr/bin/env bash
# A larger English corpus for GPU runs, from what the package registry serves: the documentation shipped in
# the source archives of Django, SymPy and SQLAlchemy, plus the stdlib docstrings (3.7M SmolLM2 tokens),
# pre-tokenized into one .tokens.npz that fits a device call's carry; Celery's docs become held-out text
# (heldout.txt) for `actsparse eval`.
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
)
# Held out from training: Celery's docs, as plain text for `actsparse eval` (data.source: txt).
HELDOUT="celery==5.5.3 docs BSD-3-Clause"

fetch() {   # name==version -> sets $name and $dir (the unpacked source archive, downloaded once)
  name=${1%%==*}; local version=${1##*==}
  dir="$CACHE/$name-$version"
  if [ ! -d "$dir" ]; then
    python3 -m pip download -q --no-deps --no-binary :all: -d "$CACHE" "$1"
    tar xzf "$CACHE/$name-$version.tar.gz" -C "$CACHE"
  fi
}

# The training text, also kept compressed for machines whose tokenizer build differs (re-tokenize there).
INCLUDES=()
TEXT=$(mktemp -d); : > "$TEXT/includes.txt"
for entry in "${SOURCES[@]}"; do
  read -r spec folder license <<<"$entry"
  fetch "$spec"
  INCLUDES+=(--include "$dir/$folder=$license")
  (cd "$dir" && find "$folder" \( -name "*.rst" -o -name "*.txt" -o -name "*.md" \) -print0 |
     tar --null -T - -cf - | tar -xf - -C "$TEXT" --transform "s,^,$name/,")
  echo "$name/$folder=$license" >> "$TEXT/includes.txt"
done
actsparse prepare-data --tokenizer "$TOK" --out "$OUT" "${INCLUDES[@]}"
tar -C "$TEXT" -cJf "$OUT/docs_text.tar.xz" . && rm -rf "$TEXT"

read -r spec folder license <<<"$HELDOUT"
fetch "$spec"
find "$dir/$folder" -name "*.rst" -o -name "*.txt" | sort | xargs cat > "$OUT/heldout.txt"
echo "held-out text: $OUT/heldout.txt ($spec $folder, $license), $(wc -c < "$OUT/heldout.txt") bytes"
du -sh "$OUT"
