#!/usr/bin/env bash
# Device call 1: stash GGUF part a; kernels' GPU tests; bench-kernels at the 7B shape; decode benchmark.
set -uo pipefail
source scripts/device/env.sh
mkdir -p /root/stash && cp .carry/gguf_a/* /root/stash/ 2>/dev/null
timeout 170 python3 -m pytest tests/kernels -q -m gpu -x -p no:randomly 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
timeout ${BENCH_S:-300} python3 -m actsparse.launch.cli bench-kernels --shapes llama2-7b \
  --sparsities 0.5,0.7,0.8,0.9,0.95 --out-dir "$OUT/bk7b" > "$OUT/bench7b.log" 2>&1; echo "bench rc $?"
grep -E "goal|WRONG|Error|error" "$OUT/bench7b.log" | head -20
cd /tmp && timeout ${DECODE_S:-110} python3 -m actsparse.kernels.bench_decode --layers 32 --batches 1,8 \
  --out "$OUT/bench_decode.json" 2>&1 | tail -8
