#!/usr/bin/env bash
# Device call 2: GGUF part b joins part a (stashed by call 1); smollm2_135m_prosparse under ZeRO-3 with the
# L1 term + sparsity counters on, then the same run with both off (issue 3: tokens/s, MFU, overhead).
set -uo pipefail
source scripts/device/env.sh
R=$PWD
source scripts/device/smollm2.sh
MODEL=()
if ! H=$(smollm2_hf_folder); then
  echo "SmolLM2 GGUF not assembled (fresh machine?): SmolLM2-shaped random model instead" | tee -a "$OUT/device.txt"
  H=$R/.carry/tok
  MODEL=("${SMOLLM2_SHAPED_RANDOM[@]}" model.tokenizer=$H)
fi
# Tokenized here, with this machine's tokenizer (a corpus tokenized elsewhere was once rejected as another's).
(cd /tmp && python3 -m actsparse.launch.cli prepare-data --tokenizer "$H" --out /root/corpus 2>&1 | tail -1)
CORPUS=/root/corpus/corpus.tokens.npz
cd /root
A=(smollm2_135m_prosparse --nproc-per-node 1 train.steps=${STEPS:-300} train.log_every=10 train.eval_every=0
   train.checkpoint_every=0 "l1.stages=[[0, 50], [0.005, 100], [0.05, 200], [0.2, ${STEPS:-300}]]"
   "data.sources=[{path: $CORPUS}]" "${MODEL[@]}")
timeout ${ON_S:-270} python3 -m actsparse.launch.cli train "${A[@]}" output_dir=/root/runs/on train.export_at_end=true \
  > "$OUT/train_on.log" 2>&1; echo "on rc $?"
timeout ${OFF_S:-220} python3 -m actsparse.launch.cli train "${A[@]}" output_dir=/root/runs/off train.export_at_end=false \
  l1.schedule=none train.sparsity_stats=false > "$OUT/train_off.log" 2>&1; echo "off rc $?"
python3 -m actsparse.recipes.run_summary /root/runs/off /root/runs/on --skip 50 --json "$OUT/summary.json"
cp /root/runs/on/metrics.jsonl "$OUT/metrics_on.jsonl"; cp /root/runs/off/metrics.jsonl "$OUT/metrics_off.jsonl"
ls /root/runs/on /root/runs/on/checkpoints; grep -iE "error|Traceback" "$OUT"/train_*.log | head; tail -n 2 "$OUT"/train_*.log
