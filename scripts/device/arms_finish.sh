#!/usr/bin/env bash
# Issue 7, last call: arms still running get SIGUSR1 (checkpoint and exit); every arm is exported, FATReLU
# t=0.01 applied to the ProSparse arm, each evaluated (zero fraction, CETT, CETT-PPL-1%, held-out perplexity on
# Celery's docs, and lm-eval tasks built from those docs: eval/docs_tasks.py), then the leaderboard table and
# plots. Brings back results, not weights.
# Give it ~6 min on an H100: session 4's finish, with the four exports one after another, did not fit in 300 s.
# The exports and then the five evals (~31 s each in session 3) run side by side. The metrics files go to $OUT
# first and the progress to $OUT/finish.log as it happens, so a call cut short still brings back the training
# curves and how far it got.
# Then a FATReLU threshold sweep on the ProSparse and ReLU arms (eval/fatrelu_sweep.py), and the greedy exactness
# check of the sparse decoding kernels on the trained ProSparse and FATReLU models.
#   carry: .carry/whl_eval          env: EVAL_S (per eval, default 150), SWEEP_S (90), DECODE_S (per decode check, 60)
set -uo pipefail
source scripts/device/env.sh
LOG=$OUT/finish.log; say() { echo "$(date -u +%T) $*" | tee -a "$LOG"; }
for arm in silu relu prosparse drelu; do cp /root/arms/$arm/metrics.jsonl $OUT/metrics_$arm.jsonl; done
if pkill -USR1 -f "actsparse.launch.cl[i] train"; then   # the bracket keeps pkill from matching this shell
  end=$((SECONDS + 90)); while pgrep -f "actsparse.launch.cl[i] train" > /dev/null && [ $SECONDS -lt $end ]; do sleep 2; done
fi
say "arms stopped: $(for a in silu relu prosparse drelu; do tail -c 200 /root/arms_$a.log | tr '\r' '\n' | grep -ao '[0-9]*/[0-9]* ' | tail -1; done | tr '\n' ' ')"
mkdir -p /root/results
(cd /tmp && python3 -m actsparse.eval.docs_tasks /root/heldout.txt --out /root/tasks > /root/tasks.log 2>&1) &
for arm in silu relu prosparse drelu; do
  [ -f /root/arms/$arm/export/config.json ] || (cd /tmp && python3 -m actsparse.launch.cli export /root/arms/$arm \
    /root/arms/$arm/export > /root/export_$arm.log 2>&1 || say "export $arm failed: $(tail -1 /root/export_$arm.log)") &
done
(cd /tmp && python3 -m actsparse.launch.cli export /root/arms/prosparse /root/arms/fatrelu_export --threshold 0.01 \
   > /root/export_fatrelu.log 2>&1 || say "export fatrelu failed: $(tail -1 /root/export_fatrelu.log)") &
wait; say "exported"
for arm in silu relu prosparse drelu; do cp /root/arms/$arm/metrics.jsonl $OUT/metrics_$arm.jsonl; done
for arm in silu relu prosparse drelu fatrelu; do
  model=/root/arms/$arm/export; [ $arm = fatrelu ] && model=/root/arms/fatrelu_export
  cat > /root/eval_$arm.yaml <<YAML
model: $model
name: smollm2-135m-$arm
metrics: [zero_fraction, cett, ppl_p, perplexity, quality]
data: {source: txt, path: /root/heldout.txt, seq_len: 512, batch_size: 8, num_batches: 10}
quality: {task_groups: [docs], task_groups_file: /root/tasks/task_groups.yaml, include_path: [/root/tasks], add_bos_token: false}
output: /root/results/$arm.json
YAML
  (cd /tmp && timeout ${EVAL_S:-150} python3 -m actsparse.launch.cli eval /root/eval_$arm.yaml --quiet \
     > /root/eval_$arm.log 2>&1 || say "eval $arm failed (rc $?): $(tail -2 /root/eval_$arm.log)") &
done
wait; say "evaluated: $(ls /root/results | tr '\n' ' ')"; mkdir -p /root/results/decode   # not eval JSONs: kept out of the leaderboard's glob
# ProSparse step 3 with the threshold measured rather than taken from 7B: FATReLU sweep on the ReLU-family arms.
mkdir -p /root/results/sweep
for arm in prosparse relu; do
  (cd /tmp && timeout ${SWEEP_S:-90} python3 -m actsparse.eval.fatrelu_sweep /root/eval_$arm.yaml \
     --out /root/results/sweep/$arm.json --png /root/results/sweep/$arm.png 2>&1 | grep -av "Warning\|it/s\]" | tail -12 | tee -a "$LOG")
done
# Issue 8's exactness check on trained ReLU checkpoints: dense vs the exact sparse kernels, greedy, CUDA graph.
for arm in prosparse fatrelu; do model=/root/arms/prosparse/export; [ $arm = fatrelu ] && model=/root/arms/fatrelu_export
  (cd /tmp && timeout ${DECODE_S:-60} python3 -m actsparse.kernels.bench_decode --model $model --batches 1,8 --dtype bf16 \
     --predictor-rank 0 --out /root/results/decode/$arm.json 2>&1 | grep -a "identical" | tee -a "$LOG")
done
(cd /tmp && python3 -m actsparse.launch.cli leaderboard /root/results/*.json --out /root/results/board \
   --runs /root/arms/{silu,relu,prosparse,drelu}/metrics.jsonl) | tail -20
for arm in silu relu prosparse drelu; do cp /root/arms/$arm/metrics.jsonl /root/results/metrics_$arm.jsonl; done
cp /root/results/board/{leaderboard.md,sparsity_vs_quality.png,training_curves.png} $OUT/ 2>/dev/null
tar -C /root -czf $OUT/arms_results.tar.gz results    # result JSONs, metrics, every plot (8-file limit)
rm -f $OUT/metrics_*.jsonl   # in the archive now; they were copied early only in case the call is cut
ls $OUT
