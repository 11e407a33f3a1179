#!/usr/bin/env bash
# Device call 4 (short): every kernels GPU test (no -x), and bench_decode on 2 layers with blocking launches
# so that a device-side assert names its op.
set -uo pipefail
source scripts/device/env.sh
timeout ${T_TESTS:-170} python3 -m pytest tests/kernels -q -m gpu -p no:randomly -rf 2>&1 | tail -30 | tee "$OUT/gpu_tests.log"
cd /tmp && CUDA_LAUNCH_BLOCKING=1 timeout ${DECODE_S:-90} python3 -m actsparse.kernels.bench_decode --layers 2 --batches 1 \
  --new-tokens 16 --out "$OUT/bench_decode_small.json" > "$OUT/bench_decode_small.log" 2>&1; echo "decode rc $?"
grep -v "^\s*$" "$OUT/bench_decode_small.log" | grep -B2 -A2 -E "Error|error|File \"/tmp/site|assert" | head -40
