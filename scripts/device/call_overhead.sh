#!/usr/bin/env bash
# Issue 3: step-time overhead of the L1 term + sparsity counters, measured as on/off/on/off (A/B/A/B) so the
# spread between the two runs of one arm shows the noise the overhead must beat. SmolLM2-135M shapes with
# random weights (throughput does not depend on them; no GGUF needed), the stdlib corpus tokenized here.
#   carry: .carry/whl_train .carry/tok          env: STAGE (ZeRO stage, default 2), STEPS (default 120), RUN_S (per run, 150)
set -uo pipefail
source scripts/device/env.sh
source scripts/device/smollm2.sh
R=$PWD; STAGE=${STAGE:-2}; STEPS=${STEPS:-120}
(cd /tmp && python3 -m actsparse.launch.cli prepare-data --tokenizer $R/.carry/tok --out /root/corpus 2>&1 | tail -1)
A=(smollm2_135m_prosparse --nproc-per-node 1 train.steps=$STEPS train.log_every=10 train.eval_every=0
   train.checkpoint_every=0 train.export_at_end=false train.zero_stage=$STAGE train.eval_batches=0
   "l1.stages=[[0, 10], [0.05, $STEPS]]" "data.sources=[{path: /root/corpus/corpus.tokens.npz}]"
   "${SMOLLM2_SHAPED_RANDOM[@]}" model.tokenizer=$R/.carry/tok)
OFF=(l1.schedule=none train.sparsity_stats=false)
cd /root
for run in on1 off1 on2 off2; do
  extra=(); [[ $run == off* ]] && extra=("${OFF[@]}")
  timeout ${RUN_S:-150} python3 -m actsparse.launch.cli train "${A[@]}" "${extra[@]}" output_dir=/root/ovh/$run > "$OUT/$run.log" 2>&1
  echo "$run rc $?"
done
python3 -m actsparse.recipes.run_summary /root/ovh/off1 /root/ovh/on1 /root/ovh/off2 /root/ovh/on2 --skip 30 \
  --json "$OUT/overhead_stage$STAGE.json"
