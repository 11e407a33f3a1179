#!/usr/bin/env bash
# Device call 1: stash GGUF part a; kernels' GPU tests; bench-kernels at the 7B shape (Version 1 and Version 2
# predicted paths side by side); per-kernel breakdown of batch 1 at 90%; decode benchmark (exact and predictor
# paths, 32 layers). Each step has its own time limit, so one slow step cannot take the call's 600 s.
#   carry: .carry/gguf_a (+ any .carry/whl_* to install on this machine)
#   env: TESTS_S, TESTS_K (pytest -k), BENCH_S, BREAKDOWN_S, BATCHES, SPARSITIES, DECODE_S, COMPILED_S (a time limit of 0
#   skips that step). Eight files come back: the device tool's limit (the bench log stays in /tmp).
set -uo pipefail
source scripts/device/env.sh
mkdir -p /root/stash && cp .carry/gguf_a/* /root/stash/ 2>/dev/null
[ "${TESTS_S:-100}" = 0 ] || ACTSPARSE_AUTOTUNE=quick timeout ${TESTS_S:-100} python3 -m pytest tests/kernels/test_gpu.py -q -m gpu -p no:randomly -k "${TESTS_K:-fused or graph}" \
  2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
[ "${BENCH_S:-200}" = 0 ] || timeout ${BENCH_S:-200} python3 -m actsparse.launch.cli bench-kernels --shapes llama2-7b --batches ${BATCHES:-1,8,32} \
  --sparsities ${SPARSITIES:-0.5,0.8,0.9,0.95} --out-dir "$OUT/bk7b" > /tmp/bench7b.log 2>&1; echo "bench rc $?"
grep -E "goal|WRONG|Error|error|copy bandwidth" /tmp/bench7b.log 2>/dev/null | head -20
cd /tmp
[ "${BENCH_S:-200}" = 0 ] || timeout ${BREAKDOWN_S:-60} python3 -m actsparse.kernels.bench_breakdown --batch 1 --sparsity 0.9 --out "$OUT/breakdown_b1_s90.json" 2>&1 | tail -30
[ "${DECODE_S:-150}" = 0 ] || timeout ${DECODE_S:-150} python3 -m actsparse.kernels.bench_decode --layers 32 --batches 1,8 \
  --out "$OUT/bench_decode.json" 2>&1 | grep -v Warning | tail -12
# torch.compile for dense and sparse alike (compiled_decoding.py); 8 layers keep the compile short.
[ "${COMPILED_S:-150}" = 0 ] || timeout ${COMPILED_S:-150} python3 -m actsparse.kernels.bench_decode --layers 8 --batches 1 \
  --compile --out "$OUT/bench_decode_compiled.json" 2>&1 | grep -v Warning | tail -6
