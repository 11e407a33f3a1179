#!/usr/bin/env bash
# Device call 3: `actsparse eval` on call 2's export (issue 5), predictors collect/train/eval and the
# predictor-driven decode path (issue 6). Needs call 2's /root/runs/on/export on the same (warm) machine.
set -uo pipefail
source scripts/device/env.sh
R=$PWD; CKPT=/root/runs/on/export
[ -f $CKPT/config.json ] || { echo "no $CKPT: call 2 did not run on this machine"; exit 1; }
cat > /root/eval_device.yaml <<YAML
model: $CKPT
name: smollm2-135m-prosparse-300steps
metrics: [zero_fraction, cett, ppl_p, perplexity, quality]
data: {source: stdlib, seq_len: 512, batch_size: 8, num_batches: 10}
quality:
  task_groups: [tiny]
  task_groups_file: $R/tests/eval/data/task_groups.yaml
  include_path: [$R/tests/eval/data]
  add_bos_token: false
  skip_missing: true
output: $OUT/eval_smollm2.json
YAML
cd /tmp
[ -n "${SKIP_EVAL:-}" ] || /usr/bin/time -f "eval wall %e s" timeout ${EVAL_S:-200} python3 -m actsparse.launch.cli eval /root/eval_device.yaml \
  > "$OUT/eval.log" 2>&1; echo "eval rc $?"; tail -4 "$OUT/eval.log"
python3 - <<PY
import numpy as np, torch
ids = torch.from_numpy(np.load("$R/.carry/corpus/corpus.tokens.npz")["input_ids"].astype("int64"))
rows = ids[: ids.numel() // 512 * 512].view(-1, 512); k = int(rows.shape[0] * 0.9)
torch.save(rows[:k].clone(), "/root/calib.pt"); torch.save(rows[k:].clone(), "/root/heldout.pt")
PY
C=(--config $R/modeling/predictors/configs/prosparse_7b.yaml)
P=(train.max_epochs=6 train.patience=3 model=$CKPT dtype=bfloat16 collect.seq_len=512
   train.rank=56 eval.reference_d_model=576 eval.reference_d_ff=1536 eval.ppl_seq_len=512 eval.ppl_max_tokens=20000)
{ timeout 60 python3 -m actsparse.launch.cli predictors "${C[@]}" collect "${P[@]}" collect.data=/root/calib.pt collect.max_tokens=200000 &&
  timeout 40 python3 -m actsparse.launch.cli predictors "${C[@]}" collect "${P[@]}" collect.data=/root/heldout.pt \
    collect.out_dir=/root/heldout_acts collect.max_tokens=20000 &&
  timeout ${PRED_TRAIN_S:-120} python3 -m actsparse.launch.cli predictors "${C[@]}" train "${P[@]}" &&
  timeout 60 python3 -m actsparse.launch.cli predictors "${C[@]}" eval "${P[@]}" eval.data_dir=/root/heldout_acts \
    eval.ppl_data=/root/heldout.pt eval.out_json=$OUT/predictors_eval.json; } > "$OUT/predictors.log" 2>&1
echo "predictors rc $?"; tail -12 "$OUT/predictors.log"
timeout ${DEC_S:-90} python3 -m actsparse.eval.predictor_decode --model $CKPT --ppl-data /root/heldout.pt --backend triton \
  --out "$OUT/predictor_decode.json" > "$OUT/predictor_decode.log" 2>&1; echo "decode rc $?"; tail -8 "$OUT/predictor_decode.log"
