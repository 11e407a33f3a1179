#!/usr/bin/env bash
# Issue 3: step-time overhead of the L1 term + sparsity counters, the four modes (off, counters, l1, both)
# rotating in blocks inside one training process (recipes/overhead_bench.py), at ZeRO stage 2 and then 3.
# SmolLM2-135M shapes with random weights, 16 x 2048 tokens a step, the stdlib corpus tokenized here.
#   carry: .carry/whl_train .carry/tok    env: STAGES (default "2 3"), ROUNDS (6), BLOCK (10), RUN_S (per stage, 240),
#   TESTS_S (then the kernels' GPU tests TESTS_K with what is left; 0 skips)
set -uo pipefail
source scripts/device/env.sh
source scripts/device/smollm2.sh
R=$PWD
(cd /tmp && python3 -m actsparse.launch.cli prepare-data --tokenizer $R/.carry/tok --out /root/corpus 2>&1 | tail -1)
for stage in ${STAGES:-2 3}; do
  (cd /tmp && timeout ${RUN_S:-240} python3 -m actsparse.recipes.overhead_bench smollm2_135m_prosparse \
     train.zero_stage=$stage "data.sources=[{path: /root/corpus/corpus.tokens.npz}]" "${SMOLLM2_SHAPED_RANDOM[@]}" \
     model.tokenizer=$R/.carry/tok output_dir=/root/ovh_bench --rounds ${ROUNDS:-6} --block ${BLOCK:-10} \
     --out "$OUT/overhead_bench_stage$stage.json" > /tmp/ovh_$stage.log 2>&1; echo "stage $stage rc $?")
  grep -a -E "^round|^mode|^off|^counters|^l1|^both|Error" /tmp/ovh_$stage.log | tail -14
done
[ "${TESTS_S:-0}" = 0 ] || timeout $TESTS_S python3 -m pytest tests/kernels/test_gpu.py -q -m gpu -p no:randomly \
  -k "${TESTS_K:-gate_up or inline}" 2>&1 | tail -8 | tee "$OUT/gpu_tests.log"
